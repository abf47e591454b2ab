"""``segops-fast serve``: run a LocalIngestServer until interrupted, then print its counts."""

from __future__ import annotations

import argparse
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


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run a local SegOps ingest server (for tests and demos)",
        description="Serve the SegOps ingestion API on 127.0.0.1 until SIGINT or SIGTERM; "
        "the first line printed is 'listening on URL' (with --tls, the second is "
        "'ca_certs PATH', the CA bundle clients should trust), the last the counts as JSON.",
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
    with server:
        print(f"listening on {server.url}", flush=True)
        if tls is not None and tls.ca_certs is not None:
            print(f"ca_certs {tls.ca_certs}", flush=True)
        while not stop.wait(0.5):
            pass
        sys.stdout.write(orjson.dumps(server.summary()).decode() + "\n")
    return 0
