"""Secrets stay secret: the API key, session tokens, proxy credentials, HMAC secrets and
client key passwords appear in no log line (ours or urllib3's, at DEBUG), no warning, no
exception message in any chain, and no repr() of anything a client holds: through a pk_
handshake, 401s, a refused proxy, a TLS failure and a shutdown deadline, and through
careless settings and hostile servers."""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import segops_fast as segops
from segops_fast.testing import LocalIngestServer, PublicKey, ServerTLS

from .client_keys import EncryptedClientKey, write_encrypted_client_key
from .conftest import track_numbered
from .proxying import PASSWORD as PROXY_PASSWORD
from .proxying import USER as PROXY_USER
from .proxying import RealProxy
from .rawserver import RawServer

SECRET_KEY = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PUBLIC_KEY = "pk_live_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WRONG_PROXY_PASSWORD = "wr0ng-pa55-8e1f3a"


@pytest.fixture(scope="module")
def tls() -> ServerTLS:
    return ServerTLS.for_loopback()


@pytest.fixture
def tls_server(tls: ServerTLS) -> Iterator[LocalIngestServer]:
    with LocalIngestServer(
        tls=tls, secret_keys=(SECRET_KEY,), public_keys={PUBLIC_KEY: PublicKey()}
    ) as running:
        yield running


