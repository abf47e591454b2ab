"""The Celery application of ``segops-fast demo --server celery``; it imports Celery.

Tasks track ``SEGOPS_DEMO_EVENTS_PER_TASK`` events each through the module-level client
of :mod:`._demo_apps` (created, with its at-import events, in the worker's main process),
with no ``worker_process_shutdown`` handler. The broker is kombu's filesystem transport
in ``SEGOPS_DEMO_BROKER_DIR``, so no broker server is needed. Each task appends a line to
``done`` there once it has tracked its events. ``python -m segops_fast._cli._demo_celery
N`` queues N tasks and exits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Celery ships no type information.
from celery import Celery  # type: ignore[import-untyped]

from ._demo_apps import client

FOLDER = Path(os.environ["SEGOPS_DEMO_BROKER_DIR"])
EVENTS_PER_TASK = int(os.environ.get("SEGOPS_DEMO_EVENTS_PER_TASK", "1"))

app = Celery("segops_demo", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(FOLDER / "queue"),
        "data_folder_out": str(FOLDER / "queue"),
        "control_folder": str(FOLDER / "control"),
        "store_processed": False,
        # kombu polls the folder once a second unless told otherwise.
        "polling_interval": 0.05,
    },
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


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
    for folder in ("queue", "control"):
        (FOLDER / folder).mkdir(parents=True, exist_ok=True)
    for number in range(int(sys.argv[1])):
        track.delay(number)
