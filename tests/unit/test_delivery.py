"""Delivery against a scripted transport: what each answer makes of a batch.

413 halves a batch (keys ``KEY.0``, ``KEY.1``) until it fits, and fails a single event;
401 re-mints a ``pk_`` session once; 429 and 5xx schedule a retry (``Retry-After`` as
seconds or as an HTTP date, up to the cap) until ``max_retries``; a request that went
unanswered is retried however many retries that takes; a connection that could not be made
spends no retry; a passed deadline sends nothing.
"""

from __future__ import annotations

import email.utils
import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from segops_fast._delivery import (
    BATCH_PATH,
    REASON_FAILED,
    REASON_RETRIES_EXHAUSTED,
    REASON_SHUTDOWN_DEADLINE,
    REASON_UNEXPECTED_ERROR,
    SINGLE_PATH,
    Deadline,
    Delivery,
    RetryPolicy,
)
from segops_fast._session import SESSION_PATH, SessionManager, anonymous_user
from segops_fast._stats import DeliveryCounters
from segops_fast._transport import Response, TransportError, UnreachableError

from .fakes import OK, Answer, ScriptedTransport, batch

SECRET_KEY = "sk_live_abcdefgh1234"


def _delivery(
    answers: list[Answer],
    *,
    max_retries: int = 5,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    session: bool = False,
    deadline: Deadline | None = None,
) -> tuple[Delivery, ScriptedTransport, DeliveryCounters]:
    transport = ScriptedTransport(
        {BATCH_PATH: answers, SINGLE_PATH: answers, SESSION_PATH: [_minted()]}
    )
    counters = DeliveryCounters()
    delivery = Delivery(
        transport=transport,  # type: ignore[arg-type]
        api_key="pk_test" if session else SECRET_KEY,
        session=(
            SessionManager("pk_test", anonymous_user, transport)  # type: ignore[arg-type]
            if session
            else None
        ),
        policy=RetryPolicy(max_retries, backoff_base, backoff_cap),
        counters=counters,
        deadline=deadline or Deadline(),
    )
    return delivery, transport, counters


def _minted() -> Response:
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    return Response(200, orjson.dumps({"token": "t0k3n", "expires_at": expires.isoformat()}))


def _too_large_above(events: int) -> Answer:
    """413 for a body of more than ``events`` events."""

    def answer(body: bytes) -> Response:
        fits = len(orjson.loads(body)["events"]) <= events
        return OK if fits else Response(413, b"too large")

    return answer


def test_an_acknowledged_batch_is_counted_by_the_caller_with_its_body_size() -> None:
    delivery, transport, counters = _delivery([OK])
    attempted = delivery.attempt_batch(batch(5, "k1"))
    (request,) = transport.requests
    assert attempted.acknowledged == [(5, len(request.body))]
    assert (attempted.given_up, attempted.to_retry, attempted.unsent) == ([], [], [])
    assert attempted.unavailable is None
    assert request.path == BATCH_PATH
    assert request.headers["Idempotency-Key"] == "k1"
    assert request.headers["Authorization"] == f"ApiKey {SECRET_KEY}"
    assert request.event_numbers() == [0, 1, 2, 3, 4]
    # Left to the caller, which alone knows whether the batch is still its own to count.
    assert (counters.sent, counters.bytes_sent, counters.retried) == (0, 0, 0)


def test_413_halves_the_batch_until_each_part_fits_in_order_with_derived_keys() -> None:
    delivery, transport, _ = _delivery([_too_large_above(2)])
    attempted = delivery.attempt_batch(batch(7, "k"))
    sent = [
        (request.headers["Idempotency-Key"], request.event_numbers())
        for request in transport.requests
        if len(request.event_numbers()) <= 2
    ]
    assert sent == [
        ("k.0.0", [0]),
        ("k.0.1", [1, 2]),
        ("k.1.0", [3, 4]),
        ("k.1.1", [5, 6]),
    ]
    assert [events for events, _ in attempted.acknowledged] == [1, 2, 2, 2]
    assert attempted.given_up == []
    # The refused attempts: the whole, then each half too large.
    assert len(transport.requests) == 7


def test_413_splits_a_batch_of_two() -> None:
    delivery, _, _ = _delivery([_too_large_above(1)])
    attempted = delivery.attempt_batch(batch(2, "k"))
    assert [events for events, _ in attempted.acknowledged] == [1, 1]
    assert attempted.given_up == []


