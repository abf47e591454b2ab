"""Backfills against careless and hostile input: keys that cannot be sent, a refused key, a
server's huge error pages, planted and corrupt checkpoints, a second run on one checkpoint,
a dead-letter file that is not the job's, deeply nested events, and a sender that meets
something nobody expected. Against LocalIngestServer (or, for error pages, a server of a
few lines that answers every request with one), counting at the server."""

from __future__ import annotations

import fcntl
import http.server
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from segops_fast import SegOpsApiError
from segops_fast._cli import main
from segops_fast._delivery import Delivery
from segops_fast.backfill import send_events
from segops_fast.backfill._engine import SendSettings
from segops_fast.backfill._job import JobSettings
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer

from .test_backfill import (
    assert_exactly_once,
    event_line,
    kill_send_with_progress_saved,
    run_send,
    write_events,
)
from .test_cli_send import interrupted_after_first_line

SECRET = "sk_live_0123456789abcdefSECRET"


def run_cli(
    arguments: list[str], environment: dict[str, str] | None = None
) -> tuple[int, str, str]:
    finished = subprocess.run(
        [sys.executable, "-m", "segops_fast", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(environment or {})},
    )
    return finished.returncode, finished.stdout, finished.stderr


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["SEGOPS_API_KEY", "--api-key"])
def test_a_key_ending_in_a_newline_is_refused_masked_before_anything_is_sent(
    server: LocalIngestServer, tmp_path: Path, where: str
) -> None:
    events = write_events(tmp_path / "events.jsonl", 10)
    key = SECRET + "\n"
    arguments = ["send", str(events), "--api-url", server.url]
    if where == "--api-key":
        status, stdout, stderr = run_cli([*arguments, "--api-key", key])
    else:
        status, stdout, stderr = run_cli(arguments, {"SEGOPS_API_KEY": key})
    assert status == 2
    assert SECRET not in stdout + stderr
    # Masked, with the newline shown as such.
    assert "sk_...RET\\n" in stderr
    assert f"in {where} ends with a newline" in stderr
    assert "strip it" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert server.request_count == 0


def test_repr_of_the_backfill_settings_masks_the_key_and_the_proxy_password() -> None:
    password = "pa/ss@w:rd"
    send = SendSettings(
        api_url="https://api.example", api_key=SECRET, proxy=f"http://me:{password}@proxy:3128"
    )
    job = JobSettings(["-"], send, 1, 32768, None, None)
    for shown in (repr(send), repr(job), str(job)):
        assert SECRET not in shown
        assert password not in shown
        assert "pa/ss" not in shown
        assert "sk_...CRET" in shown
        assert "me:***@proxy:3128" in shown


def test_a_proxy_password_is_masked_in_the_commands_errors(tmp_path: Path) -> None:
    # A password with a "/" is parsed as urllib does (at the last "@"), so the proxy is
    # used; nothing listens there, so the command says so at once and waits until Ctrl-C.
    events = write_events(tmp_path / "events.jsonl", 1)
    returncode, first_line, stdout, rest = interrupted_after_first_line(
        ["send", str(events), "--api-url", "http://127.0.0.1:9",
         "--proxy", "http://me:pa/ss@127.0.0.1:3128"]
    )  # fmt: skip
    stderr = first_line + rest
    assert returncode == 130
    assert "pa/ss" not in stderr + stdout
    assert "could not connect to the proxy http://***@127.0.0.1:3128 (from --proxy)" in stderr


def test_help_recommends_the_environment_over_the_command_line() -> None:
    status, stdout, _ = run_cli(["send", "--help"])
    assert status == 0
    text = " ".join(stdout.split())
    assert "Give the key in the environment (SEGOPS_API_KEY" in text
    assert "process list (ps)" in text
    assert "a proxy's password in $https_proxy rather than in --proxy" in text


# -- the API refuses the key -------------------------------------------------------------------


@pytest.mark.parametrize("status_code", [401, 403])
def test_a_refused_key_stops_the_backfill_at_once_with_one_line(
    server: LocalIngestServer, tmp_path: Path, status_code: int
) -> None:
    events = write_events(tmp_path / "events.jsonl", 20_000)
    dead_letters = tmp_path / "dead.jsonl"
    arguments = ["send", str(events), "--api-url", server.url, "--batch-bytes", "32781",
                 "--dead-letter", str(dead_letters)]  # fmt: skip
    if status_code == 401:
        status, stdout, stderr = run_cli(arguments, {"SEGOPS_API_KEY": "sk_wrong_key_1234"})
    else:
        server.faults.respond_with(403, count=1000)
        status, stdout, stderr = run_cli(arguments, {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY})
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert (
        f"refused the key sk_...{'1234' if status_code == 401 else 'ocal'} (HTTP {status_code})"
        in lines[0]
    )
    assert "check --api-key or SEGOPS_API_KEY" in lines[0]
    # At once: no more requests than the senders had in hand, out of about 80 batches.
    assert server.request_count <= 8
    summary = orjson.loads(stdout)
    assert summary["sent"] == 0
    # Nothing given up: the refused batches stay for a resume with the right key.
    assert dead_letters.read_bytes() == b""
    assert [error["cause"] for error in summary["errors"]] == [lines[0].split("error: ", 1)[1]]


