"""Backfill rate: ``segops-fast send`` of a generated JSON Lines file to LocalIngestServer.

Generates ``--events`` distinct events (default 1,000,000; about 120 MB) once, starts
``segops-fast serve`` in its own process, and runs ``segops-fast send`` on the file with
1 process and with ``--processes 2``, each three times against an emptied server. For each
run it prints the rate the command reports (events acknowledged over its wall time), the
command's peak memory, and what the server stored: distinct events and duplicates. Then
it sends a tenth of the file, to show that memory does not grow with the input. The
median run is in the README.

    python bench/backfill.py --events 1000000
"""

from __future__ import annotations

import argparse
import os
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


def send(url: str, path: Path, processes: int) -> tuple[dict[str, object], float]:
    """The command's summary, and its peak resident memory in MB (the coordinator's)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "segops_fast", "send", str(path), "--api-url", url,
         "--api-key", DEFAULT_SECRET_KEY, "--processes", str(processes)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"segops-fast send exited {process.returncode}: {output!r}")
    summary: dict[str, object] = orjson.loads(output)
    return summary, usage.ru_maxrss / 1024


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
                    summary, peak = send(server.url, path, processes)
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
                        f"{summary['elapsed']} s, peak {peak:.0f} MB; server stored "
                        f"{stored['unique_events']:,} "
                        f"distinct, {stored['duplicate_events']} duplicates"
                    )
                print(f"--processes {processes}: median {statistics.median(rates):,.0f} events/s")
            tenth = Path(directory) / "tenth.jsonl"
            generate(tenth, arguments.events // 10)
            server.reset()
            _, small_peak = send(server.url, tenth, 1)
            print(f"a tenth of the input, --processes 1: peak {small_peak:.0f} MB")
    print(f"every event exactly once: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
