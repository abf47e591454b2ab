"""DeliveryCounters: each event taken is in flight until its one outcome is counted."""

from __future__ import annotations

from segops_fast._stats import DeliveryCounters, Stats


def _snapshot(counters: DeliveryCounters, taken: int, waiting: int) -> Stats:
    return counters.snapshot(taken_from_buffer=taken, waiting_in_buffer=waiting)


def test_taken_events_are_queued_until_acknowledged() -> None:
    counters = DeliveryCounters()
    counters.taken(10)
    stats = _snapshot(counters, 10, 5)
    assert (stats.enqueued, stats.queued, stats.sent) == (15, 15, 0)
    counters.acknowledged(6, 600)
    counters.acknowledged(4, 450)
    stats = _snapshot(counters, 10, 0)
    assert (stats.enqueued, stats.sent, stats.queued) == (10, 10, 0)
    assert (stats.batches, stats.bytes_sent) == (2, 1050)
    assert (stats.dropped, stats.failed, stats.given_up_by_reason) == (0, 0, {})


def test_given_up_events_are_failed_or_dropped_never_both_with_their_reason() -> None:
    counters = DeliveryCounters()
    counters.taken(10)
    counters.given_up(3, failed=True, reason="retries_exhausted")
    counters.given_up(4, failed=False, reason="shutdown_deadline")
    counters.retry()
    stats = _snapshot(counters, 10, 0)
    assert (stats.sent, stats.failed, stats.dropped, stats.retried, stats.queued) == (0, 3, 4, 1, 3)
    assert stats.given_up_by_reason == {"retries_exhausted": 3, "shutdown_deadline": 4}


def test_events_refused_at_track_are_enqueued_and_dropped_never_queued() -> None:
    counters = DeliveryCounters()
    counters.refused_at_track(2, "queue_full")
    stats = _snapshot(counters, 0, 0)
    assert (stats.enqueued, stats.dropped, stats.failed, stats.queued) == (2, 2, 0, 0)
    assert stats.given_up_by_reason == {"queue_full": 2}


def test_an_event_sent_synchronously_is_enqueued_then_sent() -> None:
    counters = DeliveryCounters()
    counters.sending_synchronously(1)
    assert _snapshot(counters, 0, 0).queued == 1
    counters.acknowledged(1, 70)
    stats = _snapshot(counters, 0, 0)
    assert (stats.enqueued, stats.sent, stats.queued, stats.bytes_sent) == (1, 1, 0, 70)
