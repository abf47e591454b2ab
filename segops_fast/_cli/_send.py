"""``segops-fast send``: a backfill of JSON Lines files (or stdin) into SegOps.

This module owns the command line: arguments, their limits and their environment
variables, usage errors (exit 2, among them an input that a Dask worker cannot read),
problems shown on stderr as they happen, in the words of this command (its flags and
environment variables, never a library keyword), Ctrl-C (stop reading, let requests under
way end, save the checkpoint, exit 130), the progress bar on a terminal, and the one JSON
summary on stdout, which covers the whole job when it resumed one. The work itself is
:class:`~segops_fast.backfill._job.Job`'s.

While the API cannot be reached, ``send`` waits for it (a backfill outlives an outage),
retrying with backoff: it says so on stderr at once, with the cause, and goes on until
the API answers or Ctrl-C (then a resume with ``--checkpoint`` goes on from there).

Exit status: 0 every event sent; 1 some events failed or were invalid, or the run stopped
on an error before its end; 2 usage error; 130 interrupted (after saving the checkpoint).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import orjson

from .._options import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_EVENT_BYTES
from ..backfill._api_key import (
    KEY_FILE_VARIABLE,
    KEY_VARIABLE,
    api_key_from_environment,
    check_api_key,
)
from ..backfill._checkpoint import CheckpointError
from ..backfill._engine import (
    DEFAULT_CONCURRENCY,
    MIN_BATCH_BYTES,
    SendSettings,
    batch_events_for,
    mask_url_password,
)
from ..backfill._input import STDIN, InputError, input_problem, input_size, is_stream
from ..backfill._job import Job, JobSettings
from ._progress import Progress

EXIT_INTERRUPTED = 130
_PROGRAM = "segops-fast send"

#: How this command names each setting of the library's that can fix a problem.
_FLAGS = {
    "api_key": f"--api-key or {KEY_VARIABLE}",
    "api_url": "--api-url",
    "ca_certs": "--ca-certs",
    "proxy": "--proxy",
}
#: What the command's help calls the value of each of those flags.
_METAVARS = {"api_key": "KEY", "api_url": "URL", "ca_certs": "FILE", "proxy": "URL"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "send",
        help="send JSON Lines files of events to SegOps (a backfill)",
        description="Send events, one JSON object per line (plain or .gz; '-' or no file: "
        "stdin), to SegOps. Prints one JSON summary (of the whole job, when it resumes one). "
        "Exit 0 all sent, 1 some failed or invalid or the run stopped on an error, 2 usage "
        "error, 130 interrupted. Give the key in the environment (SEGOPS_API_KEY, or "
        "SEGOPS_API_KEY_FILE naming a file that holds it) rather than with --api-key, "
        "which other users can read in the process list (ps); likewise a proxy's "
        "password in $https_proxy rather than in --proxy.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="JSON Lines input files")
    parser.add_argument(
        "--api-url",
        default=os.environ.get("SEGOPS_API_URL"),
        help="http:// or https:// (default $SEGOPS_API_URL)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"default ${KEY_VARIABLE}, or the content of the file ${KEY_FILE_VARIABLE} "
        "names (prefer either: the command line shows in ps); a secret key, sk_...",
    )
    parser.add_argument(
        "--concurrency",
        type=_at_least("--concurrency", 1),
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight per process: at least 1 (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--processes",
        type=_at_least("--processes", 1),
        default=1,
        help="parse and send on this many cores: at least 1 (default 1); plain files are "
        "split at line boundaries",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the byte ranges as tasks on the Dask cluster whose scheduler is at ADDRESS "
        "(tcp://host:8786); the files must be at the same path on every worker, and each "
        f"worker reads the key from its own ${KEY_VARIABLE} or ${KEY_FILE_VARIABLE}",
    )
    parser.add_argument(
        "--rate",
        type=_above_zero("--rate"),
        default=None,
        help="at most this many events/s in all (across --processes and Dask tasks): above 0 "
        "(default: as fast as the API takes them)",
    )
    parser.add_argument(
        "--batch-bytes",
        type=_at_least("--batch-bytes", MIN_BATCH_BYTES),
        default=DEFAULT_MAX_BATCH_BYTES,
        help=f"largest request body: at least {MIN_BATCH_BYTES} (one event of the largest, "
        f"{DEFAULT_MAX_EVENT_BYTES} bytes, in a body) (default {DEFAULT_MAX_BATCH_BYTES})",
    )
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="send through this HTTP proxy (http://[user:password@]host:port); '' for none; "
        "default: $https_proxy / $http_proxy and $no_proxy, as urllib reads them (put a "
        "password there, not here: the command line shows in ps)",
    )
    parser.add_argument(
        "--ca-certs",
        metavar="FILE",
        help="trust the CAs in this PEM bundle instead of the system's (default: the "
        "system's, or $SSL_CERT_FILE)",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="gzip request bodies (Content-Encoding: gzip)",
    )
    parser.add_argument(
        "--dead-letter",
        metavar="FILE",
        help="append invalid lines and failed events here (created readable by you only), "
        "as JSON Lines that send can replay",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="record progress here (created readable by you only; locked through FILE.lock "
        "while a run uses it); run the same command again to resume after a crash",
    )
    parser.set_defaults(run=run)


def _at_least(option: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = option  # argparse names the type in some messages
    return parse


def _above_zero(option: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
        return value

    parse.__name__ = option
    return parse


def run(arguments: argparse.Namespace) -> int:
    inputs = arguments.files or [STDIN]
    try:
        job = _job(arguments, inputs)
    except (ValueError, OSError) as error:
        _say("error", str(error))
        return 2
    progress = Progress(
        total_bytes=None
        if any(is_stream(path) for path in inputs)
        else sum(input_size(path) or 0 for path in inputs),
        stream=sys.stderr,
    )
    job.on_progress = progress.update
    api_url = job.settings.send.api_url
    job.on_problem = lambda kind, message, setting: progress.clear_for(
        lambda: _say(kind, _problem_text(kind, message, setting, api_url))
    )
    began = time.monotonic()

    def on_interrupt(signal_number: int, frame: FrameType | None) -> None:
        # The second Ctrl-C does not wait: the checkpoint saved last still holds.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        job.request_stop()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        totals = job.run()
    except InputError as error:
        _say("error", str(error))
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.close()
    elapsed = time.monotonic() - began
    whole = job.whole
    stopped_early = not job.interrupted and job.unfinished > 0
    errors = [{"cause": cause, "events": events} for cause, events in job.causes.items()]
    errors += [
        {"cause": _problem_text(p.kind, p.message, p.setting, api_url), "events": 0}
        for p in job.problems
    ]
    if stopped_early and not any(p.kind == "error" for p in job.problems):
        errors.append({"cause": f"{job.unfinished} input ranges did not finish", "events": 0})
    summary = {
        "sent": whole.sent,
        "failed": whole.failed,
        "invalid": whole.invalid,
        "elapsed": round(elapsed, 3),
        "events_per_second": round(totals.sent / elapsed if elapsed else 0.0),
        "interrupted": job.interrupted,
        "resumed": job.resumed,
        "this_run": {"sent": totals.sent, "failed": totals.failed, "invalid": totals.invalid},
        "errors": errors,
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    _say_what_was_given_up(job, arguments.dead_letter)
    if job.interrupted:
        return EXIT_INTERRUPTED
    if stopped_early and not any(p.kind == "error" for p in job.problems):
        _say("error", "stopped before the end of the input: run the same command again to resume")
    return 1 if whole.failed or whole.invalid or stopped_early else 0


def _say_what_was_given_up(job: Job, dead_letter: str | None) -> None:
    """One line per cause of failed events, one for invalid lines, and where they are."""
    where = (
        f" (written to {dead_letter})" if dead_letter else " (give --dead-letter FILE to keep them)"
    )
    for cause, events in job.causes.items():
        _say("failed", f"{events:,} events: {cause}{where}")
    if job.whole.invalid:
        _say("invalid", f"{job.whole.invalid:,} lines are not valid events{where}")


def _job(arguments: argparse.Namespace, inputs: list[str]) -> Job:
    if not arguments.api_url:
        raise ValueError("no API URL: give --api-url or set SEGOPS_API_URL")
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
        api_key=_api_key(arguments),
        concurrency=arguments.concurrency,
        batch_bytes=arguments.batch_bytes,
        rate=arguments.rate,
        batch_events=batch_events_for(arguments.rate),
        proxy=arguments.proxy,
        compression="gzip" if arguments.compress else None,
        ca_certs=arguments.ca_certs,
    )
    try:
        send.check()
    except ValueError as error:
        shown = _without_proxy_password(str(error), arguments.proxy)
        raise ValueError(_in_cli_words(shown)) from None
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
    except CheckpointError as error:
        raise ValueError(str(error)) from None


def _api_key(arguments: argparse.Namespace) -> str:
    """The key from --api-key, else from the environment; refused, masked, if unusable."""
    if arguments.api_key is None:
        if not os.environ.get(KEY_VARIABLE) and not os.environ.get(KEY_FILE_VARIABLE):
            raise ValueError(
                f"no API key: set {KEY_VARIABLE} (or {KEY_FILE_VARIABLE} to a file that "
                "holds it), or give --api-key"
            )
        return api_key_from_environment()
    if not arguments.api_key:
        raise ValueError("the API key given with --api-key is empty")
    check_api_key(arguments.api_key, "--api-key")
    return str(arguments.api_key)


def _problem_text(kind: str, message: str, setting: str | None, api_url: str) -> str:
    """What a problem the job met says to this command's user."""
    text = _in_cli_words(message)
    if kind == "waiting":
        return (
            f"cannot reach the API at {api_url} ({text}); retrying until it answers "
            "(Ctrl-C stops; with --checkpoint, the same command resumes)"
        )
    if setting in _FLAGS and _FLAGS[setting] not in text:
        text = f"{text.rstrip('.')}: check {_FLAGS[setting]}"
    return text


