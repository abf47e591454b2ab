"""``compression="gzip"``: gzipped bodies, decoded by the server; off by default."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import urllib3

import segops_fast as segops
from segops_fast.testing import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

from .conftest import MakeClient, assert_idle_invariant, track_numbered


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_gzip_bodies_arrive_once_over_http_and_https(scheme: str) -> None:
    tls = ServerTLS.for_loopback() if scheme == "https" else None
    with LocalIngestServer(tls=tls) as server:
        with segops.SegOpsClient(
            server.url,
            DEFAULT_SECRET_KEY,
            compression="gzip",
            ca_certs=None if tls is None else tls.ca_certs,
            batch_size=100,
        ) as client:
            for round_number in range(10):
                track_numbered(client, 100, event_type=f"round-{round_number}")
                client.flush(timeout=10)
            assert client.stats().sent == 1000
        summary = server.summary()
        assert (summary["unique_events"], summary["duplicate_events"]) == (1000, 0)
        assert server.gzip_requests == server.request_count >= 10
        assert_idle_invariant(client.stats())


def test_compression_is_off_by_default(server: LocalIngestServer, make_client: MakeClient) -> None:
    client = make_client()
    track_numbered(client, 10)
    client.flush()
    assert server.event_count == 10
    assert server.gzip_requests == 0


def test_the_pk_handshake_and_single_events_are_gzipped_too(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(DEFAULT_PUBLIC_KEY, compression="gzip", batch=False)
    track_numbered(client, 3)
    assert server.event_count == 3
    # The session mint and the three single-event requests.
    assert server.gzip_requests == server.request_count == 4


def test_max_batch_bytes_bounds_the_body_before_compression(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(compression="gzip", max_event_bytes=1024, max_batch_bytes=4096)
    # Events that compress very well: bounded after compression, a batch would hold dozens.
    for index in range(200):
        client.track(user_id="u", event_type="e", payload={"i": index, "pad": "x" * 500})
    client.flush(timeout=10)
    assert server.event_count == 200
    assert server.largest_body <= 4096
    assert server.request_count >= 200 // 7
    assert server.summary()["rejected_requests"] == 0


def test_a_broken_gzip_body_is_refused_with_400(server: LocalIngestServer) -> None:
    good = gzip.compress(orjson.dumps({"events": [{"user_id": "u", "event_type": "e"}]}))
    headers = {
        "Authorization": f"ApiKey {DEFAULT_SECRET_KEY}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    url = server.url + "/api/ingestion/track/batch/"
    for body in (b"not gzip at all", good[: len(good) // 2]):
        response = urllib3.request("POST", url, body=body, headers=headers, retries=False)
        assert response.status == 400
    assert urllib3.request("POST", url, body=good, headers=headers, retries=False).status == 200
    assert server.event_count == 1


def test_an_unknown_compression_raises_at_construction() -> None:
    with pytest.raises(ValueError, match="compression"):
        segops.SegOpsClient("http://127.0.0.1:1", DEFAULT_SECRET_KEY, compression="br")


def test_send_compress(server: LocalIngestServer, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"".join(
            orjson.dumps({"user_id": "u", "event_type": "e", "payload": {"i": i}}) + b"\n"
            for i in range(2000)
        )
    )
    finished = subprocess.run(
        [
            sys.executable, "-m", "segops_fast", "send", str(events), "--compress",
            "--api-url", server.url, "--api-key", DEFAULT_SECRET_KEY, "--proxy", "",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert orjson.loads(finished.stdout)["sent"] == 2000
    assert server.summary()["unique_events"] == 2000
    assert server.gzip_requests == server.request_count >= 1
