"""A Celery application whose tasks track one event each, through a module-level client.

The broker is kombu's filesystem transport in ``SEGOPS_TEST_BROKER_DIR``: no broker
server. The client waits ``flush_interval=60`` s, so an event reaches the server only in
a full batch or when its process shuts the client down: what the test checks is that a
pool child does so as it exits, with no ``worker_process_shutdown`` handler here. Each
task appends a line to ``done`` in the broker folder once it has tracked its event.

``python celery_app.py N`` sends N tasks and exits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from celery import Celery

import segops_fast as segops
from segops_fast.testing._app_servers import filesystem_broker

FOLDER = Path(os.environ["SEGOPS_TEST_BROKER_DIR"])

app = Celery("celery_app")
app.conf.update(filesystem_broker(FOLDER))

client = segops.SegOpsClient(os.environ["SEGOPS_TEST_API_URL"], "sk_test_local", flush_interval=60)


@app.task(name="track_one")
def track_one(number: int) -> None:
    client.track(user_id=f"user-{number % 10}", event_type="task_ran", payload={"task": number})
    with (FOLDER / "done").open("a") as done:
        done.write(f"{number} {os.getpid()}\n")


if __name__ == "__main__":
    for number in range(int(sys.argv[1])):
        track_one.delay(number)
