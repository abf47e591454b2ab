"""The real app servers the app-overhead benchmark runs: how each is started and stopped.

This module owns the three servers' command lines (gunicorn's sync worker, gunicorn's
gthread worker with 4 threads, uvicorn; one worker each, serving :mod:`apps.wsgi` or
:mod:`apps.asgi`), waiting until one answers, finding the process that serves requests
(gunicorn's worker, uvicorn itself) and stopping it gracefully with SIGTERM, so that
the clients in it deliver what they queued before it exits.

The server is started in the calling process's CPU placement; see ``bench/placement.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3
from apps.tracking import (
    EVENTS_VARIABLE,
    INGEST_URL_VARIABLE,
    READY_PATH,
    ROW_VARIABLE,
    TRACKED_PATH,
)
from proc_usage import children_of
from processes import Child, started

BENCH = Path(__file__).resolve().parent
GUNICORN_CONFIG = BENCH / "apps" / "gunicorn_conf.py"
#: gunicorn's default graceful timeout, and more than a client's shutdown needs
#: (segops_fast's shutdown_timeout is 10 s).
STOP_TIMEOUT = 60.0
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class AppServer:
    name: str
    #: The server's command line after ``python -m``, without its address.
    command: tuple[str, ...]
    #: The server forks a worker that serves requests (gunicorn); otherwise the server
    #: process serves them itself (uvicorn with one worker).
    forks_worker: bool
    #: How the server ends after a graceful stop on SIGTERM. uvicorn, once it has shut
    #: down, raises the SIGTERM it caught again, with Python's handler back in place: the
    #: process ends by the signal, so atexit hooks do not run.
    graceful_exit_status: int = 0

    def arguments(self, port: int) -> list[str]:
        bind = (
            ["--bind", f"127.0.0.1:{port}"]
            if self.forks_worker
            else ["--host", "127.0.0.1", "--port", str(port)]
        )
        return [sys.executable, "-m", *self.command, *bind]


_GUNICORN = ("gunicorn", "--config", str(GUNICORN_CONFIG), "--pythonpath", str(BENCH))
SERVERS: dict[str, AppServer] = {
    server.name: server
    for server in (
        AppServer(
            "gunicorn-sync",
            (*_GUNICORN, "--workers", "1", "--worker-class", "sync", "apps.wsgi:application"),
            forks_worker=True,
        ),
        AppServer(
            "gunicorn-gthread",
            (
                *_GUNICORN,
                "--workers",
                "1",
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "apps.wsgi:application",
            ),
            forks_worker=True,
        ),
        AppServer(
            "uvicorn",
            (
                "uvicorn",
                "--app-dir",
                str(BENCH),
                "--workers",
                "1",
                "--lifespan",
                "on",
                "--log-level",
                "warning",
                "--no-access-log",
                "apps.asgi:application",
            ),
            forks_worker=False,
            graceful_exit_status=-signal.SIGTERM,
        ),
    )
}


@dataclass
class RunningApp:
    """An app server that answers, and the process whose CPU time is the app's."""

    child: Child
    url: str
    worker_pid: int

    def tracked(self) -> int:
        """How many events the worker tracked; ask once the load has stopped."""
        response = urllib3.request("GET", self.url + TRACKED_PATH, timeout=30.0, retries=False)
        return int(response.data)

    def stop(self) -> int:
        """SIGTERM and wait until the server has exited: its clients have flushed by then.
        Returns its exit status (the server's ``graceful_exit_status`` after a graceful
        stop; -SIGKILL if it had to be killed)."""
        return self.child.stop(STOP_TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    server: AppServer, row: str, events_per_request: int, ingest_url: str
) -> Iterator[RunningApp]:
    """Run ``server`` for one row and workload until the block ends (then stop it, if the
    block has not)."""
    port = free_port()
    environment = {
        **os.environ,
        ROW_VARIABLE: row,
        EVENTS_VARIABLE: str(events_per_request),
        INGEST_URL_VARIABLE: ingest_url,
    }
    with started(server.arguments(port), env=environment) as child:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(child, url)
        worker = _worker_of(child) if server.forks_worker else child.pid
        yield RunningApp(child, url, worker)


def _wait_until_answering(child: Child, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"the app server exited with {child.popen.returncode}")
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            if urllib3.request("GET", url + READY_PATH, timeout=1.0, retries=False).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the app server did not answer at {url} within {START_TIMEOUT} s")


def _worker_of(child: Child) -> int:
    """The one worker a pre-fork server started, adopted so that it ends with it."""
    workers = children_of(child.pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker of {child.pid}, found {workers}")
    child.adopt(workers[0])
    return workers[0]
