"""Bad events raise from track() with a message naming the problem, and nothing is enqueued."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest

import segops_fast as segops
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event_type": "e"}, "user_id is required"),
        ({"user_id": "", "event_type": "e"}, "user_id must not be empty"),
        ({"user_id": 7, "event_type": "e"}, "user_id must be a str, got int"),
        ({"user_id": "u"}, "event_type is required"),
        ({"user_id": "u", "event_type": b"e"}, "event_type must be a str, got bytes"),
        ({"user_id": "u", "event_type": "e", "payload": [1]}, "payload must be a dict, got list"),
        ({"user_id": "u", "event_type": "e", "payload": {"x": object()}}, "cannot be serialized"),
        ({"user_id": "u", "event_type": "e", "payload": {"x": 2**70}}, "cannot be serialized"),
        ({"user_id": "u", "event_type": "e", "occurred_at": 5}, "occurred_at must be"),
        ({"user_id": "u", "event_type": "e", "occurred_at": datetime(2020, 1, 1)}, "naive"),
        ({"user_id": "u", "event_type": "e", "payload": {"x": "y" * 40_000}}, "max_event_bytes"),
    ],
)
def test_invalid_event_raises_naming_the_problem_and_enqueues_nothing(
    make_client: MakeClient, fields: dict[str, Any], message: str
) -> None:
    client = make_client()
    with pytest.raises(segops.InvalidEventError, match=message):
        client.track(**fields)
    with pytest.raises(segops.InvalidEventError, match=message):
        client.track(fields)
    assert client.stats().enqueued == 0


def test_invalid_event_error_is_both_type_error_and_value_error() -> None:
    assert issubclass(segops.InvalidEventError, TypeError)
    assert issubclass(segops.InvalidEventError, ValueError)


def test_event_and_keyword_fields_together_are_refused(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(segops.InvalidEventError, match="not both"):
        client.track(segops.Event(user_id="u", event_type="e"), user_id="other")
    with pytest.raises(segops.InvalidEventError, match="must be an Event or a dict"):
        client.track("page_viewed")  # type: ignore[arg-type]


def test_event_at_exactly_max_event_bytes_is_accepted(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(max_event_bytes=200)
    # Grow the payload until the next character would cross the limit.
    padding = ""
    while True:
        try:
            client.track(user_id="u", event_type="e", occurred_at="t", payload={"p": padding + "x"})
        except segops.InvalidEventError:
            break
        padding += "x"
    client.flush()
    assert server.event_count == len(padding)
    # The server's JSON of the largest event accepted is exactly the limit long.
    largest = max(len(orjson.dumps(event)) for event in server.events)
    assert largest == 200


def test_str_subclasses_are_accepted(server: LocalIngestServer, make_client: MakeClient) -> None:
    class Kind(str):
        pass

    client = make_client()
    client.track(user_id=Kind("u"), event_type=Kind("e"))
    client.flush()
    assert server.events[0]["event_type"] == "e"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 0),
        ("flush_interval", 0),
        ("timeout", -1),
        ("max_queue_size", 0),
        ("on_full", "wait"),
        ("max_batch_bytes", 100),
        ("max_in_flight", 0),
        ("max_retries", -1),
    ],
)
def test_bad_options_are_refused_at_construction(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        segops.SegOpsClient("http://127.0.0.1:1", "sk_x", **{option: value})


def test_bad_url_and_key_are_refused() -> None:
    with pytest.raises(ValueError, match="api_url"):
        segops.SegOpsClient("127.0.0.1:1", "sk_x")
    with pytest.raises(ValueError, match="api_key"):
        segops.SegOpsClient("http://127.0.0.1:1", "")
