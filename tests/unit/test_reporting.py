"""Telling the user: a repeated report goes out at most once per interval, and a callback
that raises never reaches our threads."""

from __future__ import annotations

import logging

import pytest

from segops_fast._reporting import Reporter, Throttle


def test_a_throttle_lets_one_report_through_per_interval_unless_always() -> None:
    hourly = Throttle(3600.0)
    assert [hourly.allows(), hourly.allows(), hourly.allows(always=True)] == [True, False, True]
    assert not hourly.allows()
    unthrottled = Throttle(0.0)
    assert [unthrottled.allows(), unthrottled.allows()] == [True, True]


def test_callbacks_that_raise_are_logged_and_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("the user's bug")

    reporter = Reporter(on_error=explode, on_drop=explode)
    with caplog.at_level(logging.ERROR, logger="segops_fast"):
        reporter.error(ValueError("x"))
        reporter.dropped([b'{"user_id":"u"}'], "queue_full")
    assert [record.message.split(" (")[0] for record in caplog.records] == [
        "SegOps: the on_error callback raised",
        "SegOps: the on_drop callback raised",
    ]


def test_dropped_events_reach_on_drop_decoded() -> None:
    seen: list[tuple[list[dict[str, object]], str]] = []
    reporter = Reporter(on_error=None, on_drop=lambda events, reason: seen.append((events, reason)))
    reporter.dropped([b'{"user_id":"u","n":1}'], "closed")
    assert seen == [([{"user_id": "u", "n": 1}], "closed")]
