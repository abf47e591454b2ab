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

The engine stops by itself, saying why in :attr:`StreamSender.stop_cause`, when waiting
cannot help: TLS or the proxy refused the connection, the API refused the key (401, 403;
the batch stays unsettled, for a resume with the right key), or something unexpected
went wrong in a sender (the batch it held is given up as failed, and the cause is named
by its type only: the text of a header error holds the header, API key included). While
the API cannot be reached it waits, telling ``on_waiting`` why once per stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._batching import Batch
from .._delivery import (
    REASON_FAILED,
    REASON_RETRIES_EXHAUSTED,
    REASON_SHUTDOWN_DEADLINE,
    Deadline,
    Delivery,
    GivenUp,
    RetryPolicy,
)
from .._encoding import Record
from .._errors import SegOpsApiError
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
from .._secrets import mask_key
from .._stats import DeliveryCounters
from .._tls import TLSSettings
from .._transport import COMPRESSIONS, NetworkConfigError, Transport
from ._api_key import check_api_key

_BODY_ENVELOPE_BYTES = len(b'{"events":[]}')
#: Requests in flight per process: enough to keep a local server busy while this process
#: parses the next batch.
DEFAULT_CONCURRENCY = 4
#: The smallest ``batch_bytes``: a body with one event of the largest size.
MIN_BATCH_BYTES = DEFAULT_MAX_EVENT_BYTES + _BODY_ENVELOPE_BYTES
#: Under a rate, a batch holds at most this share of a second's events, so that pacing
#: batch by batch keeps every second within about this share of the rate.
_PACING_SHARE = 0.01
#: The statuses that refuse the key itself: every other batch would meet them too.
_KEY_REFUSED = (401, 403)


def batch_events_for(rate: float | None) -> int | None:
    """The most events in one batch under ``rate`` events/s in all (None: no limit)."""
    return None if rate is None else max(1, int(rate * _PACING_SHARE))


@dataclass(frozen=True)
class StopCause:
    """Why an engine stopped by itself: what happened, in words, and the setting (a keyword
    of :func:`send_events`) that fixes it, for an interface to name in its own terms."""

    message: str
    setting: str | None = None


