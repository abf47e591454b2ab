"""HTTPS end to end: LocalIngestServer over TLS with a test CA, verification always on.

Covers the core paths over TLS (batches, the pk_ handshake, keep-alive reuse counted in
TLS handshakes at the server, a forked child's own connections), where trust comes from
(ca_certs, SSL_CERT_FILE, mutual TLS), and what a TLS failure does: nothing sent, an
immediate report naming the host, OpenSSL's reason and the fix, flush() raising with the
count, events kept queued, no retries spent, and shutdown() giving them up as failed.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
import trustme

import segops_fast as segops
from segops_fast.testing import (
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    IngestServerProcess,
    LocalIngestServer,
    ServerTLS,
)

from .conftest import assert_idle_invariant, track_numbered, wait_until
from .forking import fork_child, reap

pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")


def _exactly_once(server: LocalIngestServer, client: segops.SegOpsClient, count: int) -> None:
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (count, 0), summary
    assert client.stats().sent == count
    assert_idle_invariant(client.stats())


def test_batches_over_https_arrive_once_on_few_kept_alive_connections(
    tls_server: LocalIngestServer, tls: ServerTLS
) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    with segops.SegOpsClient(
        tls_server.url, DEFAULT_SECRET_KEY, ca_certs=tls.ca_certs, batch_size=20
    ) as client:
        # A steady stream: 40 rounds of one batch each, every one answered before the next.
        for round_number in range(40):
            track_numbered(client, 20, event_type=f"round-{round_number}")
            client.flush(timeout=10)
        _exactly_once(tls_server, client, 800)
        assert tls_server.request_count >= 40
    # One handshake per connection, at most max_in_flight (2) of them: never one a request.
    assert 1 <= tls_server.tls_handshakes <= 2
    assert tls_server.tls_handshake_failures == 0


def test_the_pk_session_handshake_over_https(tls_server: LocalIngestServer, tls: ServerTLS) -> None:
    with segops.SegOpsClient(
        tls_server.url, DEFAULT_PUBLIC_KEY, ca_certs=tls.ca_certs, flush_interval=0.05
    ) as client:
        track_numbered(client, 50)
        client.flush(timeout=10)
        _exactly_once(tls_server, client, 50)
    assert tls_server.summary()["sessions_minted"] == 1


def test_ssl_cert_file_is_honoured_when_no_ca_certs_is_given(
    tls_server: LocalIngestServer, tls: ServerTLS, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls.ca_certs is not None
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_certs)
    with segops.SegOpsClient(tls_server.url, DEFAULT_SECRET_KEY, flush_interval=0.05) as client:
        track_numbered(client, 10)
        client.flush(timeout=10)
        _exactly_once(tls_server, client, 10)


def test_a_forked_child_opens_its_own_tls_connection(
    tls_server: LocalIngestServer, tls: ServerTLS
) -> None:
    # Clients earlier tests left unreferenced in a cycle (proxy tests) are collected first:
    # while they live, a forked child's delivery stalls (found 2026-12-04, not yet
    # understood; the closing note of that day describes it). This test is about TLS.
    gc.collect()
    client = segops.SegOpsClient(
        tls_server.url, DEFAULT_SECRET_KEY, ca_certs=tls.ca_certs, max_in_flight=1
    )
    try:
        track_numbered(client, 10, event_type="parent-before")
        client.flush(timeout=10)
        assert tls_server.tls_handshakes == 1

        def child() -> None:
            track_numbered(client, 100, event_type="child")
            client.flush(timeout=10)
            assert client.stats().sent == 100

        assert reap([fork_child(child)], timeout=30) == [0]
        # The child shook hands itself: written on the parent's TLS session, its requests
        # would have broken the parent's connection (a bad record MAC) or failed.
        assert tls_server.tls_handshakes == 2
        track_numbered(client, 10, event_type="parent-after")
        client.flush(timeout=10)
        # ...and the parent still uses the connection it had.
        assert tls_server.tls_handshakes == 2
    finally:
        client.shutdown()
    by_type = tls_server.summary_by_event_type()
    assert {kind: counts["unique_events"] for kind, counts in by_type.items()} == {
        "parent-before": 10,
        "child": 100,
        "parent-after": 10,
    }
    assert tls_server.summary()["duplicate_events"] == 0


def test_mutual_tls_presents_the_client_certificate(tmp_path: Path) -> None:
    clients_ca = trustme.CA()
    clients_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    issued = clients_ca.issue_cert("client@example.com")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    tls = ServerTLS.for_loopback(client_ca_certs=str(tmp_path / "clients-ca.pem"))
    errors: list[BaseException] = []
    with LocalIngestServer(tls=tls) as server:
        without = segops.SegOpsClient(
            server.url, DEFAULT_SECRET_KEY, ca_certs=tls.ca_certs, on_error=errors.append
        )
        without.track(user_id="u", event_type="e")
        with pytest.raises(segops.SegOpsApiError) as raised:
            without.flush(timeout=10)
        assert raised.value.undelivered == 1
        assert "client_cert=" in str(raised.value)
        assert without.stats().queued == 1
        with pytest.raises(segops.SegOpsApiError):
            without.shutdown(timeout=5)
        assert server.event_count == 0
        with segops.SegOpsClient(
            server.url,
            DEFAULT_SECRET_KEY,
            ca_certs=tls.ca_certs,
            client_cert=str(tmp_path / "client.pem"),
            client_key=str(tmp_path / "client.key"),
        ) as client:
            track_numbered(client, 10)
            client.flush(timeout=10)
            _exactly_once(server, client, 10)
    assert errors


# -- failures ----------------------------------------------------------------------------


def _fails_like_a_configuration_error(url: str, expected: list[str]) -> None:
    """Nothing sent, reported at once and once, flush() raising promptly with the count,
    events kept queued without retries, shutdown() giving them up as failed."""
    errors: list[BaseException] = []
    dropped: list[tuple[int, str]] = []
    client = segops.SegOpsClient(
        url,
        DEFAULT_SECRET_KEY,
        flush_interval=60,
        on_error=errors.append,
        on_drop=lambda events, reason: dropped.extend((e["payload"]["i"], reason) for e in events),
    )
    track_numbered(client, 25)
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        assert time.monotonic() - began < 2.0
        assert raised.value.undelivered == 25
        for part in expected:
            assert part in str(raised.value), (part, str(raised.value))
    # Three flushes within one flush_interval, one report.
    assert len(errors) == 1, errors
    for part in expected:
        assert part in str(errors[0])
    stats = client.stats()
    assert (stats.queued, stats.sent, stats.failed, stats.retried) == (25, 0, 0, 0)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.shutdown(timeout=5)
    assert raised.value.undelivered == 25
    assert sorted(dropped) == [(i, "failed") for i in range(25)]
    assert_idle_invariant(client.stats())


def test_a_certificate_from_an_unknown_ca_is_a_configuration_error(
    tls_server: LocalIngestServer,
) -> None:
    host = f"127.0.0.1:{tls_server.port}"
    _fails_like_a_configuration_error(
        tls_server.url,
        [host, "nothing was sent", "CERTIFICATE_VERIFY_FAILED", "ca_certs=", "SSL_CERT_FILE"],
    )
    assert tls_server.event_count == 0
    assert tls_server.tls_handshake_failures >= 1


def test_a_host_name_mismatch_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tls = ServerTLS.for_loopback(hosts=("api.example.com",))
    with LocalIngestServer(tls=tls) as server:
        # A trusted CA (through SSL_CERT_FILE), but the certificate is not for 127.0.0.1.
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_certs))
        _fails_like_a_configuration_error(server.url, ["127.0.0.1", "mismatch", "host name"])
        assert server.event_count == 0


def test_https_to_a_plain_http_server_is_a_handshake_failure(
    server: LocalIngestServer,
) -> None:
    url = server.url.replace("http://", "https://")
    _fails_like_a_configuration_error(url, ["TLS with 127.0.0.1", "nothing was sent"])
    assert server.event_count == 0


def test_unusable_tls_files_raise_at_construction(tmp_path: Path, tls: ServerTLS) -> None:
    url = "https://127.0.0.1:1"
    with pytest.raises(ValueError, match="ca_certs="):
        segops.SegOpsClient(url, DEFAULT_SECRET_KEY, ca_certs=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="ca_certs="):
        segops.SegOpsClient(url, DEFAULT_SECRET_KEY, ca_certs=str(tmp_path / "junk.pem"))
    with pytest.raises(ValueError, match="client_cert="):
        segops.SegOpsClient(url, DEFAULT_SECRET_KEY, client_cert=str(tmp_path / "junk.pem"))
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        segops.SegOpsClient(url, DEFAULT_SECRET_KEY, client_key=str(tmp_path / "junk.pem"))
    # There is no way to turn verification off.
    with pytest.raises(TypeError):
        segops.SegOpsClient(url, DEFAULT_SECRET_KEY, verify=False)  # type: ignore[call-arg]


def test_a_lasting_tls_failure_is_reported_at_most_once_per_flush_interval(
    tls_server: LocalIngestServer,
) -> None:
    errors: list[BaseException] = []
    client = segops.SegOpsClient(
        tls_server.url, DEFAULT_SECRET_KEY, flush_interval=0.2, on_error=errors.append
    )
    try:
        began = time.monotonic()
        track_numbered(client, 5)
        wait_until(lambda: len(errors) >= 1, timeout=5)
        time.sleep(1.5)
        # Tried again every interval (a handshake each), told about it no more often.
        elapsed = time.monotonic() - began
        assert 1 <= len(errors) <= elapsed / 0.2 + 1
        assert tls_server.tls_handshake_failures >= 3
        assert client.stats().retried == 0
        assert client.stats().queued == 5
    finally:
        with pytest.raises(segops.SegOpsApiError):
            client.shutdown(timeout=5)


def test_segops_fast_serve_tls_in_its_own_process() -> None:
    with IngestServerProcess(["--tls"]) as server:
        assert server.url.startswith("https://")
        assert server.ca_certs is not None
        with segops.SegOpsClient(
            server.url, DEFAULT_SECRET_KEY, ca_certs=server.ca_certs
        ) as client:
            track_numbered(client, 100)
            client.flush(timeout=10)
        assert server.summary()["unique_events"] == 100
