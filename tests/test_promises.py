"""Every promise of the README, checked under every fault LocalIngestServer can stage, each
fault with the one outcome the README promises for it.

The promises: ``track()`` neither raises nor does I/O for server trouble; ``flush()``
returns only when its events are acknowledged, or raises with the count undelivered;
``shutdown()`` keeps its deadline; every event ends up exactly once as sent (stored by the
server), handed to ``on_drop``, or counted; the counters add up, with nothing queued, from
the moment shutdown returns and stay so when a late answer arrives; the server stores
exactly the events counted sent, and the events given up for a reason that says it may
have them. The outcomes, by fault:

* delivered, exactly once: 5xx, 429 with ``Retry-After``, a reset before the body, a reset
  after the batch was stored, a hang shorter than the request timeout, a hang past a short
  timeout, an outage shorter than the retry budget, 413 until the batch is split small
  enough;
* failed, with the reason ``failed`` and the status: 401, 413 for a single event;
* refused at once (``flush()`` answers without waiting out the outage patience, nothing
  reaches the server), then failed at shutdown: a certificate that does not verify;
* handed over at the shutdown deadline as ``shutdown_deadline``: a hang longer than the
  deadline with a long request timeout (the server stores the events later, as the README
  says it may);
* an outage longer than the retry budget: ``flush()`` raises with every event still
  queued, and they are delivered once the API is back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

import segops_fast as segops
from segops_fast import _transport
from segops_fast._delivery import RetryPolicy
from segops_fast.testing import LocalIngestServer, ServerTLS

from .conftest import (
    DEADLINE_MARGIN_SECONDS,
    MakeClient,
    answered_ingest_requests,
    assert_accounted,
    assert_given_up_as_counted,
    our_threads,
    track_numbered,
    wait_for_threads_started_since,
    wait_until,
)

EVENTS = 40
#: How long flush() may take where the outcome is delivery: generous, since the promise
#: here is delivery, not speed (the slowest fault, a 1 s Retry-After, needs about 1 s).
PATIENCE_FOR_DELIVERY = 20.0
SHUTDOWN_DEADLINE = 1.5

DELIVERED = "delivered"
FAILED = "failed"
REFUSED_AT_ONCE = "refused at once"
HANDED_OVER_AT_THE_DEADLINE = "handed over at the deadline"
DELIVERED_WHEN_THE_API_IS_BACK = "delivered when the API is back"


@dataclass(frozen=True)
class Fault:
    name: str
    #: Stages the fault on the server before any event is tracked; may return what ends
    #: it, which the test calls (joins a timer) as it ends.
    stage: Callable[[LocalIngestServer], Callable[[], None] | None]
    #: What the README promises becomes of the events.
    outcome: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The status of flush()'s error, for the outcome FAILED.
    status: int | None = None
    #: Requests sent again: exact, every fault here costs a known number.
    retried: int = 0
    #: Requests the client stopped waiting for, which the server answers later.
    late_answers: int = 0
    #: Ends the fault after flush() has answered (an outage that the test ends itself).
    end: Callable[[LocalIngestServer], None] = lambda server: None
    #: Served over HTTPS with a certificate from a CA the client does not trust.
    untrusted_certificate: bool = False


def _outage(server: LocalIngestServer) -> None:
    server.stop()


def _outage_of_one_second(server: LocalIngestServer) -> Callable[[], None]:
    server.stop()
    restart = threading.Timer(1.0, server.start)
    restart.start()
    return restart.join


def _restart(server: LocalIngestServer) -> None:
    server.start()


def _largest_body(limit: int) -> Callable[[LocalIngestServer], None]:
    def stage(server: LocalIngestServer) -> None:
        server.faults.max_body_bytes = limit

    return stage


FAULTS = [
    Fault("5xx", lambda server: server.faults.respond_with(503, count=3), DELIVERED, retried=3),
    Fault(
        "429_retry_after",
        lambda server: server.faults.respond_with(429, retry_after="1"),
        DELIVERED,
        retried=1,
    ),
    Fault(
        "reset_before_body",
        lambda server: server.faults.reset_before_body(count=2),
        DELIVERED,
        retried=2,
    ),
    Fault(
        "reset_after_store",
        lambda server: server.faults.reset_after_store(count=2),
        DELIVERED,
        retried=2,
    ),
    Fault(
        "hang_shorter_than_the_timeout",
        lambda server: server.faults.hang(1.0),
        DELIVERED,
        {"timeout": 10.0},
    ),
    Fault(
        "hang_past_a_short_timeout",
        lambda server: server.faults.hang(1.0, count=2),
        DELIVERED,
        {"timeout": 0.5},
        retried=2,
        late_answers=2,
    ),
    Fault(
        "hang_past_the_deadline_with_a_long_timeout",
        lambda server: server.faults.hang(5.0),
        HANDED_OVER_AT_THE_DEADLINE,
        {"timeout": 30.0},
        late_answers=1,
    ),
    Fault(
        "outage_shorter_than_the_retry_budget",
        _outage_of_one_second,
        DELIVERED,
        {"max_retries": 8},
    ),
    Fault(
        "outage_longer_than_the_retry_budget",
        _outage,
        DELIVERED_WHEN_THE_API_IS_BACK,
        {"max_retries": 2},
        end=_restart,
    ),
    Fault(
        "401",
        lambda server: None,
        FAILED,
        {"api_key": "sk_not_a_key_of_this_server"},
        status=401,
    ),
    Fault("413_split", _largest_body(400), DELIVERED),
    Fault("413_event_too_large_alone", _largest_body(40), FAILED, status=413),
    Fault(
        "tls_verification_failure",
        lambda server: None,
        REFUSED_AT_ONCE,
        # A long outage patience (12.75 s): a flush that waited it out would time out.
        {"max_retries": 8},
        untrusted_certificate=True,
    ),
]

#: (sent, dropped, failed) once shutdown() has returned, and the reason of each event
#: given up, by outcome.
_COUNTS = {
    DELIVERED: ((EVENTS, 0, 0), None),
    DELIVERED_WHEN_THE_API_IS_BACK: ((EVENTS, 0, 0), None),
    FAILED: ((0, 0, EVENTS), "failed"),
    REFUSED_AT_ONCE: ((0, 0, EVENTS), "failed"),
    HANDED_OVER_AT_THE_DEADLINE: ((0, EVENTS, 0), "shutdown_deadline"),
}


@pytest.mark.parametrize("with_on_drop", [True, False], ids=["with_on_drop", "without_on_drop"])
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_every_promise_holds_under(
    fault: Fault,
    with_on_drop: bool,
    *,
    server: LocalIngestServer,
    make_client: MakeClient,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped: dict[int, str] = {}
    lock = threading.Lock()

    def on_drop(events: list[dict[str, Any]], reason: str) -> None:
        with lock:
            for event in events:
                number = event["payload"]["i"]
                assert number not in dropped, "an event was handed to on_drop twice"
                dropped[number] = reason

    options = {"backoff_base": 0.05, "on_error": lambda error: None, **fault.options}
    if fault.untrusted_certificate:
        server = LocalIngestServer(tls=ServerTLS.for_loopback()).start()
        request.addfinalizer(server.stop)
        options["api_url"] = server.url
    posts = _record_posts(monkeypatch)
    threads_before = our_threads()
    client = make_client(on_drop=on_drop if with_on_drop else None, **options)
    ended = fault.stage(server)
    if ended is not None:
        request.addfinalizer(ended)

    # track() neither raises nor does I/O, whatever the server does.
    track_numbered(client, EVENTS)
    assert threading.get_ident() not in posts

    # flush() returns only once every event is acknowledged, or raises with the count.
    patience = 1.0 if fault.outcome == HANDED_OVER_AT_THE_DEADLINE else PATIENCE_FOR_DELIVERY
    flush_error: segops.SegOpsApiError | None = None
    try:
        client.flush(timeout=patience)
    except segops.SegOpsApiError as error:
        flush_error = error
    tries_when_flush_answered = len(posts)
    if fault.outcome == DELIVERED:
        assert flush_error is None, flush_error
        assert _stored(server) == set(range(EVENTS))
    else:
        assert flush_error is not None
        assert flush_error.undelivered == EVENTS, flush_error
        assert _stored(server) == set()
    if fault.outcome == FAILED:
        assert flush_error is not None
        assert flush_error.status == fault.status, flush_error
    if fault.outcome in (REFUSED_AT_ONCE, DELIVERED_WHEN_THE_API_IS_BACK):
        # Not given up: they stay queued for the API.
        assert client.stats().queued == EVENTS
    if fault.outcome == REFUSED_AT_ONCE:
        # Answered after a try or two, not after a try every flush_interval for the outage
        # patience; and the server read no request (it counts the failed handshake on its
        # own thread, maybe after the client has moved on).
        assert 1 <= tries_when_flush_answered <= 3, tries_when_flush_answered
        wait_until(lambda: server.tls_handshake_failures >= 1)
        assert server.request_count == 0
    fault.end(server)

    # shutdown() keeps its deadline.
    began = time.monotonic()
    shutdown_error: segops.SegOpsApiError | None = None
    try:
        client.shutdown(timeout=SHUTDOWN_DEADLINE)
    except segops.SegOpsApiError as error:
        shutdown_error = error
    assert time.monotonic() - began < SHUTDOWN_DEADLINE + DEADLINE_MARGIN_SECONDS
    if fault.outcome in (REFUSED_AT_ONCE, HANDED_OVER_AT_THE_DEADLINE):
        assert shutdown_error is not None
        assert shutdown_error.undelivered == EVENTS, shutdown_error
    else:
        assert shutdown_error is None, shutdown_error
    if fault.outcome == HANDED_OVER_AT_THE_DEADLINE:
        # It returned at its deadline, not when the hung request ended.
        assert server.event_count == 0

    # From the moment shutdown returns, every event is counted once, as the fault says.
    (sent, dropped_count, failed), reason = _COUNTS[fault.outcome]
    stats = client.stats()
    assert_accounted(stats, tracked=EVENTS, sent=sent, dropped=dropped_count, failed=failed)
    assert stats.retried == fault.retried, stats
    # ...and stays so when the requests it stopped waiting for are answered after all.
    wait_for_threads_started_since(threads_before)
    wait_until(
        lambda: answered_ingest_requests(server) >= stats.batches + fault.late_answers,
        timeout=PATIENCE_FOR_DELIVERY,
    )
    assert client.stats() == stats

    # The server never stores an event twice, and stores exactly the events counted sent,
    # plus those handed over at the deadline in a request it answered later.
    summary = server.summary()
    assert summary["events"] == summary["unique_events"], summary
    stored = _stored(server)
    if fault.outcome == HANDED_OVER_AT_THE_DEADLINE:
        assert stored == set(range(EVENTS))
        assert len(stored) == stats.sent + stats.dropped
    else:
        assert len(stored) == stats.sent
    expected_drops = {} if reason is None else dict.fromkeys(range(EVENTS), reason)
    if with_on_drop:
        assert dropped == expected_drops
        assert_given_up_as_counted(stats, dropped.values())
        assert stored.isdisjoint(number for number, why in dropped.items() if why == "failed")
    else:
        assert dropped == {}


def _stored(server: LocalIngestServer) -> set[int]:
    return {int(event["payload"]["i"]) for event in server.events}


def _record_posts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each request sent from now on in this test, as it is sent."""
    threads: list[int] = []
    post = _transport.Transport.post

    def recording_post(self: _transport.Transport, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return post(self, *args, **kwargs)

    monkeypatch.setattr(_transport.Transport, "post", recording_post)
    return threads


# -- the two defects this file was written for -------------------------------------------------


def test_flush_rides_out_an_outage_shorter_than_the_retry_budget(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # 0.05 s, 0.1 s, ... 20 retries: over 30 s of patience, and the outage lasts 1.5 s.
    client = make_client(backoff_base=0.05, max_retries=20, on_error=lambda error: None)
    server.stop()
    track_numbered(client, 100)
    threading.Timer(1.5, server.start).start()
    client.flush(timeout=20)
    # It returned because the events were acknowledged, not because it gave up.
    assert server.event_count == 100
    assert_accounted(client.stats(), tracked=100, sent=100, dropped=0, failed=0)


def test_flush_raises_with_the_count_once_an_outage_outlasts_the_retry_budget(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # Two retries of at most 0.05 s and 0.1 s: flush() waits about 0.15 s for the API.
    client = make_client(backoff_base=0.05, max_retries=2, on_error=lambda error: None)
    server.stop()
    track_numbered(client, 100)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=20)
    assert raised.value.undelivered == 100
    # The events stay queued and are delivered once the API is back.
    assert client.stats().queued == 100
    server.start()
    client.flush(timeout=20)
    assert server.event_count == 100
    assert_accounted(client.stats(), tracked=100, sent=100, dropped=0, failed=0)


def test_with_max_retries_zero_flush_raises_at_once_during_an_outage(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(max_retries=0, on_error=lambda error: None)
    server.stop()
    client.track(user_id="u", event_type="e", payload={})
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=20)
    assert raised.value.undelivered == 1
    assert "connection refused" in str(raised.value).lower()


def test_the_shutdown_deadline_hands_a_request_under_way_to_on_drop_at_once(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    dropped: list[str] = []
    client = make_client(
        timeout=30.0,
        on_drop=lambda events, reason: dropped.extend([reason] * len(events)),
        on_error=lambda error: None,
    )
    server.faults.hang(3.0)
    track_numbered(client, 100)
    wait_until(lambda: server.faults.pending == 0)  # the request is under way
    threads_before = our_threads()
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.shutdown(timeout=1.0)
    assert raised.value.undelivered == 100
    # Handed over and counted before shutdown() raised, not when the request ends.
    assert dropped == ["shutdown_deadline"] * 100
    stats = client.stats()
    assert_accounted(stats, tracked=100, sent=0, dropped=100, failed=0)
    # The server answers the request after the deadline: it stores the events (the README
    # says it may), and the client, having given them up, does not count them sent too.
    assert server.wait_for_events(100, timeout=10)
    wait_for_threads_started_since(threads_before)
    assert client.stats() == stats


def test_flush_waits_for_an_unreachable_api_as_long_as_the_503_schedule_would() -> None:
    # The README's figure for the defaults: 0.5 + 1 + 2 + 4 + 8 seconds.
    assert RetryPolicy(5, 0.5, 30.0).longest_wait() == 15.5
    assert RetryPolicy(8, 0.5, 4.0).longest_wait() == 0.5 + 1 + 2 + 4 * 5
    assert RetryPolicy(0, 0.5, 30.0).longest_wait() == 0.0


def test_an_outage_is_reported_when_it_begins_not_at_every_try(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    client = make_client(max_retries=0, on_error=errors.append)
    server.stop()
    for _ in range(3):
        client.track(user_id="u", event_type="e", payload={})
        with pytest.raises(segops.SegOpsApiError):
            client.flush(timeout=20)
    # Three flushes, each a try (and more every flush_interval, 0.05 s here): one report.
    time.sleep(0.3)
    assert len(errors) == 1, errors
    assert "connection refused" in str(errors[0]).lower()
