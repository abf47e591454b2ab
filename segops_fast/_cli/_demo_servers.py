"""``segops-fast demo --server NAME``: the exactly-once check under a real server.

It starts a LocalIngestServer in its own process and the named server, in a process
group of its own, with ``--workers`` workers that recycle after a few requests (tasks,
for Celery) and the applications of :mod:`._demo_apps`: a client created at import, in
the master where the server preloads, which tracks a few events there. Requests (or
tasks) track ``--events`` events in all; then the server is stopped gracefully, as its
section of the README says, and the ingest server counts what it stored. Exit status 1
if any event was lost or stored twice, or the server did not stop.

=========  ==============================================================================
gunicorn   gthread workers (4 threads each), ``--preload``, ``--max-requests``, SIGTERM
gevent     ``-k gevent --preload``, ``--max-requests``, SIGTERM
uvicorn    ``--workers``, ``--limit-max-requests``, SIGTERM; the lifespan awaits ashutdown()
uwsgi      master without lazy-apps, ``--enable-threads``, ``--max-requests``, SIGTERM as
           ``gracefully_kill_them_all``
celery     prefork pool, ``--max-tasks-per-child``, kombu's filesystem broker, SIGTERM
=========  ==============================================================================
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from ..testing import IngestServerProcess

SERVERS = ("gunicorn", "gevent", "uvicorn", "uwsgi", "celery")
#: Events the master (or Celery's main process) tracks at import; uvicorn's workers are
#: spawned and each imports the application, so there it tracks none.
AT_IMPORT = 5
#: Requests (tasks) a worker serves before it is recycled.
RECYCLE_AFTER = 25
_STOP_TIMEOUT = 60.0


def run(server_name: str, events: int, workers: int) -> int:
    per_request = 100 if server_name != "celery" else 20
    requests = max(1, events // per_request)
    at_import = 0 if server_name == "uvicorn" else AT_IMPORT
    with IngestServerProcess() as ingest, tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "SEGOPS_DEMO_API_URL": ingest.url,
            "SEGOPS_DEMO_AT_IMPORT": str(at_import),
            "SEGOPS_DEMO_BROKER_DIR": folder,
            "SEGOPS_DEMO_EVENTS_PER_TASK": str(per_request),
        }
        began = time.perf_counter()
        pids, stopped = _serve(
            server_name, workers, requests, per_request, env=env, folder=Path(folder)
        )
        elapsed = time.perf_counter() - began
        by_type = ingest.summary_by_event_type()
    expected = {"request": requests * per_request, "at_import": at_import}
    print(f"{server_name}: {workers} workers; {len(pids)} worker processes answered")
    print(f"{'events':>12}  {'tracked':>9}  {'stored':>9}  {'duplicates':>10}")
    exactly_once = stopped
    for kind, tracked in expected.items():
        counts = by_type.get(kind, {})
        unique, twice = counts.get("unique_events", 0), counts.get("duplicate_events", 0)
        exactly_once &= unique == tracked and twice == 0
        print(f"{kind:>12}  {tracked:>9,}  {unique:>9,}  {twice:>10,}")
    print(f"{elapsed:.1f} s from start to stop" + ("" if stopped else "; the server HUNG"))
    print("exactly once: yes" if exactly_once else "exactly once: NO")
    return 0 if exactly_once else 1


def _serve(
    name: str, workers: int, requests: int, per_request: int, *, env: dict[str, str], folder: Path
) -> tuple[set[int], bool]:
    """Run the server through its requests and a graceful stop: the worker pids that
    answered, and whether it stopped in time."""
    port = _free_port()
    log = (folder / "server.log").open("wb")
    if name == "celery":
        subprocess.run(
            [sys.executable, "-m", "segops_fast._cli._demo_celery", str(requests)],
            # Queuing the tasks imports the application too; that process is no master.
            env={**env, "SEGOPS_DEMO_AT_IMPORT": "0"},
            check=True,
            timeout=120,
        )
    process = subprocess.Popen(
        _command(name, workers, port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        if name == "celery":
            pids = _wait_for_tasks(process, folder / "done", requests)
        else:
            _wait_until_serving(process, port)
            with ThreadPoolExecutor(8) as pool:
                answers = pool.map(lambda r: _get(port, r, per_request), range(requests))
                pids = set(answers)
        if name in ("uwsgi", "gevent"):
            # Let the recycled workers' replacements finish booting: uWSGI can miss a stop
            # signal that lands while it respawns one, and a gevent worker that gets it
            # while booting is killed only after gunicorn's graceful_timeout (measured
            # with an application that does nothing: 30 s).
            time.sleep(3)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return pids, False
        return pids, True
    finally:
        # Whatever is left of the server's process group, its master's included.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def _command(name: str, workers: int, port: int) -> list[str]:
    python = sys.executable
    bind = f"127.0.0.1:{port}"
    recycle = str(RECYCLE_AFTER)
    wsgi = "segops_fast._cli._demo_apps:wsgi"
    if name in ("gunicorn", "gevent"):
        kind = ["--worker-class", "gthread", "--threads", "4"] if name == "gunicorn" else []
        return [
            python, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
            *(kind or ["--worker-class", "gevent"]),
            "--max-requests", recycle, "--max-requests-jitter", "5", "--preload", wsgi,
        ]  # fmt: skip
    if name == "uvicorn":
        return [
            python, "-m", "uvicorn", "segops_fast._cli._demo_apps:asgi",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--limit-max-requests", recycle, "--no-access-log",
        ]  # fmt: skip
    if name == "uwsgi":
        return [
            python, "-c", "import pyuwsgi, sys; pyuwsgi.run(sys.argv[1:])",
            "--master", "--workers", str(workers), "--http-socket", bind,
            "--module", wsgi, "--need-app", "--enable-threads",
            "--max-requests", recycle, "--min-worker-lifetime", "0",
            "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
            "--worker-reload-mercy", "15", "--disable-logging",
        ]  # fmt: skip
    return [
        python, "-m", "celery", "-A", "segops_fast._cli._demo_celery", "worker",
        "-P", "prefork", "-c", str(workers), "--max-tasks-per-child", recycle,
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_serving(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("segops-fast demo: the server exited while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise SystemExit("segops-fast demo: the server did not listen within 60 s")


def _get(port: int, request: int, events: int) -> int:
    """One request, tried again only if it was refused or reset unanswered; the pid."""
    for _ in range(200):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("GET", f"/track?request={request}&events={events}")
            pid: int = orjson.loads(connection.getresponse().read())["pid"]
            return pid
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.05)
        finally:
            connection.close()
    raise SystemExit(f"segops-fast demo: request {request} was never answered")


def _wait_for_tasks(process: subprocess.Popen[bytes], done: Path, tasks: int) -> set[int]:
    deadline = time.monotonic() + 300
    lines: list[str] = []
    while len(lines) < tasks:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"segops-fast demo: {len(lines)} of {tasks} Celery tasks ran")
        time.sleep(0.1)
        lines = done.read_text().splitlines() if done.exists() else []
    return {int(line.split()[1]) for line in lines}
