"""The checkpoint file: how far each input range is settled, written so a crash cannot tear it.

This module owns the checkpoint's format and its durability: the plan of input ranges,
for each the position before which every event is acknowledged or written down as a dead
letter, the settings that decide where batches are cut (a resume must cut the same batches
to send the same Idempotency-Keys), and how long the dead-letter file was when it was
written. It is replaced atomically (write, fsync, rename), so after ``kill -9`` it is the
old one or the new one, never half of each. It does not decide when to write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson

from ._input import InputRange, input_identity

FORMAT = "segops-fast-checkpoint/1"


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for other input or other settings."""


@dataclass
class RangeProgress:
    range: InputRange
    #: Every line before this position is settled.
    done: int
    #: The range was read to its end and everything in it settled.
    finished: bool = False


@dataclass
class Checkpoint:
    path: str
    batch_bytes: int
    ranges: list[RangeProgress]
    dead_letter_bytes: int = 0

    @classmethod
    def load_or_start(
        cls, path: str, inputs: list[str], batch_bytes: int, plan: list[InputRange]
    ) -> tuple[Checkpoint, bool]:
        """The checkpoint at ``path`` if there is one (True), else a new one for ``plan``.

        Raises :class:`CheckpointMismatchError` when it was written for other inputs or
        another ``batch_bytes``.
        """
        try:
            with open(path, "rb") as file:
                document = orjson.loads(file.read())
        except FileNotFoundError:
            ranges = [RangeProgress(input_range, input_range.start) for input_range in plan]
            return cls(path, batch_bytes, ranges), False
        except orjson.JSONDecodeError as error:
            raise CheckpointMismatchError(f"{path} is not a checkpoint: {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointMismatchError(f"{path} is not a {FORMAT} checkpoint")
        recorded = list(dict.fromkeys(entry["path"] for entry in document["ranges"]))
        wanted = [input_identity(name) for name in inputs]
        if recorded != wanted:
            raise CheckpointMismatchError(
                f"{path} was written for the input {recorded}, not {wanted}; "
                "give the same input, or another --checkpoint"
            )
        if document["batch_bytes"] != batch_bytes:
            raise CheckpointMismatchError(
                f"{path} was written with --batch-bytes {document['batch_bytes']}: resume "
                "with the same value, so that batches keep their Idempotency-Keys"
            )
        ranges = [
            RangeProgress(
                InputRange(_name(entry["path"], inputs), entry["start"], entry["end"]),
                entry["done"],
                entry["finished"],
            )
            for entry in document["ranges"]
        ]
        return cls(path, batch_bytes, ranges, document["dead_letter_bytes"]), True

    def save(self) -> None:
        # Each input named once, not once per range: thousands of ranges on a cluster.
        identities = {path: input_identity(path) for path in {p.range.path for p in self.ranges}}
        document: dict[str, Any] = {
            "format": FORMAT,
            "batch_bytes": self.batch_bytes,
            "dead_letter_bytes": self.dead_letter_bytes,
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
        temporary = f"{self.path}.tmp"
        with open(temporary, "wb") as file:
            file.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


def _name(identity: str, inputs: list[str]) -> str:
    """The input as given on this command line for the identity recorded."""
    return next(name for name in inputs if input_identity(name) == identity)
