"""Shared fixtures and checks: a real LocalIngestServer per test (over HTTPS too), clients
that are always shut down, accounting checks that can fail, the markers that select the
slow real-server groups, and, under CI, no test that silently shrinks away."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

MakeClient = Callable[..., segops.SegOpsClient]

#: The one bound on wall-clock time for promises that are themselves deadlines
#: (``shutdown(timeout)`` returns by its deadline): that deadline plus this. Generous, so a
#: loaded machine never fails it; a client that waits for a hung request or for its own
#: request ``timeout`` instead of its deadline is caught by what happened, not by this.
DEADLINE_MARGIN_SECONDS = 5.0

#: Reasons whose events are counted ``failed``; every other reason counts them ``dropped``.
FAILED_REASONS = frozenset({"failed", "retries_exhausted"})

#: Test files (by name) that start real servers, processes or clusters, and their marker:
#: ``pytest -m "not servers and not dask and not network"`` runs the fast layer.
_MARKERS_BY_FILE = {
    "test_prefork_servers.py": "servers",
    "test_servers.py": "servers",
    "test_fork.py": "servers",
    "test_multiprocessing.py": "servers",
    "test_drop_in.py": "servers",
    "test_backfill_dask.py": "dask",
    "test_network_tls.py": "network",
    "test_network_proxy.py": "network",
    "test_network_compression.py": "network",
    "test_network_secrets.py": "network",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        marker = _MARKERS_BY_FILE.get(path.name)
        if marker is not None:
            item.add_marker(marker)
        if path.parent.name == "unit":
            item.add_marker("unit")


# -- no silent shrinking under CI ---------------------------------------------------------------

#: How pytest.importorskip words a skip: the extra or tool is not installed.
_MISSING_MODULE = "could not import"


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _fail_a_missing_tool(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under CI, a skip because a server or extra is missing is a failure: the suite must
    not shrink without anyone noticing."""
    if not (_in_ci() and report.skipped):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if _MISSING_MODULE in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true and a tool or extra the test needs is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_a_missing_tool(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_a_missing_tool(outcome.get_result())


# -- servers and clients ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LocalIngestServer]:
    with LocalIngestServer() as running:
        yield running


@pytest.fixture(scope="module")
def tls() -> ServerTLS:
    """A certificate for 127.0.0.1 from a test CA; clients trust it with ``tls.ca_certs``."""
    return ServerTLS.for_loopback()


@pytest.fixture
def tls_server(tls: ServerTLS) -> Iterator[LocalIngestServer]:
    with LocalIngestServer(tls=tls) as running:
        yield running


@pytest.fixture
def make_client(server: LocalIngestServer) -> Iterator[MakeClient]:
    """Build clients against ``server`` (fast flush interval); shut down whatever is left."""
    clients: list[segops.SegOpsClient] = []

    def build(api_key: str = DEFAULT_SECRET_KEY, **options: Any) -> segops.SegOpsClient:
        options.setdefault("flush_interval", 0.05)
        client = segops.SegOpsClient(options.pop("api_url", server.url), api_key, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        with contextlib.suppress(segops.SegOpsApiError):
            client.shutdown(timeout=10)


def track_numbered(client: segops.SegOpsClient, count: int, event_type: str = "e") -> None:
    """Track ``count`` events whose payloads are ``{"i": 0}`` to ``{"i": count - 1}``."""
    for index in range(count):
        client.track(user_id="u", event_type=event_type, payload={"i": index})


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it still does not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout} s"
        time.sleep(0.02)


def our_threads() -> set[threading.Thread]:
    """segops_fast's threads alive now (flushers and senders, of every client)."""
    return {thread for thread in threading.enumerate() if thread.name.startswith("segops-fast")}


def wait_for_threads_started_since(
    before: set[threading.Thread], timeout: float = DEADLINE_MARGIN_SECONDS * 4
) -> None:
    """Wait for segops_fast's threads that were not alive in ``before`` to end: after a
    shutdown deadline they end once the requests they still waited for are answered, so
    whatever those answers change has happened when this returns."""
    deadline = time.monotonic() + timeout
    for thread in our_threads() - before:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"


def answered_ingest_requests(server: LocalIngestServer) -> int:
    """Ingest requests the server handled and answered 2xx, or would have (stored, or
    recognised by their key), with a secret key (no session mints)."""
    summary = server.summary()
    return summary["requests"] - summary["rejected_requests"] - summary["sessions_minted"]


def wait_until_nothing_queued(client: segops.SegOpsClient, timeout: float = 5.0) -> None:
    """After a shutdown deadline the threads settle what they held; wait for that."""
    wait_until(lambda: client.stats().queued == 0, timeout)


# -- accounting that can fail -------------------------------------------------------------------
#
# ``Stats.queued`` is derived (waiting in the buffer plus a running "taken, fate unknown"
# count), so ``enqueued == sent + dropped + failed + queued`` holds whatever the client
# counts: an event counted both sent and failed only makes ``queued`` one lower. These
# checks instead compare the counters with what the test knows independently.


def assert_idle_invariant(stats: segops.Stats) -> None:
    """No counter is negative, so no event is counted in two outcomes (a double count
    leaves ``queued`` below zero), and the counters add up. Idle means ``queued == 0`` too:
    :func:`assert_accounted` checks that, with the number of events tracked."""
    assert _negative_counters(stats) == [], stats
    assert stats.enqueued == stats.sent + stats.dropped + stats.failed + stats.queued, stats
    # Each event given up has exactly one reason.
    assert sum(stats.given_up_by_reason.values()) == stats.dropped + stats.failed, stats


def assert_accounted(
    stats: segops.Stats,
    *,
    tracked: int,
    sent: int | None = None,
    dropped: int | None = None,
    failed: int | None = None,
) -> None:
    """Idle (nothing queued), every one of the ``tracked`` events counted in exactly one
    outcome, and where the test knows them, the outcome counts exactly."""
    assert_idle_invariant(stats)
    assert stats.queued == 0, stats
    assert stats.enqueued == tracked, stats
    expected = {"sent": sent, "dropped": dropped, "failed": failed}
    actual = {name: getattr(stats, name) for name, value in expected.items() if value is not None}
    assert actual == {name: value for name, value in expected.items() if value is not None}, stats


def assert_given_up_as_counted(stats: segops.Stats, reasons: Iterable[str]) -> None:
    """The events handed to ``on_drop`` (one reason each) are exactly those counted failed
    or dropped, split by reason as the README's table says."""
    reasons = list(reasons)
    failed = sum(reason in FAILED_REASONS for reason in reasons)
    assert (stats.failed, stats.dropped) == (failed, len(reasons) - failed), (stats, reasons)
    assert stats.given_up_by_reason == dict(collections.Counter(reasons)), (stats, reasons)


def _negative_counters(stats: segops.Stats) -> list[str]:
    counters = dataclasses.asdict(stats)
    by_reason = counters.pop("given_up_by_reason")
    return [name for name, value in [*counters.items(), *by_reason.items()] if value < 0]
