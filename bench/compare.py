"""segops_fast side by side with the no-op floor, segops 0.2.2, Segment's and PostHog's SDKs.

    pip install -e ".[dev,bench]"
    python bench/compare.py                 # about 8 minutes; writes bench/results/comparison.*

One LocalIngestServer runs in its own process. Each client runs in a fresh process, one
producer thread, default settings, payload ``{"path": "/home", "i": i}``, user ids cycling
over 1,000, in two passes of ``--events`` events:

* latency: each track() call timed on its own (``perf_counter_ns`` around the call; the
  arguments are built before the clock starts, the timer's cost is in every row, the
  floor's included), while the client's own threads deliver what came before;
* throughput: track() as fast as the thread can, then flush(): delivered events/s is what
  the server stored, counted at the server, over the time from the first call until
  flush() returned.

Then segops_fast alone: throughput with 20 ms of server latency for max_in_flight 1, 2,
4 and 8; and the memory a queued event costs (tracemalloc, 100,000 events queued).

With ``--tls`` the segops_fast row runs a second time, against the same server over HTTPS
(``segops-fast serve --tls``, its test CA trusted through ``SSL_CERT_FILE``), and the
report adds what TLS costs next to plain HTTP.

Two things keep the machine from being what is measured. The server gets a CPU of its own
and the clients the others (on Linux with two or more CPUs): otherwise the scheduler puts
the server beside the producer at random, and a client that delivers faster makes the
server take more of the producer's CPU. And this machine's speed drifts by up to 2x over
seconds (a pure-Python loop, alone), so every client runs in each of ``--rounds`` rounds,
one after the other, and each figure is the median of its rounds.

It writes ``comparison.json``, ``comparison.md`` (the tables, ratios and targets) and
``comparison.png`` into ``--out``, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
from harness.clients import (
    BUILDERS,
    NO_OP,
    SEGOPS_FAST,
    Client,
    run_fresh,
    segops_fast_with,
)
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.results import RESULTS, write_results
from harness.timing import latency_figures, payloads, time_each_call

import segops_fast
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

SEGOPS_FAST_TLS = "segops_fast over TLS"
IN_FLIGHT_SETTINGS = (1, 2, 4, 8)
IN_FLIGHT_LATENCY = 0.020
QUEUED_FOR_MEMORY = 100_000


def measure_client(name: str, url: str, events: int) -> dict[str, Any]:
    """The latency pass then the throughput pass, for one client."""
    client = BUILDERS[name](url)
    result: dict[str, Any] = latency_figures(
        time_each_call(client.track, payloads("latency", events, client.call))
    )
    client.flush()
    result.update(_throughput(client, events))
    client.shutdown()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _throughput(client: Client, events: int) -> dict[str, Any]:
    track = client.track
    calls = payloads("throughput", events, client.call)
    began = time.perf_counter()
    for args, kwargs in calls:
        track(*args, **kwargs)
    client.flush()
    return {"throughput_seconds": time.perf_counter() - began}


def measure_in_flight(url: str, events: int, max_in_flight: int) -> dict[str, Any]:
    client = segops_fast_with(max_in_flight=max_in_flight)(url)
    result = _throughput(client, events)
    client.shutdown()
    return result


def measure_queued_memory(url: str) -> dict[str, Any]:
    """Bytes per queued event. Nothing is sent but the very first event, which starts the
    flusher: the batch never fills, the interval is an hour, and the queue's high-water
    mark (half its size, where the flusher is woken) is above what is queued."""
    client = segops_fast.SegOpsClient(
        url,
        DEFAULT_SECRET_KEY,
        batch_size=10 * QUEUED_FOR_MEMORY,
        flush_interval=3600,
        max_queue_size=4 * QUEUED_FOR_MEMORY,
    )
    client.track(user_id="user-0", event_type="first", payload={"path": "/home", "i": 0})
    client.flush()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(QUEUED_FOR_MEMORY):
        client.track(
            user_id=f"user-{i % 1000}", event_type="queued", payload={"path": "/home", "i": i}
        )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    queued = client.stats().queued
    client.shutdown()
    return {"queued": queued, "bytes_per_event": (after - before) / queued}


# -- the parent: one server, a process per measurement, the report -------------------------------


def _run(mode: str, url: str, *arguments: object) -> dict[str, Any]:
    return run_fresh(__file__, "--measure", mode, url, *arguments, timeout=900)


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and the rounds themselves."""
    return {
        **{key: statistics.median(result[key] for result in rounds) for key in rounds[0]},
        "rounds": rounds,
    }


