"""Sending one ordered stream of encoded events: batches with stable keys, bounded concurrency.

This module owns the sending side of a backfill in one process: cutting the stream into
batches of at most ``batch_bytes`` (greedily, so the same input always gives the same
batches), deriving each batch's ``Idempotency-Key`` from where it starts and what it
holds (so a batch sent again after a crash or a retried task carries the key it had
before, and the server stores it once), sending up to ``concurrency`` batches at once with
the client's retries, pacing them to a rate, and reporting, in input order, how far
everything has been settled. It does not read files, parse lines, write dead letters or
checkpoints: the caller does, from what this reports.

A batch is *settled* when the server acknowledged it or refused its events and they were
reported; a batch that only met 429, 5xx or silence is sent again until one or the other.
The *watermark* is the end position of the longest settled prefix of the stream:
everything before it needs no sending again.
A stopped engine leaves unsettled batches alone; they are what a resume sends again.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._batching import Batch
from .._delivery import (
    REASON_RETRIES_EXHAUSTED,
    REASON_SHUTDOWN_DEADLINE,
    Deadline,
    Delivery,
    GivenUp,
    RetryPolicy,
)
from .._encoding import Record
from .._options import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    at_least,
    positive,
)
from .._proxy import resolve_proxy
from .._stats import DeliveryCounters
from .._transport import COMPRESSIONS, NetworkConfigError, Transport

_BODY_ENVELOPE_BYTES = len(b'{"events":[]}')
#: Requests in flight per process: enough to keep a local server busy while this process
#: parses the next batch.
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class SendSettings:
    """How one process sends: where, how much at once, how fast, how persistently."""

    api_url: str
    api_key: str
    concurrency: int = DEFAULT_CONCURRENCY
    batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    #: Events per second for this process, or None for as fast as the API takes them.
    rate: float | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    #: As the client's options: None takes the proxy from the environment, "" is none.
    proxy: str | None = None
    compression: str | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first unusable setting."""
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must be http:// or https://, got {self.api_url!r}")
        if self.api_key.startswith("pk_"):
            raise ValueError(
                "a backfill needs a secret key (sk_...): a public pk_ key can only send "
                "events for the user of a browser or app session"
            )
        if not self.api_key:
            raise ValueError("the API key is empty")
        at_least("concurrency", self.concurrency, 1)
        at_least("batch_bytes", self.batch_bytes, DEFAULT_MAX_EVENT_BYTES + _BODY_ENVELOPE_BYTES)
        if self.rate is not None:
            positive("rate", self.rate)
        positive("timeout", self.timeout)
        at_least("max_retries", self.max_retries, 0)
        positive("backoff_base", self.backoff_base)
        at_least("backoff_cap", self.backoff_cap, self.backoff_base)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        resolve_proxy(self.proxy, self.api_url)


@dataclass
class Settled:
    """What finished since the last report, and the new watermark."""

    watermark: int
    sent: int
    failed: int


#: Called with events given up (as dicts' JSON), why, and the error, before the watermark
#: passes them: the caller writes them down first.
OnFailed = Callable[[GivenUp], None]
OnSettled = Callable[[Settled], None]


class _PendingBatch:
    __slots__ = ("batch", "end", "sequence")

    def __init__(self, batch: Batch, end: int, sequence: int) -> None:
        self.batch = batch
        #: The stream position just after its last event.
        self.end = end
        self.sequence = sequence


