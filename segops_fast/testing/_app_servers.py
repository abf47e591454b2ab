"""Real application servers in child processes: the one harness of the demo, tests and bench.

This module owns what it takes to run gunicorn, uWSGI, uvicorn, a Celery worker or a
plain script as a child and be sure it ends: whether its package is installed (and the
line that says what to install), its command line, a free loopback port, starting it in
a session (so a process group) of its own with its output in a log file, waiting until
it listens, asking it for JSON, stopping it gracefully with a signal, and killing
whatever is left of its group by the group's id, whatever happened meanwhile.

It imports none of those servers (each runs as ``python -m NAME``), and it does not own
the applications they serve: the demo's are in ``segops_fast/_cli``, the tests' in
``tests/apps``, bench's in ``bench/apps``.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

#: gunicorn's default graceful timeout, and more than a client's shutdown needs.
STOP_TIMEOUT = 60.0
START_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A server that did not start, answer or stop as it should; the message says which."""


def missing_package(*packages: str) -> str | None:
    """For the first of ``packages`` that cannot be imported here, the line that says
    how to install it; None when all can."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed: pip install {package}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_process(popen: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM, then SIGKILL if ``popen`` has not exited within ``timeout``; its status."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return popen.returncode


class Child:
    """A process started in a session of its own: a Ctrl-C at the terminal reaches only
    the parent, which decides how the child ends, and every process the child starts
    (a pre-fork server's workers) is in its process group, ended through its id."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen

    @classmethod
    def start(cls, arguments: Sequence[str], **popen_options: Any) -> Child:
        return cls(subprocess.Popen(list(arguments), start_new_session=True, **popen_options))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = STOP_TIMEOUT, stop_signal: int = signal.SIGTERM) -> bool:
        """Send ``stop_signal`` and wait up to ``timeout`` for the child to exit; True if
        it did. Either way, what is left of its group is killed."""
        stopped = True
        if self.popen.poll() is None:
            self.popen.send_signal(stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                stopped = False
        self.kill()
        return stopped

    def kill(self) -> None:
        """SIGKILL every process left in the child's group (a worker that outlived its
        master would run on, orphaned), and reap the child."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@contextlib.contextmanager
def started(
    arguments: Sequence[str], *, log: Path | None = None, **popen_options: Any
) -> Iterator[Child]:
    """Start ``arguments`` as a :class:`Child` (its output in ``log``, if given: a file,
    not a pipe nobody reads, as a server blocked writing its log never stops). If the
    block raises, the log's end goes to stderr; on leaving, whatever still runs is killed
    (stop it gracefully inside the block)."""
    output = log.open("wb") if log is not None else None
    if output is not None:
        popen_options.update(stdout=output, stderr=subprocess.STDOUT)
    try:
        child = Child.start(arguments, **popen_options)
    finally:
        if output is not None:
            output.close()
    try:
        yield child
    except BaseException:
        if log is not None:
            sys.stderr.write(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        child.kill()


def wait_until_listening(child: Child, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise ServerError(f"the server exited while starting (status {child.popen.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise ServerError(f"the server did not listen on port {port} within {timeout:g} s")


def wait_until_quiet(log: Path, quiet: float = 3.0, timeout: float = 30.0) -> None:
    """Wait until the server has written nothing to ``log`` for ``quiet`` seconds.

    A pre-fork server that has just recycled workers may still be respawning them: uWSGI
    sleeps 2 s before respawning workers that recycle fast, and a stop signal that lands
    then is never passed to the worker it respawns next (the master waits for that worker
    for good); a gunicorn gevent worker that gets it while booting is killed only after
    the graceful timeout. Both write a line before they pause, so a quiet log means none
    of that is under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        silent_for = time.time() - log.stat().st_mtime
        if silent_for >= quiet:
            return
        time.sleep(quiet - silent_for)
    raise ServerError(f"the server wrote to its log without a pause for {timeout:g} s")


def get_json(port: int, path: str, timeout: float = 60.0) -> Any:
    """``GET path``, tried again only if the connection was refused or reset unanswered:
    a worker that is stopping (recycled, or replaced by a reload) resets the connections
    it accepted but has not read. A request handled before a reset would be tried twice,
    and an exactly-once count would show it."""
    for _ in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise ServerError(f"GET {path} was answered {response.status}: {body[:500]!r}")
            return orjson.loads(body)
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.05)
        finally:
            connection.close()
    raise ServerError(f"GET {path} was never answered")


def wait_for_lines(child: Child, file: Path, count: int, timeout: float) -> list[str]:
    """The lines of ``file`` once it has ``count`` (as Celery tasks append them)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while len(lines) < count:
        if child.popen.poll() is not None:
            raise ServerError(f"the worker exited after {len(lines)} of {count} tasks")
        if time.monotonic() > deadline:
            raise ServerError(f"{len(lines)} of {count} tasks ran within {timeout:g} s")
        time.sleep(0.1)
        lines = file.read_text().splitlines() if file.exists() else []
    return lines


# -- command lines ---------------------------------------------------------------------


def gunicorn(
    port: int,
    app: str,
    *,
    workers: int,
    worker_class: str = "sync",
    threads: int = 1,
    max_requests: int = 0,
    options: Sequence[str] = (),
) -> list[str]:
    """gunicorn on 127.0.0.1:``port``; with ``max_requests``, workers are recycled after
    that many requests (and a jitter of up to 10)."""
    recycling = ["--max-requests", str(max_requests), "--max-requests-jitter", "10"]
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--worker-class", worker_class,
        "--threads", str(threads),
        *(recycling if max_requests else []),
        *options,
        app,
    ]  # fmt: skip


def uvicorn(
    port: int, app: str, *, workers: int, max_requests: int = 0, options: Sequence[str] = ()
) -> list[str]:
    recycling = ["--limit-max-requests", str(max_requests)]
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers),
        *(recycling if max_requests else []),
        "--no-access-log",
        *options,
    ]  # fmt: skip


def uwsgi(
    port: int, app: Sequence[str], *, workers: int, max_requests: int, options: Sequence[str] = ()
) -> list[str]:
    """A uWSGI master (through pyuwsgi) serving ``app`` (``--module M`` or ``--wsgi-file
    F``) on 127.0.0.1:``port``, recycling workers after ``max_requests`` and stopping
    gracefully on SIGTERM."""
    return [
        sys.executable, "-c", "import pyuwsgi, sys; pyuwsgi.run(sys.argv[1:])",
        "--master",
        "--workers", str(workers),
        "--http-socket", f"127.0.0.1:{port}",
        *app,
        "--need-app",
        "--max-requests", str(max_requests),
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


def celery_worker(app: str, *, concurrency: int, options: Sequence[str] = ()) -> list[str]:
    """A Celery worker with a prefork pool of ``concurrency`` children, quiet on the wire
    (no heartbeat, gossip or mingle: nothing but the tasks goes through the broker)."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-P", "prefork", "-c", str(concurrency),
        "--without-heartbeat", "--without-gossip", "--without-mingle",
        *options,
    ]  # fmt: skip


def filesystem_broker(folder: Path) -> dict[str, Any]:
    """Celery settings for kombu's filesystem transport in ``folder``: no broker server."""
    for name in ("queue", "processed", "control"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
            # kombu polls the folder once a second unless told otherwise.
            "polling_interval": 0.05,
        },
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
    }
