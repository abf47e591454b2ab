"""``before_send``: what the hook gets, what it may return, and what reaches the server."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

import segops_fast as segops
from segops_fast._encoding import encode_event
from segops_fast._hooks import HookRunner
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient, assert_idle_invariant


def _scrub_email(event: dict[str, Any]) -> dict[str, Any]:
    event["payload"] = {key: value for key, value in event["payload"].items() if key != "email"}
    return event


def test_the_hook_gets_the_documented_event_dict_for_every_way_of_tracking(
    make_client: MakeClient,
) -> None:
    seen: list[dict[str, Any]] = []
    client = make_client(before_send=lambda event: seen.append(dict(event)) or event)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    client.track(user_id="u1", event_type="a", payload={"x": 1})
    client.track(segops.Event(user_id="u2", event_type="b", occurred_at=moment))
    client.track({"user_id": "u3", "event_type": "c", "payload": {"y": 2}})
    client.identify(user_id="u4", traits={"plan": "pro"})

    assert seen == [
        {"user_id": "u1", "event_type": "a", "payload": {"x": 1}},
        {"user_id": "u2", "event_type": "b", "occurred_at": moment, "payload": {}},
        {"user_id": "u3", "event_type": "c", "payload": {"y": 2}},
        {"user_id": "u4", "event_type": "context_identified", "payload": {"plan": "pro"}},
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": "u", "event_type": "e", "payload": {"x": [1, 2.5, None, "é"]}},
        {"user_id": "u", "event_type": "e"},
        {"user_id": "u", "event_type": "e", "occurred_at": "2020-01-01T00:00:00+00:00"},
    ],
)
def test_a_hook_returning_its_argument_stores_the_record_track_stores_without_one(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("segops_fast._hooks._clock_ns", lambda: 1_700_000_000_123_456_789)
    monkeypatch.setattr("segops_fast._encoding._clock_ns", lambda: 1_700_000_000_123_456_789)
    runner = HookRunner(lambda event: event, 32 * 1024, lambda error: None)
    hooked = runner.record(
        fields["user_id"], fields["event_type"], fields.get("occurred_at"), fields.get("payload")
    )
    assert hooked == encode_event(
        fields["user_id"],
        fields["event_type"],
        fields.get("occurred_at"),
        fields.get("payload"),
        32 * 1024,
    )


def test_the_server_stores_what_the_hook_returns_and_nothing_it_drops(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    def scrub_and_drop_health_checks(event: dict[str, Any]) -> dict[str, Any] | None:
        if event["event_type"] == "health_check":
            return None
        return _scrub_email(event)

    dropped: list[Any] = []
    client = make_client(
        before_send=scrub_and_drop_health_checks, on_drop=lambda *args: dropped.append(args)
    )
    for index in range(50):
        client.track(user_id="u", event_type="signed_up", payload={"i": index, "email": "a@b.c"})
        client.track(user_id="u", event_type="health_check", payload={"i": index})
    client.identify(user_id="u", traits={"email": "a@b.c", "plan": "pro"})
    client.flush(timeout=10)

    stored = server.events
    assert sorted(event["payload"]["i"] for event in stored if "i" in event["payload"]) == list(
        range(50)
    )
    assert len(stored) == 51
    assert all("email" not in event["payload"] for event in stored)
    assert {"event_type": "context_identified", "payload": {"plan": "pro"}}.items() <= next(
        event for event in stored if event["event_type"] == "context_identified"
    ).items()
    assert server.summary()["duplicate_events"] == 0
    stats = client.stats()
    assert (stats.sent, stats.filtered, stats.dropped, stats.failed) == (51, 50, 0, 0)
    assert stats.enqueued == 51
    assert_idle_invariant(stats)
    assert dropped == []  # a filtered event is not a drop


def test_a_hook_may_return_a_new_event_with_another_time(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    def backdate(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "occurred_at": "2020-01-01T00:00:00+00:00", "user_id": "renamed"}

    client = make_client(before_send=backdate)
    client.track(user_id="u", event_type="e")
    client.flush(timeout=10)
    assert [(e["user_id"], e["occurred_at"]) for e in server.events] == [
        ("renamed", "2020-01-01T00:00:00+00:00")
    ]


@pytest.mark.parametrize(
    ("hook", "named"),
    [
        (lambda event: 1 / 0, "before_send raised ZeroDivisionError"),
        (lambda event: [event], "event must be an Event or a dict, got list"),
        (lambda event: {**event, "user_id": None}, "user_id is required"),
        (lambda event: {**event, "payload": {"x": object()}}, "cannot be serialized"),
        (lambda event: {**event, "properties": {}}, "unknown keys ['properties']"),
    ],
    ids=["raises", "not-a-dict", "invalid-field", "unserializable", "unknown-key"],
)
def test_a_failing_hook_is_reported_and_the_original_event_is_sent(
    server: LocalIngestServer, make_client: MakeClient, hook: Any, named: str
) -> None:
    errors: list[BaseException] = []
    client = make_client(before_send=hook, on_error=errors.append)
    for index in range(20):
        client.track(user_id="u", event_type="e", payload={"i": index, "email": "a@b.c"})
    client.flush(timeout=10)

    assert sorted(event["payload"]["i"] for event in server.events) == list(range(20))
    assert all(event["user_id"] == "u" for event in server.events)
    assert client.stats().sent == 20
    # Throttled: one report for twenty failures within a second.
    assert len(errors) == 1, errors
    message = str(errors[0])
    assert named in message
    assert "the event was sent as tracked" in message
    assert "a@b.c" not in message  # no value of the event in the report


def test_reports_are_throttled_and_count_the_failures_between_them(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("segops_fast._hooks.time.monotonic", lambda: clock[0])
    errors: list[BaseException] = []
    client = make_client(before_send=lambda event: 1 / 0, on_error=errors.append)
    for _ in range(5):
        client.track(user_id="u", event_type="e")
    clock[0] += 1.5
    client.track(user_id="u", event_type="e")
    assert len(errors) == 2
    assert "(5 failures since the last report)" in str(errors[1])
    assert isinstance(errors[1].__cause__, ZeroDivisionError)


def test_a_bad_call_raises_before_the_hook_runs_even_when_it_would_drop(
    make_client: MakeClient,
) -> None:
    calls: list[object] = []
    client = make_client(before_send=calls.append)
    with pytest.raises(segops.InvalidEventError, match="user_id is required"):
        client.track(event_type="e")
    with pytest.raises(segops.InvalidEventError, match="payload must be a dict, got list"):
        client.track(user_id="u", event_type="e", payload=[1])  # type: ignore[arg-type]
    assert calls == []
    assert client.stats().filtered == 0


@pytest.mark.parametrize(
    "hook",
    [lambda event: event, lambda event: event["payload"]["missing"]],
    ids=["returns-it", "raises-on-it"],
)
def test_an_event_that_cannot_be_sent_raises_and_the_hook_is_not_blamed(
    make_client: MakeClient, hook: Any
) -> None:
    errors: list[BaseException] = []
    client = make_client(before_send=hook, on_error=errors.append)
    with pytest.raises(segops.InvalidEventError, match="cannot be serialized"):
        client.track(user_id="u", event_type="e", payload={"x": {1, 2}})
    assert errors == []
    assert client.stats().enqueued == 0


def test_a_hook_that_is_not_callable_is_refused_at_construction(
    server: LocalIngestServer,
) -> None:
    with pytest.raises(TypeError, match="before_send must be a callable taking an event dict"):
        segops.SegOpsClient(server.url, "sk_test_local", before_send={"drop": True})  # type: ignore[arg-type]


def test_events_are_scrubbed_before_they_are_queued(make_client: MakeClient) -> None:
    """An event refused by a full queue goes to on_drop as the hook left it."""
    dropped: list[dict[str, Any]] = []
    client = make_client(
        before_send=_scrub_email,
        max_queue_size=1,
        flush_interval=3600,
        on_drop=lambda events, reason: dropped.extend(events),
        on_error=lambda error: None,
    )
    for index in range(3):
        client.track(user_id="u", event_type="e", payload={"i": index, "email": "a@b.c"})
    assert [event["payload"] for event in dropped] == [{"i": 1}, {"i": 2}]
