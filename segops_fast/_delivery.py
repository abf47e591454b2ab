"""Getting one request's events acknowledged, or deciding to give them up.

This module owns what a response means: which statuses are retried (429, 5xx, no
response) and how long to wait before the next attempt (exponential backoff with full
jitter, ``Retry-After`` honoured up to the cap, and ignored when it asks for no finite,
non-negative wait); 413 splits a batch in half; 401 re-mints a ``pk_`` session once;
anything else refuses the events at once, and an exception nobody expected gives up the
batch it happened to, never the thread. It also words what it gives up: each message
says what happened, how many events, where they went, and the fix. Every attempt of a
request carries the same ``Idempotency-Key``. A batch is attempted once per call: when it
must be retried, the call says when, and the caller decides what to send meanwhile. When
the API cannot be reached at all, no retry is spent: the batches are handed back unsent,
to wait with the queue (an outage costs memory up to the queue's bound, not events). It
does not own batching, threads, or what happens to events it gives up (the flusher hands
them to ``on_drop`` and the counters).
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from dataclasses import dataclass, field

from ._batching import Batch
from ._errors import (
    SegOpsApiError,
    bounded,
    count_events,
    describe,
    fix_for,
    sentences,
    unexpected,
)
from ._secrets import mask_key
from ._session import SessionManager
from ._stats import DeliveryCounters
from ._transport import Response, Transport, TransportError, UnreachableError

BATCH_PATH = "/api/ingestion/track/batch/"
SINGLE_PATH = "/api/ingestion/track/"

#: Why events were given up, as passed to ``on_drop``. Failed: the server refused them, or
#: they could not be sent at all; it does not have them.
REASON_FAILED = "failed"
#: Every attempt was answered 429 or 5xx: the server does not have them. A batch with an
#: unanswered attempt is retried until an answer comes; it is given up this way only when
#: the API can no longer be reached at shutdown (and with ``batch=False``, whose retries
#: block the caller, when they run out). Then the server may have stored it.
REASON_RETRIES_EXHAUSTED = "retries_exhausted"
#: Still undelivered when the shutdown deadline came (or their next retry would come
#: after it). A request for them may have been under way: the server may have them.
REASON_SHUTDOWN_DEADLINE = "shutdown_deadline"
#: Sending them raised an exception nobody expected (a bug, here or in a library below),
#: or the sending thread stopped: the server may or may not have them.
REASON_UNEXPECTED_ERROR = "unexpected_error"
#: Refused by ``track()``: the queue was full (``on_full="drop"``), or the client closed.
REASON_QUEUE_FULL = "queue_full"
REASON_CLOSED = "closed"

#: The reasons counted in ``stats().dropped``; every other reason counts as failed.
_COUNTED_DROPPED = (REASON_SHUTDOWN_DEADLINE, REASON_QUEUE_FULL, REASON_CLOSED)


def handed_over(count: int, reason: str, subject: str | None = None) -> str:
    """Where given-up events are now, as a sentence ("They were handed to on_drop ...");
    ``subject`` replaces "They were"."""
    counter = "dropped" if reason in _COUNTED_DROPPED else "failed"
    if subject is None:
        subject = "It was" if count == 1 else "They were"
    return f"{subject} handed to on_drop (reason {reason!r}) and counted in stats().{counter}"


def given_up_error(
    count: int,
    reason: str,
    cause: str,
    *,
    fix: str = "",
    status: int | None = None,
    body: str = "",
) -> SegOpsApiError:
    """The error for ``count`` events given up for ``reason``, because of ``cause``."""
    message = sentences(
        f"SegOps: {count_events(count)} could not be delivered: {cause}",
        handed_over(count, reason),
        fix,
    )
    return SegOpsApiError(
        message, status=status, body=body, undelivered=count, reason=cause, fix=fix
    )


def shutdown_deadline_error(
    count: int, seconds: float | None, cause: BaseException | None
) -> SegOpsApiError:
    """The one message for events still undelivered at the shutdown deadline."""
    subject, pronoun = ("it", "it") if count == 1 else ("they", "them")
    call = "shutdown()" if seconds is None else f"shutdown(timeout={seconds:g})"
    because = "" if cause is None else f" (the last attempt: {describe(cause)})"
    fix = "To give delivery more time, pass a larger timeout to shutdown(), or shutdown_timeout"
    message = sentences(
        f"SegOps: {call} left {count_events(count)} undelivered: {subject} could not be "
        f"delivered within its deadline{because}",
        f"{handed_over(count, REASON_SHUTDOWN_DEADLINE)}; if a request for {pronoun} was "
        f"under way, the server may have stored {pronoun}",
        fix,
    )
    return SegOpsApiError(
        message,
        undelivered=count,
        reason=f"the deadline of {call} came before they could be delivered",
        fix=fix,
    )


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_base: float
    backoff_cap: float

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        asked = self.asked_delay(retry_after)
        if asked is not None:
            return asked
        # Full jitter: spreads the retries of many clients over the whole window. The
        # exponent is bounded so that a large max_retries cannot overflow the float.
        window = self.backoff_base * 2.0 ** min(attempt, 64)
        return random.uniform(0.0, min(self.backoff_cap, window))

    def longest_wait(self) -> float:
        """The longest a batch answered 503 every time waits, over all its retries."""
        return sum(
            min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt, 64))
            for attempt in range(self.max_retries)
        )

    def asked_delay(self, retry_after: str | None) -> float | None:
        """The wait a ``Retry-After`` header asks for, up to the cap; None without one."""
        asked = _retry_after_seconds(retry_after)
        return None if asked is None else min(asked, self.backoff_cap)


class Deadline:
    """When sending must give up: none until shutdown sets one, shared by a pipeline's threads.

    Knowing the moment in advance lets a backoff that would outlast it give up at once,
    and lets a request's timeout end with it, instead of discovering it too late.
    """

    def __init__(self) -> None:
        self._at: float | None = None
        #: The seconds ``shutdown()`` was given, for messages; None until it sets them.
        self.seconds: float | None = None
        self._passed = threading.Event()

    def set(self, seconds_from_now: float) -> None:
        self.seconds = seconds_from_now
        self._at = time.monotonic() + seconds_from_now

    def expire_now(self) -> None:
        """Wake every thread waiting between attempts: there is no time left."""
        self._passed.set()

    def passed(self) -> bool:
        if self._passed.is_set():
            return True
        if self._at is not None and time.monotonic() >= self._at:
            self._passed.set()
            return True
        return False

    def time_left(self) -> float | None:
        """Seconds until the moment set, even if it was already given up as passed; None
        when no deadline is set."""
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def remaining(self) -> float | None:
        """Seconds left, or None when no deadline is set."""
        if self._passed.is_set():
            return 0.0
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True, at once, if the deadline would pass first.

        Waiting until the deadline only to give up then helps nobody, so the caller gives
        up now. The deadline itself has not passed, and is not marked so: other threads
        may still finish what they have under way.
        """
        remaining = self.remaining()
        if remaining is not None and remaining < seconds:
            return True
        return self._passed.wait(seconds)