def _in_cli_words(message: str) -> str:
    """A library message as this command says it: its flags for the library's keywords
    (``ca_certs=...`` is ``--ca-certs FILE``; ``proxy`` alone stays a word), without the
    prefix and without what only a running client does (its queue)."""
    text = message[len("SegOps: ") :] if message.startswith("SegOps: ") else message
    text = text.replace(
        "client_cert=... and client_key=...",
        "a client certificate (which segops-fast send cannot present)",
    )
    text = re.sub(r"\b([a-z_]+)=(\.\.\.)?", _as_flag, text)
    # Keywords with an underscore are never English words: named bare, they are keywords.
    text = re.sub(
        r"(?<![-\w])(" + "|".join(k for k in _FLAGS if "_" in k) + r")\b",
        lambda match: _FLAGS[match.group(1)],
        text,
    )
    # Sentences about a running client's queue mean nothing once this command has ended.
    sentences = re.split(r"(?<=\.) ", text)
    return " ".join(s for s in sentences if "queue" not in s).strip()


def _as_flag(keyword_argument: re.Match[str]) -> str:
    """``ca_certs=...`` as ``--ca-certs FILE``, ``proxy=`` as ``--proxy``; other words as
    they are."""
    keyword, placeholder = keyword_argument.groups()
    if keyword not in _FLAGS:
        return keyword_argument.group(0)
    flag = _FLAGS[keyword]
    if placeholder:
        return f"{flag} {_METAVARS[keyword]}"
    # A value follows (``ca_certs='x.pem'``), or nothing does (``(from proxy=)``).
    following = keyword_argument.string[keyword_argument.end() : keyword_argument.end() + 1]
    return f"{flag} " if following and following not in " ),.;" else flag


def _without_proxy_password(text: str, proxy: str | None) -> str:
    """``text`` with the password of ``proxy`` masked wherever it appears."""
    if not proxy:
        return text
    masked = mask_url_password(proxy)
    text = text.replace(proxy, masked)
    password = proxy.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return text.replace(password, "***") if password else text


def _say(kind: str, message: str) -> None:
    print(f"{_PROGRAM}: {kind}: {message}", file=sys.stderr, flush=True)
