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

With ``--dask`` it measures ``segops-fast send --dask`` instead (output in
``bench/results/backfill-dask.txt``): a baseline with ``--processes 1``, then the file sent
three times each through a local Dask cluster (a scheduler and 1, 2, then 4 single-thread
worker processes, each its own process, as ``dask worker`` runs them); then, with 2
workers, a run whose coordinator is killed (SIGKILL) a third of the way and the same
command run again, which must complete the backfill exactly once; then what stays on the
coordinator: how many checkpoint saves (write, fsync, rename) it makes per second for
checkpoints of 16 to 16,384 ranges, and how many finished tasks' reports it applies per
second.

    python bench/backfill.py --events 1000000 [--large-gb 5] [--dask]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from segops_fast._options import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_EVENT_BYTES
from segops_fast.backfill._checkpoint import Checkpoint, RangeProgress
from segops_fast.backfill._engine import SendSettings
from segops_fast.backfill._input import InputRange
from segops_fast.backfill._job import Job, JobSettings
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing._process import IngestServerProcess

RUNS = 3
DASK_WORKERS = (1, 2, 4)


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
        summary, peak = send(refusing.url, large, ["--processes", "1"], expect_failures=True)
    print(
        f"{large.stat().st_size / 1e9:.1f} GB input, every batch refused: peak {peak:.0f} MB; "
        f"{summary['failed']:,} events sent and refused in {summary['elapsed']} s"
    )
    large.unlink()


def send_command(url: str, path: Path, arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "segops_fast", "send", str(path), "--api-url", url,
            "--api-key", DEFAULT_SECRET_KEY, *arguments]  # fmt: skip


def send(
    url: str, path: Path, arguments: list[str], *, expect_failures: bool = False
) -> tuple[dict[str, object], float]:
    """The command's summary, and its peak resident memory in MB (the coordinator's:
    ``VmHWM``, read until it exits; ``wait4``'s ``ru_maxrss`` would count this process's
    memory too, inherited through the fork before ``exec``)."""
    began = time.monotonic()
    process = subprocess.Popen(send_command(url, path, arguments), stdout=subprocess.PIPE)
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
    # The command's whole life, start-up (and, with --dask, connecting) included.
    summary["wall"] = round(time.monotonic() - began, 2)
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


def measure(
    server: IngestServerProcess, path: Path, events: int, arguments: list[str], label: str = ""
) -> bool:
    """Send ``path`` ``RUNS`` times with ``arguments``, each to an emptied server; print
    each run and the median; whether every run stored every event exactly once."""
    label = label or " ".join(arguments)
    rates = []
    ok = True
    for _ in range(RUNS):
        server.reset()
        summary, peak = send(server.url, path, arguments)
        stored = server.summary()
        ok = ok and (
            summary["sent"] == stored["unique_events"] == events and stored["duplicate_events"] == 0
        )
        rate = int(str(summary["events_per_second"]))
        rates.append(rate)
        print(
            f"{label}: {rate:>9,} events/s in {summary['elapsed']} s ({summary['wall']} s "
            f"from start to exit), peak {peak:.0f} MB; "
            f"server stored {stored['unique_events']:,} distinct, "
            f"{stored['duplicate_events']} duplicates"
        )
    print(f"{label}: median {statistics.median(rates):,.0f} events/s")
    return ok


