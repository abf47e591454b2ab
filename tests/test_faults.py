"""One test per fault LocalIngestServer can stage, each counting events exactly.

Every test ends with the same checks: each event the server stored, it stored once, the
server's distinct events are exactly those counted ``sent``, nothing is queued, no counter
is negative, and every event tracked is counted in exactly one outcome, with the
(sent, dropped, failed) the fault must produce.
"""

from __future__ import annotations

import contextlib
import email.utils
import gc
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segops_fast as segops
from segops_fast.testing import DEFAULT_PUBLIC_KEY, LocalIngestServer

from .conftest import (
    DEADLINE_MARGIN_SECONDS,
    MakeClient,
    answered_ingest_requests,
    assert_accounted,
    our_threads,
    track_numbered,
    wait_until,
)

EVENTS = 100
#: Retries in milliseconds, so that a test of five retries takes no time.
FAST_RETRIES: dict[str, Any] = {"backoff_base": 0.005, "backoff_cap": 0.05}


def _assert_exactly_once(
    server: LocalIngestServer,
    client: segops.SegOpsClient,
    *,
    tracked: int,
    dropped: int = 0,
    failed: int = 0,
) -> None:
    """The server stored each event once, exactly the events counted sent: all those
    ``tracked`` but the ``dropped`` and ``failed`` ones, each counted once."""
    summary = server.summary()
    stats = client.stats()
    assert summary["duplicate_events"] == 0, summary
    assert summary["unique_events"] == stats.sent, (summary, stats)
    assert_accounted(
        stats, tracked=tracked, sent=tracked - dropped - failed, dropped=dropped, failed=failed
    )


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_overload_and_server_errors_are_retried_under_one_key(
    server: LocalIngestServer, make_client: MakeClient, status: int
) -> None:
    client = make_client(batch_size=EVENTS, **FAST_RETRIES)
    server.faults.respond_with(status, count=3)
    track_numbered(client, EVENTS)
    client.flush()
    assert server.summary()["faults_acted"] == 3
    assert client.stats().retried == 3
    assert len({received.idempotency_key for received in server.received}) == 1
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(
    server: LocalIngestServer, make_client: MakeClient, form: str
) -> None:
    client = make_client(backoff_base=0.001, backoff_cap=10)
    # An HTTP date has whole seconds: 2 s ahead is at least 1 s of waiting.
    retry_after = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    server.faults.respond_with(429, retry_after=retry_after)
    began = time.monotonic()
    track_numbered(client, 10)
    client.flush()
    # Without Retry-After the retry would come after at most 1 ms.
    assert time.monotonic() - began >= 0.9
    assert client.stats().sent == 10
    _assert_exactly_once(server, client, tracked=10)


def test_a_retry_after_pauses_every_batch_not_only_the_one_it_answered(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=10, backoff_base=0.001, backoff_cap=10)
    server.faults.respond_with(429, retry_after="3")
    track_numbered(client, 10, event_type="first")
    wait_until(lambda: server.faults.pending == 0)
    track_numbered(client, 10, event_type="second")
    # Due at once, the second batch waits for the pause to end.
    time.sleep(0.5)
    assert server.event_count == 0
    client.flush(timeout=30)
    stored = sorted((event["event_type"], event["payload"]["i"]) for event in server.events)
    assert stored == [(kind, i) for kind in ("first", "second") for i in range(10)]
    assert (client.stats().sent, client.stats().retried) == (20, 1)
    _assert_exactly_once(server, client, tracked=20)


