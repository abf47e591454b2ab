"""``segops-fast send`` as its help describes it: failures said at once and in its own words,
the limits of its options, ``--version``, and ``--rate`` measured at the server, from the
time each request arrived."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

import segops_fast
from segops_fast import SegOpsApiError
from segops_fast.backfill import send_events
from segops_fast.backfill._engine import SendSettings
from segops_fast.backfill._job import Job, JobSettings, Totals
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing._tls import ServerTLS

from .test_backfill import assert_exactly_once, run_send, write_events


def run_cli(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segops_fast", *(str(argument) for argument in arguments)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )


# -- failures, as they happen -----------------------------------------------------------------


def test_an_untrusted_certificate_is_one_line_in_the_commands_words(
    tls_server: LocalIngestServer, tls: ServerTLS, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 5000)
    finished = run_cli("send", events, "--api-url", tls_server.url)
    assert finished.returncode == 1
    (line,) = finished.stderr.strip().splitlines()
    assert line.startswith("segops-fast send: error: TLS with 127.0.0.1:")
    assert "--ca-certs" in line
    for library_words in ("ca_certs", "queue", "SegOps:"):
        assert library_words not in line
    summary = orjson.loads(finished.stdout)
    assert summary["sent"] == 0
    assert [error["cause"] for error in summary["errors"]] == [line.split("error: ", 1)[1]]
    # The fix it names works.
    finished = run_cli("send", events, "--api-url", tls_server.url, "--ca-certs", tls.ca_certs)
    assert finished.returncode == 0, finished.stderr
    assert_exactly_once(tls_server, 5000)


def test_send_events_on_an_untrusted_ca_raises_at_once(tls_server: LocalIngestServer) -> None:
    events = ({"user_id": "u", "event_type": "e", "payload": {"i": i}} for i in range(10))
    with pytest.raises(SegOpsApiError, match=r"TLS with 127\.0\.0\.1"):
        send_events(events, api_url=tls_server.url, api_key=DEFAULT_SECRET_KEY)
    assert tls_server.event_count == 0


def interrupted_after_first_line(arguments: list[str]) -> tuple[int, str, str, str]:
    """Run ``segops-fast ARGUMENTS``, Ctrl-C it once it has said its first line on stderr
    (within a generous 30 s), and give its exit status, that line, stdout and the rest."""
    running = subprocess.Popen(
        [sys.executable, "-m", "segops_fast", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )
    try:
        assert running.stderr is not None
        ready, _, _ = select.select([running.stderr], [], [], 30)
        assert ready, "nothing said on stderr"
        line = running.stderr.readline()
        running.send_signal(signal.SIGINT)
        stdout, rest = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    return running.returncode, line, stdout, rest


def test_an_unreachable_api_is_said_at_once_and_waited_for_until_ctrl_c(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", 100)
    with LocalIngestServer() as closed:
        url = closed.url  # a port nothing listens on, once it stops
    # Said at once: the first line on stderr.
    returncode, line, stdout, rest = interrupted_after_first_line(
        ["send", str(events), "--api-url", url]
    )
    assert line.startswith(f"segops-fast send: waiting: cannot reach the API at {url}")
    assert f"could not connect to {url.removeprefix('http://')}: connection refused" in line
    assert "retrying until it answers" in line
    assert rest == ""
    assert returncode == 130
    summary = orjson.loads(stdout)
    assert summary["interrupted"] is True
    assert [error["cause"] for error in summary["errors"]] == [
        line.split("waiting: ", 1)[1].strip()
    ]


def test_the_summary_counts_failures_by_cause(server: LocalIngestServer, tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", 995)
    server.faults.respond_with(422, count=1)
    server.faults.respond_with(400, count=1000)
    finished = run_cli("send", events, "--api-url", server.url, "--batch-bytes", "32781")
    assert finished.returncode == 1
    summary = orjson.loads(finished.stdout)
    assert summary["failed"] == 995
    causes = {error["cause"]: error["events"] for error in summary["errors"]}
    assert sum(causes.values()) == 995
    assert len(causes) == 2
    assert {cause.split(":")[0] for cause in causes} == {
        "the API refused the request (HTTP 422",
        "the API refused the request (HTTP 400",
    }
    # And in words, once each, on stderr.
    assert sorted(finished.stderr.splitlines()) == sorted(
        f"segops-fast send: failed: {events:,} events: {cause} (give --dead-letter FILE to "
        "keep them)"
        for cause, events in causes.items()
    )


# -- options -------------------------------------------------------------------------------------


def test_version() -> None:
    finished = run_cli("--version")
    assert (finished.returncode, finished.stdout) == (0, f"segops-fast {segops_fast.__version__}\n")


def test_help_gives_every_limit_and_refusals_name_the_option_as_typed(tmp_path: Path) -> None:
    text = " ".join(run_cli("send", "--help").stdout.split())
    for limit in (
        "--batch-bytes BATCH_BYTES largest request body: at least 32781",
        "--concurrency CONCURRENCY requests in flight per process: at least 1",
        "--processes PROCESSES parse and send on this many cores: at least 1",
        "--rate RATE at most this many events/s in all (across --processes and Dask tasks): "
        "above 0",
    ):
        assert limit in text
    events = write_events(tmp_path / "events.jsonl", 1)
    for option, value, message in [
        ("--batch-bytes", "4096", "must be at least 32781, got 4096"),
        ("--concurrency", "0", "must be at least 1, got 0"),
        ("--processes", "two", "must be a whole number, got 'two'"),
        ("--rate", "0", "must be a number above 0, got 0"),
        ("--rate", "nan", "must be a number above 0, got nan"),
    ]:
        finished = run_cli("send", events, "--api-url", "http://127.0.0.1:9", option, value)
        assert finished.returncode == 2
        assert f"error: argument {option}: {message}" in finished.stderr
        assert "_" not in finished.stderr.splitlines()[-1].split("error: ")[1].split(":")[0]


class TimedServer(LocalIngestServer):
    """LocalIngestServer that notes when each stored request arrived (it keeps no times)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, int]] = []

    def _ingest(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        arrived = time.monotonic()
        status, answer = super()._ingest(path, headers, body)
        if status == 200:
            self.arrivals.append((arrived, answer["accepted"]))
        return status, answer

    def most_in(self, seconds: float) -> int:
        """The most events that arrived within any window of ``seconds``."""
        arrivals = sorted(self.arrivals)
        most = in_window = first = 0
        for arrived, count in arrivals:
            in_window += count
            while arrivals[first][0] <= arrived - seconds:
                in_window -= arrivals[first][1]
                first += 1
            most = max(most, in_window)
        return most

    def span(self) -> float:
        return max(t for t, _ in self.arrivals) - min(t for t, _ in self.arrivals)


@pytest.fixture
def timed_server() -> Iterator[TimedServer]:
    with TimedServer() as running:
        yield running


@pytest.mark.parametrize(
    ("events", "rate", "processes"),
    [(995, 200, 1), (4000, 1000, 2)],
    ids=["small-file", "two-processes"],
)
def test_rate_paces_events_in_all_measured_at_the_server(
    timed_server: TimedServer, tmp_path: Path, events: int, rate: int, processes: int
) -> None:
    source = write_events(tmp_path / "events.jsonl", events)
    status, summary = run_send(timed_server, source, "--rate", str(rate),
                               "--processes", str(processes))  # fmt: skip
    assert (status, summary["sent"]) == (0, events)
    assert_exactly_once(timed_server, events)
    # Over any two seconds, within a few percent of the rate, in all processes together
    # (arrivals are timed by the server, whose threads share the CPU with the senders: a
    # window of one second also counts the server's own stalls)...
    assert timed_server.most_in(2.0) <= 2 * rate * 1.05
    # ...and spread over the time the rate gives (a batch of a hundredth of a second's
    # events may go at once at either end).
    assert timed_server.span() >= (events - 2 * rate / 100) / rate * 0.97
    assert len(timed_server.arrivals) >= events / (rate / 100)


def test_the_progress_counts_events(server: LocalIngestServer, tmp_path: Path) -> None:
    """The bar (drawn in test_backfill's terminal test) is fed events settled, with the
    share of the input read beside them; here through the Job, without a terminal."""
    source = write_events(tmp_path / "events.jsonl", 3000)
    seen: list[Totals] = []
    send = SendSettings(api_url=server.url, api_key=DEFAULT_SECRET_KEY, rate=3000.0,
                        batch_events=30)  # fmt: skip
    job = Job(JobSettings([str(source)], send, 1, 32768, None, None))
    job.on_progress = lambda totals: seen.append(Totals(**vars(totals)))
    job.run()
    assert len(seen) >= 3
    assert [totals.sent for totals in seen] == sorted(totals.sent for totals in seen)
    # Events settled, not bytes: mid-run, everything was read long before it was sent.
    assert any(t.bytes_read == source.stat().st_size and t.sent < 3000 for t in seen)
    assert seen[-1].sent <= 3000
