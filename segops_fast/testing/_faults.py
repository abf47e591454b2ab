"""Faults a test can script into LocalIngestServer: what the next ingest requests suffer.

This module owns the script only: a queue of faults, each for one request to an ingest
endpoint, plus the standing settings (a latency on every request, a body size above
which the answer is 413). The server's request handler asks :meth:`Faults.next_fault`
once per ingest request and acts it out. Outages are not here: stopping and starting the
server on the same port is the outage.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

#: Close the connection with a reset before reading the request body.
RESET_BEFORE_BODY = "reset_before_body"
#: Store the batch, then reset the connection instead of answering: the answer is lost.
RESET_AFTER_STORE = "reset_after_store"
#: Wait ``seconds`` before handling the request (longer than the client's timeout).
HANG = "hang"
#: Answer ``status`` (with ``Retry-After`` if given) without storing anything.
STATUS = "status"


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0


class Faults:
    """The faults still to come; safe to script from a test while requests arrive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._upcoming: deque[Fault] = deque()
        #: Seconds every ingest request waits before it is handled.
        self.latency = 0.0
        #: Bodies larger than this are answered 413; None accepts any size.
        self.max_body_bytes: int | None = None

    def respond_with(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        """The next ``count`` ingest requests get ``status`` (and ``Retry-After``)."""
        self._add(Fault(STATUS, status=status, retry_after=retry_after), count)

    def reset_before_body(self, count: int = 1) -> None:
        self._add(Fault(RESET_BEFORE_BODY), count)

    def reset_after_store(self, count: int = 1) -> None:
        self._add(Fault(RESET_AFTER_STORE), count)

    def hang(self, seconds: float, count: int = 1) -> None:
        self._add(Fault(HANG, seconds=seconds), count)

    def clear(self) -> None:
        with self._lock:
            self._upcoming.clear()
        self.latency = 0.0
        self.max_body_bytes = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._upcoming)

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self._upcoming.popleft() if self._upcoming else None

    def _add(self, fault: Fault, count: int) -> None:
        with self._lock:
            self._upcoming.extend([fault] * count)
