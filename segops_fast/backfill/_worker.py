"""One process's share of a backfill: read its input ranges, turn lines into events, send them.

This module owns the loop from a line of JSON to :meth:`StreamSender.add`: parsing,
validating with the same rules as ``track()``, numbering lines for dead letters, and
telling the coordinator (through ``report``) what happened, as plain tuples that can
cross a process boundary. It runs in the coordinator's process, or in a worker process
started by it (:func:`run_in_worker_process`). It does not write files or decide when to
stop: ``should_stop`` says so.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import orjson

from .._delivery import GivenUp
from .._encoding import Record, encode_event, event_fields
from .._errors import InvalidEventError, describe
from ._engine import SendSettings, Settled, StreamSender
from ._input import InputRange, RangeReader, input_identity

#: A message to the coordinator: ``(kind, range index, *details)``; see :class:`Report`.
Message = tuple[Any, ...]
Report = Callable[[Message], None]

#: Lines between two looks at ``should_stop`` and two progress messages.
_LINES_PER_CHECK = 4096


#: Nesting orjson can write (its limit is 254 levels).
_MAX_DEPTH = 254
#: A server's error text kept with each failed event in the dead-letter file: a short
#: reason, never the whole error page once per event.
MAX_ERROR_CHARS = 200

#: The fields of an event; a line with others is re-serialized without them.
_EVENT_FIELDS = frozenset(("user_id", "event_type", "occurred_at", "payload"))


def encode_line(line: bytes, max_event_bytes: int) -> Record:
    """One line of JSON as a record; raises ``orjson.JSONDecodeError`` or
    :class:`InvalidEventError` naming the problem.

    A line that is already exactly an event (only its fields, each of the right type,
    a payload object) is sent as it is: serializing it again would cost twice as much as
    parsing it. Any other line goes through the checks of ``track()``.
    """
    event = orjson.loads(line)
    if type(event) is dict and event.keys() <= _EVENT_FIELDS:
        user_id, event_type = event.get("user_id"), event.get("event_type")
        occurred_at = event.get("occurred_at")
        if (
            type(user_id) is str
            and user_id
            and type(event_type) is str
            and event_type
            and type(event.get("payload")) is dict
            and (occurred_at is None or type(occurred_at) is str)
        ):
            text = line.strip()
            # orjson writes at most 254 levels: a deeper event is refused on the slow path,
            # as track() refuses it, rather than sent here. Only long lines can be so deep.
            if len(text) <= max_event_bytes and (
                len(text) < 2 * _MAX_DEPTH or text.count(b"{") + text.count(b"[") < _MAX_DEPTH
            ):
                # The record holds the JSON after its opening brace.
                return (None, text[1:])
    return encode_input_event(event, max_event_bytes)


def encode_input_event(event: object, max_event_bytes: int) -> Record:
    """Validate and serialize one event of a backfill, as ``track()`` would, except that an
    event without ``occurred_at`` is sent without one (the server stamps it), so that the
    same input always gives the same bytes and the same Idempotency-Keys."""
    user_id, event_type, occurred_at, payload = event_fields(event)
    _, fields = encode_event(user_id, event_type, occurred_at, payload, max_event_bytes)
    return (None, fields)


def send_ranges(
    assigned: list[tuple[int, InputRange, int]],
    *,
    settings: SendSettings,
    max_event_bytes: int,
    report: Report,
    should_stop: Callable[[], bool],
) -> None:
    """Send each ``(index, range, start)`` in turn, from ``start``, until done or stopped."""
    for index, input_range, start in assigned:
        if should_stop():
            return
        stopped_by_itself = _send_range(
            index,
            input_range,
            start,
            settings=settings,
            max_event_bytes=max_event_bytes,
            report=report,
            should_stop=should_stop,
        )
        if stopped_by_itself:
            # TLS, the proxy or the key refused: every other range would be refused alike.
            return


def short_error(error: BaseException) -> str:
    """The error kept with each failed event: what happened (the same text for every
    batch one cause refused, so causes can be counted), its first
    :data:`MAX_ERROR_CHARS` characters, on one line."""
    text = " ".join(describe(error).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _send_range(
    index: int,
    input_range: InputRange,
    start: int,
    *,
    settings: SendSettings,
    max_event_bytes: int,
    report: Report,
    should_stop: Callable[[], bool],
) -> bool:
    """Send one range; True if the engine stopped by itself (and said why)."""

    def on_failed(given_up: GivenUp, end: int) -> None:
        error = short_error(given_up.error)
        report(("failed", index, end, given_up.events, given_up.reason, error))

    def on_settled(settled: Settled) -> None:
        report(("settled", index, settled.watermark, settled.sent, settled.failed))

    def on_waiting(cause: str) -> None:
        report(("waiting", index, cause))

    source = input_identity(input_range.path)
    reader = RangeReader(input_range, start)
    sender = StreamSender(
        settings,
        source=source,
        start=start,
        on_failed=on_failed,
        on_settled=on_settled,
        should_stop=should_stop,
        on_waiting=on_waiting,
    )
    # From the range's start, so that a resumed run's bar begins where the last one ended.
    read_so_far = input_range.start
    end = start
    lines = 0

    def invalid(line: bytes, reason: str) -> None:
        number = reader.lines_before_start() + lines
        report(("invalid", index, end, number, line, reason))
        sender.pass_over(end)

    try:
        for line, end, too_long in reader.lines():
            lines += 1
            if lines % _LINES_PER_CHECK == 0:
                consumed = reader.consumed()
                report(("read", index, consumed - read_so_far))
                read_so_far = consumed
                if should_stop() or sender.stopped:
                    sender.stop()
                    break
            if too_long:
                invalid(line[:1024], f"line is longer than {len(line)} bytes")
                continue
            try:
                record = encode_line(line, max_event_bytes)
            except (orjson.JSONDecodeError, InvalidEventError) as error:
                if not line.strip():
                    sender.pass_over(end)
                elif isinstance(error, InvalidEventError):
                    invalid(line, str(error))
                else:
                    invalid(line, f"not JSON: {error}")
                continue
            sender.add(record, end)
        else:
            report(("read", index, reader.consumed() - read_so_far))
        sender.finish()
        cause = sender.stop_cause
        if cause is not None:
            report(("error", index, cause.message, cause.setting))
        elif not sender.stopped and sender.watermark == end:
            report(("finished", index, end))
    finally:
        reader.close()
    return sender.stop_cause is not None


def run_in_worker_process(
    assigned: list[tuple[int, InputRange, int]],
    *,
    settings: SendSettings,
    max_event_bytes: int,
    messages: Any,
    stop: Any,
    parent_pid: int,
) -> None:
    """A worker process's entry point: ``messages`` is a multiprocessing queue, ``stop`` a
    multiprocessing event. Ctrl-C reaches the whole process group; only the coordinator
    acts on it, and tells the workers through ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def should_stop() -> bool:
        # A coordinator killed with SIGKILL cannot say stop: its workers notice it is gone.
        return bool(stop.is_set()) or os.getppid() != parent_pid

    try:
        send_ranges(
            assigned,
            settings=settings,
            max_event_bytes=max_event_bytes,
            report=messages.put,
            should_stop=should_stop,
        )
    except Exception as error:  # reported, not lost: the coordinator exits 1 with it
        # By its type only: an error's text can hold what it was given (a key).
        messages.put(("error", -1, f"the worker process failed: {type(error).__name__}", None))
    finally:
        messages.put(("exit", -1))
