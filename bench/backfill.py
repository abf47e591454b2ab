"""Backfill rate: ``segops-fast send`` of a generated JSON Lines file to LocalIngestServer.

Generates ``--events`` distinct events (default 1,000,000; about 120 MB) once, starts
``segops-fast serve`` in its own process, and runs ``segops-fast send`` on the file with
1 process and with ``--processes 2``, each three times against an emptied server. For each
run it prints the rate the command reports (events acknowledged over its wall time), the
command's peak memory, and what the server stored: distinct events and duplicates. Then
it sends a tenth of the file, to show that memory does not grow with the input. The
median run is in the README.

With ``--large-gb N`` it also sends the file repeated to about N GB to a LocalIngestServer
that refuses every batch with 400 (so that the server keeps nothing in memory, and every
event is read, parsed, batched and sent all the same), and prints the command's peak
memory for it.

    python bench/backfill.py --events 1000000 [--large-gb 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
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


def send_large(path: Path, gigabytes: float) -> None:
    """Send ``path`` repeated to about ``gigabytes`` GB to a server that refuses it all."""
    large = path.with_name("large.jsonl")
    block = path.read_bytes()
    copies = max(1, round(gigabytes * 1e9 / len(block)))
    with open(large, "wb") as file:
        for _ in range(copies):
            file.write(block)
    with LocalIngestServer() as refusing:
        refusing.faults.respond_with(400, count=10**9)
        summary, peak = send(refusing.url, large, 1, expect_failures=True)
    print(
        f"{large.stat().st_size / 1e9:.1f} GB input, every batch refused: peak {peak:.0f} MB; "
        f"{summary['failed']:,} events sent and refused in {summary['elapsed']} s"
    )
    large.unlink()


def send(
    url: str, path: Path, processes: int, *, expect_failures: bool = False
) -> tuple[dict[str, object], float]:
    """The command's summary, and its peak resident memory in MB (the coordinator's:
    ``VmHWM``, read until it exits; ``wait4``'s ``ru_maxrss`` would count this process's
    memory too, inherited through the fork before ``exec``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "segops_fast", "send", str(path), "--api-url", url,
         "--api-key", DEFAULT_SECRET_KEY, "--processes", str(processes)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    peak_kb = 0

    def watch() -> None:
        nonlocal peak_kb
        while process.poll() is None:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            time.sleep(0.05)

    watching = threading.Thread(target=watch)
    watching.start()
    output = process.stdout.read()
    process.wait()
    watching.join()
    if process.returncode != (1 if expect_failures else 0):
        raise RuntimeError(f"segops-fast send exited {process.returncode}: {output!r}")
    summary: dict[str, object] = orjson.loads(output)
    return summary, peak_kb / 1024


def _high_water_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # it has just exited
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--large-gb", type=float, default=0.0, metavar="N")
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
        if arguments.large_gb:
            send_large(path, arguments.large_gb)
    print(f"every event exactly once: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