def test_each_half_goes_its_own_way() -> None:
    # The whole is too large; its first half is answered 503, its second stored.
    delivery, _, _ = _delivery([Response(413, b""), Response(503, b""), OK])
    attempted = delivery.attempt_batch(batch(4, "k"))
    assert [(part.idempotency_key, part.first) for part in attempted.to_retry] == [("k.0", 0)]
    assert [events for events, _ in attempted.acknowledged] == [2]


def test_the_deadline_passing_between_halves_gives_up_every_one_left() -> None:
    deadline = Deadline()

    def too_large_and_out_of_time(body: bytes) -> Response:
        deadline.expire_now()
        return Response(413, b"")

    delivery, transport, _ = _delivery([too_large_and_out_of_time], deadline=deadline)
    attempted = delivery.attempt_batch(batch(4, "k"))
    assert [(part.reason, part.first, len(part.events)) for part in attempted.given_up] == [
        (REASON_SHUTDOWN_DEADLINE, 0, 2),
        (REASON_SHUTDOWN_DEADLINE, 2, 2),
    ]
    assert all("deadline" in str(part.error) for part in attempted.given_up)
    assert len(transport.requests) == 1


def test_413_for_a_single_event_fails_it_and_delivers_the_rest() -> None:
    def refuse_event_3(body: bytes) -> Response:
        numbers = [event["payload"]["i"] for event in orjson.loads(body)["events"]]
        return Response(413, b"too large") if 3 in numbers else OK

    delivery, _, _ = _delivery([refuse_event_3])
    attempted = delivery.attempt_batch(batch(6, "k"))
    (given_up,) = attempted.given_up
    assert given_up.reason == REASON_FAILED
    assert given_up.failed
    assert given_up.error.status == 413
    assert given_up.error.undelivered == 1
    assert given_up.first == 3
    assert [orjson.loads(event)["payload"]["i"] for event in given_up.events] == [3]
    assert sum(events for events, _ in attempted.acknowledged) == 5


def test_401_on_a_session_token_mints_once_more_and_sends_again() -> None:
    delivery, transport, _ = _delivery([Response(401, b"expired"), OK], session=True)
    attempted = delivery.attempt_batch(batch(3, "the-key"))
    assert {request.headers["Idempotency-Key"] for request in transport.to(BATCH_PATH)} == {
        "the-key"
    }
    assert attempted.acknowledged == [(3, len(transport.to(BATCH_PATH)[-1].body))]
    assert len(transport.to(SESSION_PATH)) == 2
    assert [request.headers["Authorization"] for request in transport.to(BATCH_PATH)] == [
        "Bearer t0k3n",
        "Bearer t0k3n",
    ]


def test_a_second_401_after_the_re_mint_fails_the_batch() -> None:
    delivery, transport, counters = _delivery([Response(401, b"no")], session=True)
    attempted = delivery.attempt_batch(batch(3))
    (given_up,) = attempted.given_up
    assert (given_up.reason, given_up.error.status, given_up.error.undelivered) == (
        REASON_FAILED,
        401,
        3,
    )
    # One re-mint, not a loop of them.
    assert len(transport.to(SESSION_PATH)) == 2
    assert len(transport.to(BATCH_PATH)) == 2
    assert counters.retried == 0


def test_401_for_a_secret_key_fails_at_once_without_showing_the_key() -> None:
    delivery, transport, _ = _delivery([Response(401, b"unknown API key")])
    attempted = delivery.attempt_batch(batch(2))
    (given_up,) = attempted.given_up
    assert (given_up.reason, given_up.error.status) == (REASON_FAILED, 401)
    assert SECRET_KEY not in str(given_up.error)
    assert SECRET_KEY[-4:] in str(given_up.error)
    assert len(transport.requests) == 1


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_refusal_fails_the_batch_at_once(status: int) -> None:
    delivery, transport, counters = _delivery([Response(status, b"the detail")])
    attempted = delivery.attempt_batch(batch(4))
    (given_up,) = attempted.given_up
    assert (given_up.reason, given_up.error.status, given_up.error.undelivered) == (
        REASON_FAILED,
        status,
        4,
    )
    # The server's answer is kept and shown; the key, if named, only masked.
    assert given_up.error.body == "the detail"
    assert "the detail" in str(given_up.error)
    assert SECRET_KEY not in str(given_up.error)
    assert (len(transport.requests), counters.retried, attempted.to_retry) == (1, 0, [])


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_429_and_5xx_schedule_a_retry_within_the_backoff_window(status: int) -> None:
    delivery, _, counters = _delivery([Response(status, b"busy")])
    pending = batch(4)
    before = time.monotonic()
    attempted = delivery.attempt_batch(pending)
    after = time.monotonic()
    assert attempted.to_retry == [pending]
    assert attempted.given_up == []
    assert (pending.retries, counters.retried) == (1, 1)
    # Full jitter over the first window: base * 2**0 = 0.5 s.
    assert before <= pending.retry_at <= after + 0.5
    assert not pending.maybe_stored
    # No Retry-After: no pause for the whole client.
    assert attempted.resume_at == 0.0


