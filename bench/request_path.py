"""What one batch request costs the sending thread, by how it is sent.

    python bench/request_path.py       # about 30 s; writes bench/results/request_path.md

One body of 1,000 rendered events (as segops_fast sends them, about 130 KB), POSTed to a
LocalIngestServer process on the other CPU over one keep-alive connection, three ways:
through urllib3's connection pool (as segops_fast's transport does), through the
standard library's ``http.client``, and written to a raw socket with the answer read in
one ``recv``. The last is not a client (it parses nothing); it shows what the kernel
costs. Reported: the sending thread's CPU time per request (``time.thread_time``), and
the wall time, medians of ``--rounds`` rounds of ``--requests`` requests each, warm:
inside a web app, with the caches shared with the app, every figure is higher.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Callable

import urllib3
from harness.placement import describe, on_cpus, server_and_client_cpus
from harness.results import RESULTS, preformatted, write_results

from segops_fast._batching import Batch
from segops_fast._delivery import BATCH_PATH
from segops_fast._encoding import encode_event
from segops_fast._options import DEFAULT_MAX_EVENT_BYTES
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

EVENTS_PER_BODY = 1_000


def _body() -> bytes:
    records = [
        encode_event(
            f"user-{number % 1000}",
            "page_view",
            None,
            {"path": "/home", "i": number},
            DEFAULT_MAX_EVENT_BYTES,
        )
        for number in range(EVENTS_PER_BODY)
    ]
    return Batch(records, "").render_body()


def _senders(host: str, port: int, body: bytes) -> dict[str, Callable[[], None]]:
    headers = {"Authorization": f"ApiKey {DEFAULT_SECRET_KEY}", "Content-Type": "application/json"}
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=1)

    def through_urllib3() -> None:
        response = pool.urlopen(
            "POST",
            BATCH_PATH,
            body=body,
            headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            retries=False,
        )
        assert response.status == 200, response.data

    connection = http.client.HTTPConnection(host, port)

    def through_http_client() -> None:
        connection.request(
            "POST", BATCH_PATH, body, {**headers, "Idempotency-Key": uuid.uuid4().hex}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 200

    raw = socket.create_connection((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    every_header = {**headers, "Host": f"{host}:{port}", "Content-Length": len(body)}
    head = "".join(f"{name}: {value}\r\n" for name, value in every_header.items())
    request_line = f"POST {BATCH_PATH} HTTP/1.1\r\n{head}".encode()

    def through_a_raw_socket() -> None:
        key = f"Idempotency-Key: {uuid.uuid4().hex}\r\n\r\n".encode()
        raw.sendall(request_line + key + body)
        assert raw.recv(65536).startswith(b"HTTP/1.1 200")

    return {
        "urllib3 connection pool": through_urllib3,
        "http.client": through_http_client,
        "raw socket (no parsing)": through_a_raw_socket,
    }


def _timed(send: Callable[[], None], requests: int) -> tuple[float, float]:
    """CPU and wall microseconds per request."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(requests):
        send()
    return (
        (time.thread_time() - cpu) / requests * 1e6,
        (time.perf_counter() - wall) / requests * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    server_cpus, client_cpus = server_and_client_cpus()
    body = _body()
    with on_cpus(server_cpus):
        server = IngestServerProcess().start()
    try:
        if client_cpus is not None:
            os.sched_setaffinity(0, client_cpus)
        host, port = server.url.removeprefix("http://").split(":")
        senders = _senders(host, int(port), body)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in senders}
        for send in senders.values():
            _timed(send, 20)  # connect, and warm up
        for _ in range(arguments.rounds):
            for name, send in senders.items():
                figures[name].append(_timed(send, arguments.requests))
    finally:
        server.stop()
    lines = [
        f"One body of {EVENTS_PER_BODY:,} events ({len(body):,} bytes) per request, keep-alive;"
        f" {describe(server_cpus, client_cpus)}; medians of {arguments.rounds} rounds of"
        f" {arguments.requests:,} requests.",
        "",
        "how it is sent                 CPU per request   wall per request",
    ]
    for name, rounds in figures.items():
        cpu = statistics.median(figure[0] for figure in rounds)
        wall = statistics.median(figure[1] for figure in rounds)
        lines.append(f"{name:30s} {cpu:10.0f} us   {wall:12.0f} us")
    write_results(arguments.out, "request_path", preformatted("\n".join(lines)))


if __name__ == "__main__":
    main()