class StreamSender:
    """Sends one stream's events, in order of settling, with ``concurrency`` requests at once.

    Use :meth:`add` for each event with the position just after it, then :meth:`finish`.
    :meth:`stop` (from any thread) makes both return soon, without settling what is left.
    """

    def __init__(
        self,
        settings: SendSettings,
        *,
        source: str,
        start: int,
        on_failed: OnFailed,
        on_settled: OnSettled,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._should_stop = should_stop
        self._source = source.encode("utf-8", "surrogateescape")
        self._on_failed = on_failed
        self._on_settled = on_settled
        self._transport = Transport(
            settings.api_url,
            timeout=settings.timeout,
            max_connections=settings.concurrency,
            proxy=resolve_proxy(settings.proxy, settings.api_url),
            compression=settings.compression,
        )
        #: Why the engine stopped by itself: TLS or the proxy refused every connection,
        #: which waiting does not fix. None otherwise.
        self.error: str | None = None
        self._policy = RetryPolicy(
            settings.max_retries, settings.backoff_base, settings.backoff_cap
        )
        self._deadline = Deadline()
        self._delivery = Delivery(
            transport=self._transport,
            api_key=settings.api_key,
            session=None,
            policy=self._policy,
            counters=DeliveryCounters(),
            deadline=self._deadline,
        )
        # Batches built and not yet taken by a sender: a few, so memory stays bounded.
        self._to_send: queue.Queue[_PendingBatch | None] = queue.Queue(settings.concurrency)
        self._lock = threading.Lock()
        self._settled_sequences: dict[int, tuple[int, int, int]] = {}
        self._next_to_settle = 0
        self._watermark = start
        self._stopped = threading.Event()
        self._records: list[Record] = []
        self._batch_start = start
        self._batch_end = start
        self._batch_size = _BODY_ENVELOPE_BYTES
        self._sequence = 0
        self._next_send_at = time.monotonic()
        self._senders = [
            threading.Thread(target=self._run_sender, name=f"segops-fast-backfill-{number}")
            for number in range(settings.concurrency)
        ]
        for sender in self._senders:
            sender.daemon = True
            sender.start()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    @property
    def watermark(self) -> int:
        """Every event before this position is settled."""
        with self._lock:
            return self._watermark

    def add(self, record: Record, end: int) -> None:
        """Queue one event whose input ends at position ``end``; may wait for a free sender."""
        # A backfill's records never carry a stamp: the opening brace, the JSON, a comma.
        size = len(record[1]) + 2
        if self._records and self._batch_size + size > self._settings.batch_bytes:
            self._cut()
        self._records.append(record)
        self._batch_size += size
        self._batch_end = end

    def pass_over(self, end: int) -> None:
        """The input up to ``end`` holds nothing to send (a line that is not an event): it
        is settled with the batch around it."""
        self._batch_end = end

    def finish(self) -> None:
        """Send what is left and wait until every batch is settled, or the engine stopped."""
        if self._records:
            self._cut()
        elif self._batch_end > self._batch_start and not self._stopped.is_set():
            # Only lines that were not events since the last batch: settled as they are.
            self._settle(self._sequence, self._batch_end, 0, 0)
        for _ in self._senders:
            self._put(None)
        for sender in self._senders:
            while sender.is_alive():
                sender.join(0.1)
                self._stop_if_asked()
        self._transport.close()

    def stop(self) -> None:
        """Stop soon: no new batches; requests under way end with their answer or timeout,
        and retries waiting for their turn give up (their batches stay unsettled)."""
        self._stopped.set()
        self._deadline.expire_now()

    # -- building batches ------------------------------------------------------------------

    def _cut(self) -> None:
        records = self._records
        body_digest = hashlib.blake2b(b"\n".join(fields for _, fields in records), digest_size=16)
        key_source = hashlib.blake2b(self._source, digest_size=16)
        key_source.update(b"%d:" % self._batch_start)
        key_source.update(body_digest.digest())
        pending = _PendingBatch(
            Batch(records, key_source.hexdigest(), self._batch_start),
            self._batch_end,
            self._sequence,
        )
        self._sequence += 1
        self._records = []
        self._batch_start = self._batch_end
        self._batch_size = _BODY_ENVELOPE_BYTES
        self._pace(len(records))
        self._put(pending)

    def _pace(self, events: int) -> None:
        """Hold each batch back until the rate allows it: a token bucket, a batch at a time."""
        if self._settings.rate is None:
            return
        now = time.monotonic()
        send_at = max(self._next_send_at, now)
        while time.monotonic() < send_at and not self._stop_if_asked():
            self._stopped.wait(min(0.1, send_at - time.monotonic()))
        self._next_send_at = send_at + events / self._settings.rate

    def _stop_if_asked(self) -> bool:
        """Checked while waiting on the caller's thread; True once stopped."""
        if not self._stopped.is_set() and self._should_stop():
            self.stop()
        return self._stopped.is_set()

    def _put(self, item: _PendingBatch | None) -> None:
        """Hand ``item`` to a sender, waiting for room; once stopped, drop it (the senders
        see the stop within 0.1 s on their own)."""
        while not self._stop_if_asked():
            try:
                self._to_send.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- sending (sender threads) -------------------------------------------------------

    def _run_sender(self) -> None:
        while True:
            try:
                item = self._to_send.get(timeout=0.1)
            except queue.Empty:
                if self._stopped.is_set():
                    return
                continue
            if item is None or self._stopped.is_set():
                return
            self._send(item)

    def _send(self, pending: _PendingBatch) -> None:
        # Normally one batch; else the halves of one the server found too large, each
        # waiting for its retry or for the API to be reachable again.
        batches = [pending.batch]
        failed = 0
        waits = 0
        while batches:
            if self._stopped.wait(max(0.0, batches[0].retry_at - time.monotonic())):
                return
            attempted = self._delivery.attempt_batch(batches[0])
            if any(part.reason == REASON_SHUTDOWN_DEADLINE for part in attempted.given_up):
                # Stopped: left unsettled, for a resume to send again.
                return
            if any(part.reason == REASON_RETRIES_EXHAUSTED for part in attempted.given_up):
                # A backfill has time: rather than fail events the server would take a
                # little later, it sends the batch again, same key, after a pause.
                if self._stopped.wait(self._policy.delay(waits, None)):
                    return
                waits += 1
                continue
            batches[0:1] = sorted(
                attempted.to_retry + attempted.unsent, key=lambda batch: batch.first
            )
            if isinstance(attempted.unavailable, NetworkConfigError):
                # TLS or the proxy refused: nothing was sent, and nothing will be until
                # the configuration changes. Stop (unsettled, for a resume) and say why.
                self.error = str(attempted.unavailable)
                self.stop()
                return
            if attempted.unavailable is not None:
                # Nothing of these was sent: wait for the API as long as it takes, until
                # stopped. Reading waits too, once every sender is busy.
                if self._stopped.wait(self._policy.delay(waits, None)):
                    return
                waits += 1
            for part in attempted.given_up:
                self._on_failed(part)
                failed += len(part.events)
        self._settle(pending.sequence, pending.end, len(pending.batch) - failed, failed)

    def _settle(self, sequence: int, end: int, sent: int, failed: int) -> None:
        with self._lock:
            self._settled_sequences[sequence] = (end, sent, failed)
            settled = Settled(self._watermark, 0, 0)
            while self._next_to_settle in self._settled_sequences:
                end, batch_sent, batch_failed = self._settled_sequences.pop(self._next_to_settle)
                self._next_to_settle += 1
                settled.watermark = end
                settled.sent += batch_sent
                settled.failed += batch_failed
            self._watermark = settled.watermark
            # Reported under the lock, so that reports arrive in order of position.
            self._on_settled(settled)
