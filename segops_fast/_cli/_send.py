"""``segops-fast send``: a backfill of JSON Lines files (or stdin) into SegOps.

This module owns the command line: arguments and their environment variables, usage
errors (exit 2, among them an input that a Dask worker cannot read), Ctrl-C (stop
reading, let requests under way end, save the checkpoint, exit 130), the progress bar on
a terminal, and the one JSON summary on stdout. The work itself is
:class:`~segops_fast.backfill._job.Job`'s.

Exit status: 0 every event sent; 1 some events failed or were invalid; 2 usage error;
130 interrupted (after saving the checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import orjson

from .._options import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_EVENT_BYTES
from ..backfill._checkpoint import CheckpointMismatchError
from ..backfill._engine import DEFAULT_CONCURRENCY, SendSettings
from ..backfill._input import STDIN, InputError, input_problem, input_size, is_stream
from ..backfill._job import Job, JobSettings
from ._progress import Progress

EXIT_INTERRUPTED = 130


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "send",
        help="send JSON Lines files of events to SegOps (a backfill)",
        description="Send events, one JSON object per line (plain or .gz; '-' or no file: "
        "stdin), to SegOps. Prints one JSON summary. Exit 0 all sent, 1 some failed or "
        "invalid, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="JSON Lines input files")
    parser.add_argument(
        "--api-url", default=os.environ.get("SEGOPS_API_URL"), help="default $SEGOPS_API_URL"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("SEGOPS_API_KEY"), help="default $SEGOPS_API_KEY"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight per process (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="parse and send on this many cores; plain files are split at line boundaries",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the byte ranges as tasks on the Dask cluster whose scheduler is at ADDRESS "
        "(tcp://host:8786); the files must be at the same path on every worker",
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="at most this many events/s in all"
    )
    parser.add_argument(
        "--batch-bytes",
        type=int,
        default=DEFAULT_MAX_BATCH_BYTES,
        help=f"largest request body (default {DEFAULT_MAX_BATCH_BYTES})",
    )
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="send through this HTTP proxy (http://[user:password@]host:port); '' for none; "
        "default: $https_proxy / $http_proxy and $no_proxy, as urllib reads them",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="gzip request bodies (Content-Encoding: gzip)",
    )
    parser.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="append invalid lines and failed events here, as JSON Lines that send can replay",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="record progress here; run the same command again to resume after a crash",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    inputs = arguments.files or [STDIN]
    try:
        job = _job(arguments, inputs)
    except (ValueError, OSError) as error:
        print(f"segops-fast send: error: {error}", file=sys.stderr)
        return 2
    progress = Progress(
        total_bytes=None
        if any(is_stream(path) for path in inputs)
        else sum(input_size(path) or 0 for path in inputs),
        stream=sys.stderr,
    )
    job.on_progress = progress.update
    began = time.monotonic()

    def on_interrupt(signal_number: int, frame: FrameType | None) -> None:
        # The second Ctrl-C does not wait: the checkpoint saved last still holds.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        job.request_stop()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        totals = job.run()
    except InputError as error:
        print(f"segops-fast send: error: {error}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.close()
    elapsed = time.monotonic() - began
    summary = {
        "sent": totals.sent,
        "failed": totals.failed,
        "invalid": totals.invalid,
        "elapsed": round(elapsed, 3),
        "events_per_second": round(totals.sent / elapsed if elapsed else 0.0),
        "interrupted": job.interrupted,
        "resumed": job.resumed,
        "errors": job.errors,
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    for message in dict.fromkeys(job.errors):
        print(f"segops-fast send: error: {message}", file=sys.stderr)
    if job.interrupted:
        return EXIT_INTERRUPTED
    return 1 if totals.failed or totals.invalid or job.errors else 0


def _job(arguments: argparse.Namespace, inputs: list[str]) -> Job:
    if not arguments.api_url:
        raise ValueError("no API URL: give --api-url or set SEGOPS_API_URL")
    if not arguments.api_key:
        raise ValueError("no API key: give --api-key or set SEGOPS_API_KEY")
    if arguments.processes < 1:
        raise ValueError(f"--processes must be at least 1, got {arguments.processes}")
    if inputs.count(STDIN) > 1 or (STDIN in inputs and len(inputs) > 1):
        raise ValueError("stdin ('-') cannot be read along with files")
    for path in inputs:
        problem = None if path == STDIN else input_problem(path)
        if problem:
            raise ValueError(problem)
        if arguments.dask and is_stream(path):
            raise ValueError(
                f"{path} is a stream (stdin, a pipe or a device), which Dask workers cannot "
                "read: write it to a file that every worker can read, or send it without --dask"
            )
    if arguments.dask and arguments.processes != 1:
        raise ValueError("--processes and --dask exclude each other: the cluster's workers send")
    send = SendSettings(
        api_url=arguments.api_url.rstrip("/"),
        api_key=arguments.api_key,
        concurrency=arguments.concurrency,
        batch_bytes=arguments.batch_bytes,
        rate=arguments.rate,
        proxy=arguments.proxy,
        compression="gzip" if arguments.compress else None,
    )
    send.check()
    settings = JobSettings(
        inputs=inputs,
        send=send,
        processes=arguments.processes,
        max_event_bytes=DEFAULT_MAX_EVENT_BYTES,
        checkpoint_path=arguments.checkpoint,
        dead_letter_path=arguments.dead_letter,
        dask_address=arguments.dask,
    )
    try:
        return Job(settings)
    except CheckpointMismatchError as error:
        raise ValueError(str(error)) from None
