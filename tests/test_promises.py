"""Every promise of the README, checked under every fault LocalIngestServer can stage.

The promises: ``track()`` neither blocks nor raises for server trouble; ``flush()``
returns only when its events are acknowledged, or raises with the count undelivered;
``shutdown()`` keeps its deadline; every event ends up exactly once as sent (stored by
the server), handed to ``on_drop``, or counted; the counters add up at every moment after
shutdown; the server never stores an event twice. The faults: 5xx, 429 with
``Retry-After``, a reset before the body, a reset after the batch was stored, a hang
longer than a short and than a long request timeout, an outage shorter and longer than
the retry budget, 401, 413 (split until it fits, and an event too large alone), and a
certificate that does not verify.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

import segops_fast as segops
from segops_fast._delivery import RetryPolicy
from segops_fast.testing import LocalIngestServer, ServerTLS

from .conftest import MakeClient, assert_idle_invariant, track_numbered, wait_until

EVENTS = 40
#: Reasons whose events the server may have stored all the same (README: "Delivery under
#: faults"): an attempt of theirs went unanswered.
MAYBE_STORED = {"retries_exhausted", "shutdown_deadline"}


@dataclass(frozen=True)
class Fault:
    name: str
    #: Stages the fault on the server before any event is tracked.
    stage: Callable[[LocalIngestServer], None]
    options: dict[str, Any] = field(default_factory=dict)
    #: Ends the fault after flush() has answered (an outage that the test ends itself).
    end: Callable[[LocalIngestServer], None] = lambda server: None
    #: Seconds after which the server may still store a request the client gave up.
    settles_within: float = 0.0
    #: Served over HTTPS with a certificate from a CA the client does not trust.
    untrusted_certificate: bool = False


def _outage(server: LocalIngestServer) -> None:
    server.stop()


def _outage_of_one_second(server: LocalIngestServer) -> None:
    server.stop()
    threading.Timer(1.0, server.start).start()


def _restart(server: LocalIngestServer) -> None:
    server.start()


def _largest_body(limit: int) -> Callable[[LocalIngestServer], None]:
    def stage(server: LocalIngestServer) -> None:
        server.faults.max_body_bytes = limit

    return stage


FAULTS = [
    Fault("5xx", lambda server: server.faults.respond_with(503, count=3)),
    Fault("429_retry_after", lambda server: server.faults.respond_with(429, retry_after="1")),
    Fault("reset_before_body", lambda server: server.faults.reset_before_body(count=2)),
    Fault("reset_after_store", lambda server: server.faults.reset_after_store(count=2)),
    Fault(
        "hang_past_a_short_timeout",
        lambda server: server.faults.hang(1.0, count=2),
        {"timeout": 0.5},
        settles_within=2.0,
    ),
    Fault(
        "hang_past_the_deadline_with_a_long_timeout",
        lambda server: server.faults.hang(5.0),
        {"timeout": 30.0},
        settles_within=1.5,
    ),
    Fault("outage_shorter_than_the_retry_budget", _outage_of_one_second, {"max_retries": 8}),
    Fault("outage_longer_than_the_retry_budget", _outage, {"max_retries": 2}, end=_restart),
    Fault("401", lambda server: None, {"api_key": "sk_not_a_key_of_this_server"}),
    Fault("413_split", _largest_body(400)),
    Fault("413_event_too_large_alone", _largest_body(40)),
    Fault("tls_verification_failure", lambda server: None, untrusted_certificate=True),
]


@dataclass
class Outcome:
    """What the client and the server did with events ``0 .. EVENTS - 1``."""

    dropped: dict[int, str] = field(default_factory=dict)
    flush_error: segops.SegOpsApiError | None = None
    stored_when_flush_answered: set[int] = field(default_factory=set)


@pytest.mark.parametrize("with_on_drop", [True, False], ids=["with_on_drop", "without_on_drop"])
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_every_promise_holds_under(
    fault: Fault,
    with_on_drop: bool,
    server: LocalIngestServer,
    make_client: MakeClient,
    request: pytest.FixtureRequest,
) -> None:
    outcome = Outcome()
    lock = threading.Lock()

    def on_drop(events: list[dict[str, Any]], reason: str) -> None:
        with lock:
            for event in events:
                number = event["payload"]["i"]
                assert number not in outcome.dropped, "an event was handed to on_drop twice"
                outcome.dropped[number] = reason

    options = {"backoff_base": 0.05, "on_error": lambda error: None, **fault.options}
    if fault.untrusted_certificate:
        server = LocalIngestServer(tls=ServerTLS.for_loopback()).start()
        request.addfinalizer(server.stop)
        options["api_url"] = server.url
    client = make_client(on_drop=on_drop if with_on_drop else None, **options)
    fault.stage(server)

    # track() neither raises nor waits for the server, whatever it does.
    slowest = 0.0
    for number in range(EVENTS):
        began = time.monotonic()
        client.track(user_id="u", event_type="e", payload={"i": number})
        slowest = max(slowest, time.monotonic() - began)
    assert slowest < 0.5

    # flush() returns only once every event is acknowledged, or raises with the count.
    try:
        client.flush(timeout=2.5)
    except segops.SegOpsApiError as error:
        outcome.flush_error = error
    outcome.stored_when_flush_answered = _stored(server)
    if outcome.flush_error is None:
        assert outcome.stored_when_flush_answered == set(range(EVENTS))
    else:
        assert 0 < outcome.flush_error.undelivered <= EVENTS
        missing = EVENTS - len(outcome.stored_when_flush_answered)
        assert outcome.flush_error.undelivered >= missing
    fault.end(server)

    # shutdown() keeps its deadline (plus a margin for a loaded machine).
    began = time.monotonic()
    shutdown_error: segops.SegOpsApiError | None = None
    try:
        client.shutdown(timeout=1.5)
    except segops.SegOpsApiError as error:
        shutdown_error = error
    assert time.monotonic() - began < 1.5 + 1.0
    assert shutdown_error is None or shutdown_error.undelivered > 0

    # From the moment shutdown returns, every event is counted exactly once...
    stats = client.stats()
    assert stats.queued == 0, stats
    assert stats.sent + stats.dropped + stats.failed == EVENTS, stats
    # ...and stays so, even when a request given up at the deadline is answered later.
    time.sleep(fault.settles_within)
    assert client.stats() == stats
    assert_idle_invariant(stats)

    # The server never stores an event twice.
    summary = server.summary()
    assert summary["events"] == summary["unique_events"], summary
    stored = _stored(server)

    # Every event was stored or given up, and the server stores exactly the events
    # counted sent, plus at most those given up for a reason that says it may have them.
    if with_on_drop:
        assert len(outcome.dropped) == stats.dropped + stats.failed
        assert stored | set(outcome.dropped) == set(range(EVENTS))
        assert len(stored - set(outcome.dropped)) == stats.sent
        for number in stored & set(outcome.dropped):
            assert outcome.dropped[number] in MAYBE_STORED, (number, outcome.dropped[number])
    else:
        assert len(stored) >= stats.sent


def _stored(server: LocalIngestServer) -> set[int]:
    return {int(event["payload"]["i"]) for event in server.events}


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
    assert client.stats().sent == 100


def test_flush_raises_with_the_count_once_an_outage_outlasts_the_retry_budget(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # Two retries of at most 0.05 s and 0.1 s: flush() waits about 0.15 s for the API.
    client = make_client(backoff_base=0.05, max_retries=2, on_error=lambda error: None)
    server.stop()
    track_numbered(client, 100)
    with pytest.raises(segops.SegOpsApiError, match="100 events could not be delivered") as raised:
        client.flush(timeout=20)
    assert raised.value.undelivered == 100
    # The events stay queued and are delivered once the API is back.
    assert client.stats().queued == 100
    server.start()
    client.flush(timeout=20)
    assert server.event_count == 100


def test_with_max_retries_zero_flush_raises_at_once_during_an_outage(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(max_retries=0, on_error=lambda error: None)
    server.stop()
    client.track(user_id="u", event_type="e", payload={})
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=20)
    assert raised.value.undelivered == 1
    assert "Connection refused" in str(raised.value)


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
    with pytest.raises(segops.SegOpsApiError, match="100 events undelivered") as raised:
        client.shutdown(timeout=1.0)
    assert raised.value.undelivered == 100
    # Handed over and counted before shutdown() raised, not when the request ends.
    assert dropped == ["shutdown_deadline"] * 100
    stats = client.stats()
    assert (stats.dropped, stats.sent, stats.queued) == (100, 0, 0)
    # The server answers the request after the deadline: it stores the events (the README
    # says it may), and the client, having given them up, does not count them sent too.
    assert server.wait_for_events(100, timeout=10)
    time.sleep(0.2)
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
    assert "Connection refused" in str(errors[0])