def test_send_events_raises_at_once_when_the_key_is_refused(server: LocalIngestServer) -> None:
    events = ({"user_id": "u", "event_type": "e", "payload": {"i": i}} for i in range(50_000))
    with pytest.raises(SegOpsApiError, match=r"refused the key sk_\.\.\. \(HTTP 401\)"):
        send_events(events, api_url=server.url, api_key="sk_nope", batch_bytes=32781)
    assert server.request_count <= 8


# -- a server's error pages --------------------------------------------------------------------


@pytest.fixture
def error_page_server() -> Iterator[str]:
    """Answers every request with a 400 and a 1 MiB error page."""
    page = b"<html>" + b"x" * (1 << 20) + b"</html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_dead_letter_keeps_a_short_reason_not_the_servers_error_page(
    error_page_server: str, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 100)
    dead_letters = tmp_path / "dead.jsonl"
    status, stdout, _ = run_cli(
        ["send", str(events), "--api-url", error_page_server, "--dead-letter", str(dead_letters)],
        {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )
    assert status == 1
    letters = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    assert len(letters) == 100
    assert {letter["payload"]["i"] for letter in letters} == set(range(100))
    for letter in letters:
        assert letter["dead_letter"]["error"].startswith(
            "the API refused the request (HTTP 400: <html>xxx"
        )
        assert len(letter["dead_letter"]["error"]) <= 200
    # 100 events of about 130 bytes, each with its reason: not 100 MiB.
    assert dead_letters.stat().st_size < 100 * 500
    summary = orjson.loads(stdout)
    assert summary["failed"] == 100
    ((cause, count),) = [(error["cause"], error["events"]) for error in summary["errors"]]
    assert count == 100
    assert len(cause) <= 200


# -- files written for the user ------------------------------------------------------------------


def test_checkpoint_and_dead_letter_files_are_private_and_no_planted_symlink_is_followed(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(event_line(0) + b"not json\n" + event_line(1))
    checkpoint, dead_letters = tmp_path / "checkpoint.json", tmp_path / "dead.jsonl"
    # The temporary name an earlier version used, planted as a symlink to a victim.
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "checkpoint.json.tmp").symlink_to(victim)
    status, summary = run_send(server, events, "--checkpoint", checkpoint,
                               "--dead-letter", dead_letters)  # fmt: skip
    assert (status, summary["sent"], summary["invalid"]) == (1, 2, 1)
    assert victim.read_bytes() == b"precious"
    for private in (checkpoint, dead_letters, Path(f"{checkpoint}.lock")):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # No temporary file is left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["events.jsonl", "checkpoint.json", "checkpoint.json.lock", "checkpoint.json.tmp",
         "dead.jsonl", "victim.txt"]
    )  # fmt: skip


