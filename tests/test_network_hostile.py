"""A hostile or broken server cannot hurt the client: session tokens that cannot be a
header value, refused mints, huge and decompression-bomb responses. Each becomes a clear
SegOpsApiError on the normal path, the sending thread lives on, and memory stays bounded.

Most faults are staged by ``RawServer`` (tests/rawserver.py), which answers every request
with bytes of the test's choosing, where LocalIngestServer would refuse to misbehave.
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from collections.abc import Iterator

import orjson
import pytest

import segops_fast as segops
from segops_fast._errors import MAX_ERROR_TEXT_CHARS
from segops_fast._session import MAX_TOKEN_CHARACTERS
from segops_fast.testing import LocalIngestServer, PublicKey

from .conftest import MakeClient, track_numbered, wait_until
from .rawserver import Answer, RawServer


def _json_answer(status: str, document: object) -> Answer:
    body = orjson.dumps(document)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}", lambda: iter([body])


# -- session tokens ----------------------------------------------------------------------------

HOSTILE_TOKENS = {
    "CR/LF": "tok\r\nX-Injected: yes",
    "non-Latin-1": "tok-\u2603-snowman",
    "over 4 KiB": "t" * (MAX_TOKEN_CHARACTERS + 1),
}


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (HOSTILE_TOKENS["CR/LF"], "contains a carriage return (at character 4)"),
        (HOSTILE_TOKENS["non-Latin-1"], "contains the character '\u2603' (at character 5)"),
        (HOSTILE_TOKENS["over 4 KiB"], f"is {MAX_TOKEN_CHARACTERS + 1} characters long"),
    ],
    ids=list(HOSTILE_TOKENS),
)
def test_a_hostile_session_token_is_a_clear_error_and_the_sender_lives_on(
    token: str, problem: str
) -> None:
    expires = "2099-01-01T00:00:00+00:00"
    server = RawServer(lambda path: _json_answer("200 OK", {"token": token, "expires_at": expires}))
    errors: list[BaseException] = []
    with server:
        client = segops.SegOpsClient(
            server.url,
            "pk_live_0123456789",
            flush_interval=0.05,
            max_retries=0,
            on_error=errors.append,
        )
        track_numbered(client, 3)
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        # Nothing but mints was asked for: the token was never put in a header.
        assert set(server.paths) == {"/api/auth/session/"}
        with pytest.raises(segops.SegOpsApiError):
            client.shutdown(timeout=5)
    message = str(raised.value)
    assert "cannot be sent in a header" in message, message
    assert problem in message
    assert token not in message
    assert token[:12] not in raised.value.body
    assert errors
    assert all(isinstance(error, segops.SegOpsApiError) for error in errors)
    stats = client.stats()
    assert (stats.failed, stats.queued) == (3, 0)


def test_a_refused_mint_backs_off_and_is_reported(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    """A pk_ key the server refuses: a few mints in 2.5 s (1 s, then 2 s apart), not one
    per flush_interval (50 of them), each refusal reported with the fix."""
    errors: list[BaseException] = []
    client = make_client("pk_unknown_to_the_server", on_error=errors.append)
    track_numbered(client, 5)
    began = time.monotonic()
    wait_until(lambda: server.summary()["requests"] >= 2)
    time.sleep(max(0.0, 2.5 - (time.monotonic() - began)))
    mints = server.summary()["requests"]
    assert 2 <= mints <= 3, mints
    assert server.event_count == 0
    assert client.stats().queued == 5
    assert errors
    assert "refused a session for pk_...rver: HTTP 401" in str(errors[0])
    assert "get_user signs the user id" in str(errors[0])


SECRET_HEX = "00112233445566778899aabbccddeeff"


def test_a_signature_made_once_goes_stale_and_signing_in_get_user_does_not() -> None:
    """The README's example: get_user is called at every mint, so signing inside it gives
    each mint a fresh signature; a signature made once is refused after five minutes."""
    keys = {"pk_signed": PublicKey(hmac_secret=SECRET_HEX, require_signed_user_id=True)}
    # A token lives 61 s and is refreshed 60 s early: every request a second apart re-mints.
    with LocalIngestServer(public_keys=keys, token_ttl=61) as server:
        stale = segops.sign_user_id(SECRET_HEX, "u-1", ts=int(time.time()) - 299)
        signed_once_errors: list[BaseException] = []
        signed_once = segops.SegOpsClient(
            server.url,
            "pk_signed",
            flush_interval=0.05,
            get_user=lambda: segops.UserContext(**stale),
            on_error=signed_once_errors.append,
        )
        fresh = segops.SegOpsClient(
            server.url,
            "pk_signed",
            flush_interval=0.05,
            get_user=lambda: segops.UserContext(**segops.sign_user_id(SECRET_HEX, "u-1")),
        )
        for client in (signed_once, fresh):
            track_numbered(client, 1)
            client.flush(timeout=10)
        time.sleep(2.1)  # the token needs renewing, and the stale signature is now too old
        for client in (signed_once, fresh):
            track_numbered(client, 1)
        fresh.flush(timeout=10)
        assert fresh.stats().sent == 2
        wait_until(lambda: bool(signed_once_errors))
        assert "user_id_ts is more than 5 minutes away" in str(signed_once_errors[0])
        assert signed_once.stats().sent == 1
        fresh.shutdown()
        with pytest.raises(segops.SegOpsApiError):
            signed_once.shutdown(timeout=2)


# -- response bodies ---------------------------------------------------------------------------

BOMB_INFLATED_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 200 KiB of gzip that inflates to 200 MiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(BOMB_INFLATED_BYTES // len(zeros))]
    return b"".join(parts) + compressor.flush()


def _huge(size: int) -> Iterator[bytes]:
    chunk = b"x" * (1024 * 1024)
    for _ in range(size // len(chunk)):
        yield chunk


@pytest.mark.parametrize("kind", ["gzip bomb", "64 MiB body"])
def test_a_huge_or_bomb_response_is_read_only_up_to_the_bound(kind: str, gzip_bomb: bytes) -> None:
    if kind == "gzip bomb":
        head = (
            "HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(gzip_bomb)}"
        )
        answer: Answer = (head, lambda: iter([gzip_bomb]))
    else:
        size = 64 * 1024 * 1024
        answer = (f"HTTP/1.1 400 Bad Request\r\nContent-Length: {size}", lambda: _huge(size))
    errors: list[BaseException] = []
    with RawServer(lambda path: answer) as server:
        client = segops.SegOpsClient(server.url, "sk_live_0123456789", on_error=errors.append)
        tracemalloc.start()
        try:
            track_numbered(client, 1)
            with pytest.raises(segops.SegOpsApiError) as raised:
                client.flush(timeout=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        client.shutdown()
    assert raised.value.status == 400
    # The transport read at most MAX_RESPONSE_BYTES (memory never held the rest), and the
    # error keeps at most MAX_ERROR_TEXT_CHARS of that, saying it was cut.
    assert peak < 16 * 1024 * 1024, peak
    assert MAX_ERROR_TEXT_CHARS <= len(raised.value.body) <= MAX_ERROR_TEXT_CHARS + 100
    assert raised.value.body.endswith("more characters cut]")
    assert client.stats().failed == 1


def test_a_small_gzipped_answer_is_read_whole() -> None:
    document = {"detail": "no such event type " * 50}
    body = zlib.compress(orjson.dumps(document), wbits=16 + zlib.MAX_WBITS)
    head = f"HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}"
    with RawServer(lambda path: (head, lambda: iter([body]))) as server:
        client = segops.SegOpsClient(server.url, "sk_live_0123456789", on_error=lambda e: None)
        track_numbered(client, 1)
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        client.shutdown()
    assert orjson.loads(raised.value.body) == document
