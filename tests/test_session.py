"""The pk_ session handshake against the server's real auth rules."""

from __future__ import annotations

import hashlib
import hmac
import threading

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_PUBLIC_KEY, LocalIngestServer, PublicKey

from .conftest import MakeClient, assert_idle_invariant, track_numbered

SECRET = "00" * 16


def test_public_key_mints_once_and_sends_with_the_token(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(DEFAULT_PUBLIC_KEY)
    track_numbered(client, 50)
    client.flush()
    client.track(user_id="u", event_type="again")
    client.flush()
    assert server.event_count == 51
    assert server.summary()["sessions_minted"] == 1


def test_concurrent_senders_share_one_mint(server: LocalIngestServer) -> None:
    client = segops.SegOpsClient(server.url, DEFAULT_PUBLIC_KEY, batch=False)
    threads = [
        threading.Thread(target=client.track, kwargs={"user_id": "u", "event_type": f"e{n}"})
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.event_count == 8
    assert server.summary()["sessions_minted"] == 1


def test_token_is_refreshed_60_seconds_before_expiry() -> None:
    # A token living exactly the 60 s refresh margin is due for refresh as soon as it is
    # minted, so each request mints again (the first test shows a long-lived one reused).
    with LocalIngestServer(token_ttl=60.0) as server:
        client = segops.SegOpsClient(server.url, DEFAULT_PUBLIC_KEY, batch=False)
        client.track(user_id="u", event_type="a")
        client.track(user_id="u", event_type="b")
        assert server.summary()["sessions_minted"] == 2
        assert server.event_count == 2


def test_a_revoked_token_is_re_minted_once_on_401(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(DEFAULT_PUBLIC_KEY)
    client.track(user_id="u", event_type="before")
    client.flush()
    server.revoke_sessions()
    client.track(user_id="u", event_type="after")
    client.flush()
    assert [event["event_type"] for event in server.events] == ["before", "after"]
    assert server.summary()["sessions_minted"] == 2


def test_reset_session_mints_for_the_current_user(server: LocalIngestServer) -> None:
    current = {"id": "alice"}
    client = segops.SegOpsClient(
        server.url,
        DEFAULT_PUBLIC_KEY,
        batch=False,
        get_user=lambda: segops.UserContext(user_id=current["id"]),
    )
    client.track(user_id="alice", event_type="a")
    current["id"] = "bob"
    client.reset_session()
    client.track(user_id="bob", event_type="b")
    assert server.summary()["sessions_minted"] == 2


def test_signed_user_ids_are_required_and_checked() -> None:
    keys = {"pk_signed": PublicKey(hmac_secret=SECRET, require_signed_user_id=True)}
    with LocalIngestServer(public_keys=keys) as server:
        signed = segops.sign_user_id(SECRET, "alice")
        good = segops.SegOpsClient(
            server.url,
            "pk_signed",
            batch=False,
            get_user=lambda: segops.UserContext(
                user_id="alice",
                user_id_sig=str(signed["user_id_sig"]),
                user_id_ts=int(signed["user_id_ts"]),
            ),
        )
        good.track(user_id="alice", event_type="ok")
        errors: list[BaseException] = []
        forged = segops.SegOpsClient(
            server.url,
            "pk_signed",
            batch=False,
            on_error=errors.append,
            get_user=lambda: segops.UserContext(user_id="mallory", user_id_sig="00", user_id_ts=1),
        )
        forged.track(user_id="mallory", event_type="forged")
        assert [event["event_type"] for event in server.events] == ["ok"]
        assert forged.stats().failed == 1
        assert "session" in str(errors[0])


def test_sign_user_id_matches_the_documented_hmac() -> None:
    signed = segops.sign_user_id(SECRET, "u-1", ts=1700000000)
    expected = hmac.new(bytes.fromhex(SECRET), b"u-1|1700000000", hashlib.sha256).hexdigest()
    assert signed == {"user_id": "u-1", "user_id_sig": expected, "user_id_ts": 1700000000}


def test_a_failed_mint_is_reported_and_the_events_stay_queued(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    client = make_client("pk_not_yet_known", on_error=errors.append)
    track_numbered(client, 5)
    with pytest.raises(segops.SegOpsApiError, match="session"):
        client.flush()
    assert server.event_count == 0
    assert errors
    assert all("refused a session for pk_...nown: HTTP 401" in str(error) for error in errors)
    assert client.stats().queued == 5
    # The key becomes valid; reset_session() skips the rest of the mint's backoff, and the
    # queued events go out, exactly once.
    server.public_keys["pk_not_yet_known"] = PublicKey()
    client.reset_session()
    client.flush()
    assert sorted(event["payload"]["i"] for event in server.events) == list(range(5))
    assert_idle_invariant(client.stats())
