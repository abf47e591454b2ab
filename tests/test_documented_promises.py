"""Promises of the README that no other test held the client to, each against a real server.

Each test here was shown to fail on a copy of the code with the matching bug: a session
minted for the previous user after ``reset_session()``, a token refreshed 600 s before
expiry instead of 60, ``batch=False`` that never retries, NaN sent as something other than
null, ``bytes_sent`` counting what was not acknowledged, and ``send_events`` waiting
forever for an API whose certificate it cannot verify.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

import segops_fast as segops
from segops_fast import backfill
from segops_fast.testing import (
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    LocalIngestServer,
    ServerTLS,
)

from .conftest import (
    DEADLINE_MARGIN_SECONDS,
    MakeClient,
    assert_accounted,
    track_numbered,
    wait_until,
)

INGEST_PATHS = ("/api/ingestion/track/", "/api/ingestion/track/batch/")


def _minted_for(server: LocalIngestServer) -> list[str | None]:
    """The user of each session the server minted, in the order minted.

    LocalIngestServer keeps no public record of this yet; it is read from its sessions
    (a dict, so in the order minted).
    """
    with server._lock:
        return [session.user_id for session in server._sessions.values()]


def test_reset_session_mints_the_next_token_for_the_current_user(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    current = {"user_id": "alice"}
    client = make_client(
        DEFAULT_PUBLIC_KEY, get_user=lambda: segops.UserContext(user_id=current["user_id"])
    )
    client.track(user_id="alice", event_type="as_alice")
    client.flush()
    current["user_id"] = "bob"
    # Without reset_session() the token minted for alice stays in use.
    client.track(user_id="bob", event_type="still_alice_s_token")
    client.flush()
    assert _minted_for(server) == ["alice"]
    client.reset_session()
    client.track(user_id="bob", event_type="as_bob")
    client.flush()
    assert _minted_for(server) == ["alice", "bob"]
    assert [event["event_type"] for event in server.events] == [
        "as_alice",
        "still_alice_s_token",
        "as_bob",
    ]
    assert_accounted(client.stats(), tracked=3, sent=3, dropped=0, failed=0)


@pytest.mark.parametrize(("token_ttl", "mints"), [(60.0, 2), (90.0, 1)])
def test_a_token_is_refreshed_60_seconds_before_it_expires(token_ttl: float, mints: int) -> None:
    # A token living just the 60 s margin is due for refresh as soon as it is minted: each
    # request mints. A 90 s one is good for 30 s more: both requests use it.
    with LocalIngestServer(token_ttl=token_ttl) as server:
        client = segops.SegOpsClient(server.url, DEFAULT_PUBLIC_KEY, batch=False)
        client.track(user_id="u", event_type="a")
        client.track(user_id="u", event_type="b")
        assert server.summary()["sessions_minted"] == mints
        assert server.event_count == 2
        assert_accounted(client.stats(), tracked=2, sent=2, dropped=0, failed=0)


def test_batch_false_retries_429_and_5xx_on_the_callers_thread(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(batch=False, backoff_base=0.001, backoff_cap=0.01, max_retries=3)
    server.faults.respond_with(503)
    server.faults.respond_with(429)
    client.track(user_id="u", event_type="e", payload={"i": 0})
    # Delivered by the time track() returned, after two retries under one key.
    assert [event["payload"] for event in server.events] == [{"i": 0}]
    assert len({received.idempotency_key for received in server.received}) == 1
    assert client.stats().retried == 2
    assert_accounted(client.stats(), tracked=1, sent=1, dropped=0, failed=0)


def test_batch_false_gives_up_as_retries_exhausted_after_max_retries(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    reasons: list[str] = []
    client = make_client(
        batch=False,
        backoff_base=0.001,
        backoff_cap=0.01,
        max_retries=2,
        on_drop=lambda events, reason: reasons.extend([reason] * len(events)),
        on_error=lambda error: None,
    )
    server.faults.respond_with(503, count=3)
    client.track(user_id="u", event_type="e")
    assert server.summary()["faults_acted"] == 3
    assert reasons == ["retries_exhausted"]
    assert server.event_count == 0
    assert client.stats().retried == 2
    assert_accounted(client.stats(), tracked=1, sent=0, dropped=0, failed=1)


@pytest.mark.parametrize("with_occurred_at", [False, True], ids=["fast_path", "event_path"])
def test_nan_and_infinities_are_sent_as_null(
    server: LocalIngestServer, make_client: MakeClient, with_occurred_at: bool
) -> None:
    client = make_client()
    payload = {"nan": math.nan, "inf": math.inf, "minus_inf": -math.inf, "one": 1.5}
    extra: dict[str, Any] = {"occurred_at": "2026-01-01T00:00:00Z"} if with_occurred_at else {}
    client.track(user_id="u", event_type="floats", payload=payload, **extra)
    client.flush()
    assert [event["payload"] for event in server.events] == [
        {"nan": None, "inf": None, "minus_inf": None, "one": 1.5}
    ]
    assert_accounted(client.stats(), tracked=1, sent=1, dropped=0, failed=0)


def test_bytes_sent_counts_the_bodies_the_server_acknowledged(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    acknowledged_bodies: list[int] = []
    handle = server._handle

    def measure(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        status, answer = handle(method, path, headers, body)
        if path in INGEST_PATHS and 200 <= status < 300:
            acknowledged_bodies.append(len(body))
        return status, answer

    server._handle = measure  # type: ignore[method-assign]
    client = make_client(
        max_batch_bytes=2048, max_event_bytes=1024, backoff_base=0.001, backoff_cap=0.01
    )
    # A refused attempt's body is not counted; nor is one sent and refused for good.
    server.faults.respond_with(503)
    track_numbered(client, 100)
    client.flush()
    stats = client.stats()
    assert stats.retried == 1
    assert stats.batches == len(acknowledged_bodies) >= 3
    assert stats.bytes_sent == sum(acknowledged_bodies)
    assert_accounted(stats, tracked=100, sent=100, dropped=0, failed=0)


def test_send_events_to_an_api_whose_certificate_does_not_verify_raises_at_once() -> None:
    # Nothing can be sent until the CA bundle is fixed: send_events must say so, not wait
    # for the API as it does through an outage.
    with LocalIngestServer(tls=ServerTLS.for_loopback()) as server:
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["summary"] = backfill.send_events(
                    ({"user_id": "u", "event_type": "e", "payload": {"i": i}} for i in range(20)),
                    api_url=server.url,
                    api_key=DEFAULT_SECRET_KEY,
                    source="untrusted",
                )
            except segops.SegOpsApiError as error:
                outcome["error"] = error

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        # Its own retry schedule (5 retries, up to 30 s each) is far longer than this.
        sending.join(DEADLINE_MARGIN_SECONDS * 2)
        assert not sending.is_alive(), "send_events is still waiting for the API"
        assert isinstance(outcome.get("error"), segops.SegOpsApiError), outcome
        # The server counts the failed handshake on its own thread, maybe after the client
        # has given up.
        wait_until(lambda: server.tls_handshake_failures >= 1)
        assert server.request_count == 0
        assert server.event_count == 0
