"""The Celery application of ``segops-fast demo --server celery``; it needs Celery.

Celery is no dependency of segops-fast, so nothing imports this module but a Celery
worker the demo starts (``celery -A segops_fast._cli._demo_celery``) and the demo's task
queuer (``python -m segops_fast._cli._demo_celery N`` queues N tasks and exits);
imported without Celery, it fails with the line that says what to install.

Tasks track ``SEGOPS_DEMO_EVENTS_PER_TASK`` events each through the module-level client
of :mod:`._demo_apps` (created, with its at-import events, in the worker's main process),
with no ``worker_process_shutdown`` handler. The broker is kombu's filesystem transport
in ``SEGOPS_DEMO_BROKER_DIR``, so no broker server is needed. Each task appends a line to
``done`` there once it has tracked its events.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..testing._app_servers import filesystem_broker, missing_package

_PROBLEM = missing_package("celery")
if _PROBLEM is not None:
    raise ImportError(f"segops-fast demo --server celery: {_PROBLEM}")

# Celery ships no type information.
from celery import Celery  # type: ignore[import-untyped]  # noqa: E402

from ._demo_apps import client  # noqa: E402

FOLDER = Path(os.environ["SEGOPS_DEMO_BROKER_DIR"])
EVENTS_PER_TASK = int(os.environ.get("SEGOPS_DEMO_EVENTS_PER_TASK", "1"))

app = Celery("segops_demo")
app.conf.update(filesystem_broker(FOLDER))


@app.task(name="segops_demo.track")  # type: ignore[untyped-decorator]
def track(number: int) -> None:
    for index in range(EVENTS_PER_TASK):
        client.track(
            user_id=f"user-{number % 1000}",
            event_type="request",
            payload={"request": number, "i": index},
        )
    with (FOLDER / "done").open("a") as done:
        done.write(f"{number} {os.getpid()}\n")


if __name__ == "__main__":
    for number in range(int(sys.argv[1])):
        track.delay(number)
