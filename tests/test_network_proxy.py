"""Proxies, through a real one (pproxy, with basic auth) started on loopback.

The proxy is chosen as the reference SDK's urllib.request chooses it: the ``proxy`` option
first, else HTTPS_PROXY / HTTP_PROXY with NO_PROXY. HTTPS goes through CONNECT, so the
proxy sees neither the requests nor the API key (a tap records every byte it receives).
A proxy that refuses is reported and keeps events queued; one that goes away costs time,
not events.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

from .conftest import assert_idle_invariant, track_numbered
from .proxying import PASSWORD, USER, RealProxy

_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_PROXY_VARIABLES, "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy() -> Iterator[RealProxy]:
    with RealProxy() as running:
        yield running


def _send(server: LocalIngestServer, tls: ServerTLS | None, count: int, **options: object) -> None:
    ca_certs = None if tls is None else tls.ca_certs
    with segops.SegOpsClient(
        server.url, DEFAULT_SECRET_KEY, ca_certs=ca_certs, flush_interval=0.05, **options
    ) as client:
        track_numbered(client, count)
        client.flush(timeout=15)
        assert client.stats().sent == count
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (count, 0)


def test_https_through_the_proxy_with_auth_is_a_connect_tunnel_that_hides_the_key(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy
) -> None:
    _send(tls_server, tls, 200, proxy=proxy.url())
    seen = proxy.seen
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    assert seen.startswith(f"CONNECT 127.0.0.1:{tls_server.port} HTTP/1.".encode()), seen[:200]
    assert b"Proxy-Authorization: Basic " + credentials in seen
    # Everything after the CONNECT was TLS: no request line, no header, no key, no event.
    assert seen.count(b"CONNECT ") == seen.count(b"HTTP/1.") >= 1
    for secret in (DEFAULT_SECRET_KEY.encode(), b"Authorization: ApiKey", b"/api/ingestion"):
        assert secret not in seen
    assert b"user_id" not in seen


def test_the_environment_chooses_the_proxy_as_urllib_does(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", proxy.url())
    assert urllib.request.getproxies()["https"] == proxy.url()
    _send(tls_server, tls, 20)
    assert proxy.seen.startswith(b"CONNECT ")


def test_plain_http_through_the_proxy_is_forwarded_with_its_credentials(
    server: LocalIngestServer, proxy: RealProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over plain HTTP there is no tunnel (as with urllib.request): the proxy forwards.
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    _send(server, None, 20)
    assert proxy.seen.startswith(f"POST http://127.0.0.1:{server.port}/api/".encode())


@pytest.mark.parametrize(
    "no_proxy",
    ["127.0.0.1", "127.0.0.1:{port}", "*", "localhost,127.0.0.1", "example.com", "127.0.0.1:1"],
)
def test_no_proxy_bypasses_the_proxy_exactly_when_urllib_would(
    tls_server: LocalIngestServer,
    tls: ServerTLS,
    proxy: RealProxy,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", no_proxy.format(port=tls_server.port))
    urllib_bypasses = bool(urllib.request.proxy_bypass(f"127.0.0.1:{tls_server.port}"))
    _send(tls_server, tls, 10)
    assert (proxy.seen == b"") == urllib_bypasses


def test_the_proxy_option_overrides_the_environment(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # nobody listens there
    _send(tls_server, tls, 10, proxy="")
    assert proxy.seen == b""
    tls_server.reset()
    _send(tls_server, tls, 10, proxy=proxy.url())
    assert proxy.seen.startswith(b"CONNECT ")


def test_a_wrong_proxy_password_is_reported_masked_and_events_stay_queued(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy
) -> None:
    errors: list[BaseException] = []
    dropped: list[str] = []
    wrong = "not-the-password"
    client = segops.SegOpsClient(
        tls_server.url,
        DEFAULT_SECRET_KEY,
        ca_certs=tls.ca_certs,
        proxy=proxy.url(password=wrong),
        flush_interval=60,
        on_error=errors.append,
        on_drop=lambda events, reason: dropped.extend([reason] * len(events)),
    )
    track_numbered(client, 30)
    for _ in range(2):
        began = time.monotonic()
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        assert time.monotonic() - began < 2.0
        assert raised.value.undelivered == 30
    message = str(raised.value)
    for part in ("407", "proxy", "***@127.0.0.1"):
        assert part in message
    assert wrong not in message
    assert USER not in message
    assert len(errors) == 1
    assert "407" in str(errors[0])
    assert client.stats().queued == 30
    assert client.stats().retried == 0
    with pytest.raises(segops.SegOpsApiError):
        client.shutdown(timeout=5)
    assert dropped == ["failed"] * 30
    assert tls_server.event_count == 0


def test_a_proxy_that_closes_connect_unanswered_is_reported(
    tls_server: LocalIngestServer, tls: ServerTLS, tmp_path: Path
) -> None:
    errors: list[BaseException] = []
    rules = tmp_path / "blocked-hosts"
    rules.write_text("127\\.0\\.0\\.1\n")
    with RealProxy(block=rules) as blocking:
        client = segops.SegOpsClient(
            tls_server.url,
            DEFAULT_SECRET_KEY,
            ca_certs=tls.ca_certs,
            proxy=blocking.url(),
            flush_interval=60,
            on_error=errors.append,
        )
        track_numbered(client, 10)
        with pytest.raises(segops.SegOpsApiError, match="refused the connection") as raised:
            client.flush(timeout=10)
        assert raised.value.undelivered == 10
        assert PASSWORD not in str(raised.value)
        assert len(errors) == 1
        assert (client.stats().queued, client.stats().retried) == (10, 0)
        with pytest.raises(segops.SegOpsApiError):
            client.shutdown(timeout=5)
    assert tls_server.event_count == 0


def test_a_407_to_a_forwarded_plain_http_request_is_reported_not_failed(
    server: LocalIngestServer, proxy: RealProxy
) -> None:
    dropped: list[str] = []
    client = segops.SegOpsClient(
        server.url,
        DEFAULT_SECRET_KEY,
        proxy=proxy.url(password="wrong-pw"),
        flush_interval=60,
        on_error=lambda error: None,
        on_drop=lambda events, reason: dropped.extend([reason] * len(events)),
    )
    track_numbered(client, 10)
    with pytest.raises(segops.SegOpsApiError, match="407") as raised:
        client.flush(timeout=10)
    assert "wrong-pw" not in str(raised.value)
    # Not refused by the API: the events wait, as for an unreachable one.
    assert (client.stats().queued, client.stats().failed) == (10, 0)
    assert dropped == []
    with pytest.raises(segops.SegOpsApiError):
        client.shutdown(timeout=5)
    assert dropped == ["failed"] * 10
    assert server.event_count == 0


def test_the_proxy_going_down_mid_stream_loses_nothing(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy
) -> None:
    errors: list[BaseException] = []
    client = segops.SegOpsClient(
        tls_server.url,
        DEFAULT_SECRET_KEY,
        ca_certs=tls.ca_certs,
        proxy=proxy.url(),
        flush_interval=0.05,
        batch_size=10,
        on_error=errors.append,
    )
    stop = threading.Event()
    tracked = 0

    def keep_tracking() -> None:
        nonlocal tracked
        while not stop.is_set() and tracked < 5000:
            client.track(user_id="u", event_type="e", payload={"i": tracked})
            tracked += 1
            time.sleep(0.0005)

    producer = threading.Thread(target=keep_tracking)
    producer.start()
    try:
        time.sleep(0.3)
        proxy.stop()
        time.sleep(0.5)
        proxy.start()
        time.sleep(0.3)
    finally:
        stop.set()
        producer.join()
    client.flush(timeout=30)
    # The proxy was really gone for a while: sending through it failed, and was reported.
    assert any("proxy" in str(error) for error in errors)
    stats = client.stats()
    assert stats.sent == tracked > 0
    summary = tls_server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (tracked, 0)
    assert sorted(event["payload"]["i"] for event in tls_server.events) == list(range(tracked))
    client.shutdown()
    assert_idle_invariant(client.stats())


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw-secret@127.0.0.1:notaport",
        "socks5://user:pw-secret@127.0.0.1:1080",
        "https://user:pw-secret@127.0.0.1:3128",
        "http://user:pw-secret@/",
    ],
)
def test_a_malformed_proxy_url_raises_at_construction_masked(url: str) -> None:
    with pytest.raises(ValueError, match="proxy") as raised:
        segops.SegOpsClient("https://127.0.0.1:1", DEFAULT_SECRET_KEY, proxy=url)
    assert "pw-secret" not in str(raised.value)


def test_a_malformed_proxy_in_the_environment_raises_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:pw-secret@127.0.0.1:1080")
    with pytest.raises(ValueError, match="https_proxy") as raised:
        segops.SegOpsClient("https://127.0.0.1:1", DEFAULT_SECRET_KEY)
    assert "pw-secret" not in str(raised.value)


def _send_command(server: LocalIngestServer, path: Path, *arguments: str) -> list[str]:
    return [
        sys.executable, "-m", "segops_fast", "send", str(path),
        "--api-url", server.url, "--api-key", DEFAULT_SECRET_KEY, *arguments,
    ]  # fmt: skip


def _events_file(path: Path, count: int) -> Path:
    path.write_bytes(
        b"".join(
            orjson.dumps({"user_id": "u", "event_type": "e", "payload": {"i": i}}) + b"\n"
            for i in range(count)
        )
    )
    return path


def test_send_over_https_honours_the_environment_and_proxy_flag(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy, tmp_path: Path
) -> None:
    events = _events_file(tmp_path / "events.jsonl", 500)
    environment = {"PATH": "", "SSL_CERT_FILE": str(tls.ca_certs), "HTTPS_PROXY": proxy.url()}
    finished = subprocess.run(
        _send_command(tls_server, events),
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert orjson.loads(finished.stdout)["sent"] == 500
    assert proxy.seen.startswith(b"CONNECT ")
    # --proxy '' overrides the environment: straight to the server this time.
    seen_before = len(proxy.seen)
    tls_server.reset()
    finished = subprocess.run(
        _send_command(tls_server, events, "--proxy", ""),
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert len(proxy.seen) == seen_before
    assert tls_server.summary()["unique_events"] == 500


@pytest.mark.parametrize("failure", ["untrusted", "wrong_password"])
def test_send_exits_with_a_clear_message_when_tls_or_the_proxy_refuses(
    tls_server: LocalIngestServer, tls: ServerTLS, proxy: RealProxy, tmp_path: Path, failure: str
) -> None:
    events = _events_file(tmp_path / "events.jsonl", 100)
    environment = {"PATH": ""}
    arguments: list[str] = []
    if failure == "wrong_password":
        environment["SSL_CERT_FILE"] = str(tls.ca_certs)
        arguments = ["--proxy", proxy.url(password="wrong-pw")]
    began = time.monotonic()
    finished = subprocess.run(
        _send_command(tls_server, events, *arguments),
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - began < 30
    assert finished.returncode == 1
    summary = orjson.loads(finished.stdout)
    assert summary["sent"] == 0
    assert summary["errors"]
    stderr = finished.stderr.decode()
    expected = "SSL_CERT_FILE" if failure == "untrusted" else "407"
    assert expected in stderr
    assert "nothing was sent" in stderr
    assert "wrong-pw" not in stderr + finished.stdout.decode()
    assert tls_server.event_count == 0
