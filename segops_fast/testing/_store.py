"""What LocalIngestServer keeps and counts, and the exactly-once summary of it.

This module owns the record behind one lock: each stored request's events with the
``Idempotency-Key`` they came with, stored once per key (a repeated key is counted, not
stored again: the server-side deduplication a real deployment does); the counters; the
keep limit (at most ``max_kept_events`` events, each request counting at least one, so
that the requests and keys remembered are bounded too: past it, events are counted in
``events_not_kept`` and not kept, until a reset); and the summaries that exactly-once
checks read. It does not own HTTP, the auth rules or the endpoints: :mod:`._server`.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class ReceivedEvent:
    event: dict[str, Any]
    idempotency_key: str | None


@dataclass
class Counts:
    """What the server counted since it started or was last reset."""

    requests: int = 0
    rejected_requests: int = 0
    sessions_minted: int = 0
    #: Ingest requests that met a scripted fault instead of a plain answer.
    faults_acted: int = 0
    #: Events stored (kept), and events answered 200 past the keep limit.
    event_count: int = 0
    events_not_kept: int = 0
    repeated_key_requests: int = 0
    repeated_key_events: int = 0
    #: TLS handshakes completed and failed (with ``tls`` only): one per connection.
    tls_handshakes: int = 0
    tls_handshake_failures: int = 0
    #: Requests whose body came gzipped, and the largest body of any request once decoded.
    gzip_requests: int = 0
    largest_body: int = 0


class Store:
    """The server's record; every method is safe to call from any thread."""

    def __init__(self, max_kept_events: int) -> None:
        self.max_kept_events = max_kept_events
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._counts = Counts()
        #: Each stored request's events with its key: one list per request, not an object
        #: per event, so storing costs the server next to nothing at 300,000 events/s.
        self._stored: list[tuple[str | None, list[dict[str, Any]]]] = []
        self._keys_seen: set[str] = set()
        #: What the keep limit has used: each stored request counts at least one.
        self._kept = 0

    def reset(self) -> None:
        """Forget every event and counter."""
        with self._lock:
            self._counts = Counts()
            self._stored = []
            self._keys_seen = set()
            self._kept = 0

    def add(self, **amounts: int) -> None:
        """Add to the named :class:`Counts` fields."""
        with self._lock:
            for name, amount in amounts.items():
                setattr(self._counts, name, getattr(self._counts, name) + amount)

    def note_body(self, size: int) -> None:
        with self._lock:
            self._counts.largest_body = max(self._counts.largest_body, size)

    def counts(self) -> Counts:
        with self._lock:
            return dataclasses.replace(self._counts)

    def keep(self, key: str | None, events: list[Any]) -> None:
        """Store one accepted request's events once per key, within the keep limit."""
        with self._arrived:
            counts = self._counts
            if key is not None and key in self._keys_seen:
                counts.repeated_key_requests += 1
                counts.repeated_key_events += len(events)
                return
            cost = max(1, len(events))
            if self._kept + cost > self.max_kept_events:
                self._kept = self.max_kept_events
                counts.events_not_kept += len(events)
                return
            if key is not None:
                self._keys_seen.add(key)
            self._kept += cost
            self._stored.append((key, events))
            counts.event_count += len(events)
            self._arrived.notify_all()

    def received(self) -> list[ReceivedEvent]:
        with self._lock:
            stored = list(self._stored)
        return [ReceivedEvent(event, key) for key, events in stored for event in events]

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            stored = list(self._stored)
        return [event for _, events in stored for event in events]

    def wait_for_events(self, count: int, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: self._counts.event_count >= count, timeout)

    def summary(self) -> dict[str, int]:
        with self._lock:
            counts = self._counts
            stored = [event for _, events in self._stored for event in events]
            summary = {
                "requests": counts.requests,
                "rejected_requests": counts.rejected_requests,
                "sessions_minted": counts.sessions_minted,
                "faults_acted": counts.faults_acted,
                "events": len(stored),
                "repeated_key_requests": counts.repeated_key_requests,
                "repeated_key_events": counts.repeated_key_events,
                "events_not_kept": counts.events_not_kept,
                "keep_limit_reached": self._kept >= self.max_kept_events,
            }
        summary.update(_exactly_once(stored))
        return summary

    def summary_by_event_type(self) -> dict[str, dict[str, int]]:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for event in self.events():
            # Segment and PostHog messages name their type "event".
            event_type = event.get("event_type", event.get("event", ""))
            by_type.setdefault(str(event_type), []).append(event)
        return {
            event_type: {"events": len(events), **_exactly_once(events)}
            for event_type, events in sorted(by_type.items())
        }


def _exactly_once(events: list[dict[str, Any]]) -> dict[str, int]:
    """``unique_events``, and ``duplicate_events``: events identical to another one."""
    unique = len({orjson.dumps(event, option=orjson.OPT_SORT_KEYS) for event in events})
    return {"unique_events": unique, "duplicate_events": len(events) - unique}
