"""Stand-ins for the unit layer: a transport that answers from a script, and events.

No sockets, no threads: ``ScriptedTransport.post`` returns (or raises) the next answer of
its script for the path and records every request it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Union

import orjson

from segops_fast._batching import Batch
from segops_fast._encoding import Record, encode_event
from segops_fast._transport import Response

#: One answer: a response, an exception to raise, or a function of the request body.
Answer = Union[Response, BaseException, Callable[[bytes], Response]]


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]
    at_most: float | None

    def event_numbers(self) -> list[int]:
        """The ``payload["i"]`` of each event of a batch body."""
        return [event["payload"]["i"] for event in orjson.loads(self.body)["events"]]


class ScriptedTransport:
    """Answers each path's requests from its script, in order; the last answer repeats."""

    def __init__(self, answers: Mapping[str, list[Answer]]) -> None:
        self._answers = {path: list(script) for path, script in answers.items()}
        self.requests: list[Request] = []

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], at_most: float | None = None
    ) -> Response:
        self.requests.append(Request(path, body, dict(headers), at_most))
        script = self._answers[path]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(body)
        return answer

    def to(self, path: str) -> list[Request]:
        return [request for request in self.requests if request.path == path]


OK = Response(200, b'{"accepted": 1}')


def records(count: int, *, start: int = 0, pad: int = 0) -> list[Record]:
    """Encoded events with payloads ``{"i": start}`` onwards (and ``pad`` bytes of text)."""
    return [
        encode_event("u", "e", None, {"i": number, "pad": "x" * pad}, 1 << 20)
        for number in range(start, start + count)
    ]


def batch(count: int, key: str = "key", first: int = 0) -> Batch:
    return Batch(records(count, start=first), key, first)
