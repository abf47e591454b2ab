"""LocalIngestServer enforces the platform's rules, checked with a plain HTTP client."""

from __future__ import annotations

import gzip
import http.client
import socket
from typing import Any

import orjson
import pytest
import urllib3

from segops_fast import SegOpsClient
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess, LocalIngestServer
from segops_fast.testing import _server as server_module
from segops_fast.testing._http import MAX_BODY_BYTES

BATCH = "/api/ingestion/track/batch/"


def post(
    server: LocalIngestServer, path: str, body: bytes, **headers: str
) -> urllib3.BaseHTTPResponse:
    headers.setdefault("Authorization", f"ApiKey {DEFAULT_SECRET_KEY}")
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    return urllib3.request("POST", server.url + path, body=body, headers=headers, retries=False)


EVENT = {"user_id": "u", "event_type": "e", "payload": {}}
ONE = orjson.dumps({"events": [EVENT]})


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


# -- safe to leave running ---------------------------------------------------------------


def raw_request(
    server: LocalIngestServer, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """One request with exactly ``headers`` (no Host or Content-Length added)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "host",
    [
        None,
        "evil.example:{port}",
        "127.0.0.1.evil.example:{port}",
        "localhost.evil.example:{port}",
        "10.0.0.1:{port}",
        "127.0.0.1",
        "127.0.0.1:1",
        "[::2]:{port}",
    ],
)
@pytest.mark.parametrize(("method", "path"), [("POST", BATCH), ("GET", "/_local/summary")])
def test_a_host_that_is_not_a_loopback_name_with_the_port_is_refused(
    server: LocalIngestServer, host: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": f"ApiKey {DEFAULT_SECRET_KEY}", "Content-Length": str(len(ONE))}
    if host is not None:
        headers["Host"] = host.format(port=server.port)
    status, answer = raw_request(server, method, path, ONE, headers)
    assert status == 403
    assert server.url in answer["detail"]
    assert server.event_count == 0


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "127.8.9.10:{port}",
        "localhost:{port}",
        "LocalHost:{port}",
        "[::1]:{port}",
    ],
)
def test_every_loopback_name_with_the_port_is_served(server: LocalIngestServer, host: str) -> None:
    headers = {
        "Host": host.format(port=server.port),
        "Authorization": f"ApiKey {DEFAULT_SECRET_KEY}",
        "Content-Length": str(len(ONE)),
    }
    assert raw_request(server, "POST", BATCH, ONE, headers)[0] == 200
    assert server.event_count == 1


@pytest.mark.parametrize(
    "marker",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:3000"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_local_controls_refuse_what_a_web_page_sends(
    server: LocalIngestServer, marker: dict[str, str]
) -> None:
    assert post(server, BATCH, ONE).status == 200
    host = {"Host": f"127.0.0.1:{server.port}"}
    for method, path in [("POST", "/_local/reset"), ("GET", "/_local/summary")]:
        status, answer = raw_request(server, method, path, None, {**host, **marker})
        assert (status, answer["detail"]) == (403, "/_local/ answers scripts, not web pages")
    assert server.event_count == 1
    # What the user typed in the address bar is not a page's request.
    typed = {**host, "Sec-Fetch-Site": "none"}
    assert raw_request(server, "GET", "/_local/summary", None, typed)[1]["events"] == 1


def test_reset_needs_no_body(server: LocalIngestServer) -> None:
    assert post(server, BATCH, ONE).status == 200
    # As `curl -X POST http://127.0.0.1:PORT/_local/reset` sends it: no Content-Length.
    status, _ = raw_request(
        server, "POST", "/_local/reset", None, {"Host": f"127.0.0.1:{server.port}"}
    )
    assert status == 200
    assert server.summary()["events"] == 0


def test_a_body_over_the_limit_is_refused_unread(server: LocalIngestServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            f"POST {BATCH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: ApiKey {DEFAULT_SECRET_KEY}\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert str(MAX_BODY_BYTES).encode() in answer
    # The server closed the connection rather than wait for (or read) the body.
    assert b"Connection: close" in answer


def test_a_gzip_body_that_inflates_past_the_limit_is_refused(server: LocalIngestServer) -> None:
    padding = b" " * MAX_BODY_BYTES
    bomb = gzip.compress(b'{"events": [' + padding + b"]}", compresslevel=9)
    assert len(bomb) < MAX_BODY_BYTES // 100
    response = post(server, BATCH, bomb, Content_Encoding="gzip")
    assert response.status == 413
    assert "once gunzipped" in orjson.loads(response.data)["detail"]
    assert server.event_count == 0
    assert server.largest_body == 0


def test_idle_connections_are_closed() -> None:
    with LocalIngestServer(idle_timeout=0.2) as server:
        assert post(server, BATCH, ONE).status == 200
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            head = f"POST {BATCH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            stalled.sendall(f"{head}Content-Length: 100\r\n\r\n{{".encode())
            # recv() returns b"" once the server has closed; a server that keeps them
            # open would make it raise socket.timeout after 10 s instead.
            assert idle.recv(1024) == b""
            assert stalled.recv(1024) == b""
        finally:
            idle.close()
            stalled.close()
        assert server.event_count == 1


def test_past_the_keep_limit_events_are_counted_not_kept() -> None:
    two = orjson.dumps({"events": [EVENT, {**EVENT, "payload": {"n": 2}}]})
    with LocalIngestServer(max_kept_events=5) as server:
        for number in range(4):
            assert post(server, BATCH, two, Idempotency_Key=f"k-{number}").status == 200
        # An empty batch past the limit is not remembered either.
        assert post(server, BATCH, orjson.dumps({"events": []})).status == 200
        summary = server.summary()
        assert server.event_count == 4
        assert (summary["events"], summary["events_not_kept"]) == (4, 4)
        assert summary["keep_limit_reached"] is True
        assert summary["requests"] == 5
        # A key kept before the limit is still recognised.
        assert post(server, BATCH, two, Idempotency_Key="k-0").status == 200
        assert server.summary()["repeated_key_events"] == 2
        server.reset()
        assert server.summary()["keep_limit_reached"] is False
        assert post(server, BATCH, two).status == 200
        assert server.event_count == 2


def test_the_oldest_sessions_are_forgotten_past_the_bound(
    server: LocalIngestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_SESSIONS", 3)
    tokens = []
    for _ in range(5):
        minted = post(server, "/api/auth/session/", b"{}", Authorization="ApiKey pk_test_local")
        tokens.append(orjson.loads(minted.data)["token"])
    statuses = [post(server, BATCH, ONE, Authorization=f"Bearer {t}").status for t in tokens]
    assert statuses == [401, 401, 200, 200, 200]


def test_another_process_checks_exactly_once_with_summary_and_reset() -> None:
    """The documented way: `segops-fast serve`, then GET /_local/summary and POST
    /_local/reset with any HTTP client."""
    with IngestServerProcess() as serving:
        client = SegOpsClient(serving.url, DEFAULT_SECRET_KEY)
        for index in range(100):
            client.track(user_id="u", event_type="e", payload={"i": index})
        client.shutdown()
        summary = orjson.loads(urllib3.request("GET", serving.url + "/_local/summary").data)
        assert (summary["unique_events"], summary["duplicate_events"]) == (100, 0)
        assert summary["keep_limit_reached"] is False
        assert urllib3.request("POST", serving.url + "/_local/reset").status == 200
        assert serving.summary()["events"] == 0
