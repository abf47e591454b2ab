"""Getting one request's events acknowledged, or deciding to give them up.

This module owns what a response means: which statuses are retried (429, 5xx, no
response) and how long to wait between attempts (exponential backoff with full jitter,
``Retry-After`` honoured up to the cap); 413 splits a batch in half; 401 re-mints a
``pk_`` session once; anything else refuses the events at once. Every attempt of a
request carries the same ``Idempotency-Key``. When the API cannot be reached at all, no
retry is spent: the batches are handed back unsent, to wait with the queue (an outage
costs memory up to the queue's bound, not events). It does not own batching, threads, or
what happens to events it gives up (the flusher hands them to ``on_drop`` and the
counters).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass

from ._batching import Batch
from ._errors import SegOpsApiError
from ._session import SessionManager
from ._stats import DeliveryCounters
from ._transport import Response, Transport, TransportError, UnreachableError

BATCH_PATH = "/api/ingestion/track/batch/"
SINGLE_PATH = "/api/ingestion/track/"

#: Why events were given up, as passed to ``on_drop``. Failed: the server refused them, or
#: they could not be sent at all; it does not have them.
REASON_FAILED = "failed"
#: Every attempt went unanswered or was answered 429/5xx. The server may have stored them
#: all the same (an answer lost on the last attempt), so a replay can duplicate them.
REASON_RETRIES_EXHAUSTED = "retries_exhausted"
REASON_SHUTDOWN_DEADLINE = "shutdown_deadline"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_base: float
    backoff_cap: float

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        asked = _retry_after_seconds(retry_after)
        if asked is not None:
            return min(asked, self.backoff_cap)
        # Full jitter: spreads the retries of many clients over the whole window. The
        # exponent is bounded so that a large max_retries cannot overflow the float.
        window = self.backoff_base * 2.0 ** min(attempt, 64)
        return random.uniform(0.0, min(self.backoff_cap, window))


class Deadline:
    """When sending must give up: none until shutdown sets one, shared by a pipeline's threads.

    Knowing the moment in advance lets a backoff that would outlast it give up at once,
    and lets a request's timeout end with it, instead of discovering it too late.
    """

    def __init__(self) -> None:
        self._at: float | None = None
        self._passed = threading.Event()

    def set(self, seconds_from_now: float) -> None:
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

    def remaining(self) -> float | None:
        """Seconds left, or None when no deadline is set."""
        if self._passed.is_set():
            return 0.0
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the deadline would pass first; True if it has passed."""
        remaining = self.remaining()
        if remaining is not None and remaining < seconds:
            # Waiting until the deadline only to give up then helps nobody.
            self._passed.set()
            return True
        return self._passed.wait(seconds)


@dataclass
class GivenUp:
    """Events that will not be delivered, and why."""

    events: list[bytes]
    reason: str
    error: SegOpsApiError


class ApiUnavailableError(Exception):
    """No request could be made: the API cannot be reached, or no session token can be had.

    The batches in ``unsent`` were not delivered and stay queued.
    """

    def __init__(self, error: BaseException, unsent: list[Batch]) -> None:
        super().__init__(str(error))
        self.error = error
        self.unsent = unsent


