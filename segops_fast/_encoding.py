"""Turning a tracked event into bytes, once, on the caller's thread.

This module owns validation and serialization: everything ``track()`` does before the
event is handed to the buffer. It does not own buffering, batching or sending.
``SegOpsClient.track`` does the common case (keyword fields, a dict payload, no
``occurred_at``) in line, to save a call; every other case and every error comes here.

An event is serialized with orjson exactly once, when it is tracked, so a caller who
mutates the payload afterwards cannot change what is sent, and no other thread ever
iterates the caller's dict. The one thing left for later is the default timestamp:
rendering a clock reading as ISO-8601 costs about as much as the rest of ``track()``
together, so ``track()`` stores the integer clock reading and the flusher renders it
while joining the batch (:func:`render_event`). A caller's own ``occurred_at`` is
serialized with the rest of the event.

The buffer keeps each event's JSON without its opening brace. That slice is needed anyway
(the rendered timestamp goes in front of the other fields), and taking it at ``track()``
time matters for speed: ``orjson.dumps`` returns its output in an oversized allocation
that it shrinks in place, and keeping 100,000 of those alive fragments the C heap until
every later ``dumps`` costs 3 to 10 us instead of 0.3 us (measured). The slice is a
right-sized copy, and the oversized original is freed at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Optional

import orjson

from ._errors import InvalidEventError
from ._types import Context, Event

#: What the buffer holds: ``(stamp, JSON after the opening brace)``. ``stamp`` is the
#: ``track()`` time in nanoseconds since the epoch, to be rendered as ``occurred_at``, or
#: None when the caller gave ``occurred_at`` and it is already in the JSON.
Record = tuple[Optional[int], bytes]

#: How much rendering the timestamp adds: ``"occurred_at":"2026-11-22T10:00:00.123456+00:00",``
RENDERED_TIMESTAMP_BYTES = 49

_dumps = orjson.dumps
_JSONEncodeError = orjson.JSONEncodeError
_clock_ns = time.time_ns


def encode_event(
    user_id: object,
    event_type: object,
    occurred_at: object,
    payload: object,
    max_event_bytes: int,
) -> Record:
    """Validate one event and serialize it; raise :class:`InvalidEventError` naming the problem.

    This is the hot path of ``track()``: the common case is a handful of type checks, one
    ``orjson.dumps`` and one clock read.
    """
    if type(user_id) is not str or not user_id or type(event_type) is not str or not event_type:
        _check_identity(user_id, event_type)
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        raise InvalidEventError(f"payload must be a dict, got {type(payload).__name__}")
    stamp: int | None
    if occurred_at is None:
        stamp = _clock_ns()
        fields: dict[str, Any] = {"user_id": user_id, "event_type": event_type, "payload": payload}
        limit = max_event_bytes - RENDERED_TIMESTAMP_BYTES
    else:
        stamp = None
        fields = {
            "user_id": user_id,
            "event_type": event_type,
            "occurred_at": _occurred_at_text(occurred_at),
            "payload": payload,
        }
        limit = max_event_bytes
    try:
        encoded = _dumps(fields)
    except _JSONEncodeError as error:
        raise InvalidEventError(_unserializable(error)) from None
    if len(encoded) > limit:
        size = len(encoded) + (max_event_bytes - limit)
        raise InvalidEventError(
            f"event is {size} bytes serialized, over max_event_bytes={max_event_bytes}"
        )
    return (stamp, encoded[1:])


def event_fields(event: object) -> tuple[object, object, object, object]:
    """``(user_id, event_type, occurred_at, payload)`` of an :class:`Event` or an event dict."""
    if isinstance(event, Event):
        return event.user_id, event.event_type, event.occurred_at, event.payload
    # A plain dict first: the check against the Mapping ABC costs more than the gets.
    if type(event) is dict or isinstance(event, Mapping):
        return (
            event.get("user_id"),
            event.get("event_type"),
            event.get("occurred_at"),
            event.get("payload"),
        )
    raise InvalidEventError(f"event must be an Event or a dict, got {type(event).__name__}")


def context_fields(context: object) -> tuple[object, object]:
    """``(user_id, traits)`` of a :class:`Context` or a context dict."""
    if isinstance(context, Context):
        return context.user_id, context.traits
    if isinstance(context, Mapping):
        return context.get("user_id"), context.get("traits")
    raise InvalidEventError(f"context must be a Context or a dict, got {type(context).__name__}")


def render_event(record: Record) -> bytes:
    """The complete JSON object of one buffered event, with its timestamp rendered."""
    parts: list[bytes] = []
    render_events(parts, (record,))
    return b"".join(parts)


def render_events(parts: list[bytes], records: Iterable[Record]) -> None:
    """Append the pieces of each record's complete JSON object to ``parts``, comma-separated.

    Pieces rather than whole objects, so that a batch body is one ``join`` with no
    intermediate bytes object per event; the timestamp is assembled from cached pieces
    (the date and time of the second, and two three-digit groups) with no formatting.
    Every event's first piece starts with the comma that separates it from the one before,
    and the first event's comma is cut off at the end: one slice instead of a test per
    event, on the thread that competes with ``track()`` for the GIL.
    """
    start = len(parts)
    last_second, second_text = -1, b""
    digits = _THREE_DIGITS
    for stamp, fields in records:
        if stamp is None:
            parts += (b",{", fields)
        else:
            second, nanosecond = divmod(stamp, 1_000_000_000)
            if second != last_second:
                last_second, second_text = second, _second_text(second)
            # occurred_at goes in front of the stored fields; JSON objects are unordered.
            parts += (
                b',{"occurred_at":"',
                second_text,
                digits[nanosecond // 1_000_000],
                digits[nanosecond // 1000 % 1000],
                b'+00:00",',
                fields,
            )
    if len(parts) > start:
        parts[start] = parts[start][1:]


_THREE_DIGITS = [b"%03d" % number for number in range(1000)]


# The last second rendered, as one tuple so that threads replace it atomically.
_last_second: tuple[int, bytes] = (-1, b"")


def _second_text(second: int) -> bytes:
    """``2026-11-22T10:00:00.``: the part of a timestamp that changes once a second."""
    global _last_second
    cached_second, text = _last_second
    if second != cached_second:
        moment = datetime.fromtimestamp(second, timezone.utc)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.").encode("ascii")
        _last_second = (second, text)
    return text


def _occurred_at_text(occurred_at: object) -> str:
    if isinstance(occurred_at, str):
        return occurred_at
    if isinstance(occurred_at, datetime):
        if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
            raise InvalidEventError(
                "occurred_at is a naive datetime; give it a timezone (for example timezone.utc)"
            )
        return occurred_at.isoformat()
    raise InvalidEventError(
        f"occurred_at must be an ISO-8601 str or a datetime, got {type(occurred_at).__name__}"
    )


def _unserializable(error: Exception) -> str:
    if "Recursion limit" in str(error):
        # orjson stops at 255 levels (the event's own object is one of them) rather than
        # exhaust the stack; a payload that contains itself meets the same limit.
        return (
            "payload is nested too deeply to serialize: at most 254 levels of dicts and "
            "lists, counting the event itself (or it contains itself)"
        )
    return f"payload cannot be serialized to JSON: {error}"


def _check_identity(user_id: object, event_type: object) -> None:
    """The slow path of the identity check: raise naming the field, or accept str subclasses."""
    for name, value in (("user_id", user_id), ("event_type", event_type)):
        if value is None:
            raise InvalidEventError(f"{name} is required")
        if not isinstance(value, str):
            raise InvalidEventError(f"{name} must be a str, got {type(value).__name__}")
        if not value:
            raise InvalidEventError(f"{name} must not be empty")