def _walk(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through our own objects' attributes and the
    containers they hold (third-party objects are visited, not entered)."""
    seen: set[int] = set()
    pending = [root]
    while pending:
        current = pending.pop()
        if id(current) in seen or isinstance(current, (str, bytes, int, float, bool)):
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, (list, tuple, set, frozenset, collections.deque)):
            pending.extend(current)
        elif type(current).__module__.startswith("segops_fast"):
            pending.extend(vars(current).values() if hasattr(current, "__dict__") else ())
            for slot in getattr(type(current), "__slots__", ()):
                if hasattr(current, slot):
                    pending.append(getattr(current, slot))


def _exception_texts(error: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield str(getattr(current, "body", ""))
        current = current.__cause__ or current.__context__


def test_no_secret_in_logs_reprs_or_exceptions(
    tls_server: LocalIngestServer, tls: ServerTLS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "segops_fast"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    texts: list[str] = []
    clients: list[segops.SegOpsClient] = []
    reported: list[BaseException] = []

    def build(api_key: str, **options: Any) -> segops.SegOpsClient:
        options.setdefault("ca_certs", tls.ca_certs)
        options.setdefault("flush_interval", 0.05)
        client = segops.SegOpsClient(tls_server.url, api_key, on_error=reported.append, **options)
        clients.append(client)
        texts.append(repr(client._options))
        return client

    def expect_failure(call: Any) -> None:
        with pytest.raises(segops.SegOpsApiError) as raised:
            call()
        texts.extend(_exception_texts(raised.value))

    with RealProxy() as proxy, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The pk_ handshake through an authenticated proxy, then a revoked token (401,
        # re-mint).
        public = build(PUBLIC_KEY, proxy=proxy.url(PROXY_USER, PROXY_PASSWORD))
        track_numbered(public, 20)
        public.flush(timeout=10)
        tokens = list(tls_server._sessions)
        tls_server.revoke_sessions()
        track_numbered(public, 20)
        public.flush(timeout=10)
        tokens += list(tls_server._sessions)
        assert tls_server.summary()["sessions_minted"] == 2
        # A secret key the server does not know: 401.
        unknown = build(SECRET_KEY.replace("9f8e", "0000"))
        track_numbered(unknown, 5)
        expect_failure(lambda: unknown.flush(timeout=10))
        # A refused proxy.
        refused = build(SECRET_KEY, proxy=proxy.url(PROXY_USER, WRONG_PROXY_PASSWORD))
        track_numbered(refused, 5)
        expect_failure(lambda: refused.flush(timeout=10))
        # A TLS failure.
        untrusted = build(SECRET_KEY, ca_certs=None)
        track_numbered(untrusted, 5)
        expect_failure(lambda: untrusted.flush(timeout=10))
        # A shutdown deadline, with the server hanging.
        hanging = build(SECRET_KEY, timeout=5)
        tls_server.faults.hang(3.0)
        track_numbered(hanging, 5)
        texts.extend(repr(obj) for client in clients for obj in _walk(client))
        for client in clients:
            try:
                client.shutdown(timeout=0.5)
            except segops.SegOpsApiError as error:
                texts.extend(_exception_texts(error))
            texts.extend(repr(obj) for obj in _walk(client))
        texts.extend(str(warning.message) for warning in caught)
        proxy_seen = proxy.seen
    for error in reported:
        texts.extend(_exception_texts(error))
    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(logging.Formatter().format(record) for record in caplog.records)
    everything = "\n".join(texts)
    assert len(tokens) == 2
    assert any(record.name.startswith("urllib3") for record in caplog.records)
    assert "sk_...1a0" in everything or "sk_...b1a0" in everything
    credentials = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    secrets = [SECRET_KEY, PUBLIC_KEY, PROXY_PASSWORD, WRONG_PROXY_PASSWORD, credentials, *tokens]
    for secret in secrets:
        assert secret not in everything, secret
    # The proxy tunnelled TLS: it saw its own credentials, never the key or a token.
    for secret in (SECRET_KEY, PUBLIC_KEY, *tokens):
        assert secret.encode() not in proxy_seen


# -- careless settings and hostile servers ---------------------------------------------------------

HMAC_SECRET = "5ec7e75ec7e75ec7e75ec7e75ec7e7aa"
KEY_PASSWORD = "k3y-pa55w0rd-77"
AWKWARD_PROXY_PASSWORD = "sl/ash?pa55#w0rd"
HOSTILE_TOKEN = "t0ken-h0st1le-4f2a\r\nX-Evil: 1"


@pytest.fixture(scope="module")
def encrypted_client(tmp_path_factory: pytest.TempPathFactory) -> EncryptedClientKey:
    return write_encrypted_client_key(tmp_path_factory.mktemp("client-tls"), KEY_PASSWORD)


def test_no_secret_in_any_output_across_careless_settings_and_hostile_servers(
    encrypted_client: EncryptedClientKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A key with a newline, proxy credentials a URL parser stops at, an encrypted client
    key's password (right and wrong), an HMAC secret signing user ids (fresh and stale), a
    refused mint in backoff, and a hostile token: none of the secrets reaches a repr, a
    DEBUG log line, a warning or any exception in a chain."""
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "segops_fast"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    texts: list[str] = []
    reported: list[BaseException] = []
    clients: list[segops.SegOpsClient] = []

    def build(url: str, api_key: str, **options: Any) -> segops.SegOpsClient:
        client = segops.SegOpsClient(url, api_key, on_error=reported.append, **options)
        clients.append(client)
        return client

    def refused(call: Any) -> None:
        with pytest.raises((ValueError, segops.SegOpsApiError)) as raised:
            call()
        texts.extend(_exception_texts(raised.value))

    mutual = ServerTLS.for_loopback(client_ca_certs=encrypted_client.ca_certs)
    signed_keys = {PUBLIC_KEY: PublicKey(hmac_secret=HMAC_SECRET, require_signed_user_id=True)}
    hostile_answer = orjson.dumps({"token": HOSTILE_TOKEN, "expires_at": "2099-01-01T00:00:00Z"})
    hostile_server = RawServer(
        lambda path: (
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(hostile_answer)}",
            lambda: iter([hostile_answer]),
        )
    )
    with contextlib.ExitStack() as stack:
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        mutual_server = stack.enter_context(
            LocalIngestServer(tls=mutual, secret_keys=(SECRET_KEY,))
        )
        signing_server = stack.enter_context(
            LocalIngestServer(public_keys=signed_keys, token_ttl=61)
        )
        stack.enter_context(hostile_server)
        warnings.simplefilter("always")
        tls_files = {
            "ca_certs": mutual.ca_certs,
            "client_cert": encrypted_client.client_cert,
            "client_key": encrypted_client.client_key,
        }
        # Refused at construction: a key with a newline, a wrong key password, an unusable
        # proxy URL whose password holds a "/", a secret key over http:// (a warning).
        refused(lambda: build(mutual_server.url, SECRET_KEY + "\n"))
        refused(
            lambda: build(
                mutual_server.url,
                SECRET_KEY,
                client_key_password="wrong-" + KEY_PASSWORD,
                **tls_files,
            )
        )
        awkward_proxy = f"http://{PROXY_USER}:{AWKWARD_PROXY_PASSWORD}@127.0.0.1:1"
        refused(lambda: build(mutual_server.url, SECRET_KEY, proxy="socks5" + awkward_proxy[4:]))
        build("http://192.0.2.10:8000", SECRET_KEY, proxy=awkward_proxy)
        # Mutual TLS with the encrypted key: delivered.
        mutual_client = build(
            mutual_server.url, SECRET_KEY, client_key_password=KEY_PASSWORD, **tls_files
        )
        track_numbered(mutual_client, 5)
        mutual_client.flush(timeout=10)
        # Signed user ids: fresh at every mint, and one signed once that goes stale.
        fresh = build(
            signing_server.url,
            PUBLIC_KEY,
            flush_interval=0.05,
            get_user=lambda: segops.UserContext(**segops.sign_user_id(HMAC_SECRET, "u-1")),
        )
        stale_signature = segops.sign_user_id(HMAC_SECRET, "u-2", ts=int(time.time()) - 299)
        stale = build(
            signing_server.url,
            PUBLIC_KEY,
            flush_interval=0.05,
            max_retries=0,
            get_user=lambda: segops.UserContext(**stale_signature),
        )
        for client in (fresh, stale):
            track_numbered(client, 2)
            client.flush(timeout=10)
        time.sleep(2.1)  # tokens due for renewal; the stale signature is refused from now on
        for client in (fresh, stale):
            track_numbered(client, 2)
        fresh.flush(timeout=10)
        refused(lambda: stale.flush(timeout=10))
        tokens = list(signing_server._sessions)
        # A hostile token.
        hostile = build(hostile_server.url, PUBLIC_KEY, flush_interval=0.05, max_retries=0)
        track_numbered(hostile, 2)
        refused(lambda: hostile.flush(timeout=10))
        texts.extend(repr(obj) for client in clients for obj in _walk(client))
        for client in clients:
            with contextlib.suppress(segops.SegOpsApiError):
                client.shutdown(timeout=2)
        texts.extend(str(warning.message) for warning in caught)
    assert mutual_server.summary()["unique_events"] == 5
    assert fresh.stats().sent == 4
    assert stale.stats().sent == 2
    assert len(tokens) >= 3
    for error in reported:
        texts.extend(_exception_texts(error))
    texts.extend(logging.Formatter().format(record) for record in caplog.records)
    everything = "\n".join(texts)
    # What was staged shows, masked.
    assert "http://***@127.0.0.1:1" in everything
    assert "user_id_ts is more than 5 minutes away" in everything
    assert "cannot be sent in a header" in everything
    assert "plain http://" in everything
    secrets = [
        SECRET_KEY, SECRET_KEY[8:], PUBLIC_KEY, HMAC_SECRET, KEY_PASSWORD, AWKWARD_PROXY_PASSWORD,
        "sl/ash", "pa55#w0rd", HOSTILE_TOKEN[:18], stale_signature["user_id_sig"], *tokens,
    ]  # fmt: skip
    for secret in secrets:
        assert secret not in everything, secret