@dataclass
class _Failure:
    reason: str
    error: SegOpsApiError


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

    def deliver_batch(self, batch: Batch) -> list[GivenUp]:
        """Send ``batch`` (split on 413); return what was given up, count what was acknowledged.

        Raises :class:`ApiUnavailableError` carrying the batches not yet delivered when the
        API cannot be reached or no session token can be had.
        """
        given_up: list[GivenUp] = []
        # A stack, second half pushed first, so that split batches still go out in order.
        remaining = [batch]
        while remaining:
            current = remaining.pop()
            body = current.render_body()
            try:
                outcome = self._send(BATCH_PATH, body, current.idempotency_key, len(current))
            except _NotSentError as not_sent:
                current.maybe_stored |= not_sent.after_lost_answer
                raise ApiUnavailableError(not_sent.error, [current, *reversed(remaining)]) from None
            if isinstance(outcome, Response) and outcome.status == 413:
                first, second = current.halves()
                remaining.extend((second, first))
            elif isinstance(outcome, Response):
                self._counters.acknowledged(len(current), len(body))
            else:
                given_up.append(GivenUp(current.events(), outcome.reason, outcome.error))
        return given_up

    def deliver_single(self, event: bytes, idempotency_key: str) -> GivenUp | None:
        """Send one event synchronously to the single-event endpoint (``batch=False``)."""
        try:
            outcome = self._send(SINGLE_PATH, event, idempotency_key, 1)
        except _NotSentError as not_sent:
            error = SegOpsApiError(f"SegOps: not sent: {not_sent.error}", undelivered=1)
            reason = REASON_RETRIES_EXHAUSTED if not_sent.after_lost_answer else REASON_FAILED
            return GivenUp([event], reason, error)
        if isinstance(outcome, Response):
            self._counters.acknowledged(1, len(event))
            return None
        return GivenUp([event], outcome.reason, outcome.error)

    def _send(
        self, path: str, body: bytes, idempotency_key: str, events: int
    ) -> Response | _Failure:
        """The 2xx response to ``body`` after retries (or its 413, when there are events to
        split), or why it was given up: a single event refused as too large is a failure.

        Raises :class:`_NotSentError` when an attempt could not be made at all.
        """
        attempt = 0
        reminted = False
        answer_lost = False
        while True:
            if self._deadline.passed():
                error = SegOpsApiError("SegOps: shutdown deadline passed", undelivered=events)
                return _Failure(REASON_SHUTDOWN_DEADLINE, error)
            try:
                response = self._attempt(path, body, idempotency_key)
            except _NotSentError as not_sent:
                not_sent.after_lost_answer = answer_lost
                raise
            except _RetryableError as retryable:
                retryable.error.undelivered = events
                answer_lost |= retryable.answer_lost
                if attempt >= self._policy.max_retries:
                    return _Failure(REASON_RETRIES_EXHAUSTED, retryable.error)
                delay = self._policy.delay(attempt, retryable.retry_after)
                if self._deadline.sleep(delay):
                    return _Failure(REASON_SHUTDOWN_DEADLINE, retryable.error)
                attempt += 1
                self._counters.retry()
                continue
            if response.ok or (response.status == 413 and events > 1):
                return response
            if response.status == 401 and self._session is not None and not reminted:
                # The token may have been revoked or may have expired early: one re-mint.
                self._session.invalidate()
                reminted = True
                continue
            return _Failure(REASON_FAILED, self._refusal(response, events))

    def _attempt(self, path: str, body: bytes, idempotency_key: str) -> Response:
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
            no_response = SegOpsApiError(f"SegOps: no response: {error}")
            raise _RetryableError(no_response, None, answer_lost=True) from None
        if response.status == 429 or response.status >= 500:
            overloaded = SegOpsApiError(
                f"SegOps: HTTP {response.status}: {response.text()}",
                status=response.status,
                body=response.text(),
            )
            raise _RetryableError(overloaded, response.retry_after, answer_lost=False)
        return response

    def _refusal(self, response: Response, events: int) -> SegOpsApiError:
        detail = response.text()
        if response.status == 401 and self._session is None:
            detail = f"the server rejected API key {mask_key(self._api_key)}: {detail}"
        return SegOpsApiError(
            f"SegOps: HTTP {response.status}: {detail}",
            status=response.status,
            body=response.text(),
            undelivered=events,
        )


class _NotSentError(Exception):
    """An attempt could not be made: no connection to the API, or no session token."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
        #: An earlier attempt of the same request went unanswered: it may be stored.
        self.after_lost_answer = False


def mask_key(api_key: str) -> str:
    """``sk_...abcd``: enough to tell keys apart in a log, not enough to use one."""
    prefix = api_key[:3] if api_key[:3] in ("sk_", "pk_") else ""
    return f"{prefix}...{api_key[-4:]}"


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
