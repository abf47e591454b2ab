"""Track 50,000 events/s into an API that is down, and report memory as it goes.

``python outage_memory.py URL SECONDS`` tracks for SECONDS at 50,000 events/s with
default settings except ``max_in_flight=1`` (so that the server stores batches in the
order they are sent), then waits for the server at URL to come back (the test restarts
it), flushes, and prints one JSON object: RSS samples, stats before and after.
"""

from __future__ import annotations

import sys
import time

import orjson

import segops_fast as segops

RATE, CHUNK = 50_000, 500


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main(url: str, seconds: float) -> None:
    client = segops.SegOpsClient(url, "sk_test_local", max_in_flight=1, on_error=lambda e: None)
    samples: list[tuple[float, int]] = []
    began = time.monotonic()
    tracked = 0
    while (elapsed := time.monotonic() - began) < seconds:
        for _ in range(CHUNK):
            client.track(user_id="u", event_type="e", payload={"i": tracked})
            tracked += 1
        if not samples or elapsed - samples[-1][0] >= 1.0:
            samples.append((elapsed, rss_bytes()))
        ahead = tracked / RATE - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    during = client.stats()
    print("outage over", flush=True)
    sys.stdin.readline()  # the test restarts the server, then says so
    client.flush(timeout=120)
    after = client.stats()
    client.shutdown()
    print(
        orjson.dumps(
            {"tracked": tracked, "samples": samples, "during": during, "after": after}
        ).decode()
    )


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
