"""``before_send``: the user's hook that scrubs, enriches or drops each event before encoding.

This module owns running the hook inside ``track()`` (what it is given, what it may
return, what happens when it fails), and the hooks the library offers:
:func:`sample_by_user` and :func:`chain_before_send`. It does not own encoding or
counting: the event the hook keeps is encoded by :mod:`segops_fast._encoding`, and the
client counts the events it drops in ``stats().filtered``.

The hook gets a new dict ``{"user_id", "event_type", "payload"}``, with ``occurred_at``
too when the caller gave one (the event dict the README documents; without it, the event
is stamped with the time of ``track()``), so it may change that dict in place or return
another. ``payload`` is the caller's own dict,
not a copy: copying every payload would cost every event, and peers (PostHog, Sentry)
hand the hook the caller's objects too.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Optional

import orjson

from ._encoding import RENDERED_TIMESTAMP_BYTES, Record, encode_event, event_fields
from ._errors import InvalidEventError

_dumps = orjson.dumps
_JSONEncodeError = orjson.JSONEncodeError
_clock_ns = time.time_ns

#: A ``before_send`` hook: the event as a dict in, the dict to send (or None to drop) out.
BeforeSend = Callable[[dict[str, Any]], Optional[dict[str, Any]]]

#: The keys of an event dict; a hook returning any other key would see it silently ignored.
_EVENT_KEYS = frozenset(("user_id", "event_type", "occurred_at", "payload"))

#: At most one report of a failing hook a second: a hook that fails, fails on every event.
_FAILURE_REPORT_INTERVAL = 1.0


class HookRunner:
    """Runs one client's ``before_send`` on the caller's thread and encodes what it keeps."""

    def __init__(
        self,
        hook: BeforeSend,
        max_event_bytes: int,
        report_error: Callable[[BaseException], None],
    ) -> None:
        if not callable(hook):
            raise TypeError(
                f"before_send must be a callable taking an event dict, got {type(hook).__name__}"
            )
        self._hook = hook
        self._max_event_bytes = max_event_bytes
        self._max_unstamped_event_bytes = max_event_bytes - RENDERED_TIMESTAMP_BYTES
        self._report_error = report_error
        self._failures_unreported = 0
        self._last_report = -_FAILURE_REPORT_INTERVAL

    def record(
        self, user_id: object, event_type: object, occurred_at: object, payload: object
    ) -> Record | None:
        """The record of the event the hook returns, or None when it drops the event.

        The caller's event is checked first, so that the hook sees only events with a
        non-empty ``user_id`` and ``event_type`` and a dict payload, and a bad call raises
        :class:`InvalidEventError` whatever the hook would do. Whether it serializes, and
        its size, are checked on what the hook returns: a dropped event is never encoded.
        """
        if not (
            type(user_id) is str
            and user_id
            and type(event_type) is str
            and event_type
            and (payload is None or type(payload) is dict)
        ):
            # Raises naming the problem (or accepts str subclasses and Mapping payloads).
            encode_event(user_id, event_type, occurred_at, payload, self._max_event_bytes)
        event = {"user_id": user_id, "event_type": event_type, "payload": payload or {}}
        if occurred_at is not None:
            event["occurred_at"] = occurred_at
        try:
            kept = self._hook(event)
        except Exception as error:
            tracked = (user_id, event_type, occurred_at, payload)
            return self._as_tracked(tracked, f"raised {type(error).__name__}", error)
        if kept is None:
            return None
        if type(kept) is dict and len(kept) == 3:
            # The common case (no occurred_at) encoded here as track() does in line, the
            # dict itself serialized: it holds the three fields and nothing else.
            try:
                user_id_kept, event_type_kept = kept["user_id"], kept["event_type"]
                common = (
                    type(user_id_kept) is str
                    and user_id_kept
                    and type(event_type_kept) is str
                    and event_type_kept
                    and type(kept["payload"]) is dict
                )
                stamp = _clock_ns()
                encoded = _dumps(kept) if common else b""
            except (KeyError, _JSONEncodeError):
                pass  # encode_event names the problem below
            else:
                if common and len(encoded) <= self._max_unstamped_event_bytes:
                    return (stamp, encoded[1:])
        try:
            _check_keys(kept)
            return encode_event(*event_fields(kept), self._max_event_bytes)
        except InvalidEventError as error:
            tracked = (user_id, event_type, occurred_at, payload)
            return self._as_tracked(
                tracked, f"returned an event that cannot be sent ({error})", error
            )

    def _as_tracked(
        self, tracked: tuple[object, object, object, object], what: str, error: BaseException
    ) -> Record:
        """The hook failed: the record of the event as tracked, and the failure reported.

        Encoded first: when the caller's own event cannot be sent either (a payload orjson
        cannot serialize, say), :class:`InvalidEventError` says so and the hook, which
        failed on that event, is not blamed.
        """
        record = encode_event(*tracked, self._max_event_bytes)
        self._failed(what, error)
        return record

    def _failed(self, what: str, error: BaseException) -> None:
        """Tell ``on_error``, at most once a second, naming what went wrong but no value of
        the event: the hook is often the one thing keeping personal data out of logs."""
        # No lock: one held by another thread at a fork would stay held in the child, and
        # a race between threads here costs at most a miscount or a second report.
        now = time.monotonic()
        self._failures_unreported += 1
        if now - self._last_report < _FAILURE_REPORT_INTERVAL:
            return
        failures, self._failures_unreported = self._failures_unreported, 0
        self._last_report = now
        more = f" ({failures} failures since the last report)" if failures > 1 else ""
        report = RuntimeError(
            f"SegOps: before_send {what}; the event was sent as tracked{more}. "
            "Fix the before_send hook: it must return the event dict, a new one, or None"
        )
        report.__cause__ = error
        self._report_error(report)


def _check_keys(kept: object) -> None:
    """Refuse a mapping with keys an event does not have (``event_fields`` would ignore them)."""
    if isinstance(kept, dict):
        unknown = sorted(str(key) for key in kept if key not in _EVENT_KEYS)
        if unknown:
            raise InvalidEventError(
                f"unknown keys {unknown}; an event has only {sorted(_EVENT_KEYS)}"
            )


def sample_by_user(rate: float) -> BeforeSend:
    """A ``before_send`` hook keeping the events of a fraction ``rate`` of users, all or none.

    Which users are kept depends only on the user id (the first 8 bytes of its BLAKE2b
    digest, read as a number below ``rate * 2**64``), so every process and every machine
    keeps the same users, and raising ``rate`` only adds users.
    """
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"rate must be a number from 0 to 1, got {rate!r}")
    threshold = int(rate * 2**64)
    blake2b = hashlib.blake2b

    def keep_sampled_users(event: dict[str, Any]) -> dict[str, Any] | None:
        digest = blake2b(event["user_id"].encode(), digest_size=8).digest()
        return event if int.from_bytes(digest, "big") < threshold else None

    return keep_sampled_users


def chain_before_send(*hooks: BeforeSend) -> BeforeSend:
    """One ``before_send`` hook running ``hooks`` in order; the first to return None drops
    the event and the rest do not run. Put ``sample_by_user`` first: later hooks then run
    only on the events kept."""
    for hook in hooks:
        if not callable(hook):
            raise TypeError(
                f"chain_before_send takes callables taking an event dict, got {type(hook).__name__}"
            )

    def run_in_order(event: dict[str, Any]) -> dict[str, Any] | None:
        for hook in hooks:
            kept = hook(event)
            if kept is None:
                return None
            event = kept
        return event

    return run_in_order
