"""Backfills end to end: ``segops-fast send`` in a subprocess, and the partition API, against
LocalIngestServer, counting events at the server."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import multiprocessing
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from segops_fast.backfill import Summary, send_events
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer

from .conftest import wait_until


def write_events(path: Path, count: int, *, first: int = 0) -> Path:
    """``count`` distinct events, numbered from ``first`` in their payload's ``i``."""
    with open(path, "wb") as file:
        file.writelines(event_line(i) for i in range(first, first + count))
    return path


def event_line(i: int) -> bytes:
    event = {
        "user_id": f"user-{i % 1000}",
        "event_type": "page_viewed",
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "payload": {"path": "/home", "i": i},
    }
    return orjson.dumps(event) + b"\n"


def send_command(server: LocalIngestServer, *arguments: str | Path) -> list[str]:
    return [
        sys.executable, "-m", "segops_fast", "send",
        "--api-url", server.url, "--api-key", DEFAULT_SECRET_KEY,
        *(str(argument) for argument in arguments),
    ]  # fmt: skip


def run_send(
    server: LocalIngestServer, *arguments: str | Path, stdin: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    finished = subprocess.run(
        send_command(server, *arguments),
        input=stdin,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert finished.stdout.count(b"\n") <= 1, finished.stdout
    summary = orjson.loads(finished.stdout) if finished.stdout else {}
    return finished.returncode, summary


def numbers_stored(server: LocalIngestServer) -> list[int]:
    return sorted(event["payload"]["i"] for event in server.events)


def settled_bytes(checkpoint: Path) -> int:
    """Input bytes the checkpoint says are settled, in all its ranges; 0 before there is
    one. (Its first save can hold none: a later batch may settle before the first.)"""
    try:
        ranges = orjson.loads(checkpoint.read_bytes())["ranges"]
    except FileNotFoundError:
        return 0
    return sum(int(part["done"]) - int(part["start"]) for part in ranges)


def kill_send_with_progress_saved(
    server: LocalIngestServer, checkpoint: Path, stored: int, *arguments: str | Path
) -> None:
    """Run ``segops-fast send`` with ``arguments`` until the server has ``stored`` events
    and the checkpoint holds progress (its first save may hold none), then SIGKILL it."""
    running = subprocess.Popen(send_command(server, *arguments), stdout=subprocess.PIPE)
    try:
        wait_until(
            lambda: server.event_count >= stored and settled_bytes(checkpoint) > 0, timeout=60
        )
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=10)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.stdout is not None
    running.stdout.close()


def interrupt_send(
    server: LocalIngestServer, ready: Callable[[], bool], *arguments: str | Path
) -> dict[str, Any]:
    """Run ``segops-fast send`` with ``arguments`` until ``ready()``, then press Ctrl-C (a
    SIGINT); its summary, once it has exited 130."""
    running = subprocess.Popen(send_command(server, *arguments), stdout=subprocess.PIPE)
    try:
        wait_until(ready, timeout=60)
        running.send_signal(signal.SIGINT)
        stdout, _ = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 130
    summary: dict[str, Any] = orjson.loads(stdout)
    return summary


def assert_exactly_once(server: LocalIngestServer, count: int) -> None:
    summary = server.summary()
    assert summary["duplicate_events"] == 0, summary
    assert summary["unique_events"] == summary["events"] == count, summary
    assert numbers_stored(server) == list(range(count))


def test_a_million_events_from_a_file_arrive_exactly_once(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 1_000_000)
    status, summary = run_send(server, events)
    assert status == 0, summary
    assert (summary["sent"], summary["failed"], summary["invalid"]) == (1_000_000, 0, 0)
    assert_exactly_once(server, 1_000_000)


def test_malformed_lines_go_to_dead_letters_with_line_numbers_and_the_rest_is_sent(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    good = [event_line(i) for i in range(6)]
    oversize = orjson.dumps({"user_id": "u", "event_type": "e", "payload": {"x": "y" * 40_000}})
    lines = [
        good[0],
        b'{"user_id": "u", "event_type": \n',  # line 2: not JSON
        good[1],
        b'{"event_type": "e", "payload": {}}\n',  # line 4: no user_id
        good[2],
        b"\n",  # line 6: blank, skipped silently
        b'{"user_id": "u", "event_type": "e", "payload": [1]}\n',  # line 7: payload
        good[3],
        oversize + b"\n",  # line 9: over max_event_bytes
        b"[1, 2]\n",  # line 10: not an object
        good[4],
        good[5].rstrip(b"\n"),  # line 12: no final newline
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"".join(lines))
    dead_letters = tmp_path / "dead.jsonl"
    status, summary = run_send(server, source, "--dead-letter", dead_letters)
    assert status == 1
    assert (summary["sent"], summary["failed"], summary["invalid"]) == (6, 0, 5)
    assert_exactly_once(server, 6)
    letters = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    where = [(letter["dead_letter"]["file"], letter["dead_letter"]["line"]) for letter in letters]
    assert where == [(str(source), line) for line in (2, 4, 7, 9, 10)]
    reasons = [letter["dead_letter"]["reason"] for letter in letters]
    assert reasons[0].startswith("not JSON")
    assert "user_id is required" in reasons[1]
    assert "payload must be a dict" in reasons[2]
    assert "max_event_bytes" in reasons[3]
    assert "must be an Event or a dict" in reasons[4]
    # Unparseable lines keep their text; objects keep their fields, ready to be fixed.
    assert letters[0]["raw"] == '{"user_id": "u", "event_type": '
    assert letters[1]["event_type"] == "e"


def test_events_the_server_refuses_go_to_dead_letters_and_replay_once_fixed(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 5000)
    dead_letters = tmp_path / "dead.jsonl"
    server.faults.respond_with(400)
    status, summary = run_send(server, events, "--dead-letter", dead_letters, "--batch-bytes",
                               "65536")  # fmt: skip
    assert status == 1
    assert summary["failed"] > 0
    assert summary["sent"] + summary["failed"] == 5000
    letters = dead_letters.read_bytes().splitlines()
    assert len(letters) == summary["failed"]
    assert {orjson.loads(letter)["dead_letter"]["reason"] for letter in letters} == {"failed"}
    # The cause is gone: the dead letters, replayed as they are, complete the backfill.
    status, summary = run_send(server, dead_letters)
    assert (status, summary["sent"]) == (0, len(letters))
    assert_exactly_once(server, 5000)


def test_gzip_and_stdin_inputs(server: LocalIngestServer, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "events.jsonl.gz", "wb") as compressed:
        compressed.writelines(event_line(i) for i in range(3000))
    status, summary = run_send(server, tmp_path / "events.jsonl.gz")
    assert (status, summary["sent"]) == (0, 3000)
    piped = b"".join(event_line(i) for i in range(3000, 5000))
    status, summary = run_send(server, "-", stdin=piped)
    assert (status, summary["sent"]) == (0, 2000)
    assert_exactly_once(server, 5000)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_killed_with_sigkill_half_way_resumes_and_ends_exactly_once(
    server: LocalIngestServer, tmp_path: Path, processes: int
) -> None:
    events = write_events(tmp_path / "events.jsonl", 200_000)
    checkpoint = tmp_path / "checkpoint.json"
    # Slowed down, so that the kill comes half-way; small batches, so many are in flight.
    arguments = (events, "--checkpoint", checkpoint, "--processes", str(processes),
                 "--batch-bytes", "65536")  # fmt: skip
    kill_send_with_progress_saved(server, checkpoint, 60_000, *arguments, "--rate", "50000")
    assert server.event_count < 200_000
    # Workers notice that their coordinator is gone, and stop.
    time.sleep(1.0)
    status, summary = run_send(server, *arguments)
    assert status == 0, summary
    assert summary["resumed"] is True
    # The resumed run starts at the checkpoint: it does not send everything again; its
    # summary covers the whole job.
    assert summary["this_run"]["sent"] < 200_000
    assert summary["sent"] == 200_000
    assert_exactly_once(server, 200_000)


def test_ctrl_c_exits_130_with_a_checkpoint_and_the_rest_follows_on_resume(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 100_000)
    checkpoint = tmp_path / "checkpoint.json"
    arguments = (events, "--checkpoint", checkpoint, "--batch-bytes", "65536")
    summary = interrupt_send(
        server, lambda: server.event_count >= 20_000, *arguments, "--rate", "20000"
    )
    assert summary["interrupted"] is True
    assert 0 < summary["sent"] < 100_000
    # Everything acknowledged before the interrupt is in the checkpoint: the server holds
    # exactly what the summary says was sent.
    assert server.summary()["unique_events"] == summary["sent"]
    saved = orjson.loads(checkpoint.read_bytes())
    assert 0 < saved["ranges"][0]["done"] < events.stat().st_size
    status, resumed = run_send(server, *arguments)
    assert (status, resumed["sent"]) == (0, 100_000)
    assert resumed["this_run"]["sent"] == 100_000 - summary["sent"]
    assert_exactly_once(server, 100_000)


def test_faults_during_a_backfill_lose_nothing(server: LocalIngestServer, tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", 100_000)
    server.faults.respond_with(503, count=3)
    server.faults.reset_after_store(count=2)
    server.faults.reset_before_body()
    server.faults.respond_with(429, retry_after="1")
    running = subprocess.Popen(
        send_command(server, events, "--batch-bytes", "65536", "--rate", "50000"),
        stdout=subprocess.PIPE,
    )
    try:
        wait_until(lambda: server.event_count >= 30_000, timeout=60)
        server.stop()  # an outage of one second, half-way
        time.sleep(1.0)
        server.start()
        stdout, _ = running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    summary = orjson.loads(stdout)
    assert running.returncode == 0, summary
    assert (summary["sent"], summary["failed"]) == (100_000, 0)
    assert server.summary()["repeated_key_requests"] >= 2  # the lost answers, deduplicated
    assert_exactly_once(server, 100_000)


def test_two_processes_send_the_same_events_as_one(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 100_000)
    assert run_send(server, events)[0] == 0
    with_one = sorted(orjson.dumps(event, option=orjson.OPT_SORT_KEYS) for event in server.events)
    server.reset()
    status, summary = run_send(server, events, "--processes", "2")
    assert (status, summary["sent"]) == (0, 100_000)
    with_two = sorted(orjson.dumps(event, option=orjson.OPT_SORT_KEYS) for event in server.events)
    assert with_two == with_one
    assert_exactly_once(server, 100_000)


def test_rate_caps_the_events_sent_per_second(server: LocalIngestServer, tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", 20_000)
    status, summary = run_send(server, events, "--rate", "20000", "--batch-bytes", "65536")
    assert (status, summary["sent"]) == (0, 20_000)
    # Paced a batch (about 500 events) at a time: all but the first wait their turn.
    assert summary["elapsed"] >= 0.9
    assert_exactly_once(server, 20_000)


def test_usage_errors_exit_2(server: LocalIngestServer, tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", 10)
    finished = subprocess.run(
        [sys.executable, "-m", "segops_fast", "send", str(events), "--api-url", server.url,
         "--api-key", "pk_test_local"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert finished.returncode == 2
    assert b"needs a secret key" in finished.stderr
    assert run_send(server, tmp_path / "missing.jsonl")[0] == 2
    # A checkpoint written with other batch sizes would cut other batches, with other keys.
    checkpoint = tmp_path / "checkpoint.json"
    assert run_send(server, events, "--checkpoint", checkpoint)[0] == 0
    finished = subprocess.run(
        send_command(server, events, "--checkpoint", checkpoint, "--batch-bytes", "65536"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert b"--batch-bytes" in finished.stderr
    assert server.event_count == 10


def _send_partition(url: str, partition: int) -> Summary:
    events = (orjson.loads(event_line(partition * 10_000 + i)) for i in range(10_000))
    return send_events(
        events, api_url=url, api_key=DEFAULT_SECRET_KEY, source=f"partition-{partition}"
    )


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
# The test process runs the server's threads; the pool forks it before any of ours start.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_the_partition_api_in_a_multiprocessing_pool_with_a_retried_task(
    server: LocalIngestServer, start_method: str
) -> None:
    with multiprocessing.get_context(start_method).Pool(2) as pool:
        summaries = pool.starmap(_send_partition, [(server.url, n) for n in range(4)])
        # An engine runs a task again after a failure: same partition, same keys.
        again = pool.starmap(_send_partition, [(server.url, 2)])
    assert [summary.sent for summary in summaries + again] == [10_000] * 5
    assert server.summary()["repeated_key_events"] == 10_000
    assert_exactly_once(server, 40_000)


def test_the_partition_api_counts_invalid_events_and_hands_failures_over(
    server: LocalIngestServer,
) -> None:
    invalid: list[str] = []
    failed: list[tuple[int, str]] = []
    server.faults.respond_with(404)
    events: list[Any] = [{"user_id": "u", "event_type": "e", "payload": {"i": 0}}, {"x": 1}]
    summary = send_events(
        events,
        api_url=server.url,
        api_key=DEFAULT_SECRET_KEY,
        on_invalid=lambda event, reason: invalid.append(reason),
        on_failed=lambda given_up, reason: failed.extend(
            (event["payload"]["i"], reason) for event in given_up
        ),
    )
    assert (summary.sent, summary.failed, summary.invalid) == (0, 1, 1)
    assert invalid == ["user_id is required"]
    assert failed == [(0, "failed")]
    with pytest.raises(ValueError, match="secret key"):
        send_events([], api_url=server.url, api_key="pk_x")


def _read_until_exit(descriptor: int, process: subprocess.Popen[bytes]) -> bytes:
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([descriptor], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(descriptor, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal of 24 rows by 120 columns, as a terminal window would have."""
    controller, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    yield controller, follower
    for descriptor in (controller, follower):
        with contextlib.suppress(OSError):
            os.close(descriptor)


def test_the_progress_bar_draws_on_a_terminal_and_goes_away(
    server: LocalIngestServer, tmp_path: Path, terminal: tuple[int, int]
) -> None:
    controller, follower = terminal
    events = write_events(tmp_path / "events.jsonl", 60_000)
    running = subprocess.Popen(
        send_command(server, events, "--rate", "30000"),
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    drawn = _read_until_exit(controller, running)
    stdout, _ = running.communicate(timeout=60)
    assert running.returncode == 0
    assert orjson.loads(stdout)["sent"] == 60_000
    text = drawn.decode()
    # Drawn more than once, with the rate and the percentage of the input read...
    frames = [frame for frame in text.split("\r") if "segops-fast send" in frame]
    assert len(frames) >= 2, text
    assert "events/s" in text
    assert "%" in text
    # ...and erased at the end: what is left on the line is blank.
    assert text.split("\r")[-1].strip() == "" or text.endswith("\r")
    # Without a terminal (stderr is a pipe here), nothing but the summary.
    finished = subprocess.run(
        send_command(server, events), capture_output=True, timeout=120, check=False
    )
    assert finished.stderr == b""
