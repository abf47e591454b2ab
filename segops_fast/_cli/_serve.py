"""``segops-fast serve``: run a LocalIngestServer until interrupted, then print its counts.

A port that cannot be listened on (in use, or privileged) is one line on stderr and exit
status 1."""

from __future__ import annotations

import argparse
import errno
import gc
import signal
import sys
import threading
from typing import Any

import orjson

from ..testing import (
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    LocalIngestServer,
    PublicKey,
    ServerTLS,
)
from ..testing._http import MAX_BODY_BYTES
from ..testing._server import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_KEPT_EVENTS


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run a local SegOps ingest server (for tests and demos)",
        description="Serve the SegOps ingestion API on 127.0.0.1 until SIGINT or SIGTERM; "
        "the first line printed is 'listening on URL' (with --tls, the second is "
        "'ca_certs PATH', the CA bundle clients should trust), the last the counts as JSON. "
        "Meanwhile GET /_local/summary answers the counts as JSON (unique_events and "
        "duplicate_events check exactly-once delivery) and POST /_local/reset forgets "
        "everything. It answers only requests that name it 127.0.0.1, localhost or [::1] "
        f"with its port, none from web pages to /_local/, no body over "
        f"{MAX_BODY_BYTES // 2**20} MiB; "
        f"it keeps at most {DEFAULT_MAX_KEPT_EVENTS:,} events (later ones are "
        "answered and counted as events_not_kept) and closes connections idle for "
        f"{DEFAULT_IDLE_TIMEOUT:g} s.",
    )
    parser.add_argument("--port", type=int, default=8008, help="0 picks a free port (default 8008)")
    parser.add_argument(
        "--secret-key",
        action="append",
        dest="secret_keys",
        metavar="SK",
        help=f"accept this sk_ key (repeatable; default {DEFAULT_SECRET_KEY})",
    )
    parser.add_argument(
        "--public-key",
        action="append",
        dest="public_keys",
        metavar="PK[:HMAC_HEX]",
        help=f"accept this pk_ key, optionally with its HMAC secret (default {DEFAULT_PUBLIC_KEY})",
    )
    parser.add_argument(
        "--require-signed",
        action="store_true",
        help="public keys with an HMAC secret refuse sessions without a signed user id",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before answering each ingest request (default 0)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a certificate for 127.0.0.1 from a new test CA (needs trustme)",
    )
    parser.add_argument("--certfile", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--keyfile", help="...and this PEM key (if not in --certfile)")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    public_keys: dict[str, PublicKey] = {}
    for text in arguments.public_keys or [DEFAULT_PUBLIC_KEY]:
        key, _, secret = text.partition(":")
        public_keys[key] = PublicKey(
            hmac_secret=secret or None,
            require_signed_user_id=bool(secret) and arguments.require_signed,
        )
    tls = None
    if arguments.certfile:
        tls = ServerTLS(arguments.certfile, arguments.keyfile)
    elif arguments.tls:
        tls = ServerTLS.for_loopback()
    server = LocalIngestServer(
        port=arguments.port,
        secret_keys=tuple(arguments.secret_keys or [DEFAULT_SECRET_KEY]),
        public_keys=public_keys,
        tls=tls,
    )
    server.faults.latency = arguments.latency
    # The server keeps every event it stores, as dicts; a full collection walks all of them,
    # and at a million stored events those walks halved the rate it stores events at
    # (358,000 events/s against 641,000 without; bench/server_ingest_rate.py). What it
    # stores holds no reference cycles, so this process does without the cyclic collector.
    gc.disable()
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    try:
        server.start()
    except OSError as error:
        print(f"segops-fast serve: {_listen_problem(arguments.port, error)}", file=sys.stderr)
        return 1
    try:
        print(f"listening on {server.url}", flush=True)
        if tls is not None and tls.ca_certs is not None:
            print(f"ca_certs {tls.ca_certs}", flush=True)
        while not stop.wait(0.5):
            pass
        sys.stdout.write(orjson.dumps(server.summary()).decode() + "\n")
    finally:
        server.stop()
    return 0


def _listen_problem(port: int, error: OSError) -> str:
    where = f"127.0.0.1:{port}"
    if error.errno == errno.EADDRINUSE:
        return f"{where} is in use; choose another port with --port (--port 0 picks a free one)"
    if error.errno == errno.EACCES:
        return f"{where} needs privileges; choose a port above 1023 with --port"
    return f"cannot listen on {where}: {error.strerror or error}"
