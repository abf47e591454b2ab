"""Backfill rate: ``segops-fast send`` of a generated JSON Lines file to LocalIngestServer.

Generates ``--events`` distinct events (default 1,000,000; about 120 MB) once, starts
``segops-fast serve`` in its own process, and runs ``segops-fast send`` on the file with
1 process and with ``--processes 2``, each three times against an emptied server. For each
run it prints the rate the command reports (events acknowledged over its wall time) and
what the server stored: distinct events and duplicates. The median run is in the README.

    python bench/backfill.py --events 1000000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from segops_fast.testing import DEFAULT_SECRET_KEY
from segops_fast.testing._process import IngestServerProcess

RUNS = 3


def generate(path: Path, events: int) -> None:
    with open(path, "wb") as file:
        for i in range(events):
            event = {
                "user_id": f"user-{i % 1000}",
                "event_type": "page_viewed",
                "occurred_at": "2026-01-01T00:00:00+00:00",
                "payload": {"path": "/home", "i": i},
            }
            file.write(orjson.dumps(event) + b"\n")


def send(url: str, path: Path, processes: int) -> dict[str, object]:
    finished = subprocess.run(
        [sys.executable, "-m", "segops_fast", "send", str(path), "--api-url", url,
         "--api-key", DEFAULT_SECRET_KEY, "--processes", str(processes)],
        capture_output=True, check=True, timeout=600,
    )  # fmt: skip
    summary: dict[str, object] = orjson.loads(finished.stdout)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    arguments = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "events.jsonl"
        generate(path, arguments.events)
        size = path.stat().st_size
        print(f"input: {arguments.events:,} events, {size / 1e6:.0f} MB of JSON Lines")
        with IngestServerProcess() as server:
            for processes in (1, 2):
                rates = []
                for _ in range(RUNS):
                    server.reset()
                    summary = send(server.url, path, processes)
                    stored = server.summary()
                    exact = (
                        summary["sent"] == stored["unique_events"] == arguments.events
                        and stored["duplicate_events"] == 0
                    )
                    ok = ok and exact
                    rate = int(str(summary["events_per_second"]))
                    rates.append(rate)
                    print(
                        f"--processes {processes}: {rate:>9,} events/s in "
                        f"{summary['elapsed']} s; server stored {stored['unique_events']:,} "
                        f"distinct, {stored['duplicate_events']} duplicates"
                    )
                print(f"--processes {processes}: median {statistics.median(rates):,.0f} events/s")
    print(f"every event exactly once: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
