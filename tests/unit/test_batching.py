"""Cutting records into request bodies, each at most max_batch_bytes, in order."""

from __future__ import annotations

import orjson
import pytest

from segops_fast._batching import Batch, assemble_batches
from segops_fast._encoding import encode_event, render_event

from .fakes import batch, records


def _numbers(body: bytes) -> list[int]:
    return [event["payload"]["i"] for event in orjson.loads(body)["events"]]


@pytest.mark.parametrize("limit", [200, 333, 1000, 4096, 1 << 20])
def test_every_body_fits_and_together_they_carry_every_event_once_in_order(limit: int) -> None:
    events = records(300, pad=17)
    batches = list(assemble_batches(events, limit))
    bodies = [part.render_body() for part in batches]
    assert all(len(body) <= limit for body in bodies)
    assert [number for body in bodies for number in _numbers(body)] == list(range(300))
    assert len({part.idempotency_key for part in batches}) == len(batches)


def test_a_body_is_filled_to_the_limit_not_cut_short() -> None:
    events = records(100)
    single = len(Batch(events[:1], "k").render_body())
    # Room for exactly three events, not four.
    three = len(Batch(events[:3], "k").render_body())
    batches = list(assemble_batches(events, three))
    assert [len(part) for part in batches[:3]] == [3, 3, 3]
    assert single < three
    assert [len(part) for part in assemble_batches(events[:6], three - 1)] == [2, 2, 2]


def test_events_with_their_own_timestamp_fill_a_body_to_the_limit_too() -> None:
    events = [
        encode_event("u", "e", "2026-01-01T00:00:00Z", {"i": number}, 1 << 20)
        for number in range(9)
    ]
    three = len(Batch(events[:3], "k").render_body())
    assert [len(part) for part in assemble_batches(events, three)] == [3, 3, 3]


def test_events_with_their_own_timestamp_are_cut_to_fit_too() -> None:
    events = [
        encode_event("u", "e", "2026-01-01T00:00:00Z", {"i": number}, 1 << 20)
        for number in range(50)
    ]
    stamped = records(50, start=50)
    mixed = [event for pair in zip(events, stamped) for event in pair]
    limit = 500
    bodies = [part.render_body() for part in assemble_batches(mixed, limit)]
    assert all(len(body) <= limit for body in bodies)
    assert sorted(number for body in bodies for number in _numbers(body)) == list(range(100))


def test_an_event_larger_than_the_limit_travels_alone() -> None:
    events = [*records(2), *records(1, start=2, pad=2000), *records(2, start=3)]
    batches = list(assemble_batches(events, 1000))
    assert [_numbers(part.render_body()) for part in batches] == [[0, 1], [2], [3, 4]]


def test_nothing_to_cut_gives_no_batch() -> None:
    assert list(assemble_batches([], 1000)) == []


def test_halves_split_the_events_and_derive_their_keys_and_numbers() -> None:
    whole = batch(5, "abc", first=10)
    first, second = whole.halves()
    assert (first.idempotency_key, first.first, len(first)) == ("abc.0", 10, 2)
    assert (second.idempotency_key, second.first, len(second)) == ("abc.1", 12, 3)
    assert _numbers(first.render_body()) + _numbers(second.render_body()) == [10, 11, 12, 13, 14]
    # A fresh batch: no retries spent, nothing unanswered.
    assert (second.retries, second.maybe_stored) == (0, False)
    # A batch not numbered yet starts at 0.
    assert [half.first for half in Batch(records(3), "k").halves()] == [0, 1]


def test_a_batchs_events_are_each_complete_json_objects_in_order() -> None:
    whole = batch(3, first=7)
    assert [orjson.loads(event)["payload"]["i"] for event in whole.events()] == [7, 8, 9]
    assert whole.events() == [render_event(record) for record in whole.records]
    assert set(orjson.loads(whole.events()[0])) == {
        "user_id",
        "event_type",
        "occurred_at",
        "payload",
    }
