"""A plain gevent script: ``patch_all()`` before or after importing segops_fast (argv[1]).

Ten greenlets track 100 events each and ``flush()`` must deliver them. Then, once the
test has told the server to hang (a line on stdin), one more event is tracked and
``flush(timeout=0.3)`` and ``shutdown(timeout=1)`` must return within their deadlines
while another greenlet keeps ticking: a native wait would stop the hub and the ticks.
Prints one JSON line of what it saw.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

if sys.argv[1] == "before":
    from gevent import monkey

    monkey.patch_all()

import orjson

import segops_fast as segops

client = segops.SegOpsClient(os.environ["SEGOPS_TEST_API_URL"], "sk_test_local", flush_interval=0.2)

if sys.argv[1] == "after":
    from gevent import monkey

    monkey.patch_all()

import gevent  # noqa: E402


def track(greenlet: int) -> None:
    for index in range(100):
        client.track(user_id=f"g{greenlet}", event_type="greenlet", payload={"i": index})
        if index % 10 == 0:
            gevent.sleep(0)


gevent.joinall([gevent.spawn(track, number) for number in range(10)])
client.flush(timeout=10)
print("flushed", flush=True)
sys.stdin.readline()  # the server hangs from now on

ticks = 0


def tick() -> None:
    global ticks
    while True:
        gevent.sleep(0.01)
        ticks += 1


ticker = gevent.spawn(tick)
client.track(user_id="late", event_type="late", payload={})
started = time.monotonic()
try:
    client.flush(timeout=0.3)
    flush_raised = False
except segops.SegOpsApiError:
    flush_raised = True
flush_seconds = time.monotonic() - started
ticks_during_flush = ticks
started = time.monotonic()
with contextlib.suppress(segops.SegOpsApiError):
    client.shutdown(timeout=1.0)
shutdown_seconds = time.monotonic() - started
ticker.kill()
print(
    orjson.dumps(
        {
            "flush_raised": flush_raised,
            "flush_seconds": flush_seconds,
            "ticks_during_flush": ticks_during_flush,
            "shutdown_seconds": shutdown_seconds,
            "stats": str(client.stats()),
        }
    ).decode(),
    flush=True,
)
