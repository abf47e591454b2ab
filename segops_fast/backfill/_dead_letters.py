"""The dead-letter file of ``segops-fast send``: invalid lines and failed events, written once.

This module owns the file: creating it private (0600), never through a symbolic link
planted at its path (it would append to whatever that points at), holding each range's letters until
the range is settled past them (a letter of a line read ahead of the settled position
would be written again by a resume), writing them as JSON Lines that ``send`` can replay,
and, on a resume, cutting off what was written after the checkpoint was saved, only if
the file is the one the checkpoint recorded (its device and inode): a file this job did
not write is appended to, never cut. A failed event carries a short reason, never the
server's whole error text. It does not count anything or decide when to save.
"""

from __future__ import annotations

import os
from typing import IO

import orjson

from ._checkpoint import CheckpointError, DeadLetterFile, unopenable
from ._worker import Message


class DeadLetters:
    """Letters held per range index until :meth:`release`; ``path`` None writes nothing."""

    def __init__(self, path: str | None, recorded: DeadLetterFile | None) -> None:
        self._held: dict[int, list[tuple[int, Message]]] = {}
        self._file: IO[bytes] | None = None
        self.identity: DeadLetterFile | None = None
        if path is None:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            descriptor = os.open(path, flags, 0o600)
        except OSError as error:
            raise CheckpointError(unopenable(path, error, "--dead-letter")) from None
        self._file = os.fdopen(descriptor, "ab")
        status = os.fstat(descriptor)
        length = status.st_size
        if recorded is not None and (recorded.device, recorded.inode) == (
            status.st_dev,
            status.st_ino,
        ):
            if length < recorded.length:
                self._file.close()
                raise CheckpointError(
                    f"{path} has {length} bytes, fewer than the {recorded.length} the "
                    "checkpoint recorded: something else changed it; give another --dead-letter"
                )
            # Letters written after the checkpoint was saved are written again: cut them.
            self._file.truncate(recorded.length)
            length = recorded.length
        self.identity = DeadLetterFile(status.st_dev, status.st_ino, length)

    def hold(self, index: int, position: int, message: Message) -> None:
        """Keep ``message`` (an ``invalid`` or ``failed`` report) of range ``index`` whose
        input ends at ``position``, until the range is settled that far."""
        self._held.setdefault(index, []).append((position, message))

    def release(self, index: int, settled_to: int, path: str) -> list[Message]:
        """Write the letters of range ``index`` (of input ``path``) up to ``settled_to``, in
        input order; return their messages."""
        held = self._held.get(index)
        if not held:
            return []
        ready = sorted((item for item in held if item[0] <= settled_to), key=lambda item: item[0])
        if not ready:
            return []
        self._held[index] = [item for item in held if item[0] > settled_to]
        if self._file is not None:
            for _, message in ready:
                self._file.write(_letters(message, path))
        return [message for _, message in ready]

    def sync(self) -> DeadLetterFile | None:
        """Put the letters written so far on disk; the file's identity and length."""
        if self._file is None or self.identity is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self.identity.length = os.fstat(self._file.fileno()).st_size
        return self.identity

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _letters(message: Message, path: str) -> bytes:
    if message[0] == "invalid":
        _, _, _, line_number, line, reason = message
        return _invalid_letter(path, line_number, line, reason)
    _, _, _, events, reason, error = message
    where = orjson.dumps({"file": path, "reason": reason, "error": error})
    # Each event's JSON object, with the dead_letter field added before its last brace.
    return b"".join(event[:-1] + b',"dead_letter":' + where + b"}\n" for event in events)


def _invalid_letter(path: str, line_number: int, line: bytes, reason: str) -> bytes:
    where = {"file": path, "line": line_number, "reason": reason}
    try:
        original = orjson.loads(line)
        if isinstance(original, dict):
            return orjson.dumps({**original, "dead_letter": where}) + b"\n"
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        # Not JSON, or nested deeper than can be written again: kept as text.
        pass
    return orjson.dumps({"raw": line.decode("utf-8", "replace"), "dead_letter": where}) + b"\n"
