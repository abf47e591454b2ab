"""Secrets stay secret: the API key, session tokens and proxy credentials appear in no log
line (ours or urllib3's, at DEBUG), no exception message, and no repr() of anything a
client holds, through a pk_ handshake, 401s, a refused proxy, a TLS failure and a
shutdown deadline."""

from __future__ import annotations

import base64
import collections
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import segops_fast as segops
from segops_fast.testing import LocalIngestServer, PublicKey, ServerTLS

from .conftest import track_numbered
from .proxying import PASSWORD as PROXY_PASSWORD
from .proxying import USER as PROXY_USER
from .proxying import RealProxy

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