def test_retries_run_out_after_max_retries_as_retries_exhausted() -> None:
    delivery, transport, counters = _delivery([Response(503, b"busy")], max_retries=2)
    pending = batch(4)
    outcomes = [delivery.attempt_batch(pending) for _ in range(3)]
    assert [len(attempted.to_retry) for attempted in outcomes] == [1, 1, 0]
    (given_up,) = outcomes[-1].given_up
    assert (given_up.reason, given_up.error.undelivered, given_up.failed) == (
        REASON_RETRIES_EXHAUSTED,
        4,
        True,
    )
    assert (counters.retried, pending.retries, len(transport.requests)) == (2, 2, 3)
    # The last answer, kept for the caller.
    assert (given_up.error.status, given_up.error.body) == (503, "busy")
    assert "busy" in str(given_up.error)
    # Every attempt carried the batch's one key.
    assert {request.headers["Idempotency-Key"] for request in transport.requests} == {"key"}


def test_retry_after_in_seconds_pauses_the_client_and_times_the_retry() -> None:
    delivery, _, _ = _delivery([Response(429, b"slow down", retry_after="7")])
    pending = batch(2)
    before = time.monotonic()
    attempted = delivery.attempt_batch(pending)
    after = time.monotonic()
    assert before + 7 <= attempted.resume_at <= after + 7
    assert before + 7 <= pending.retry_at <= after + 7


def test_retry_after_as_an_http_date_is_honoured() -> None:
    moment = email.utils.formatdate(time.time() + 20, usegmt=True)
    delivery, _, _ = _delivery([Response(503, b"down", retry_after=moment)])
    pending = batch(2)
    before = time.monotonic()
    attempted = delivery.attempt_batch(pending)
    # The date has whole seconds: 19 to 20 s from now.
    assert before + 18.9 <= attempted.resume_at <= time.monotonic() + 20.1
    assert attempted.resume_at - 0.1 <= pending.retry_at <= attempted.resume_at + 0.1


def test_retry_after_is_capped_by_backoff_cap() -> None:
    delivery, _, _ = _delivery([Response(429, b"", retry_after="3600")], backoff_cap=4.0)
    pending = batch(2)
    before = time.monotonic()
    attempted = delivery.attempt_batch(pending)
    assert before + 4 <= attempted.resume_at <= time.monotonic() + 4
    assert pending.retry_at <= time.monotonic() + 4


def test_a_batch_whose_answer_was_lost_never_runs_out_of_retries() -> None:
    lost = TransportError("connection reset by peer")
    delivery, transport, counters = _delivery(
        [lost, Response(503, b"busy"), Response(503, b"busy"), lost, OK], max_retries=0
    )
    pending = batch(3)
    outcomes = [delivery.attempt_batch(pending) for _ in range(5)]
    # max_retries=0, yet it is retried until an answer comes: given up, the server might
    # have it, and a replay under a new key could store it twice.
    assert [len(attempted.to_retry) for attempted in outcomes[:4]] == [1, 1, 1, 1]
    assert all(attempted.given_up == [] for attempted in outcomes)
    assert outcomes[-1].acknowledged == [(3, len(transport.requests[-1].body))]
    assert pending.maybe_stored
    assert (pending.retries, counters.retried) == (4, 4)


def test_a_503_on_a_batch_never_left_unanswered_does_run_out() -> None:
    delivery, _, _ = _delivery([Response(503, b"busy")], max_retries=0)
    attempted = delivery.attempt_batch(batch(3))
    assert [part.reason for part in attempted.given_up] == [REASON_RETRIES_EXHAUSTED]


