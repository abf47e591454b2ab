"""LocalIngestServer enforces the platform's rules, checked with a plain HTTP client."""

from __future__ import annotations

import orjson
import pytest
import urllib3

from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer

BATCH = "/api/ingestion/track/batch/"


def post(
    server: LocalIngestServer, path: str, body: bytes, **headers: str
) -> urllib3.BaseHTTPResponse:
    headers.setdefault("Authorization", f"ApiKey {DEFAULT_SECRET_KEY}")
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    return urllib3.request("POST", server.url + path, body=body, headers=headers, retries=False)


EVENT = {"user_id": "u", "event_type": "e", "payload": {}}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (orjson.dumps({"events": "nope"}), 400),
        (orjson.dumps({"events": [{"event_type": "e"}]}), 400),
        (orjson.dumps({"events": [EVENT, {"user_id": "u", "event_type": ""}]}), 400),
        (orjson.dumps({"events": [EVENT]}), 200),
    ],
)
def test_malformed_batches_are_refused_whole(
    server: LocalIngestServer, body: bytes, status: int
) -> None:
    assert post(server, BATCH, body).status == status
    assert server.event_count == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    "authorization",
    ["", "ApiKey sk_unknown", "ApiKey pk_test_local", "Bearer not-a-token", "Basic abc"],
)
def test_bad_credentials_get_401(server: LocalIngestServer, authorization: str) -> None:
    response = post(server, BATCH, orjson.dumps({"events": [EVENT]}), Authorization=authorization)
    assert response.status == 401
    assert server.event_count == 0


def test_a_repeated_idempotency_key_is_counted_not_stored(server: LocalIngestServer) -> None:
    body = orjson.dumps({"events": [EVENT, EVENT]})
    for _ in range(3):
        assert post(server, BATCH, body, Idempotency_Key="k-1").status == 200
    summary = server.summary()
    assert (
        summary["events"],
        summary["repeated_key_requests"],
        summary["repeated_key_events"],
    ) == (2, 2, 4)
    assert [received.idempotency_key for received in server.received] == ["k-1", "k-1"]
    # Identical events stored under different keys are what duplicate_events counts.
    assert summary["duplicate_events"] == 1


def test_session_mint_returns_a_token_and_its_expiry(server: LocalIngestServer) -> None:
    response = post(server, "/api/auth/session/", b"{}", Authorization="ApiKey pk_test_local")
    answer = orjson.loads(response.data)
    assert response.status == 200
    assert set(answer) == {"token", "expires_at"}
    stored = post(
        server, BATCH, orjson.dumps({"events": [EVENT]}), Authorization=f"Bearer {answer['token']}"
    )
    assert stored.status == 200


def test_the_server_restarts_on_the_same_port() -> None:
    server = LocalIngestServer().start()
    port = server.port
    server.stop()
    server.start()
    try:
        assert server.port == port
        assert post(server, BATCH, orjson.dumps({"events": [EVENT]})).status == 200
    finally:
        server.stop()
