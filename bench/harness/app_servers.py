"""The real app servers the app-overhead benchmark runs: how each is started and stopped.

This module owns the three servers' settings (gunicorn's sync worker, gunicorn's gthread
worker with 4 threads, uvicorn; one worker each, serving :mod:`apps.wsgi` or
:mod:`apps.asgi`), waiting until one answers, and finding the process that serves
requests (gunicorn's worker, uvicorn itself). Their command lines, starting, stopping
gracefully with SIGTERM (so that the clients in them deliver what they queued before
they exit) and ending whatever is left are the shared harness's, in
``segops_fast.testing._app_servers``, which the demo and the tests use too.

The server is started in the calling process's CPU placement; see :mod:`.placement`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import urllib3
from apps.tracking import (
    EVENTS_VARIABLE,
    INGEST_URL_VARIABLE,
    READY_PATH,
    ROW_VARIABLE,
    TRACKED_PATH,
)

from segops_fast.testing import _app_servers as harness

from .proc_usage import children_of

BENCH = Path(__file__).resolve().parent.parent
GUNICORN_OPTIONS = (
    "--config",
    str(BENCH / "apps" / "gunicorn_conf.py"),
    "--pythonpath",
    str(BENCH),
)
UVICORN_OPTIONS = ("--app-dir", str(BENCH), "--lifespan", "on", "--log-level", "warning")


@dataclass(frozen=True)
class AppServer:
    name: str
    #: The server's command line for a port.
    command: Callable[[int], list[str]]
    #: The server forks a worker that serves requests (gunicorn); otherwise the server
    #: process serves them itself (uvicorn with one worker).
    forks_worker: bool
    #: How the server ends after a graceful stop on SIGTERM. uvicorn, once it has shut
    #: down, raises the SIGTERM it caught again, with Python's handler back in place: the
    #: process ends by the signal, so atexit hooks do not run.
    graceful_exit_status: int = 0


def _gunicorn(worker_class: str, threads: int) -> Callable[[int], list[str]]:
    return lambda port: harness.gunicorn(
        port,
        "apps.wsgi:application",
        workers=1,
        worker_class=worker_class,
        threads=threads,
        options=GUNICORN_OPTIONS,
    )


SERVERS: dict[str, AppServer] = {
    server.name: server
    for server in (
        AppServer("gunicorn-sync", _gunicorn("sync", 1), forks_worker=True),
        AppServer("gunicorn-gthread", _gunicorn("gthread", 4), forks_worker=True),
        AppServer(
            "uvicorn",
            lambda port: harness.uvicorn(
                port, "apps.asgi:application", workers=1, options=UVICORN_OPTIONS
            ),
            forks_worker=False,
            graceful_exit_status=-signal.SIGTERM,
        ),
    )
}


@dataclass
class RunningApp:
    """An app server that answers, and the process whose CPU time is the app's."""

    child: harness.Child
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
        self.child.stop(harness.STOP_TIMEOUT)
        return self.child.popen.returncode


@contextlib.contextmanager
def serving(
    server: AppServer, row: str, events_per_request: int, ingest_url: str
) -> Iterator[RunningApp]:
    """Run ``server`` for one row and workload until the block ends (then kill it, if the
    block has not stopped it)."""
    port = harness.free_port()
    environment = {
        **os.environ,
        ROW_VARIABLE: row,
        EVENTS_VARIABLE: str(events_per_request),
        INGEST_URL_VARIABLE: ingest_url,
    }
    with harness.started(server.command(port), env=environment) as child:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(child, url)
        worker = _worker_of(child) if server.forks_worker else child.pid
        yield RunningApp(child, url, worker)


def _wait_until_answering(child: harness.Child, url: str) -> None:
    deadline = time.monotonic() + harness.START_TIMEOUT
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"the app server exited with {child.popen.returncode}")
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            if urllib3.request("GET", url + READY_PATH, timeout=1.0, retries=False).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the app server did not answer at {url} within {harness.START_TIMEOUT} s")


def _worker_of(child: harness.Child) -> int:
    """The one worker a pre-fork server started (it ends with its process group)."""
    workers = children_of(child.pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker of {child.pid}, found {workers}")
    return workers[0]