def _client_round(server: IngestServerProcess, name: str, events: int) -> dict[str, Any]:
    server.reset()
    # The TLS row is segops_fast itself, pointed at the HTTPS server.
    result = _run("client", server.url, SEGOPS_FAST if name == SEGOPS_FAST_TLS else name, events)
    stored = server.summary_by_event_type()
    for kind in ("latency", "throughput"):
        counts = stored.get(kind, {"unique_events": 0, "duplicate_events": 0})
        result[f"{kind}_stored"] = counts["unique_events"]
        result[f"{kind}_duplicates"] = counts["duplicate_events"]
    result["events_per_second"] = result["throughput_stored"] / result["throughput_seconds"]
    return result


def _in_flight_round(server: IngestServerProcess, events: int, setting: int) -> dict[str, Any]:
    server.reset()
    result = _run("in-flight", server.url, events, setting)
    result["stored"] = server.summary()["unique_events"]
    result["events_per_second"] = result["stored"] / result["throughput_seconds"]
    return result


def compare(events: int, rounds: int, tls: bool = False) -> dict[str, Any]:
    server_cpus, client_cpus = server_and_client_cpus()
    names = [*BUILDERS, *([SEGOPS_FAST_TLS] if tls else [])]
    clients: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    in_flight: dict[str, list[dict[str, Any]]] = {str(n): [] for n in IN_FLIGHT_SETTINGS}
    with on_cpus(server_cpus):
        server = IngestServerProcess().start()
        slow_server = IngestServerProcess(["--latency", str(IN_FLIGHT_LATENCY)]).start()
        tls_server = IngestServerProcess(["--tls"]).start() if tls else None
    if tls_server is not None and tls_server.ca_certs is not None:
        # Inherited by the measuring processes: SSL_CERT_FILE adds the test CA.
        os.environ["SSL_CERT_FILE"] = tls_server.ca_certs
    try:
        with on_cpus(client_cpus):
            for _ in range(rounds):
                for name in names:
                    on = tls_server if name == SEGOPS_FAST_TLS and tls_server else server
                    clients[name].append(_client_round(on, name, events))
                for setting in IN_FLIGHT_SETTINGS:
                    in_flight[str(setting)].append(_in_flight_round(slow_server, events, setting))
            server.reset()
            memory = _run("memory", server.url)
    finally:
        server.stop()
        slow_server.stop()
        if tls_server is not None:
            tls_server.stop()
    return {
        "events": events,
        "rounds": rounds,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "placement": describe(server_cpus, client_cpus),
        "clients": {name: _medians(results) for name, results in clients.items()},
        "in_flight": {setting: _medians(results) for setting, results in in_flight.items()},
        "memory": memory,
    }


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each target of the performance issue: what it asks, what was measured, met or not."""
    clients = results["clients"]
    fast, floor = clients[SEGOPS_FAST], clients[NO_OP]
    segops_old = clients["segops 0.2.2"]
    rate = fast["events_per_second"]
    rows = [
        (
            "track() mean at most 3x the no-op floor",
            f"{fast['mean_us'] / floor['mean_us']:.1f}x ({fast['mean_us']:.2f} us)",
            fast["mean_us"] <= 3 * floor["mean_us"],
        ),
        ("track() p50 at most 1 us", f"{fast['p50_us']:.2f} us", fast["p50_us"] <= 1.0),
        ("track() p99 at most 5 us", f"{fast['p99_us']:.2f} us", fast["p99_us"] <= 5.0),
    ]
    for name, factor in (
        ("segops 0.2.2", 25),
        ("segment-analytics-python 2.4.0", 30),
        ("posthog 7.91.1", 60),
    ):
        ratio = clients[name]["mean_us"] / fast["mean_us"]
        rows.append((f"track() mean {factor}x lower than {name}", f"{ratio:.0f}x", ratio >= factor))
    ratio = rate / segops_old["events_per_second"]
    rows += [
        ("delivered events/s 10x segops 0.2.2", f"{ratio:.1f}x", ratio >= 10),
        ("delivered events/s at least 300,000", f"{rate:,.0f}", rate >= 300_000),
    ]
    sweep = [results["in_flight"][str(n)]["events_per_second"] for n in IN_FLIGHT_SETTINGS]
    rows.append(
        (
            "with 20 ms latency, throughput grows with max_in_flight (1, 2, 4, 8)",
            " / ".join(f"{value:,.0f}" for value in sweep),
            sweep[1] > sweep[0],
        )
    )
    per_event = results["memory"]["bytes_per_event"]
    rows.append(("at most 300 bytes per queued event", f"{per_event:.0f} B", per_event <= 300))
    return rows


def markdown(results: dict[str, Any]) -> str:
    clients = results["clients"]
    fast = clients[SEGOPS_FAST]
    lines = [
        f"{results['events']:,} events per pass, one producer thread, Python {results['python']},"
        f" {results['cpus']} CPUs, {results['placement']}; each figure the median of"
        f" {results['rounds']} rounds.",
        "",
        "| client | track() mean | p50 | p99 | p99.9 | mean vs segops_fast "
        "| delivered events/s | vs segops_fast | stored of sent | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in clients.items():
        delivered = "-" if name == NO_OP else f"{row['events_per_second']:,.0f}"
        versus_rate = (
            "-" if name == NO_OP else f"{row['events_per_second'] / fast['events_per_second']:.2f}x"
        )
        # Every round's events, not a median: one lost event anywhere shows.
        stored_in_all = sum(r["latency_stored"] + r["throughput_stored"] for r in row["rounds"])
        sent_in_all = 2 * results["events"] * results["rounds"]
        stored = "-" if name == NO_OP else f"{stored_in_all:,} of {sent_in_all:,}"
        lines.append(
            f"| {name} | {row['mean_us']:.2f} us | {row['p50_us']:.2f} us | {row['p99_us']:.2f} us"
            f" | {row['p999_us']:.2f} us | {row['mean_us'] / fast['mean_us']:.2f}x | {delivered}"
            f" | {versus_rate} | {stored} | {row['peak_rss_mb']:.0f} MB |"
        )
    lines += [
        "",
        f"segops_fast with {IN_FLIGHT_LATENCY * 1000:.0f} ms of server latency per request:",
        "",
        "| max_in_flight | delivered events/s |",
        "|---|---|",
    ]
    for setting, row in results["in_flight"].items():
        lines.append(f"| {setting} | {row['events_per_second']:,.0f} |")
    if SEGOPS_FAST_TLS in clients:
        over_tls = clients[SEGOPS_FAST_TLS]
        lines += [
            "",
            "What TLS costs segops_fast (the same workload over HTTPS):",
            "",
            "| | track() mean | p50 | p99 | delivered events/s |",
            "|---|---|---|---|---|",
        ]
        for label, row in (("plain HTTP", fast), ("HTTPS", over_tls)):
            lines.append(
                f"| {label} | {row['mean_us']:.2f} us | {row['p50_us']:.2f} us"
                f" | {row['p99_us']:.2f} us | {row['events_per_second']:,.0f} |"
            )
        lines.append(
            f"| HTTPS vs HTTP | {over_tls['mean_us'] - fast['mean_us']:+.2f} us"
            f" | {over_tls['p50_us'] - fast['p50_us']:+.2f} us"
            f" | {over_tls['p99_us'] - fast['p99_us']:+.2f} us"
            f" | {over_tls['events_per_second'] / fast['events_per_second']:.2f}x |"
        )
    memory = results["memory"]
    lines += [
        "",
        f"Memory: {memory['bytes_per_event']:.0f} bytes per queued event "
        f"({memory['queued']:,} queued, tracemalloc).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for target, measured, met in targets(results):
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    clients = results["clients"]
    names = list(clients)
    figure, (latency, rate) = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = range(len(names))
    for offset, (key, label) in enumerate(
        (("mean_us", "mean"), ("p50_us", "p50"), ("p99_us", "p99"))
    ):
        latency.bar(
            [p + (offset - 1) * 0.27 for p in positions],
            [clients[name][key] for name in names],
            width=0.27,
            label=label,
        )
    latency.set_yscale("log")
    latency.set_ylabel("track() cost, microseconds (log)")
    latency.set_xticks(list(positions), names, rotation=20, ha="right")
    latency.legend()
    peers = [name for name in names if name != NO_OP]
    rate.bar(peers, [clients[name]["events_per_second"] for name in peers], color="tab:green")
    rate.set_ylabel("delivered events/s (one producer)")
    rate.tick_params(axis="x", rotation=20)
    plt.setp(rate.get_xticklabels(), ha="right")
    figure.suptitle(
        f"segops_fast vs peers, {results['events']:,} events, one producer thread,"
        f" medians of {results['rounds']} rounds"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per pass")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each client")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    parser.add_argument(
        "--tls", action="store_true", help="also run the segops_fast row over HTTPS"
    )
    arguments = parser.parse_args()
    results = compare(arguments.events, arguments.rounds, arguments.tls)
    write_results(arguments.out, "comparison", markdown(results), results, chart)


def measure(mode: str, url: str, arguments: list[str]) -> dict[str, Any]:
    if mode == "client":
        return measure_client(arguments[0], url, int(arguments[1]))
    if mode == "in-flight":
        return measure_in_flight(url, int(arguments[0]), int(arguments[1]))
    return measure_queued_memory(url)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(orjson.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4:])).decode())
    else:
        main()
