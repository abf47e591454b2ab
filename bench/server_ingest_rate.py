"""How fast LocalIngestServer (in its own process) stores batched events.

    python bench/server_ingest_rate.py [--batches 40] [--events-per-batch 4000]

Sends pre-built batches of typical events over one keep-alive connection and prints the
median of three runs, so that benchmarks can show the server is not what they measure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import urllib3

from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

EVENT = (
    b'{"occurred_at":"2026-11-22T10:00:00.123456+00:00","user_id":"user-1",'
    b'"event_type":"page_viewed","payload":{"path":"/home","i":%d}}'
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--events-per-batch", type=int, default=4000)
    arguments = parser.parse_args()
    per_batch = arguments.events_per_batch
    bodies = [
        b'{"events":[' + b",".join(EVENT % (k * per_batch + j) for j in range(per_batch)) + b"]}"
        for k in range(arguments.batches)
    ]
    rates = []
    with IngestServerProcess() as server:
        pool = urllib3.connection_from_url(server.url, maxsize=1)
        for run in range(3):
            began = time.perf_counter()
            for number, body in enumerate(bodies):
                response = pool.urlopen(
                    "POST",
                    "/api/ingestion/track/batch/",
                    body=body,
                    headers={
                        "Authorization": f"ApiKey {DEFAULT_SECRET_KEY}",
                        "Idempotency-Key": f"{run}-{number}",
                    },
                )
                assert response.status == 200, response.data
            rates.append(len(bodies) * per_batch / (time.perf_counter() - began))
    size = len(bodies[0]) / 1024
    print(
        f"LocalIngestServer: {statistics.median(rates):,.0f} events/s stored "
        f"(median of 3; {arguments.batches} batches of {per_batch} events, {size:.0f} KiB each)"
    )


if __name__ == "__main__":
    main()
