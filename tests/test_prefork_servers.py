"""Real pre-fork servers: gunicorn and uWSGI with 4 workers, recycled mid-test.

A fixed number of HTTP requests each track 5 events through a client created at import
(in the master when it preloads); the server is then stopped gracefully, and
LocalIngestServer must hold every event exactly once.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from segops_fast.testing import LocalIngestServer

APPS = Path(__file__).parent / "apps"
REQUESTS, EVENTS_PER_REQUEST = 400, 5


def uwsgi_command(port: int, *options: str) -> list[str]:
    """A uWSGI master with 4 workers serving tests/apps/wsgi_app.py, recycled every 25
    requests and stopped gracefully by SIGTERM, plus ``options``."""
    return [
        sys.executable, "-c", "import pyuwsgi, sys; pyuwsgi.run(sys.argv[1:])",
        "--master",
        "--workers", "4",
        "--http-socket", f"127.0.0.1:{port}",
        "--wsgi-file", "wsgi_app.py",
        "--need-app",
        "--max-requests", "25",
        # uWSGI otherwise keeps a worker for at least 10 s whatever max-requests says.
        "--min-worker-lifetime", "0",
        # SIGTERM stops gracefully: each worker finishes and runs its exit hooks. (With
        # --die-on-term, SIGTERM kills the workers at once, even one still sending.)
        "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
        # uWSGI can miss a stop signal that lands while it respawns a worker (seen with an
        # application that does nothing at all) and then waits 60 s before killing it.
        "--worker-reload-mercy", "10",
        "--reload-mercy", "10",
        "--disable-logging",
        *options,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(port: int, request: int) -> dict[str, Any]:
    """One request, tried again when the connection is refused or reset unanswered.

    A gthread worker that is stopping (recycled, or replaced by a HUP reload) resets the
    connections it accepted but has not read. Had a request been handled before a reset,
    trying it again would track its events twice, and the exactly-once check would fail.
    """
    for _ in range(100):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", f"/track?request={request}&events={EVENTS_PER_REQUEST}")
            response = connection.getresponse()
            assert response.status == 200, response.read()
            answer: dict[str, Any] = orjson.loads(response.read())
            return answer
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.05)
        finally:
            connection.close()
    raise AssertionError(f"request {request}: the server never accepted it")


def _wait_until_serving(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited while starting"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError("the server did not start listening within 30 s")


@contextlib.contextmanager
def _running(
    command: list[str], port: int, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    # A file, not a pipe nobody reads: a server blocked writing its log never stops.
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=APPS, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_serving(process, port)
        yield process
    except BaseException:
        sys.stderr.write(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _stop_gracefully(process: subprocess.Popen[bytes], stop_signal: int) -> None:
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the server did not stop within 60 s") from None


def _send_requests(port: int, first: int, count: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda request: _get(port, request), range(first, first + count)))


def _assert_exactly_once(server: LocalIngestServer) -> None:
    summary = server.summary()
    assert summary["duplicate_events"] == 0, summary
    assert summary["unique_events"] == REQUESTS * EVENTS_PER_REQUEST, summary


def _environment(server: LocalIngestServer, **extra: str) -> dict[str, str]:
    return {**os.environ, "SEGOPS_TEST_API_URL": server.url, **extra}


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_delivers_exactly_once_through_recycling_and_reload(
    server: LocalIngestServer, worker_class: str, preload: bool, tmp_path: Path
) -> None:
    port = _free_port()
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", "4",
        "--worker-class", worker_class,
        "--threads", "2" if worker_class == "gthread" else "1",
        "--max-requests", "25",
        "--max-requests-jitter", "10",
        "--graceful-timeout", "30",
        *(["--preload"] if preload else []),
        "wsgi_app:application",
    ]  # fmt: skip
    with _running(command, port, _environment(server), tmp_path / "log") as gunicorn:
        answers = _send_requests(port, 0, REQUESTS // 2)
        # A graceful reload: new workers start, the old ones finish and exit.
        gunicorn.send_signal(signal.SIGHUP)
        answers += _send_requests(port, REQUESTS // 2, REQUESTS // 2)
        _stop_gracefully(gunicorn, signal.SIGTERM)
        assert len({answer["pid"] for answer in answers}) > 4, "no worker was recycled"
        _assert_exactly_once(server)


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["preload", "lazy-apps"])
@pytest.mark.parametrize("threads", ["enable-threads", "default-threads", "no-threads"])
def test_uwsgi_delivers_exactly_once_through_recycling(
    server: LocalIngestServer, lazy_apps: bool, threads: str, tmp_path: Path
) -> None:
    pytest.importorskip("pyuwsgi")
    port = _free_port()
    command = uwsgi_command(
        port,
        *(["--lazy-apps"] if lazy_apps else []),
        *(["--enable-threads"] if threads == "enable-threads" else []),
    )
    env = _environment(server, SEGOPS_TEST_NO_THREADS="1" if threads == "no-threads" else "0")
    with _running(command, port, env, tmp_path / "log") as uwsgi:
        answers = _send_requests(port, 0, REQUESTS)
        # Workers recycled this fast make uWSGI pause 2 s before respawning; a stop signal
        # during that pause leaves the master waiting for good (reproduced with an empty
        # application), so let it finish respawning first.
        time.sleep(3)
        _stop_gracefully(uwsgi, signal.SIGTERM)
        assert len({answer["pid"] for answer in answers}) > 4, "no worker was recycled"
        if threads == "no-threads":
            assert not any(answer["segops_threads"] for answer in answers)
        _assert_exactly_once(server)
