"""uWSGI's post-fork hook chain: segops_fast joins it, and every hook that was there still runs.

uWSGI calls whatever callable ``uwsgi.post_fork_hook`` holds in each worker it forks, and
``uwsgidecorators`` keeps the application's ``@postfork`` functions in a list behind its
own hook. A stand-in ``uwsgi`` module (and ``uwsgidecorators``) in ``sys.modules`` is what
segops_fast reads, exactly as inside uWSGI.
"""

from __future__ import annotations

import sys
import types
from typing import Callable

import pytest

from segops_fast import _uwsgi


def _stand_in_uwsgi(
    monkeypatch: pytest.MonkeyPatch, hook: Callable[[], None] | None
) -> types.ModuleType:
    uwsgi = types.ModuleType("uwsgi")
    uwsgi.post_fork_hook = hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", uwsgi)
    return uwsgi


def test_a_hook_set_before_ours_still_runs_in_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    uwsgi = _stand_in_uwsgi(monkeypatch, lambda: calls.append("application's"))
    _uwsgi.call_after_fork(lambda: calls.append("segops_fast's"))
    uwsgi.post_fork_hook()
    assert sorted(calls) == ["application's", "segops_fast's"]


def test_without_a_previous_hook_ours_runs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    uwsgi = _stand_in_uwsgi(monkeypatch, None)
    _uwsgi.call_after_fork(lambda: calls.append("segops_fast's"))
    uwsgi.post_fork_hook()
    assert calls == ["segops_fast's"]


def test_two_clients_hooks_and_the_applications_each_run_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    uwsgi = _stand_in_uwsgi(monkeypatch, lambda: calls.append("application's"))
    _uwsgi.call_after_fork(lambda: calls.append("first"))
    _uwsgi.call_after_fork(lambda: calls.append("second"))
    uwsgi.post_fork_hook()
    assert sorted(calls) == ["application's", "first", "second"]


def test_with_uwsgidecorators_ours_joins_its_postfork_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    decorators = types.ModuleType("uwsgidecorators")
    decorators.postfork_chain = [lambda: calls.append("@postfork")]  # type: ignore[attr-defined]

    def postfork_chain_hook() -> None:
        for hook in decorators.postfork_chain:  # type: ignore[attr-defined]
            hook()

    decorators.postfork_chain_hook = postfork_chain_hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgidecorators", decorators)
    uwsgi = _stand_in_uwsgi(monkeypatch, postfork_chain_hook)
    _uwsgi.call_after_fork(lambda: calls.append("segops_fast's"))
    # The chain's own hook stays in place (the application may add to the chain later).
    assert uwsgi.post_fork_hook is postfork_chain_hook
    uwsgi.post_fork_hook()
    assert calls == ["@postfork", "segops_fast's"]


def test_outside_uwsgi_nothing_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "uwsgi", raising=False)
    _uwsgi.call_after_fork(lambda: None)
    assert "uwsgi" not in sys.modules