def test_an_unreachable_api_hands_the_batch_back_unsent_without_spending_a_retry() -> None:
    unreachable = UnreachableError("connection refused")
    delivery, _, counters = _delivery([unreachable], max_retries=0)
    pending = batch(3)
    attempted = delivery.attempt_batch(pending)
    assert attempted.unavailable is unreachable
    assert attempted.unsent == [pending]
    assert (attempted.to_retry, attempted.given_up, attempted.acknowledged) == ([], [], [])
    assert (pending.retries, counters.retried, pending.maybe_stored) == (0, 0, False)


def test_an_api_lost_between_halves_hands_back_what_is_left_in_order() -> None:
    unreachable = UnreachableError("connection refused")
    delivery, _, _ = _delivery([Response(413, b""), OK, unreachable])
    attempted = delivery.attempt_batch(batch(8, "k"))
    assert attempted.acknowledged[0][0] == 4
    assert [(part.idempotency_key, part.first) for part in attempted.unsent] == [("k.1", 4)]


def test_no_session_token_means_nothing_was_sent() -> None:
    transport = ScriptedTransport({SESSION_PATH: [Response(401, b"unknown key")], BATCH_PATH: [OK]})
    delivery = Delivery(
        transport=transport,  # type: ignore[arg-type]
        api_key="pk_unknown",
        session=SessionManager("pk_unknown", anonymous_user, transport),  # type: ignore[arg-type]
        policy=RetryPolicy(5, 0.5, 30.0),
        counters=DeliveryCounters(),
        deadline=Deadline(),
    )
    pending = batch(2)
    attempted = delivery.attempt_batch(pending)
    assert attempted.unsent == [pending]
    assert attempted.unavailable is not None
    assert transport.to(BATCH_PATH) == []


def test_after_the_deadline_nothing_is_sent_and_the_batch_is_given_up() -> None:
    deadline = Deadline()
    deadline.expire_now()
    delivery, transport, _ = _delivery([OK], deadline=deadline)
    attempted = delivery.attempt_batch(batch(3))
    (given_up,) = attempted.given_up
    assert (given_up.reason, given_up.failed, given_up.error.undelivered) == (
        REASON_SHUTDOWN_DEADLINE,
        False,
        3,
    )
    assert "deadline" in str(given_up.error)
    assert transport.requests == []


def test_a_deadline_shortens_the_requests_timeout() -> None:
    deadline = Deadline()
    delivery, transport, _ = _delivery([OK], deadline=deadline)
    delivery.attempt_batch(batch(1))
    deadline.set(3.0)
    delivery.attempt_batch(batch(1))
    first, second = (request.at_most for request in transport.requests)
    assert first is None
    assert second is not None
    assert 2.0 < second <= 3.0


# -- batch=False: one event, retried on the caller's thread -----------------------------------


#: No backoff at all: the caller's thread would otherwise sleep between retries.
INSTANT = {"backoff_base": 0.0, "backoff_cap": 0.0}


def test_a_single_event_is_retried_then_acknowledged_and_counted() -> None:
    delivery, transport, counters = _delivery(
        [Response(503, b""), Response(429, b""), TransportError("reset"), OK],
        max_retries=3,
        **INSTANT,
    )
    assert delivery.deliver_single(b'{"i":0}', "single-key") is None
    assert [request.path for request in transport.requests] == [SINGLE_PATH] * 4
    assert {request.headers["Idempotency-Key"] for request in transport.requests} == {"single-key"}
    assert (counters.retried, counters.sent, counters.batches, counters.bytes_sent) == (3, 1, 1, 7)


def test_a_single_event_gives_up_after_max_retries() -> None:
    delivery, transport, counters = _delivery(
        [Response(503, b"overloaded")], max_retries=2, **INSTANT
    )
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert (given_up.error.status, given_up.error.body) == (503, "overloaded")
    assert (given_up.reason, given_up.events, given_up.error.undelivered) == (
        REASON_RETRIES_EXHAUSTED,
        [b"{}"],
        1,
    )
    assert (len(transport.requests), counters.retried, counters.sent) == (3, 2, 0)


def test_a_single_event_refused_fails_at_once() -> None:
    delivery, transport, _ = _delivery([Response(400, b"user_id is missing")])
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert (given_up.reason, given_up.events, len(transport.requests)) == (
        REASON_FAILED,
        [b"{}"],
        1,
    )
    assert (given_up.error.status, given_up.error.undelivered) == (400, 1)
    assert given_up.error.body == "user_id is missing"
    assert "user_id is missing" in str(given_up.error)