def test_retry_after_is_capped_by_backoff_cap(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(backoff_base=0.001, backoff_cap=0.05)
    server.faults.respond_with(503, retry_after="3600")
    track_numbered(client, 10)
    client.flush(timeout=30)
    assert client.stats().sent == 10
    _assert_exactly_once(server, client, tracked=10)


def test_retries_exhausted_fail_the_batch_and_hand_it_to_on_drop(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    dropped: list[tuple[int, str]] = []
    client = make_client(
        max_retries=2,
        on_drop=lambda events, reason: dropped.extend((e["payload"]["i"], reason) for e in events),
        on_error=lambda error: None,
        **FAST_RETRIES,
    )
    server.faults.respond_with(503, count=3)
    track_numbered(client, 10)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush()
    assert raised.value.undelivered == 10
    assert dropped == [(i, "retries_exhausted") for i in range(10)]
    stats = client.stats()
    assert (stats.failed, stats.retried, stats.sent) == (10, 2, 0)
    assert server.event_count == 0
    _assert_exactly_once(server, client, tracked=10, failed=10)


def test_an_unanswered_request_is_retried_until_answered_whatever_max_retries_says(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # Stored, answer lost; then three 503s. Given up after its one retry, the batch would
    # be in doubt: on_drop would get events the server has.
    client = make_client(batch_size=EVENTS, max_retries=1, **FAST_RETRIES)
    server.faults.reset_after_store()
    server.faults.respond_with(503, count=3)
    track_numbered(client, EVENTS)
    client.flush(timeout=30)
    stats = client.stats()
    assert (stats.sent, stats.failed, stats.retried) == (EVENTS, 0, 4)
    assert server.summary()["repeated_key_requests"] == 1
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_a_batch_waiting_for_its_retry_holds_up_no_other_batch(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    dropped: list[tuple[str, int, str]] = []
    client = make_client(
        batch_size=10,
        backoff_base=3600.0,
        backoff_cap=3600.0,
        on_drop=lambda events, reason: dropped.extend(
            (event["event_type"], event["payload"]["i"], reason) for event in events
        ),
        on_error=lambda error: None,
    )
    # The one random draw of this test is the retry's wait, up to an hour: seeded, so
    # that it is not one of the rare short ones.
    random.seed(0)
    server.faults.respond_with(503)
    track_numbered(client, 10, event_type="first")
    wait_until(lambda: server.faults.pending == 0)
    track_numbered(client, 10, event_type="second")
    # Sent at once, while the first batch waits for its retry.
    assert server.wait_for_events(10, timeout=5)
    assert [event["event_type"] for event in server.events] == ["second"] * 10
    wait_until(lambda: client.stats().sent == 10)
    assert client.stats().queued == 10
    # A retry due after the deadline (up to an hour away) is not waited for: the deadline
    # path gives the batch up as shutdown_deadline.
    began = time.monotonic()
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.shutdown(timeout=1.0)
    assert time.monotonic() - began < 1.0 + DEADLINE_MARGIN_SECONDS
    assert raised.value.undelivered == 10
    assert dropped == [("first", i, "shutdown_deadline") for i in range(10)]
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.retried) == (10, 10, 1)
    _assert_exactly_once(server, client, tracked=20, dropped=10)


@pytest.mark.parametrize("status", [400, 403, 404])
def test_refusals_fail_at_once_without_retrying(
    server: LocalIngestServer, make_client: MakeClient, status: int
) -> None:
    reasons: list[str] = []
    client = make_client(
        on_drop=lambda events, reason: reasons.extend([reason] * len(events)),
        on_error=lambda error: None,
    )
    server.faults.respond_with(status)
    track_numbered(client, 10)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush()
    assert (raised.value.status, raised.value.undelivered) == (status, 10)
    assert reasons == ["failed"] * 10
    stats = client.stats()
    assert (stats.failed, stats.retried) == (10, 0)
    _assert_exactly_once(server, client, tracked=10, failed=10)


def test_401_on_a_session_token_re_mints_once(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(DEFAULT_PUBLIC_KEY)
    track_numbered(client, 5)
    client.flush()
    server.faults.respond_with(401)
    track_numbered(client, 5, event_type="after")
    client.flush()
    summary = server.summary()
    assert summary["sessions_minted"] == 2
    assert client.stats().sent == 10
    _assert_exactly_once(server, client, tracked=10)


def test_401_for_a_secret_key_names_it_masked(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client("sk_test_local", on_error=lambda error: None)
    server.faults.respond_with(401)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.SegOpsApiError, match=r"sk_\.\.\.ocal"):
        client.flush()
    assert client.stats().failed == 1
    _assert_exactly_once(server, client, tracked=1, failed=1)


def test_413_splits_in_halves_with_derived_keys(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=EVENTS)
    server.faults.respond_with(413)
    track_numbered(client, EVENTS)
    client.flush()
    keys = {received.idempotency_key for received in server.received}
    assert len(keys) == 2
    assert all(key is not None and key.endswith((".0", ".1")) for key in keys)
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_a_body_size_limit_splits_until_batches_fit_and_fails_what_never_can(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    reasons: list[str] = []
    client = make_client(
        batch_size=EVENTS,
        on_drop=lambda events, reason: reasons.extend([reason] * len(events)),
        on_error=lambda error: None,
    )
    server.faults.max_body_bytes = 2_000
    track_numbered(client, EVENTS)
    client.track(user_id="u", event_type="huge", payload={"text": "x" * 5_000})
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush()
    assert (raised.value.status, raised.value.undelivered) == (413, 1)
    assert reasons == ["failed"]
    assert server.summary()["unique_events"] == EVENTS
    assert client.stats().failed == 1
    _assert_exactly_once(server, client, tracked=EVENTS + 1, failed=1)


def test_a_flush_is_not_charged_with_a_later_event_refused_from_a_split_batch(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    dropped: list[str] = []
    client = make_client(
        batch_size=1000,
        max_in_flight=1,
        on_drop=lambda events, reason: dropped.extend(event["event_type"] for event in events),
        on_error=lambda error: None,
    )
    pipeline = client._pipeline
    # The first request waits at the server, so that what follows is taken as one batch.
    server.faults.hang(1.0)
    client.track(user_id="u", event_type="first")
    wait_until(lambda: pipeline.buffer.taken == 1)
    for number in range(6):
        client.track(user_id="u", event_type=f"before-flush-{number}")
    flushed: list[BaseException | None] = []

    def flush() -> None:
        try:
            client.flush()
            flushed.append(None)
        except segops.SegOpsApiError as error:
            flushed.append(error)

    flushing = threading.Thread(target=flush)
    flushing.start()
    wait_until(lambda: len(pipeline.cycle.requests) == 1)
    # After the flush was asked for, in the same batch: a split isolates the huge event.
    server.faults.max_body_bytes = 2_000
    for number in range(4):
        huge = {"text": "x" * 5_000} if number == 1 else {}
        client.track(user_id="u", event_type=f"after-flush-{number}", payload=huge)
    flushing.join(timeout=10)
    assert flushed == [None], "the refused event was tracked after the flush was asked for"
    assert dropped == ["after-flush-1"]
    assert client.stats().failed == 1
    _assert_exactly_once(server, client, tracked=11, failed=1)


def test_a_reset_before_the_body_is_read_is_retried(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=EVENTS, **FAST_RETRIES)
    server.faults.reset_before_body(count=2)
    track_numbered(client, EVENTS)
    client.flush()
    assert client.stats().retried == 2
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_a_lost_response_after_the_batch_was_stored_creates_no_duplicate(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=EVENTS, **FAST_RETRIES)
    server.faults.reset_after_store()
    track_numbered(client, EVENTS)
    client.flush()
    summary = server.summary()
    # The retry arrived with the key the server had stored: counted, not stored again.
    assert (summary["repeated_key_requests"], summary["repeated_key_events"]) == (1, EVENTS)
    assert summary["events"] == EVENTS
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_a_hang_longer_than_the_timeout_is_retried_without_duplicates(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=EVENTS, timeout=0.3, **FAST_RETRIES)
    server.faults.hang(1.0)
    track_numbered(client, EVENTS)
    client.flush(timeout=30)
    assert client.stats().retried >= 1
    # The hung request is handled once it wakes up: by then its key is stored, and it is
    # recognised as a repeat.
    wait_until(lambda: answered_ingest_requests(server) == client.stats().batches + 1)
    assert server.summary()["repeated_key_requests"] == 1
    assert server.summary()["events"] == EVENTS
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_latency_on_every_request_costs_time_not_events(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=10)
    server.faults.latency = 0.02
    track_numbered(client, EVENTS)
    client.flush()
    assert client.stats().sent == EVENTS
    _assert_exactly_once(server, client, tracked=EVENTS)


def test_an_outage_keeps_events_queued_and_delivers_them_in_order_when_it_ends(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # One request at a time, so the server stores batches in the order they were sent. No
    # retries at all: a request that cannot connect was never sent, and spends none.
    client = make_client(max_in_flight=1, max_retries=0, on_error=lambda error: None)
    server.stop()
    track_numbered(client, 1000)
    time.sleep(0.3)
    # flush() says what is undelivered, and those events stay queued.
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=30)
    assert raised.value.undelivered == 1000
    stats = client.stats()
    assert (stats.sent, stats.failed, stats.queued) == (0, 0, 1000)
    server.start()
    client.flush(timeout=30)
    assert [event["payload"]["i"] for event in server.events] == list(range(1000))
    assert client.stats().sent == 1000
    _assert_exactly_once(server, client, tracked=1000)


def test_shutdown_during_an_outage_hands_what_is_held_to_on_drop_as_failed(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    dropped: list[tuple[int, str]] = []
    client = make_client(
        on_drop=lambda events, reason: dropped.extend((e["payload"]["i"], reason) for e in events),
        on_error=lambda error: None,
    )
    server.stop()
    track_numbered(client, 100)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.shutdown(timeout=5)
    assert raised.value.undelivered == 100
    # Never sent: the server certainly does not have them.
    assert sorted(dropped) == [(i, "failed") for i in range(100)]
    assert_accounted(client.stats(), tracked=100, sent=0, dropped=0, failed=100)


_FAULT = st.one_of(
    st.tuples(st.just("status"), st.sampled_from([500, 502, 503, 429])),
    st.tuples(st.sampled_from(["reset_before_body", "reset_after_store", "hang"]), st.none()),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=st.lists(_FAULT, max_size=6),
    events=st.integers(min_value=1, max_value=400),
    latency=st.sampled_from([0.0, 0.002]),
    outage=st.booleans(),
    max_retries=st.sampled_from([0, 2, 100]),
)
def test_any_schedule_of_faults_delivers_each_event_exactly_once(
    server: LocalIngestServer,
    *,
    schedule: list[tuple[str, int | None]],
    events: int,
    latency: float,
    outage: bool,
    max_retries: int,
) -> None:
    server.reset()
    server.faults.clear()
    server.faults.latency = latency
    for kind, status in schedule:
        if kind == "status":
            server.faults.respond_with(status or 500)
        elif kind == "hang":
            server.faults.hang(0.3)
        else:
            getattr(server.faults, kind)()
    given_up: list[tuple[str, int]] = []
    client = segops.SegOpsClient(
        server.url,
        "sk_test_local",
        batch_size=50,
        flush_interval=0.01,
        timeout=0.2,
        max_retries=max_retries,
        backoff_base=0.002,
        backoff_cap=0.02,
        on_drop=lambda dropped, reason: given_up.extend(
            (event["event_type"], event["payload"]["i"]) for event in dropped
        ),
        on_error=lambda error: None,
    )
    try:
        track_numbered(client, events // 2)
        if outage:
            server.stop()
        track_numbered(client, events - events // 2, event_type="second_half")
        if outage:
            time.sleep(0.05)
            server.start()
        # Events given up after their retries ran out make flush() raise; they are
        # checked one by one below.
        with contextlib.suppress(segops.SegOpsApiError):
            client.flush(timeout=60)
            # A hung request may still be stored after the flush: its key makes it a repeat.
        # Wait until the server has handled every request the client stopped waiting for.
        acted = [kind for kind, _ in schedule][: len(schedule) - server.faults.pending]
        unanswered = acted.count("hang") + acted.count("reset_after_store")
        wait_until(lambda: answered_ingest_requests(server) >= client.stats().batches + unanswered)
        stored = [(event["event_type"], event["payload"]["i"]) for event in server.events]
        tracked = [("e", i) for i in range(events // 2)]
        tracked += [("second_half", i) for i in range(events - events // 2)]
        # Each event is stored once or handed to on_drop, never both: nothing given up
        # was stored after all (a request whose answer was lost is never given up).
        assert sorted(stored + given_up) == sorted(tracked)
        stats = client.stats()
        assert (stats.sent, stats.failed, stats.dropped) == (len(stored), len(given_up), 0)
        if max_retries == 100:
            assert given_up == []
        _assert_exactly_once(server, client, tracked=events, failed=len(given_up))
    finally:
        client.shutdown(timeout=10)


@pytest.mark.slow
def test_a_sixty_second_outage_at_fifty_thousand_events_a_second_keeps_memory_bounded(
    server: LocalIngestServer,
) -> None:
    server.stop()
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "apps" / "outage_memory.py"),
            server.url,
            "60",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stdout.readline().strip() == "outage over"
        server.start()
        process.stdin.write("server is back\n")
        process.stdin.flush()
        report = orjson.loads(process.stdout.readline())
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    tracked, during, after = report["tracked"], report["during"], report["after"]
    assert tracked >= 2_900_000
    # The queue (100,000 events) is full after 2 s: what memory grew by until 5 s is what a
    # full queue costs (about 20 MB). The batches that could not be sent wait with it, and
    # every event tracked after that is dropped and counted; memory must stay flat: over
    # the last 30 s (1.5 million more events, a connection refused every flush_interval)
    # it grows by less than a tenth of a queue, and never reaches one and a half queues.
    samples = report["samples"]
    baseline = samples[0][1]
    queue_cost = next(rss for elapsed, rss in samples if elapsed >= 5) - baseline
    rss_at_30_seconds = next(rss for elapsed, rss in samples if elapsed >= 30)
    peak = max(rss for _, rss in samples)
    assert peak - rss_at_30_seconds < queue_cost / 10, samples
    assert peak - baseline < 1.5 * queue_cost, samples
    assert during["queued"] <= 100_000
    # An outage costs the events that found the queue full, never those already queued.
    assert during["failed"] == 0
    assert during["dropped"] + during["queued"] == tracked
    # Everything still queued when the server came back is delivered, in order.
    assert after["sent"] == during["queued"]
    numbers = [event["payload"]["i"] for event in server.events]
    assert numbers == sorted(numbers)
    assert server.summary()["unique_events"] == after["sent"]
    assert after["enqueued"] == after["sent"] + after["dropped"] + after["failed"] + after["queued"]


def test_a_failed_request_frees_its_events_without_waiting_for_the_garbage_collector(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # urllib3's exceptions sit in reference cycles; had they kept our sending frames alive,
    # each failed attempt would keep its rendered body in memory until the cyclic collector
    # ran (in a long outage, dozens of batches later). With the collector off, none of our
    # frames may be left in cyclic garbage after failed attempts.
    server.faults.reset_before_body(count=3)
    client = make_client(backoff_base=0.01, backoff_cap=0.01, on_error=lambda error: None)
    gc.collect()
    gc.disable()
    try:
        track_numbered(client, 100)
        client.flush(timeout=10)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        our_frames = [
            garbage.f_code.co_name
            for garbage in gc.garbage
            if type(garbage).__name__ == "frame" and "segops_fast" in garbage.f_code.co_filename
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert our_frames == []
    assert (client.stats().retried, client.stats().sent) == (3, 100)


def test_shutdown_keeps_its_deadline_while_the_server_hangs(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    reasons: list[str] = []
    threads_of_others = our_threads()
    client = make_client(
        timeout=3.0,
        on_drop=lambda events, reason: reasons.extend([reason] * len(events)),
        on_error=lambda error: None,
    )
    server.faults.hang(30.0, count=100)
    track_numbered(client, 5)
    # The first 5 are in a request the server holds when shutdown begins; that request keeps
    # its own 3 s timeout. The next 5 wait in the queue behind it.
    wait_until(lambda: server.faults.pending == 99)
    track_numbered(client, 5)
    threads_of_this_client = our_threads() - threads_of_others
    began = time.monotonic()
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.shutdown(timeout=1.0)
    assert time.monotonic() - began < 1.0 + DEADLINE_MARGIN_SECONDS
    assert raised.value.undelivered == 10
    # What happened: shutdown() returned with the request still under way (neither the
    # 30 s hang nor its 3 s timeout waited for), having given up every event, the queued
    # ones and those in the request, as shutdown_deadline; none is ever sent.
    assert any(thread.is_alive() for thread in threads_of_this_client)
    assert reasons == ["shutdown_deadline"] * 10
    assert_accounted(client.stats(), tracked=10, sent=0, dropped=10, failed=0)