@pytest.mark.parametrize("option", ["--checkpoint", "--dead-letter"])
def test_a_symlink_planted_at_a_file_written_for_the_user_is_not_followed(
    server: LocalIngestServer, tmp_path: Path, option: str
) -> None:
    events = write_events(tmp_path / "events.jsonl", 10)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted = tmp_path / "planted"
    planted.symlink_to(victim)
    status, _, stderr = run_cli(
        ["send", str(events), "--api-url", server.url, option, str(planted)],
        {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )
    assert status == 2
    assert f"{planted} is a symbolic link, which is not followed" in stderr
    assert f"give the file's own path with {option}" in stderr
    assert victim.read_bytes() == b"precious"
    assert server.request_count == 0


def test_a_second_run_on_a_checkpoint_in_use_is_refused(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", 10)
    checkpoint = tmp_path / "checkpoint.json"
    with open(f"{checkpoint}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, _, stderr = run_cli(
            ["send", str(events), "--api-url", server.url, "--checkpoint", str(checkpoint)],
            {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
        )
    assert status == 2
    assert f"{checkpoint} is in use by another segops-fast send" in stderr
    assert server.request_count == 0
    # Released, it is usable.
    assert run_send(server, events, "--checkpoint", checkpoint)[0] == 0


def _checkpoint_after_a_run(
    server: LocalIngestServer, tmp_path: Path
) -> tuple[Path, Path, dict[str, Any]]:
    events = write_events(tmp_path / "events.jsonl", 3000)
    checkpoint = tmp_path / "checkpoint.json"
    assert run_send(server, events, "--checkpoint", checkpoint, "--processes", "3")[0] == 0
    return events, checkpoint, orjson.loads(checkpoint.read_bytes())


def _corruptions(size: int) -> list[tuple[str, Any]]:
    """(what is wrong, how to make the saved checkpoint so), each a path into it."""
    return [
        ("batch_bytes is not a count", lambda c: c.update(batch_bytes="1048576")),
        ("counts must hold", lambda c: c.update(counts={"sent": 1})),
        ("a count is not a number", lambda c: c["counts"].update(sent=-5)),
        ("positions that are not numbers", lambda c: c["ranges"][0].update(done="12")),
        ("has no path or no finished flag", lambda c: c["ranges"][1].update(finished="yes")),
        ("is settled up to", lambda c: c["ranges"][0].update(done=c["ranges"][0]["end"] + 1)),
        ("is finished before its end", lambda c: c["ranges"][1].update(
            finished=True, done=c["ranges"][1]["start"])),
        ("overlap or leave gaps", lambda c: c["ranges"][1].update(
            start=c["ranges"][1]["start"] - 10)),
        ("has no ranges", lambda c: c.update(ranges=[])),
        (f"has {size} bytes now", lambda c: c["ranges"][-1].update(end=size + 100)),
        ("dead_letters must hold", lambda c: c.update(dead_letters={"inode": 1})),
        ("not a segops-fast-checkpoint/2", lambda c: c.update(format="segops-fast-checkpoint/1")),
    ]  # fmt: skip


def test_a_corrupt_checkpoint_is_refused_saying_what_is_wrong(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events, checkpoint, saved = _checkpoint_after_a_run(server, tmp_path)
    assert len(saved["ranges"]) == 3
    server.reset()
    for what, corrupt in _corruptions(events.stat().st_size):
        document = orjson.loads(orjson.dumps(saved))
        for part in document["ranges"]:
            part.update(finished=False, done=part["start"])
        corrupt(document)
        checkpoint.write_bytes(orjson.dumps(document))
        status, stdout, stderr = run_cli(
            ["send", str(events), "--api-url", server.url, "--checkpoint", str(checkpoint),
             "--processes", "3"],
            {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
        )  # fmt: skip
        assert status == 2, (what, stdout, stderr)
        assert what in stderr, (what, stderr)
        assert "Traceback" not in stderr
    checkpoint.write_bytes(b"[1, 2")
    status, _, stderr = run_cli(
        ["send", str(events), "--api-url", server.url, "--checkpoint", str(checkpoint)],
        {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )
    assert status == 2
    assert "is not a checkpoint" in stderr
    assert server.request_count == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_checkpoint_planted_by_another_user_is_refused(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events, checkpoint, _saved = _checkpoint_after_a_run(server, tmp_path)
    server.reset()
    # Planted: everything finished, so that a run would skip its whole input.
    os.chown(checkpoint, 12345, 12345)
    status, _, stderr = run_cli(
        ["send", str(events), "--api-url", server.url, "--checkpoint", str(checkpoint),
         "--processes", "3"],
        {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )  # fmt: skip
    assert status == 2
    assert "belongs to user id 12345, not to you" in stderr
    assert server.request_count == 0


def test_a_resume_cuts_only_its_own_dead_letters(server: LocalIngestServer, tmp_path: Path) -> None:
    lines = []
    for i in range(100_000):
        lines.append(event_line(i))
        if i % 1000 == 999:
            lines.append(b'{"event_type": "bad"}\n')
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(lines))
    checkpoint, dead_letters = tmp_path / "checkpoint.json", tmp_path / "dead.jsonl"
    arguments = (events, "--checkpoint", checkpoint, "--dead-letter", dead_letters,
                 "--batch-bytes", "65536")  # fmt: skip
    kill_send_with_progress_saved(server, checkpoint, 30_000, *arguments, "--rate", "40000")
    recorded = orjson.loads(checkpoint.read_bytes())["dead_letters"]
    written = dead_letters.read_bytes()
    assert recorded["length"] <= len(written)
    # What a run killed just after writing a letter leaves past the recorded length: cut.
    with open(dead_letters, "ab") as file:
        file.write(b'{"written": "after the save"}\n')
    # Another file of the user's, at the path of the dead-letter file: appended to, not cut.
    elsewhere = tmp_path / "dead-other.jsonl"
    elsewhere.write_bytes(b"the user's own line\n" * 10_000)
    other_arguments = (*arguments[:4], elsewhere, *arguments[5:])
    status, summary = run_send(server, *other_arguments)
    assert summary["invalid"] == 100, summary
    assert elsewhere.read_bytes().startswith(b"the user's own line\n" * 10_000)
    server.reset()
    # The same run again from the same point, with its own file: cut where recorded.
    checkpoint.unlink()
    dead_letters.unlink()
    kill_send_with_progress_saved(server, checkpoint, 30_000, *arguments, "--rate", "40000")
    with open(dead_letters, "ab") as file:
        file.write(b'{"written": "after the save"}\n')
    status, summary = run_send(server, *arguments)
    assert (status, summary["sent"], summary["invalid"]) == (1, 100_000, 100)
    assert_exactly_once(server, 100_000)
    letters = dead_letters.read_bytes().splitlines()
    assert b"after the save" not in b"\n".join(letters)
    assert len(letters) == 100


def test_a_dead_letter_file_shorter_than_recorded_is_refused(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(event_line(i) for i in range(50_000)) + b"oops\n" * 10)
    checkpoint, dead_letters = tmp_path / "checkpoint.json", tmp_path / "dead.jsonl"
    assert (
        run_send(server, events, "--checkpoint", checkpoint, "--dead-letter", dead_letters)[0] == 1
    )
    document = orjson.loads(checkpoint.read_bytes())
    for part in document["ranges"]:
        part.update(finished=False)
    checkpoint.write_bytes(orjson.dumps(document))
    with open(dead_letters, "r+b") as file:
        file.truncate(10)
    status, _, stderr = run_cli(
        ["send", str(events), "--api-url", server.url, "--checkpoint", str(checkpoint),
         "--dead-letter", str(dead_letters)],
        {"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    )  # fmt: skip
    assert status == 2
    assert "fewer than the" in stderr
    assert "give another --dead-letter" in stderr


# -- hostile events -------------------------------------------------------------------------------


def test_an_event_nested_300_levels_deep_is_a_dead_letter_not_a_crash(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        event_line(0)
        + b'{"event_type": "e", "payload": ' + deep + b"}\n"  # invalid, and deep
        + b'{"user_id": "u", "event_type": "e", "payload": ' + deep + b"}\n"  # deep
        + event_line(1)
    )  # fmt: skip
    checkpoint, dead_letters = tmp_path / "checkpoint.json", tmp_path / "dead.jsonl"
    arguments = (events, "--checkpoint", checkpoint, "--dead-letter", dead_letters)
    status, summary = run_send(server, *arguments)
    assert (status, summary["sent"], summary["invalid"]) == (1, 2, 2), summary
    letters = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    assert [letter["dead_letter"]["line"] for letter in letters] == [2, 3]
    assert "user_id is required" in letters[0]["dead_letter"]["reason"]
    assert "nested too deeply" in letters[1]["dead_letter"]["reason"]
    assert all(letter["raw"].endswith("}" * 300 + "}") for letter in letters)
    # And again, resumed from a checkpoint that has not finished.
    document = orjson.loads(checkpoint.read_bytes())
    document["ranges"][0].update(finished=False, done=0)
    document.update(counts={"sent": 0, "failed": 0, "invalid": 0}, dead_letters=None)
    checkpoint.write_bytes(orjson.dumps(document))
    status, summary = run_send(server, *arguments)
    assert (status, summary["invalid"]) == (1, 2)
    assert_exactly_once(server, 2)


# -- something nobody expected ----------------------------------------------------------------


def _explode(self: Delivery, batch: Any) -> Any:
    raise ValueError(f"Invalid header value b'ApiKey {SECRET}\\n'")


def test_an_unexpected_error_in_a_sender_is_counted_reported_and_stops_the_run(
    server: LocalIngestServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(Delivery, "attempt_batch", _explode)
    events = write_events(tmp_path / "events.jsonl", 50_000)
    dead_letters = tmp_path / "dead.jsonl"
    status = main(["send", str(events), "--api-url", server.url, "--api-key", SECRET,
                   "--dead-letter", str(dead_letters), "--batch-bytes", "65536"])  # fmt: skip
    out, err = capsys.readouterr()
    assert SECRET not in out + err + dead_letters.read_text()
    assert status == 1
    summary = orjson.loads(out)
    # What the senders held is given up, counted and written down; the rest waits for a
    # resume; the run says why it stopped.
    assert summary["failed"] > 0
    letters = dead_letters.read_bytes().splitlines()
    assert len(letters) == summary["failed"]
    assert "unexpected ValueError while sending" in err
    assert server.event_count == 0
    with pytest.raises(SegOpsApiError, match="unexpected ValueError while sending"):
        send_events(
            ({"user_id": "u", "event_type": "e", "payload": {}} for _ in range(10)),
            api_url=server.url,
            api_key=SECRET,
        )
