"""Are events lost when an ASGI server stops on SIGTERM, with and without the lifespan?

For each server (uvicorn alone, ``uvicorn --workers 4``, gunicorn's ``UvicornWorker`` with 4
workers) and each app (a FastAPI app whose lifespan awaits ``client.ashutdown()``, and the
same app without a lifespan), this starts the server, sends requests that each track a few
events, sends SIGTERM to the server's main process at once, and, once it has exited,
counts at a LocalIngestServer the events stored against the events the app says it
tracked, and notes the server's exit status (-15: it ended by SIGTERM's default action,
which runs no exit hook). The client has its default settings (``flush_interval`` 0.5 s,
``batch_size`` 1,000), and 100 requests of 5 events take well under half a second here, so
every event is still waiting in the client when the stop begins: what is stored is what
the stop delivers. Prints one line per server and app, and the installed versions.

    python bench/uvicorn_lifespan.py [--rounds 3] [--requests 100]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing import _app_servers as harness

APP = """
import os
{lifespan_import}
from fastapi import FastAPI

import segops_fast as segops

client = segops.SegOpsClient(os.environ["SEGOPS_API_URL"], os.environ["SEGOPS_API_KEY"])
{lifespan}

@app.get("/track")
async def track(events: int) -> dict[str, int]:
    for index in range(events):
        client.track(user_id=f"u-{{index}}", event_type="request_handled")
    return {{"tracked": events}}
"""

WITH_LIFESPAN = """

@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await client.ashutdown()


app = FastAPI(lifespan=lifespan)
"""

#: Each server's command line for a port, serving app.py's ``app`` in the current folder.
SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": lambda port: harness.uvicorn(port, "app:app", workers=1),
    "uvicorn --workers 4": lambda port: harness.uvicorn(port, "app:app", workers=4),
    "gunicorn UvicornWorker, 4 workers": lambda port: harness.gunicorn(
        port, "app:app", workers=4, worker_class="uvicorn.workers.UvicornWorker"
    ),
}

EVENTS_PER_REQUEST = 5


def write_app(directory: Path, lifespan: bool) -> None:
    text = APP.format(
        lifespan_import="from contextlib import asynccontextmanager" if lifespan else "",
        lifespan=WITH_LIFESPAN if lifespan else "\n\napp = FastAPI()\n",
    )
    (directory / "app.py").write_text(text, encoding="utf-8")


def one_run(server_name: str, lifespan: bool, requests: int) -> tuple[int, int, int]:
    """Events tracked, events stored, and the server's exit status (-15: killed by SIGTERM)."""
    port = harness.free_port()
    with LocalIngestServer() as ingest, tempfile.TemporaryDirectory() as directory:
        write_app(Path(directory), lifespan)
        environment = dict(os.environ, SEGOPS_API_URL=ingest.url, SEGOPS_API_KEY=DEFAULT_SECRET_KEY)
        with harness.started(
            SERVERS[server_name](port),
            cwd=directory,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as server:
            harness.wait_until_listening(server, port)
            tracked = sum(
                harness.get_json(port, f"/track?events={EVENTS_PER_REQUEST}")["tracked"]
                for _ in range(requests)
            )
            # SIGTERM to the main process only, as a process manager sends it.
            server.stop(harness.STOP_TIMEOUT)
        return tracked, ingest.event_count, server.popen.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    arguments = parser.parse_args()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("uvicorn", "gunicorn", "fastapi", "segops-fast")
    )
    print(f"Python {platform.python_version()}, {versions}")
    print(
        f"{arguments.requests} requests of {EVENTS_PER_REQUEST} events, then SIGTERM to the "
        "server's main process; default client settings (flush_interval 0.5 s)"
    )
    for server_name in SERVERS:
        for lifespan in (True, False):
            results = [
                one_run(server_name, lifespan, arguments.requests) for _ in range(arguments.rounds)
            ]
            label = "with the lifespan" if lifespan else "without it"
            runs = ", ".join(
                f"{tracked - stored} of {tracked} (exit {status})"
                for tracked, stored, status in results
            )
            print(f"{server_name}, {label}: lost {runs}")


if __name__ == "__main__":
    main()
