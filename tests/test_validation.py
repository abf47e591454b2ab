"""Bad events raise from track() with a message naming the problem, and nothing is enqueued."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest

import segops_fast as segops
from segops_fast._encoding import encode_event, render_event
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer

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


def _nested(levels: int) -> dict[str, Any]:
    """``levels`` dicts, each inside the one before."""
    payload: dict[str, Any] = {}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return payload


def test_a_deeply_nested_payload_is_refused_as_invalid_and_a_deep_one_is_sent(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()
    for payload in (_nested(300), _nested(254)):
        with pytest.raises(segops.InvalidEventError, match="nested too deeply") as raised:
            client.track(user_id="u", event_type="e", payload=payload)
        assert "254 levels" in str(raised.value)
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(segops.InvalidEventError, match="contains itself"):
        client.track(user_id="u", event_type="e", payload=looped)
    assert client.stats().enqueued == 0
    # The deepest payload allowed goes through, whole.
    client.track(user_id="u", event_type="e", payload=_nested(253))
    client.flush()
    assert server.events[0]["payload"] == _nested(253)


def test_invalid_event_error_is_both_type_error_and_value_error() -> None:
    assert issubclass(segops.InvalidEventError, TypeError)
    assert issubclass(segops.InvalidEventError, ValueError)


def test_event_and_keyword_fields_together_are_refused(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(segops.InvalidEventError, match="not both"):
        client.track(segops.Event(user_id="u", event_type="e"), user_id="other")
    with pytest.raises(segops.InvalidEventError, match="must be an Event or a dict"):
        client.track("page_viewed")  # type: ignore[arg-type]


# Without occurred_at, track() stamps the event and counts the timestamp it will render.
@pytest.mark.parametrize("occurred_at", ["t", None])
def test_event_at_exactly_max_event_bytes_is_accepted(
    server: LocalIngestServer, make_client: MakeClient, occurred_at: str | None
) -> None:
    client = make_client(max_event_bytes=200)
    # Grow the payload until the next character would cross the limit.
    padding = ""
    while True:
        try:
            payload = {"p": padding + "x"}
            client.track(user_id="u", event_type="e", occurred_at=occurred_at, payload=payload)
        except segops.InvalidEventError:
            break
        padding += "x"
    client.flush()
    assert server.event_count == len(padding)
    # The server's JSON of the largest event accepted is exactly the limit long.
    largest = max(len(orjson.dumps(event)) for event in server.events)
    assert largest == 200


class _Name(str):
    """A str subclass: valid, though not the exact type track()'s in-line path takes."""


def _encoded_or_error(user_id: Any, event_type: Any, payload: Any) -> dict[str, Any] | str:
    """What encode_event makes of an event, as sent, or the message of the error it raises."""
    try:
        record = encode_event(user_id, event_type, None, payload, max_event_bytes=150)
    except segops.InvalidEventError as error:
        return str(error)
    return dict(orjson.loads(render_event(record)))


def test_track_encodes_every_event_as_encode_event_does() -> None:
    """track() does the common case in line; no event may depend on which path it took."""
    # One value of each kind each check tells apart; 44 characters of padding make the
    # event, with u and e, exactly as long as max_event_bytes=150 allows.
    identities: list[Any] = ["u", _Name("u"), "", None, 7]
    payloads: list[Any] = [
        {"padding": "x" * 43},
        {"padding": "x" * 44},
        {"padding": "x" * 45},
        {"x": 2**70},
        OrderedDict(a=1),
        None,
        [1],
    ]
    dropped: list[dict[str, Any]] = []
    # A closed client hands every valid event to on_drop, exactly as it would have sent it.
    client = segops.SegOpsClient(
        "http://127.0.0.1:9",
        DEFAULT_SECRET_KEY,
        max_event_bytes=150,
        on_drop=lambda events, reason: dropped.extend(events),
        on_error=lambda error: None,
    )
    client.shutdown()
    outcomes = set()
    for user_id, event_type, payload in itertools.product(identities, identities, payloads):
        case = f"user_id={user_id!r} event_type={event_type!r} payload={payload!r}"
        expected = _encoded_or_error(user_id, event_type, payload)
        if isinstance(expected, str):
            with pytest.raises(segops.InvalidEventError) as raised:
                client.track(user_id=user_id, event_type=event_type, payload=payload)
            assert str(raised.value) == expected, case
            assert dropped == [], case
            outcomes.add("refused")
            continue
        client.track(user_id=user_id, event_type=event_type, payload=payload)
        (event,) = dropped
        dropped.clear()
        # Each path read the clock itself: the timestamps differ, and both must be valid.
        for sent in (event, expected):
            assert datetime.fromisoformat(sent.pop("occurred_at")).tzinfo == timezone.utc, case
        assert event == expected, case
        outcomes.add("sent")
    assert outcomes == {"sent", "refused"}


def test_str_subclasses_are_accepted(server: LocalIngestServer, make_client: MakeClient) -> None:
    client = make_client()
    client.track(user_id=_Name("u"), event_type=_Name("e"))
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
