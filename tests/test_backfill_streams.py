"""``segops-fast send`` on inputs that are not regular files: a named pipe, a shell's process
substitution, ``/dev/null``; read as one stream, resumed by reading the stream again."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import threading
import time
from pathlib import Path

import orjson

from segops_fast.testing import LocalIngestServer

from .test_backfill import (
    assert_exactly_once,
    event_line,
    kill_send_with_progress_saved,
    run_send,
    send_command,
)


def feed(fifo: Path, data: bytes, timeout: float = 60.0) -> threading.Thread:
    """Write ``data`` into the named pipe ``fifo`` once a reader opens it, then close it; a
    reader that goes away (killed) ends the writing. Gives up after ``timeout``."""

    def write() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Non-blocking, so that a reader that never comes cannot hang the test.
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                if error.errno != errno.ENXIO or time.monotonic() > deadline:
                    return
                time.sleep(0.01)
        os.set_blocking(descriptor, True)
        try:
            with open(descriptor, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def events(count: int) -> bytes:
    return b"".join(event_line(i) for i in range(count))


def test_a_named_pipe_is_read_as_one_stream(server: LocalIngestServer, tmp_path: Path) -> None:
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    writer = feed(fifo, events(30_000))
    # --processes 2 too: a pipe cannot be split into byte ranges, nor read by two processes.
    status, summary = run_send(server, fifo, "--processes", "2")
    writer.join(timeout=10)
    assert (status, summary["sent"], summary["invalid"]) == (0, 30_000, 0), summary
    assert_exactly_once(server, 30_000)


def test_process_substitution_and_dev_null(server: LocalIngestServer, tmp_path: Path) -> None:
    compressed = tmp_path / "part.gz"
    with gzip.open(compressed, "wb") as file:
        file.write(events(20_000))
    command = " ".join(f"'{part}'" for part in send_command(server))
    # The issue's own command line: bash hands over /dev/fd/63, a pipe.
    finished = subprocess.run(
        ["bash", "-c", f"{command} <(gunzip -c '{compressed}')"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert orjson.loads(finished.stdout)["sent"] == 20_000
    assert_exactly_once(server, 20_000)
    # A device: an empty stream, nothing to send (it used to be "no such file").
    status, summary = run_send(server, "/dev/null")
    assert (status, summary["sent"], summary["failed"], summary["invalid"]) == (0, 0, 0, 0)
    assert server.event_count == 20_000


def test_missing_inputs_and_directories_are_named_for_what_they_are(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    for path, message in [
        (tmp_path / "missing.jsonl", b"no such file: "),
        (tmp_path, b"is a directory"),
    ]:
        finished = subprocess.run(
            send_command(server, path), capture_output=True, timeout=60, check=False
        )
        assert finished.returncode == 2
        assert message in finished.stderr, finished.stderr
        assert str(path).encode() in finished.stderr


def test_a_killed_run_on_a_pipe_resumes_by_reading_the_stream_again(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    checkpoint = tmp_path / "checkpoint.json"
    dead_letters = tmp_path / "dead.jsonl"
    # 100,000 events, and one invalid line near the end: its line number must survive.
    data = (
        events(99_000)
        + b'{"event_type": "e", "payload": {}}\n'
        + b"".join(event_line(i) for i in range(99_000, 100_000))
    )
    arguments = (fifo, "--checkpoint", checkpoint, "--dead-letter", dead_letters,
                 "--batch-bytes", "65536")  # fmt: skip
    writer = feed(fifo, data)
    kill_send_with_progress_saved(server, checkpoint, 30_000, *arguments, "--rate", "40000")
    writer.join(timeout=10)
    assert server.event_count < 100_000
    # The same stream again, from its start: what the checkpoint settled is skipped.
    writer = feed(fifo, data)
    status, summary = run_send(server, *arguments)
    writer.join(timeout=10)
    assert status == 1, summary  # the invalid line
    assert summary["resumed"] is True
    assert 0 < summary["this_run"]["sent"] < 100_000
    assert summary["sent"] == 100_000
    assert summary["invalid"] == 1
    assert_exactly_once(server, 100_000)
    (letter,) = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    assert letter["dead_letter"]["line"] == 99_001
    # A shorter stream is not the one the checkpoint was written for: refused, not guessed.
    saved = orjson.loads(checkpoint.read_bytes())
    saved["ranges"][0].update(finished=False, done=len(data) - 1000)
    checkpoint.write_bytes(orjson.dumps(saved))
    writer = feed(fifo, data[:5000])
    finished = subprocess.run(
        send_command(server, *arguments), capture_output=True, timeout=60, check=False
    )
    writer.join(timeout=10)
    assert finished.returncode == 2, finished.stderr
    assert b"ended after 5000 bytes" in finished.stderr
    assert b"give it the same stream" in finished.stderr
    assert_exactly_once(server, 100_000)
