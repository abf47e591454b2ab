"""Every way the services run: a uWSGI master that tracks at import, gevent, ASGI, Celery.

Each test runs the real server in its own process group of processes, sends requests (or
tasks) that each track one event, recycles workers, stops the server gracefully, and
requires LocalIngestServer to hold every event exactly once, counted by event type. Every
process is ended by its PID if a test fails.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from segops_fast.testing import LocalIngestServer
from tests.test_prefork_servers import (
    _environment,
    _free_port,
    _running,
    _stop_gracefully,
)
from tests.test_prefork_servers import (
    _send_requests as _send_requests_tracking_five,
)

AT_IMPORT = 3


def _assert_stored_exactly_once(server: LocalIngestServer, expected: dict[str, int]) -> None:
    by_type = server.summary_by_event_type()
    stored = {kind: counts["unique_events"] for kind, counts in by_type.items()}
    duplicates = {kind: counts["duplicate_events"] for kind, counts in by_type.items()}
    assert stored == expected, by_type
    assert not any(duplicates.values()), by_type


def _pids(answers: list[dict[str, Any]]) -> Counter[int]:
    return Counter(answer["pid"] for answer in answers)


@pytest.mark.parametrize("fork_hooks", [False, True], ids=["uwsgi-hook", "py-fork-hooks"])
@pytest.mark.parametrize("threads", ["enable-threads", "default-threads"])
def test_uwsgi_master_that_tracks_at_import_without_lazy_apps(
    server: LocalIngestServer, threads: str, fork_hooks: bool, tmp_path: Path
) -> None:
    """The master imports the application, which tracks; every worker must still answer.

    A thread started in the master would deadlock the workers uWSGI forks from C, so the
    master sends its own events synchronously: each must be stored once, not once per
    worker or per respawn.
    """
    pytest.importorskip("pyuwsgi")
    port = _free_port()
    command = [
        sys.executable, "-c", "import pyuwsgi, sys; pyuwsgi.run(sys.argv[1:])",
        "--master",
        "--workers", "4",
        "--http-socket", f"127.0.0.1:{port}",
        "--wsgi-file", "wsgi_app.py",
        "--need-app",
        "--max-requests", "25",
        "--min-worker-lifetime", "0",
        "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
        "--worker-reload-mercy", "10",
        "--reload-mercy", "10",
        "--harakiri", "20",
        "--disable-logging",
        *(["--enable-threads"] if threads == "enable-threads" else []),
        *(["--py-call-uwsgi-fork-hooks"] if fork_hooks else []),
    ]  # fmt: skip
    env = _environment(server, SEGOPS_TEST_AT_IMPORT=str(AT_IMPORT))
    requests = 200
    with _running(command, port, env, tmp_path / "log") as uwsgi:
        answers = _send_requests_tracking_five(port, 0, requests)
        # See test_prefork_servers: let uWSGI finish respawning before the stop signal.
        time.sleep(3)
        _stop_gracefully(uwsgi, signal.SIGTERM)
    assert len(_pids(answers)) > 4, "no worker was recycled"
    # The master has no thread of ours; the workers do.
    assert all(answer["segops_threads"] for answer in answers)
    _assert_stored_exactly_once(server, {"at_import": AT_IMPORT, "request_handled": requests * 5})