@dataclass
class GivenUp:
    """Events that will not be delivered, and why."""

    events: list[bytes]
    reason: str
    error: SegOpsApiError
    #: The number of the first of them in the order the flusher took events (a batch's
    #: ``first``), so that a flush() counts only those it waited for; 0 when sent alone.
    first: int = 0

    @classmethod
    def of_batch(cls, batch: Batch, reason: str, error: SegOpsApiError) -> GivenUp:
        return cls(batch.events(), reason, error, batch.first)

    @property
    def failed(self) -> bool:
        """Counted as failed (a request was made and refused, or could not be made) rather
        than dropped."""
        return self.reason not in _COUNTED_DROPPED


@dataclass
class Attempted:
    """What one attempt at a batch came to (with the halves, when the server said 413)."""

    given_up: list[GivenUp] = field(default_factory=list)
    #: ``(events, body bytes)`` of each request the server acknowledged. Counted by the
    #: caller, which alone knows whether the batch is still its own to count (a shutdown
    #: deadline may have given it up while the request was under way).
    acknowledged: list[tuple[int, int]] = field(default_factory=list)
    #: Batches to send again, each once its ``retry_at`` has come.
    to_retry: list[Batch] = field(default_factory=list)
    #: When (``time.monotonic()``) the server's ``Retry-After`` lets requests go again;
    #: 0.0 if it set no pause.
    resume_at: float = 0.0
    #: Why no request could be made, if none could: the API cannot be reached, or no
    #: session token can be had. ``unsent`` then holds what was not sent, oldest first.
    unavailable: BaseException | None = None
    unsent: list[Batch] = field(default_factory=list)