@dataclass(frozen=True, repr=False)
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
    #: A PEM bundle of the CAs to trust instead of the system's.
    ca_certs: str | None = None
    #: The most events in one batch (see :func:`batch_events_for`), or None.
    batch_events: int | None = None

    def __repr__(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["api_key"] = mask_key(self.api_key) if self.api_key else ""
        if self.proxy:
            fields["proxy"] = mask_url_password(self.proxy)
        shown = ", ".join(f"{name}={value!r}" for name, value in fields.items())
        return f"SendSettings({shown})"

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
        check_api_key(self.api_key, "api_key")
        at_least("concurrency", self.concurrency, 1)
        at_least("batch_bytes", self.batch_bytes, MIN_BATCH_BYTES)
        if self.rate is not None:
            positive("rate", self.rate)
        positive("timeout", self.timeout)
        at_least("max_retries", self.max_retries, 0)
        positive("backoff_base", self.backoff_base)
        at_least("backoff_cap", self.backoff_cap, self.backoff_base)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        resolve_proxy(self.proxy, self.api_url)
        TLSSettings(self.ca_certs).check()


def mask_url_password(url: str) -> str:
    """``url`` with the password of its user information masked, whatever characters the
    password holds (``/``, ``@`` or ``:`` included)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    user_information, at, host = rest.rpartition("@")
    if not at:
        return url
    user = user_information.partition(":")[0]
    return f"{scheme}{separator}{user}:***@{host}"


@dataclass
class Settled:
    """What finished since the last report, and the new watermark."""

    watermark: int
    sent: int
    failed: int


#: Called with events given up (as dicts' JSON), why, and the error, and the stream position
#: just after the batch that held them, before the watermark passes them: the caller
#: writes them down first.
OnFailed = Callable[[GivenUp, int], None]
OnSettled = Callable[[Settled], None]
#: Told why the API cannot be reached, once per stream, when the engine starts waiting.
OnWaiting = Callable[[str], None]


class _Pacer:
    """Turns under a rate, for the sender threads of one stream: each batch takes the next
    slot, so that events (not batches) are spread evenly, whichever sender sends them. A
    stall banks no slots for a burst later."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._next_at = time.monotonic()

    def wait_turn(self, events: int, stopped: threading.Event) -> bool:
        """Wait until ``events`` may go; True if ``stopped`` was set meanwhile."""
        with self._lock:
            send_at = max(self._next_at, time.monotonic())
            self._next_at = send_at + events / self._rate
        return stopped.wait(max(0.0, send_at - time.monotonic()))


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
        on_waiting: OnWaiting = lambda cause: None,
    ) -> None:
        self._settings = settings
        self._should_stop = should_stop
        self._on_waiting = on_waiting
        self._told_waiting = False
        self._source = source.encode("utf-8", "surrogateescape")
        self._on_failed = on_failed
        self._on_settled = on_settled
        self._transport = Transport(
            settings.api_url,
            timeout=settings.timeout,
            max_connections=settings.concurrency,
            proxy=resolve_proxy(settings.proxy, settings.api_url),
            compression=settings.compression,
            tls=TLSSettings(settings.ca_certs),
        )
        #: Why the engine stopped by itself (see the module's docstring); None otherwise.
        self.stop_cause: StopCause | None = None
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
        self._pacer = None if settings.rate is None else _Pacer(settings.rate)
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
        if self._records and (
            self._batch_size + size > self._settings.batch_bytes
            or len(self._records) == self._settings.batch_events
        ):
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
        self._put(pending)

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
            try:
                self._send(item)
            except Exception as error:  # a sender must not die silently
                try:
                    self._give_up_unexpectedly(item, error)
                finally:
                    # Even if handing the batch over failed too: stopped, with a cause.
                    self._stop_by_itself(StopCause(_unexpected(error)))
                return

    def _give_up_unexpectedly(self, pending: _PendingBatch, error: Exception) -> None:
        """Something no path expects: give the batch up as failed, counted and handed to
        ``on_failed``, and stop. Named by its type only: ``str()`` of a header error holds
        the header, API key included."""
        cause = _unexpected(error)
        events = pending.batch.events()
        failed = SegOpsApiError(f"SegOps: {cause}", undelivered=len(events))
        self._on_failed(GivenUp(events, REASON_FAILED, failed), pending.end)
        self._settle(pending.sequence, pending.end, 0, len(events))

    def _stop_by_itself(self, cause: StopCause) -> None:
        with self._lock:
            if self.stop_cause is None:
                self.stop_cause = cause
        self.stop()

    def _send(self, pending: _PendingBatch) -> None:
        # Normally one batch; else the halves of one the server found too large, each
        # waiting for its retry or for the API to be reachable again.
        batches = [pending.batch]
        failed = 0
        waits = 0
        if self._pacer is not None and self._pacer.wait_turn(len(pending.batch), self._stopped):
            return
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
                setting = "proxy" if "proxy" in str(attempted.unavailable) else "ca_certs"
                self._stop_by_itself(StopCause(str(attempted.unavailable), setting))
                return
            if attempted.unavailable is not None:
                # Nothing of these was sent: wait for the API as long as it takes, until
                # stopped. Reading waits too, once every sender is busy.
                self._tell_waiting(attempted.unavailable)
                if self._stopped.wait(self._policy.delay(waits, None)):
                    return
                waits += 1
            refused = next(
                (part for part in attempted.given_up if part.error.status in _KEY_REFUSED), None
            )
            if refused is not None:
                # Every batch would be refused alike: stop, leaving this one unsettled (the
                # server stored none of it) for a resume with the right key.
                status = refused.error.status
                self._stop_by_itself(
                    StopCause(
                        f"the API refused the key {mask_key(self._settings.api_key)} (HTTP "
                        f"{status}), so nothing more is sent",
                        "api_key",
                    )
                )
                return
            for part in attempted.given_up:
                self._on_failed(part, pending.end)
                failed += len(part.events)
        self._settle(pending.sequence, pending.end, len(pending.batch) - failed, failed)

    def _tell_waiting(self, cause: BaseException) -> None:
        with self._lock:
            if self._told_waiting:
                return
            self._told_waiting = True
        self._on_waiting(str(cause))

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


def _unexpected(error: Exception) -> str:
    return f"unexpected {type(error).__name__} while sending (a bug: please report it)"