@pytest.mark.parametrize(
    ("first_answer", "reason"),
    [(UnreachableError("refused"), REASON_FAILED), (TransportError("reset"), "maybe stored")],
)
def test_a_single_event_that_cannot_be_sent_says_whether_the_server_may_have_it(
    first_answer: Answer, reason: str
) -> None:
    delivery, _, _ = _delivery(
        [first_answer, UnreachableError("refused")], max_retries=3, **INSTANT
    )
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    # Never sent: failed. Sent once without an answer: the server may have it.
    expected = REASON_RETRIES_EXHAUSTED if reason == "maybe stored" else REASON_FAILED
    assert (given_up.reason, given_up.events, given_up.error.undelivered) == (expected, [b"{}"], 1)
    # The error names why nothing could be sent.
    assert "refused" in str(given_up.error)


def test_a_single_event_once_unanswered_stays_maybe_stored_after_later_answers() -> None:
    delivery, _, _ = _delivery(
        [TransportError("reset"), Response(503, b""), UnreachableError("refused")],
        max_retries=3,
        **INSTANT,
    )
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert given_up.reason == REASON_RETRIES_EXHAUSTED


def test_a_single_event_never_answered_says_so() -> None:
    delivery, _, _ = _delivery([TransportError("connection reset")], max_retries=1, **INSTANT)
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert given_up.reason == REASON_RETRIES_EXHAUSTED
    assert "connection reset" in str(given_up.error)


def test_a_single_events_retry_that_would_outlast_the_deadline_gives_up_at_once() -> None:
    deadline = Deadline()
    deadline.set(60.0)
    delivery, transport, _ = _delivery(
        [Response(503, b"", retry_after="120")], backoff_cap=300.0, deadline=deadline
    )
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert (given_up.reason, given_up.events) == (REASON_SHUTDOWN_DEADLINE, [b"{}"])
    assert given_up.error.undelivered == 1
    assert len(transport.requests) == 1
    # The deadline's one message: the timeout, and the last answer.
    assert "timeout=60" in str(given_up.error)
    assert "503" in str(given_up.error)


# -- what nobody expected, and the deadline's one message -------------------------------------


class _SurpriseError(Exception):
    """A failure no layer below promised (a bug, a library's surprise)."""


def test_an_unexpected_exception_gives_the_batch_up_and_sending_goes_on() -> None:
    delivery, _, counters = _delivery([Response(413, b""), _SurpriseError("api key sk_live_x"), OK])
    attempted = delivery.attempt_batch(batch(4, "k"))
    # The first half met the surprise, the second was still sent.
    (given_up,) = attempted.given_up
    assert (given_up.reason, given_up.first, len(given_up.events)) == (
        REASON_UNEXPECTED_ERROR,
        0,
        2,
    )
    assert given_up.failed
    assert given_up.error.undelivered == 2
    assert "_SurpriseError" in str(given_up.error)
    # Its text may hold a secret: not shown.
    assert "sk_live_x" not in str(given_up.error)
    assert [events for events, _ in attempted.acknowledged] == [2]
    assert counters.retried == 0


def test_an_unexpected_exception_sending_one_event_gives_it_up() -> None:
    delivery, _, _ = _delivery([_SurpriseError("boom")])
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert (given_up.reason, given_up.events, given_up.error.undelivered) == (
        REASON_UNEXPECTED_ERROR,
        [b"{}"],
        1,
    )
    assert "_SurpriseError" in str(given_up.error)


def test_the_deadline_error_names_the_timeout_and_the_last_attempt() -> None:
    deadline = Deadline()
    delivery, _, _ = _delivery([Response(503, b"busy")], deadline=deadline)
    pending = batch(3)
    delivery.attempt_batch(pending)
    deadline.set(2.5)
    deadline.expire_now()
    (given_up,) = delivery.attempt_batch(pending).given_up
    assert given_up.reason == REASON_SHUTDOWN_DEADLINE
    assert "timeout=2.5" in str(given_up.error)
    assert "503" in str(given_up.error)
    assert given_up.error.fix


def test_a_single_event_not_sent_says_how_to_fix_it() -> None:
    delivery, _, _ = _delivery([UnreachableError("connection refused")], max_retries=0)
    given_up = delivery.deliver_single(b"{}", "k")
    assert given_up is not None
    assert given_up.reason == REASON_FAILED
    assert given_up.error.fix
