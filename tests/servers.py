"""The real-server tests' side of the harness in segops_fast.testing._app_servers.

The harness starts, waits for and stops the servers; this module adds what the tests
share on top: their applications' folder and environment, a server that runs in that
folder and fails the test with its log, and requests that track events.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from segops_fast.testing import LocalIngestServer
from segops_fast.testing import _app_servers as harness

APPS = Path(__file__).parent / "apps"


def environment(server: LocalIngestServer, **extra: str) -> dict[str, str]:
    """The environment of a process whose application sends to ``server``."""
    return {**os.environ, "SEGOPS_TEST_API_URL": server.url, **extra}


@contextlib.contextmanager
def running(
    command: list[str], port: int | None, env: dict[str, str], log: Path
) -> Iterator[harness.Child]:
    """The server in tests/apps, in a process group of its own, listening on ``port``
    (unless None); whatever happens, every process left in its group is killed."""
    with harness.started(command, log=log, cwd=APPS, env=env) as child:
        if port is not None:
            harness.wait_until_listening(child, port)
        yield child


def stop_gracefully(child: harness.Child, stop_signal: int = signal.SIGTERM) -> None:
    assert child.stop(harness.STOP_TIMEOUT, stop_signal), "the server did not stop within 60 s"


def send_requests(port: int, first: int, count: int, events: int = 5) -> list[dict[str, Any]]:
    """Requests ``first`` to ``first + count - 1``, each tracking ``events`` events, from
    four threads; the applications' answers (the worker's pid, its segops threads)."""
    path = "/track?request={}&events=" + str(events)
    with ThreadPoolExecutor(4) as pool:
        return list(
            pool.map(lambda r: harness.get_json(port, path.format(r)), range(first, first + count))
        )


def uwsgi_command(port: int, *options: str) -> list[str]:
    """A uWSGI master with 4 workers serving tests/apps/wsgi_app.py, recycled every 25
    requests and stopped gracefully by SIGTERM, plus ``options``."""
    return harness.uwsgi(
        port, ["--wsgi-file", "wsgi_app.py"], workers=4, max_requests=25, options=options
    )
