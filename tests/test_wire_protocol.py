"""What reaches the server: endpoints, bodies, headers and timestamps, over real sockets."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import orjson
import pytest

import segops_fast as segops
from segops_fast import Event, __version__
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient, assert_accounted, track_numbered

ISO_MICROSECONDS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def test_batch_carries_exactly_the_tracked_fields(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()
    client.track(user_id="u-1", event_type="order_placed", payload={"total": 42})
    client.flush()
    (event,) = server.events
    assert set(event) == {"user_id", "event_type", "occurred_at", "payload"}
    assert event["user_id"] == "u-1"
    assert event["event_type"] == "order_placed"
    assert event["payload"] == {"total": 42}
    assert ISO_MICROSECONDS_UTC.match(event["occurred_at"]), event["occurred_at"]


def test_default_occurred_at_is_the_time_of_the_track_call(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=60, batch_size=1000)
    before = datetime.now(timezone.utc)
    client.track(user_id="u", event_type="clicked")
    after = datetime.now(timezone.utc)
    client.flush()
    stamped = datetime.fromisoformat(server.events[0]["occurred_at"])
    assert before - timedelta(microseconds=1) <= stamped <= after


def test_caller_occurred_at_string_passes_through_and_datetime_is_formatted(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()
    client.track(user_id="u", event_type="a", occurred_at="2020-01-02T03:04:05Z")
    moment = datetime(2021, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    client.track(Event(user_id="u", event_type="b", occurred_at=moment))
    client.flush()
    stamps = {event["event_type"]: event["occurred_at"] for event in server.events}
    assert stamps == {"a": "2020-01-02T03:04:05Z", "b": "2021-05-06T07:08:09.123456+02:00"}


def test_headers_auth_user_agent_and_one_idempotency_key_per_batch(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch_size=1000, flush_interval=60)
    track_numbered(client, 3, "first")
    client.flush()
    track_numbered(client, 2, "second")
    client.flush()
    keys = {}
    for received in server.received:
        keys.setdefault(received.event["event_type"], set()).add(received.idempotency_key)
    assert len(keys["first"]) == 1
    assert len(keys["second"]) == 1
    assert keys["first"] != keys["second"]
    assert None not in keys["first"] | keys["second"]
    assert server.request_count == 2
    assert client.stats().batches == 2


def test_requests_identify_themselves_and_authenticate(make_client: MakeClient) -> None:
    seen: list[dict[str, str]] = []
    with LocalIngestServer() as recording:
        original = recording._handle

        def spy(method: str, path: str, headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
            seen.append(headers)
            return original(method, path, headers, body)

        recording._handle = spy  # type: ignore[method-assign]
        client = make_client(api_url=recording.url)
        client.track(user_id="u", event_type="e")
        client.flush()
    assert seen[0]["User-Agent"] == f"segops-fast/{__version__}"
    assert seen[0]["Authorization"] == "ApiKey sk_test_local"
    assert seen[0]["Content-Type"] == "application/json"


def test_batch_false_sends_each_event_synchronously_to_the_single_endpoint(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch=False)
    client.track(user_id="u", event_type="now", payload={"x": 1})
    # No flush: the event is at the server when track() returns.
    assert server.event_count == 1
    assert server.events[0]["payload"] == {"x": 1}
    assert server.summary()["requests"] == 1
    assert_accounted(client.stats(), tracked=1, sent=1, dropped=0, failed=0)


def test_identify_sends_context_identified_with_traits_as_payload(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()
    client.identify(user_id="u-9", traits={"plan": "pro"})
    client.identify({"user_id": "u-8"})
    client.flush()
    assert [(e["user_id"], e["event_type"], e["payload"]) for e in server.events] == [
        ("u-9", "context_identified", {"plan": "pro"}),
        ("u-8", "context_identified", {}),
    ]


def test_requests_never_exceed_max_batch_bytes(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    sizes: list[int] = []
    original = server._handle

    def measure(method: str, path: str, headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
        sizes.append(len(body))
        return original(method, path, headers, body)

    server._handle = measure  # type: ignore[method-assign]
    client = make_client(max_batch_bytes=4096, max_event_bytes=1024, batch_size=10_000)
    for index in range(500):
        client.track(user_id="u", event_type="sized", payload={"i": index, "pad": "x" * 50})
    client.flush()
    assert server.event_count == 500
    assert max(sizes) <= 4096
    assert len(sizes) >= 500 * 100 // 4096
    assert sorted(e["payload"]["i"] for e in server.events) == list(range(500))


def test_payload_mutated_after_track_is_sent_as_it_was(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=60, batch_size=1000)
    payload = {"cart": ["apple"]}
    client.track(user_id="u", event_type="snapshot", payload=payload)
    payload["cart"].append("pear")
    client.flush()
    assert server.events[0]["payload"] == {"cart": ["apple"]}
    assert orjson.loads(orjson.dumps(server.events[0]))["payload"]["cart"] == ["apple"]


def test_a_single_event_refused_as_too_large_is_failed_not_counted_sent(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    original = server._handle

    def refuse_large(method: str, path: str, headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
        if b'"big"' in body:
            return 413, {"detail": "too large"}
        return original(method, path, headers, body)

    server._handle = refuse_large  # type: ignore[method-assign]
    dropped: list[str] = []
    client = make_client(batch_size=1000, on_drop=lambda events, reason: dropped.append(reason))
    for index in range(6):
        client.track(user_id="u", event_type="e", payload={"i": index})
    client.track(user_id="u", event_type="e", payload={"big": True})
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush()
    assert raised.value.status == 413
    # The batch was split until the one refused event stood alone; the rest were stored.
    assert sorted(event["payload"]["i"] for event in server.events) == list(range(6))
    assert_accounted(client.stats(), tracked=7, sent=6, dropped=0, failed=1)
    assert dropped == ["failed"]

    unbatched = make_client(batch=False, on_error=lambda error: None)
    unbatched.track(user_id="u", event_type="e", payload={"big": True})
    assert_accounted(unbatched.stats(), tracked=1, sent=0, dropped=0, failed=1)
