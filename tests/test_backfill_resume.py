"""A backfill interrupted (Ctrl-C, or ``kill -9``) part-way through a file with invalid lines,
then run again: every event stored once, every dead letter written once, and the second
run's summary and exit status cover the whole job."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from segops_fast.backfill._engine import MIN_BATCH_BYTES
from segops_fast.testing import LocalIngestServer

from .test_backfill import (
    assert_exactly_once,
    event_line,
    interrupt_send,
    kill_send_with_progress_saved,
    run_send,
    settled_bytes,
)

GOOD = 200_000
#: One invalid line every this many: dense enough that, whenever the run is stopped, some
#: were read ahead of the settled position (the lines a resume reads again).
BAD_EVERY = 500


def write_mixed(path: Path) -> list[int]:
    """``GOOD`` numbered events with an invalid line (no user_id) after every ``BAD_EVERY``;
    returns the invalid lines' numbers (from 1)."""
    bad_lines = []
    with open(path, "wb") as file:
        line_number = 0
        for i in range(GOOD):
            file.write(event_line(i))
            line_number += 1
            if i % BAD_EVERY == BAD_EVERY - 1:
                file.write(orjson.dumps({"event_type": "e", "payload": {"bad": i}}) + b"\n")
                line_number += 1
                bad_lines.append(line_number)
    return bad_lines


@pytest.mark.parametrize("stop", ["ctrl-c", "kill-9"])
@pytest.mark.parametrize("paced", [True, False], ids=["rate", "no-rate"])
def test_an_interrupted_backfill_resumed_writes_each_dead_letter_once(
    server: LocalIngestServer, tmp_path: Path, stop: str, paced: bool
) -> None:
    events = tmp_path / "events.jsonl"
    bad_lines = write_mixed(events)
    checkpoint, dead_letters = tmp_path / "checkpoint.json", tmp_path / "dead.jsonl"
    arguments: tuple[str | Path, ...] = (
        events, "--checkpoint", checkpoint, "--dead-letter", dead_letters,
    )  # fmt: skip
    if paced:
        first_run = (*arguments, "--batch-bytes", "65536", "--rate", "50000")
        arguments = (*arguments, "--batch-bytes", "65536")
    else:
        # Slowed by the server instead: each request takes 20 ms.
        server.faults.latency = 0.02
        first_run = arguments = (*arguments, "--batch-bytes", str(MIN_BATCH_BYTES))
    if stop == "ctrl-c":
        interrupt_send(
            server,
            lambda: server.event_count >= 60_000 and settled_bytes(checkpoint) > 0,
            *first_run,
        )
    else:
        kill_send_with_progress_saved(server, checkpoint, 60_000, *first_run)
    assert server.event_count < GOOD
    server.faults.latency = 0.0
    status, summary = run_send(server, *arguments)
    assert summary["resumed"] is True
    # The whole job: every event sent once, every invalid line counted once, and exit 1
    # for them, as an uninterrupted run would.
    assert (summary["sent"], summary["failed"], summary["invalid"]) == (GOOD, 0, len(bad_lines))
    assert status == 1, summary
    assert 0 < summary["this_run"]["sent"] < GOOD
    assert_exactly_once(server, GOOD)
    letters = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    assert [letter["dead_letter"]["line"] for letter in letters] == bad_lines


def test_events_without_occurred_at_are_sent_as_read_and_keep_their_keys(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    """The server stamps them: the client adds no time, so the same input gives the same
    bytes, and the same Idempotency-Keys, on every run."""
    source = tmp_path / "events.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"user_id": "u", "event_type": "e", "payload": {"i": i}}) + b"\n"
            for i in range(20_000)
        )
    )
    for _ in range(2):
        assert run_send(server, source, "--batch-bytes", "65536", "--processes", "2")[0] == 0
    assert all("occurred_at" not in event for event in server.events)
    summary = server.summary()
    assert summary["repeated_key_events"] == 20_000
    assert summary["unique_events"] == summary["events"] == 20_000