class _RetryableError(Exception):
    def __init__(
        self, error: SegOpsApiError, retry_after: str | None, *, answer_lost: bool
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        #: The request was sent but no answer came: the server may have stored it.
        self.answer_lost = answer_lost


class Delivery:
    """Sends requests for one client in one process."""

    def __init__(
        self,
        *,
        transport: Transport,
        api_key: str,
        session: SessionManager | None,
        policy: RetryPolicy,
        counters: DeliveryCounters,
        deadline: Deadline,
    ) -> None:
        self._transport = transport
        self._api_key = api_key
        self._session = session
        self._policy = policy
        self._counters = counters
        self._deadline = deadline

    def attempt_batch(self, batch: Batch) -> Attempted:
        """Send ``batch`` once, and its halves if the server finds it too large.

        A retryable failure schedules the batch's next
        attempt rather than waiting for it here, so that the caller can send other
        batches meanwhile: retries cost the events in them latency, and nobody else.
        Never raises an ``Exception``: one nobody expected gives the batch up.
        """
        attempted = Attempted()
        # A stack, second half pushed first, so that split batches still go out in order.
        remaining = [batch]
        while remaining:
            current = remaining.pop()
            if self._deadline.passed():
                error = shutdown_deadline_error(
                    len(current), self._deadline.seconds, current.last_error
                )
                attempted.given_up.append(
                    GivenUp.of_batch(current, REASON_SHUTDOWN_DEADLINE, error)
                )
                continue
            try:
                body = current.render_body()
                response = self._attempt(BATCH_PATH, body, current.idempotency_key)
            except _NotSentError as not_sent:
                attempted.unavailable = not_sent.error
                attempted.unsent = [current, *reversed(remaining)]
                break
            except _RetryableError as retryable:
                current.maybe_stored |= retryable.answer_lost
                current.last_error = retryable.error
                asked = self._policy.asked_delay(retryable.retry_after)
                if asked is not None:
                    # The server said when to come back, to this client, not to one batch.
                    attempted.resume_at = max(attempted.resume_at, time.monotonic() + asked)
                if self._schedule_retry(current, retryable.retry_after):
                    attempted.to_retry.append(current)
                else:
                    error = self._retries_exhausted(len(current), retryable.error)
                    attempted.given_up.append(
                        GivenUp.of_batch(current, REASON_RETRIES_EXHAUSTED, error)
                    )
                continue
            except Exception as error:  # the send path must not die of it
                failure = given_up_error(len(current), REASON_UNEXPECTED_ERROR, unexpected(error))
                attempted.given_up.append(
                    GivenUp.of_batch(current, REASON_UNEXPECTED_ERROR, failure)
                )
                continue
            if response.ok:
                attempted.acknowledged.append((len(current), len(body)))
            elif response.status == 413 and len(current) > 1:
                first, second = current.halves()
                remaining.extend((second, first))
            else:
                refusal = self._refusal(response, len(current))
                attempted.given_up.append(GivenUp.of_batch(current, REASON_FAILED, refusal))
        return attempted

    def _retries_exhausted(self, events: int, last: SegOpsApiError) -> SegOpsApiError:
        retries = self._policy.max_retries
        attempts = f"{retries + 1} attempts" if retries else "the only attempt"
        if last.status is None:
            cause = f"{attempts} went unanswered (the last: {last.reason})"
        else:
            answer = f"HTTP {last.status}" + (f": {last.body}" if last.body else "")
            cause = f"the API answered {attempts} with {answer}"
        return given_up_error(
            events,
            REASON_RETRIES_EXHAUSTED,
            cause,
            fix="To ride out longer trouble, raise max_retries or backoff_cap",
            status=last.status,
            body=last.body,
        )

    def _schedule_retry(self, batch: Batch, retry_after: str | None) -> bool:
        """Set when ``batch`` is tried next; False if its retries have run out.

        They never run out for a batch the server may have stored: given up, nobody
        could say whether its events were delivered, and sent again later under a new
        key they could be stored twice. Such a batch waits (counting against the queue's
        bound) until an answer comes, or the shutdown deadline.
        """
        if batch.retries >= self._policy.max_retries and not batch.maybe_stored:
            return False
        batch.retry_at = time.monotonic() + self._policy.delay(batch.retries, retry_after)
        batch.retries += 1
        self._counters.retry()
        return True

    def deliver_single(self, event: bytes, idempotency_key: str) -> GivenUp | None:
        """Send one event to the single-event endpoint (``batch=False``), retrying here,
        on the caller's thread, at most ``max_retries`` times. Never raises an
        ``Exception``: ``track()`` must not raise for what happens on the way."""
        retries = 0
        answer_lost = False
        while True:
            try:
                response = self._attempt(SINGLE_PATH, event, idempotency_key)
            except _NotSentError as not_sent:
                reason = REASON_RETRIES_EXHAUSTED if answer_lost else REASON_FAILED
                cause = not_sent.error
                error = given_up_error(1, reason, describe(cause), fix=fix_for(cause))
                return GivenUp([event], reason, error)
            except _RetryableError as retryable:
                answer_lost |= retryable.answer_lost
                if retries >= self._policy.max_retries:
                    error = self._retries_exhausted(1, retryable.error)
                    return GivenUp([event], REASON_RETRIES_EXHAUSTED, error)
                if self._deadline.sleep(self._policy.delay(retries, retryable.retry_after)):
                    error = shutdown_deadline_error(1, self._deadline.seconds, retryable.error)
                    return GivenUp([event], REASON_SHUTDOWN_DEADLINE, error)
                retries += 1
                self._counters.retry()
                continue
            except Exception as error:  # track() must not raise it
                failure = given_up_error(1, REASON_UNEXPECTED_ERROR, unexpected(error))
                return GivenUp([event], REASON_UNEXPECTED_ERROR, failure)
            if response.ok:
                self._counters.acknowledged(1, len(event))
                return None
            return GivenUp([event], REASON_FAILED, self._refusal(response, 1))

    def _attempt(self, path: str, body: bytes, idempotency_key: str) -> Response:
        """One request (two, when a session token was refused and a new one is minted).

        Returns any answer but 429 and 5xx, which raise :class:`_RetryableError`, as
        does a request that went unanswered; raises :class:`_NotSentError` when no
        request could be made.
        """
        response = self._post(path, body, idempotency_key)
        if response.status == 401 and self._session is not None:
            # The token may have been revoked or may have expired early: one re-mint.
            self._session.invalidate()
            response = self._post(path, body, idempotency_key)
        return response

    def _post(self, path: str, body: bytes, idempotency_key: str) -> Response:
        if self._session is None:
            authorization = f"ApiKey {self._api_key}"
        else:
            try:
                authorization = self._session.authorization()
            except (SegOpsApiError, TransportError) as error:
                raise _NotSentError(error) from None
        headers = {"Authorization": authorization, "Idempotency-Key": idempotency_key}
        try:
            response = self._transport.post(path, body, headers, self._deadline.remaining())
        except UnreachableError as error:
            raise _NotSentError(error) from None
        except TransportError as error:
            no_response = SegOpsApiError(
                f"SegOps: no answer from the API: {describe(error)}",
                reason=f"no answer from the API: {describe(error)}",
            )
            raise _RetryableError(no_response, None, answer_lost=True) from None
        if response.status == 429 or response.status >= 500:
            text = bounded(response.text())
            cause = f"the API answered HTTP {response.status}" + (f": {text}" if text else "")
            overloaded = SegOpsApiError(
                f"SegOps: {cause}", status=response.status, body=text, reason=cause
            )
            raise _RetryableError(overloaded, response.retry_after, answer_lost=False)
        return response

    def _refusal(self, response: Response, events: int) -> SegOpsApiError:
        text = bounded(response.text())
        answer = f"HTTP {response.status}" + (f": {text}" if text else "")
        fix = ""
        if response.status in (401, 403) and self._session is None:
            cause = f"the API refused the key {mask_key(self._api_key)} ({answer})"
            fix = "Check api_key"
        elif response.status in (401, 403):
            cause = f"the API refused the session token ({answer})"
            fix = "Check api_key, and the user get_user returns"
        elif response.status == 413:
            cause = f"the API refused the request as too large ({answer})"
            fix = "Lower max_event_bytes or max_batch_bytes"
        else:
            cause = f"the API refused the request ({answer})"
            fix = "The API's answer says what it refused; these events are not retried"
        return given_up_error(
            events, REASON_FAILED, cause, fix=fix, status=response.status, body=text
        )


class _NotSentError(Exception):
    """An attempt could not be made: no connection to the API, or no session token."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe(error))
        self.error = error


def _retry_after_seconds(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` asks for; None when it asks nothing we can honour.

    A server's header is not trusted: a number that is not finite, or negative, and a date
    too far off for the calendar, mean nothing (the backoff applies), never "now".
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0.0 else None
    try:
        moment = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    # A date already past asks for no pause.
    return max(0.0, moment - time.time())
