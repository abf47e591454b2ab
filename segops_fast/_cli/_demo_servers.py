"""``segops-fast demo --server NAME``: the exactly-once check under a real server.

It starts a LocalIngestServer in its own process and the named server (through the
harness in :mod:`segops_fast.testing._app_servers`) with ``--workers`` workers that
recycle after a few requests (tasks, for Celery) and the applications of
:mod:`._demo_apps`: a client created at import, in the master where the server preloads,
which tracks a few events there. Requests (or tasks) track ``--events`` events in all;
then the server is stopped gracefully, as its section of the README says, and the ingest
server counts what it stored. Exit status 1 if any event was lost or stored twice, or
the server did not stop. :data:`SERVERS` describes each server's set-up for ``--help``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..testing import IngestServerProcess
from ..testing import _app_servers as harness

#: Each server, the packages it needs, and how the demo runs it.
SERVERS = {
    "gunicorn": (("gunicorn",), "gthread workers (4 threads each), --preload, --max-requests"),
    "gevent": (("gunicorn", "gevent"), "gunicorn's gevent workers, --preload, --max-requests"),
    "uvicorn": (("uvicorn",), "--workers, --limit-max-requests; the lifespan awaits ashutdown()"),
    "uwsgi": (("pyuwsgi",), "a master without lazy-apps, --enable-threads, --max-requests"),
    "celery": (("celery",), "a prefork pool, --max-tasks-per-child, a filesystem broker"),
}
#: Events the master (or Celery's main process) tracks at import; uvicorn's workers are
#: spawned and each imports the application, so there it tracks none.
AT_IMPORT = 5
#: Requests (tasks) a worker serves before it is recycled.
RECYCLE_AFTER = 25
_APPS = "segops_fast._cli._demo_apps"


def run(server_name: str, events: int, workers: int) -> int:
    problem = harness.missing_package(*SERVERS[server_name][0])
    if problem is not None:
        raise SystemExit(f"segops-fast demo --server {server_name}: {problem}")
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
        try:
            pids, stopped = _serve(
                server_name, workers, requests, per_request, env=env, folder=Path(folder)
            )
        except harness.ServerError as error:
            raise SystemExit(f"segops-fast demo --server {server_name}: {error}") from None
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
    port = harness.free_port()
    if name == "celery":
        subprocess.run(
            [sys.executable, "-m", "segops_fast._cli._demo_celery", str(requests)],
            # Queuing the tasks imports the application too; that process is no master.
            env={**env, "SEGOPS_DEMO_AT_IMPORT": "0"},
            check=True,
            timeout=120,
        )
    with harness.started(_command(name, workers, port), env=env, log=folder / "log") as server:
        if name == "celery":
            lines = harness.wait_for_lines(server, folder / "done", requests, timeout=300)
            pids = {int(line.split()[1]) for line in lines}
        else:
            harness.wait_until_listening(server, port)
            path = "/track?request={}&events=" + str(per_request)
            with ThreadPoolExecutor(8) as pool:
                answers = pool.map(
                    lambda r: harness.get_json(port, path.format(r)), range(requests)
                )
                pids = {answer["pid"] for answer in answers}
        if name in ("uwsgi", "gevent"):
            # Let the recycled workers' replacements finish booting: uWSGI can miss a stop
            # signal that lands while it respawns one, and a gevent worker that gets it
            # while booting is killed only after gunicorn's graceful_timeout (measured
            # with an application that does nothing: 30 s).
            harness.wait_until_quiet(folder / "log")
        return pids, server.stop()


def _command(name: str, workers: int, port: int) -> list[str]:
    wsgi = f"{_APPS}:wsgi"
    if name == "gunicorn":
        return harness.gunicorn(
            port, wsgi, workers=workers, worker_class="gthread", threads=4,
            max_requests=RECYCLE_AFTER, options=["--preload"],
        )  # fmt: skip
    if name == "gevent":
        return harness.gunicorn(
            port, wsgi, workers=workers, worker_class="gevent",
            max_requests=RECYCLE_AFTER, options=["--preload"],
        )  # fmt: skip
    if name == "uvicorn":
        return harness.uvicorn(port, f"{_APPS}:asgi", workers=workers, max_requests=RECYCLE_AFTER)
    if name == "uwsgi":
        return harness.uwsgi(
            port, ["--module", wsgi], workers=workers, max_requests=RECYCLE_AFTER,
            options=["--enable-threads"],
        )  # fmt: skip
    return harness.celery_worker(
        "segops_fast._cli._demo_celery", concurrency=workers,
        options=["--max-tasks-per-child", str(RECYCLE_AFTER)],
    )  # fmt: skip
