"""The checkpoint file: how far each input range is settled, written so a crash cannot tear it.

This module owns the checkpoint's format, its validation and its durability: the plan of
input ranges, for each the position before which every event is acknowledged or written
down as a dead letter, the settings that decide where batches are cut (a resume must cut
the same batches to send the same Idempotency-Keys), the job's counts so far, and which
dead-letter file the job wrote and how long it was. A checkpoint decides what a run
skips, so one is trusted only if the user running owns it and it is consistent in full
(types, ranges ordered, contiguous and within the input as it is now). One run at a time
holds it, through an advisory lock on ``PATH.lock``. It is replaced atomically: written to
a new private file of unpredictable name in the same directory (created exclusively,
never through a symlink), fsynced, renamed; so after ``kill -9`` it is the old one or the
new one. It does not decide when to write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._input import InputRange, input_identity

FORMAT = "segops-fast-checkpoint/2"
#: What the job counts across its runs, as saved.
COUNTS = ("sent", "failed", "invalid")


class CheckpointError(ValueError):
    """The checkpoint (or the dead-letter file beside it) cannot be used: another run holds
    it, it was written for other input or settings, it is not one this user's runs wrote,
    or it is a symbolic link."""


@dataclass
class RangeProgress:
    range: InputRange
    #: Every line before this position is settled.
    done: int
    #: The range was read to its end and everything in it settled.
    finished: bool = False


@dataclass
class DeadLetterFile:
    """The dead-letter file the job writes: which file, and its length when last saved."""

    device: int
    inode: int
    length: int


@dataclass
class Checkpoint:
    path: str
    batch_bytes: int
    ranges: list[RangeProgress]
    #: The most events in one batch (set by ``--rate``, so pacing is even), or None.
    batch_events: int | None = None
    #: The job's counts (``COUNTS``) and its failures' causes, up to ``ranges``' positions.
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    causes: dict[str, int] = field(default_factory=dict)
    dead_letters: DeadLetterFile | None = None
    _lock: int | None = field(default=None, repr=False)

    @classmethod
    def load_or_start(
        cls,
        path: str,
        inputs: list[str],
        plan: list[InputRange],
        *,
        batch_bytes: int,
        batch_events: int | None,
    ) -> tuple[Checkpoint, bool]:
        """The checkpoint at ``path`` if there is one (True), else a new one for ``plan``;
        locked until :meth:`close`. Raises :class:`CheckpointError` saying what is wrong."""
        lock = _lock(path)
        try:
            document = _read(path)
            if document is None:
                ranges = [RangeProgress(part, part.start) for part in plan]
                return cls(path, batch_bytes, ranges, batch_events, _lock=lock), False
            checkpoint = _parse(document, path, inputs, batch_bytes)
        except BaseException:
            os.close(lock)
            raise
        checkpoint._lock = lock
        return checkpoint, True

    def save(self) -> None:
        # Each input named once, not once per range: thousands of ranges on a cluster.
        identities = {path: input_identity(path) for path in {p.range.path for p in self.ranges}}
        document: dict[str, Any] = {
            "format": FORMAT,
            "batch_bytes": self.batch_bytes,
            "batch_events": self.batch_events,
            "counts": self.counts,
            "causes": self.causes,
            "dead_letters": None
            if self.dead_letters is None
            else {
                "device": self.dead_letters.device,
                "inode": self.dead_letters.inode,
                "length": self.dead_letters.length,
            },
            "ranges": [
                {
                    "path": identities[progress.range.path],
                    "start": progress.range.start,
                    "end": progress.range.end,
                    "done": progress.done,
                    "finished": progress.finished,
                }
                for progress in self.ranges
            ],
        }
        replace_privately(self.path, orjson.dumps(document, option=orjson.OPT_INDENT_2))

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race the next run)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def replace_privately(path: str, content: bytes) -> None:
    """Make ``path`` hold ``content``, atomically, readable by its owner only.

    The new content goes to a file that ``mkstemp`` creates in the same directory (an
    unpredictable name, ``O_EXCL``, mode 0600: nothing planted there can be followed or
    overwritten), fsynced before the rename and the directory after it."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _lock(path: str) -> int:
    lock_path = f"{path}.lock"
    try:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise CheckpointError(
            f"cannot lock the checkpoint: {unopenable(lock_path, error, '--checkpoint')}"
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise CheckpointError(
            f"{path} is in use by another segops-fast send (it holds {lock_path}): wait "
            "for that run to end, or give another --checkpoint"
        ) from None
    return descriptor


def _read(path: str) -> dict[str, Any] | None:
    """The checkpoint's JSON, or None if there is none; refused unless the user running
    owns it (it decides what is skipped), and if it is a symbolic link (one planted there
    could point at a checkpoint of the user's for other work)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(unopenable(path, error, "--checkpoint")) from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise CheckpointError(f"{path} is not a regular file: give another --checkpoint")
        if status.st_uid != os.geteuid():
            raise CheckpointError(
                f"{path} belongs to user id {status.st_uid}, not to you: a checkpoint decides "
                "what is skipped, so only your own is trusted; give another --checkpoint"
            )
        content = file.read()
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not a checkpoint ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a {FORMAT} checkpoint: give another --checkpoint (a checkpoint "
            "of an earlier segops-fast is resumed with that version)"
        )
    return document


def unopenable(path: str, error: OSError, option: str) -> str:
    """Why ``path`` (given with ``option``) cannot be opened, in words."""
    if os.path.islink(path):
        return (
            f"{path} is a symbolic link, which is not followed (one planted there could "
            f"point anywhere): give the file's own path with {option}"
        )
    return f"cannot open {path}: {error.strerror}"


def _parse(document: dict[str, Any], path: str, inputs: list[str], batch_bytes: int) -> Checkpoint:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is not a valid checkpoint: {what}; give another --checkpoint"
        )

    recorded_batch_bytes = document.get("batch_bytes")
    if not _is_count(recorded_batch_bytes):
        raise bad("batch_bytes is not a count")
    if recorded_batch_bytes != batch_bytes:
        raise CheckpointError(
            f"{path} was written with --batch-bytes {recorded_batch_bytes}: resume "
            "with the same value, so that batches keep their Idempotency-Keys"
        )
    batch_events = document.get("batch_events")
    if batch_events is not None and not (_is_count(batch_events) and batch_events >= 1):
        raise bad("batch_events is not a count")
    counts = document.get("counts")
    if not isinstance(counts, dict) or set(counts) != set(COUNTS):
        raise bad(f"counts must hold {', '.join(COUNTS)}")
    causes = document.get("causes")
    if not isinstance(causes, dict):
        raise bad("causes is not an object")
    if not all(_is_count(value) for value in [*counts.values(), *causes.values()]):
        raise bad("a count is not a number of at least 0")
    entries = document.get("ranges")
    if not isinstance(entries, list) or not entries:
        raise bad("it has no ranges")
    ranges = [_parse_range(entry, inputs, bad) for entry in entries]
    _check_coverage(ranges, inputs, path, bad)
    return Checkpoint(
        path,
        batch_bytes,
        ranges,
        batch_events,
        counts=counts,
        causes=causes,
        dead_letters=_parse_dead_letters(document.get("dead_letters"), bad),
    )


def _parse_range(entry: object, inputs: list[str], bad: Any) -> RangeProgress:
    if not isinstance(entry, dict):
        raise bad("a range is not an object")
    identity: Any = entry.get("path")
    start: Any = entry.get("start")
    end: Any = entry.get("end")
    done: Any = entry.get("done")
    finished: Any = entry.get("finished")
    if not isinstance(identity, str) or not isinstance(finished, bool):
        raise bad("a range has no path or no finished flag")
    if not (_is_count(start) and _is_count(done) and (end is None or _is_count(end))):
        raise bad(f"a range of {identity} has positions that are not numbers of at least 0")
    if done < start or (end is not None and (end <= start or done > end)):
        raise bad(f"the range of {identity} from {start} to {end} is settled up to {done}")
    if finished and end is not None and done != end:
        raise bad(f"the range of {identity} from {start} is finished before its end")
    wanted = {input_identity(name): name for name in inputs}
    if identity not in wanted:
        raise CheckpointError(
            f"{entry.get('path')} is in the checkpoint but not in this command's input: give "
            "the same input, or another --checkpoint"
        )
    return RangeProgress(InputRange(wanted[identity], start, end), done, finished)


def _check_coverage(ranges: list[RangeProgress], inputs: list[str], path: str, bad: Any) -> None:
    """Each input's ranges, in order, cover it from its start to its end as it is now, once."""
    recorded = list(dict.fromkeys(input_identity(p.range.path) for p in ranges))
    wanted = [input_identity(name) for name in inputs]
    if recorded != wanted:
        raise CheckpointError(
            f"{path} was written for the input {recorded}, not {wanted}; "
            "give the same input, or another --checkpoint"
        )
    for name in inputs:
        mine = [p.range for p in ranges if p.range.path == name]
        if len(mine) == 1 and mine[0].start == 0 and mine[0].end is None:
            continue  # read whole, to its end
        if not mine[0].splittable:
            raise bad(f"{name} is read whole, but has ranges {_spans(mine)}")
        size = os.path.getsize(name)
        ends = [0] + [part.end for part in mine]
        if [part.start for part in mine] != ends[:-1] or any(end is None for end in ends):
            raise bad(f"the ranges of {name} overlap or leave gaps: {_spans(mine)}")
        if ends[-1] != size:
            raise CheckpointError(
                f"{name} has {size} bytes now, but {path} was written for {ends[-1]}: the "
                "input changed; give another --checkpoint to send it as it is now"
            )


def _parse_dead_letters(recorded: object, bad: Any) -> DeadLetterFile | None:
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or set(recorded) != {"device", "inode", "length"}:
        raise bad("dead_letters must hold device, inode and length")
    if not all(_is_count(value) for value in recorded.values()):
        raise bad("dead_letters holds a value that is not a number of at least 0")
    return DeadLetterFile(recorded["device"], recorded["inode"], recorded["length"])


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _spans(ranges: list[InputRange]) -> str:
    return ", ".join(f"{part.start}-{'' if part.end is None else part.end}" for part in ranges)
