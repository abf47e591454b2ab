"""JSON Lines input: where each part of the input starts and ends, and reading it in chunks.

This module owns the input files: telling a regular file from a stream (stdin, a named
pipe, a shell's process substitution, a device), splitting a plain regular file into byte
ranges that start at line boundaries (one per process or task), reading a range (plain,
``.gz`` or a stream) from any line start in large chunks, with the byte position after
every line, and keeping a line that never ends from taking all memory. Positions count
uncompressed bytes. A stream is read once, whole; resuming one reads it again from its
start up to the position to resume from. It does not parse JSON or know what an event is.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

STDIN = "-"
CHUNK_BYTES = 1 << 20
#: A line longer than this is not read into memory whole: it is reported as too long.
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class InputRange:
    """The lines of ``path`` that start at or after ``start`` and before ``end``."""

    path: str
    start: int
    #: None: to the end of the input (streams and ``.gz`` files are not split).
    end: int | None

    @property
    def splittable(self) -> bool:
        return not self.path.endswith(".gz") and not is_stream(self.path)


class InputError(ValueError):
    """An input cannot be read as this backfill needs it (a stream shorter on resume)."""


def is_stream(path: str) -> bool:
    """Whether ``path`` is read as one stream, from its start: stdin (``-``) or anything
    that is not a regular file (a named pipe, ``/dev/fd/N`` from ``<(command)``,
    ``/dev/stdin``, a device such as ``/dev/null``). A path that does not exist is not."""
    if path == STDIN:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def input_problem(path: str) -> str | None:
    """What stops ``path`` from being read, in words, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory, not a file of events"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def plan_ranges(
    paths: list[str], parts: int, *, max_range_bytes: int | None = None
) -> list[InputRange]:
    """Each plain file split into ``parts`` ranges of about equal size at line starts, or
    into more if a range would hold over ``max_range_bytes`` (give or take a line)."""
    ranges: list[InputRange] = []
    for path in paths:
        whole = InputRange(path, 0, None)
        size = os.path.getsize(path) if whole.splittable else 0
        pieces = parts
        if max_range_bytes is not None:
            pieces = max(parts, math.ceil(size / max_range_bytes))
        if not whole.splittable or pieces == 1:
            ranges.append(whole)
            continue
        with open(path, "rb") as file:
            cuts = (_line_start_at_or_after(file, size * n // pieces) for n in range(1, pieces))
            starts = sorted({0, *cuts})
        bounds = [start for start in starts if start < size] or [0]
        for start, end in zip(bounds, [*bounds[1:], size]):
            ranges.append(InputRange(path, start, end))
    return ranges


def _line_start_at_or_after(file: BinaryIO, offset: int) -> int:
    """The first position at or after ``offset`` where a line starts."""
    if offset == 0:
        return 0
    file.seek(offset - 1)
    # The byte before offset: if it ends a line, a line starts at offset.
    file.readline()
    return file.tell()


def input_identity(path: str) -> str:
    """How an input is named in Idempotency-Keys and checkpoints: a file's real path, so
    that a resume from another directory names it the same; a stream's absolute path as
    given (the real path of ``/dev/fd/63`` names a pipe that changes every run); stdin is
    ``-``."""
    if path == STDIN:
        return STDIN
    return os.path.abspath(path) if is_stream(path) else os.path.realpath(path)


def input_size(path: str) -> int | None:
    """Bytes the progress bar counts for ``path`` (compressed for ``.gz``); None for a
    stream."""
    return None if is_stream(path) else os.path.getsize(path)


class RangeReader:
    """Reads the lines of one range, from position ``start`` (a line start within it).

    Raises :class:`InputError` when a stream ends before ``start``: it is not the stream
    that was read up to there before."""

    def __init__(self, input_range: InputRange, start: int) -> None:
        self.range = input_range
        self._start = start
        self._stream = is_stream(input_range.path)
        self._raw: BinaryIO
        self._file: BinaryIO
        if input_range.path == STDIN:
            self._raw = self._file = sys.stdin.buffer
        else:
            self._raw, self._file = _open(input_range.path)
        #: Lines that end before ``start``, when reading up to it counted them; else None.
        self.lines_skipped: int | None = None
        if input_range.splittable:
            self._file.seek(start)
            return
        # Positions in streams and in .gz files count bytes read: read up to this one.
        skipped = lines = 0
        for chunk in _chunks(self._file, start):
            skipped += len(chunk)
            lines += chunk.count(b"\n")
        self.lines_skipped = lines
        if skipped < start:
            self.close()
            raise InputError(
                f"{input_range.path} ended after {skipped} bytes, but the checkpoint says "
                f"{start} were sent: a resume reads a stream again from its start, so give "
                "it the same stream, from the beginning"
            )

    def lines_before_start(self) -> int:
        """How many lines end before the position reading started at (a range in the middle
        of a 5 GB file: counted only when a dead letter first needs a line number)."""
        if self.lines_skipped is None:
            raw, file = _open(self.range.path)
            try:
                self.lines_skipped = sum(chunk.count(b"\n") for chunk in _chunks(file, self._start))
            finally:
                file.close()
                raw.close()
        return self.lines_skipped

    def consumed(self) -> int:
        """How far into the file on disk reading has got (compressed bytes for ``.gz``;
        0 for a stream), counting no further than the range's end."""
        if self._stream:
            return 0
        position = self._raw.tell()
        return position if self.range.end is None else min(position, self.range.end)

    def lines(self) -> Iterator[tuple[bytes, int, bool]]:
        """``(line, end, too_long)`` for each line in order: the line without its newline,
        the position just after it, and whether it went past :data:`MAX_LINE_BYTES` (then
        ``line`` holds only its first part; the rest was skipped unread)."""
        position = self._start
        end = self.range.end
        pending = b""
        # A megabyte at a time, split in C: reading line by line costs 0.4 us a line.
        while True:
            chunk = self._file.read(CHUNK_BYTES)
            if not chunk:
                if pending and (end is None or position < end):
                    yield pending, position + len(pending), False
                return
            lines = (pending + chunk if pending else chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if end is not None and position >= end:
                    return
                position += len(line) + 1
                yield line, position, False
            if len(pending) > MAX_LINE_BYTES:
                if end is not None and position >= end:
                    return
                position += len(pending) + _skip_line(self._file)
                yield pending[:MAX_LINE_BYTES], position, True
                pending = b""

    def close(self) -> None:
        if self.range.path != STDIN:
            self._file.close()
            self._raw.close()


def _skip_line(file: BinaryIO) -> int:
    """Read past the end of the current line without keeping it; return the bytes read."""
    skipped = 0
    while True:
        part = file.readline(CHUNK_BYTES)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


def _open(path: str) -> tuple[BinaryIO, BinaryIO]:
    """The file on disk, and what reads its lines (the same, or its gzip decompressor)."""
    raw = open(path, "rb")  # noqa: SIM115 (the caller closes both)
    if not path.endswith(".gz"):
        return raw, raw
    return raw, gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]


def _chunks(file: BinaryIO, count: int) -> Iterator[bytes]:
    """The next ``count`` bytes of ``file`` (fewer at its end), a chunk at a time."""
    while count > 0:
        chunk = file.read(min(count, CHUNK_BYTES))
        if not chunk:
            return
        count -= len(chunk)
        yield chunk