def measure_local(server: IngestServerProcess, path: Path, events: int) -> bool:
    ok = all([measure(server, path, events, ["--processes", str(n)]) for n in (1, 2)])
    tenth = path.with_name("tenth.jsonl")
    generate(tenth, events // 10)
    server.reset()
    _, small_peak = send(server.url, tenth, ["--processes", "1"])
    print(f"a tenth of the input, --processes 1: peak {small_peak:.0f} MB")
    return ok


def measure_dask(server: IngestServerProcess, path: Path, events: int) -> bool:
    from segops_fast.testing._dask import DaskCluster  # noqa: PLC0415 (the dask extra)

    ok = measure(server, path, events, ["--processes", "1"])
    for workers in DASK_WORKERS:
        with DaskCluster(path.with_name(f"dask-{workers}"), workers) as cluster:
            label = f"--dask, {workers} worker{'s' if workers > 1 else ''}"
            ok = measure(server, path, events, ["--dask", cluster.address], label) and ok
    with DaskCluster(path.with_name("dask-resume"), 2) as cluster:
        ok = kill_and_resume(server, path, events, cluster.address) and ok
        heartbeat_looks(cluster.client)
    coordinator_capacity(path.with_name("capacity"))
    return ok


def kill_and_resume(server: IngestServerProcess, path: Path, events: int, address: str) -> bool:
    """SIGKILL the coordinator once its checkpoint covers a third of the input; run the same
    command again at once (the killed run's tasks still finishing beside it)."""
    server.reset()
    checkpoint = path.with_name("checkpoint.json")
    arguments = ["--dask", address, "--checkpoint", str(checkpoint)]
    running = subprocess.Popen(send_command(server.url, path, arguments), stdout=subprocess.PIPE)
    size = path.stat().st_size
    deadline = time.monotonic() + 120
    covered = 0
    while covered < size / 3 and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            ranges = orjson.loads(checkpoint.read_bytes())["ranges"]
        except (OSError, orjson.JSONDecodeError):
            continue
        covered = sum(part["done"] - part["start"] for part in ranges)
    running.send_signal(signal.SIGKILL)
    running.communicate()
    print(f"--dask, 2 workers: coordinator killed with {covered / size:.0%} of the input settled")
    summary, _ = send(server.url, path, arguments)
    stored = server.summary()
    exact = stored["unique_events"] == stored["events"] == events
    print(
        f"the same command again: resumed {summary['resumed']}, sent {summary['sent']:,} in "
        f"{summary['elapsed']} s; server stored {stored['unique_events']:,} distinct, "
        f"{stored['duplicate_events']} duplicates, {stored['repeated_key_events']:,} events "
        "sent again under a key already stored"
    )
    return exact and stored["duplicate_events"] == 0 and summary["resumed"] is True


def heartbeat_looks(client: Any) -> None:
    """How fast the scheduler answers the look each running task takes at its coordinator's
    heartbeat once a second (a ``distributed.Variable``), one look after another."""
    from distributed import Variable  # noqa: PLC0415 (the dask extra)

    heartbeat = Variable("segops-fast-bench-heartbeat", client=client)
    heartbeat.set(0)
    looks = 0
    began = time.monotonic()
    while time.monotonic() - began < 2.0:
        heartbeat.get()
        looks += 1
    rate = looks / (time.monotonic() - began)
    heartbeat.delete()
    print(f"heartbeat looks answered by the scheduler, one at a time: {rate:,.0f}/s")


def coordinator_capacity(directory: Path) -> None:
    """What the coordinator does for every task, whatever runs the tasks: save the
    checkpoint, and apply a finished task's reports (here: a 64 MB range of 500,000
    events, sent in 128 batches)."""
    directory.mkdir()
    source = directory / "input.jsonl"
    source.write_bytes(b"")
    for ranges in (16, 1024, 16384):
        checkpoint = Checkpoint(
            str(directory / f"checkpoint-{ranges}.json"),
            DEFAULT_MAX_BATCH_BYTES,
            [
                RangeProgress(InputRange(str(source), n << 26, (n + 1) << 26), n)
                for n in range(ranges)
            ],
        )
        saves = 0
        began = time.monotonic()
        while time.monotonic() - began < 2.0:
            checkpoint.ranges[saves % ranges].done += 1
            checkpoint.save()
            saves += 1
        rate = saves / (time.monotonic() - began)
        print(f"checkpoint of {ranges:>6,} ranges: {rate:>6,.0f} saves/s")
    send_settings = SendSettings(api_url="http://127.0.0.1:1", api_key=DEFAULT_SECRET_KEY)
    job = Job(
        JobSettings(
            inputs=[str(source)],
            send=send_settings,
            processes=1,
            max_event_bytes=DEFAULT_MAX_EVENT_BYTES,
            checkpoint_path=str(directory / "job-checkpoint.json"),
            dead_letter_path=str(directory / "dead.jsonl"),
        )
    )
    reports = [("settled", 0, n * 4000, 3906, 0) for n in range(128)]
    reports += [("read", 0, 1 << 19) for _ in range(122)] + [("finished", 0, 1 << 26)]
    applied = 0
    began = time.monotonic()
    while time.monotonic() - began < 2.0:
        for report in reports:
            job._apply(report)
        applied += 1
    rate = applied / (time.monotonic() - began)
    print(
        f"finished tasks' reports applied: {rate:,.0f} tasks/s (each 251 reports, the "
        "checkpoint saved once a second among them)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--large-gb", type=float, default=0.0, metavar="N")
    parser.add_argument("--dask", action="store_true", help="measure send --dask instead")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "events.jsonl"
        generate(path, arguments.events)
        size = path.stat().st_size
        print(f"input: {arguments.events:,} events, {size / 1e6:.0f} MB of JSON Lines")
        with IngestServerProcess() as server:
            if arguments.dask:
                ok = measure_dask(server, path, arguments.events)
            else:
                ok = measure_local(server, path, arguments.events)
        if arguments.large_gb:
            send_large(path, arguments.large_gb)
    print(f"every event exactly once: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
