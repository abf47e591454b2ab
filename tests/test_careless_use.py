"""Careless settings are caught when the client is built, in words that say what to fix:
a key with a stray newline, a secret key over plain http://, an encrypted client key
without its password (which must never make OpenSSL prompt on a terminal), proxy
credentials with characters a URL parser stops at, and TLS older than 1.2."""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
import trustme

import segops_fast as segops
from segops_fast._proxy import resolve_proxy
from segops_fast._secrets import mask_key
from segops_fast._tls import TLSSettings
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

from .client_keys import EncryptedClientKey, write_encrypted_client_key
from .conftest import track_numbered

KEY = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"

# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY + "\n", "ends with a newline (at character 41)"),
        (KEY + "\r\n", "contains a carriage return (at character 41)"),
        (KEY + " ", "ends with a space (at character 41)"),
        ("\t" + KEY, "contains a tab (at character 1)"),
        (KEY[:10] + "\x00" + KEY[10:], "contains the character '\\x00' (at character 11)"),
        (KEY[:10] + "\u00e9" + KEY[10:], "contains the character '\u00e9' (at character 11)"),
    ],
    ids=["newline", "CRLF", "space", "tab", "NUL", "non-ASCII"],
)
def test_a_key_with_whitespace_or_control_characters_is_refused_masked(
    key: str, problem: str
) -> None:
    with pytest.raises(ValueError, match="api_key") as raised:
        segops.SegOpsClient("http://127.0.0.1:1", key)
    message = str(raised.value)
    assert problem in message
    assert "strip it where it is read" in message
    assert KEY not in message
    assert KEY[8:] not in message
    assert "...b1a0" in message


def test_a_short_key_is_masked_without_its_tail() -> None:
    assert mask_key(KEY) == "sk_...b1a0"
    assert mask_key("sk_x") == "sk_..."
    assert mask_key("sk_secret1") == "sk_..."
    assert mask_key("sk_test_local") == "sk_...ocal"
    assert mask_key("abcdefghijkl") == "...ijkl"


# -- plain http:// with a secret key -----------------------------------------------------------


def _warnings_of(api_url: str, api_key: str = KEY, times: int = 1) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(times):
            segops.SegOpsClient(api_url, api_key).shutdown()
    return [str(warning.message) for warning in caught if warning.category is UserWarning]


def test_a_secret_key_over_plain_http_to_another_host_warns_once() -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing is ever sent there.
    shown = _warnings_of("http://192.0.2.7:8000", times=3)
    assert len(shown) == 1, shown
    assert "http://192.0.2.7:8000" in shown[0]
    assert "unencrypted" in shown[0]
    assert KEY not in shown[0]


@pytest.mark.parametrize(
    ("api_url", "api_key"),
    [
        ("http://127.0.0.1:8000", KEY),
        ("http://127.8.9.10:8000", KEY),
        ("http://localhost:8000", KEY),
        ("http://[::1]:8000", KEY),
        ("https://192.0.2.8:8000", KEY),
        ("http://192.0.2.9:8000", "pk_live_0123456789"),
    ],
)
def test_loopback_https_and_public_keys_do_not_warn(api_url: str, api_key: str) -> None:
    assert _warnings_of(api_url, api_key) == []


# -- an encrypted client key -------------------------------------------------------------------

PASSWORD = "hunter2-client-key"


@pytest.fixture(scope="module")
def client_files(tmp_path_factory: pytest.TempPathFactory) -> EncryptedClientKey:
    return write_encrypted_client_key(tmp_path_factory.mktemp("client-tls"), PASSWORD)


_BUILD_ON_A_TERMINAL = """
import os, sys
os.setsid()
terminal = os.open(sys.argv[1], os.O_RDWR)  # the first tty opened becomes the controlling one
for stream in (0, 1, 2):
    os.dup2(terminal, stream)
import segops_fast as segops
try:
    segops.SegOpsClient(
        "https://127.0.0.1:1", "sk_x", client_cert=sys.argv[2], client_key=sys.argv[3]
    )
except ValueError as error:
    print("REFUSED:", error, flush=True)
"""


def test_an_encrypted_key_without_password_is_refused_without_prompting_on_a_terminal(
    client_files: EncryptedClientKey,
) -> None:
    """On a terminal, OpenSSL would ask for the pass phrase and wait: the client must not."""
    controller, terminal = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", _BUILD_ON_A_TERMINAL, os.ttyname(terminal),
         client_files.client_cert, client_files.client_key],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 30
    try:
        while child.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):  # EIO once the child has closed it
                    shown += os.read(controller, 4096)
        with contextlib.suppress(OSError):
            while select.select([controller], [], [], 0.1)[0]:
                chunk = os.read(controller, 4096)
                if not chunk:
                    break
                shown += chunk
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        os.close(controller)
    text = shown.decode(errors="replace")
    assert "pass phrase" not in text.lower(), text
    assert "REFUSED:" in text, text
    assert "client_key_password=" in text
    assert "never prompts" in text


def test_a_wrong_client_key_password_is_refused_at_construction(
    client_files: EncryptedClientKey,
) -> None:
    with pytest.raises(ValueError, match="client_key_password does not decrypt") as raised:
        segops.SegOpsClient(
            "https://127.0.0.1:1",
            DEFAULT_SECRET_KEY,
            client_cert=client_files.client_cert,
            client_key=client_files.client_key,
            client_key_password="not-" + PASSWORD,
        )
    assert PASSWORD not in str(raised.value)
    with pytest.raises(ValueError, match="client_key_password needs client_cert"):
        segops.SegOpsClient("https://127.0.0.1:1", DEFAULT_SECRET_KEY, client_key_password="p")


def test_an_encrypted_key_with_its_password_does_mutual_tls(
    client_files: EncryptedClientKey,
) -> None:
    tls = ServerTLS.for_loopback(client_ca_certs=client_files.ca_certs)
    with LocalIngestServer(tls=tls) as server:
        with segops.SegOpsClient(
            server.url,
            DEFAULT_SECRET_KEY,
            ca_certs=tls.ca_certs,
            client_cert=client_files.client_cert,
            client_key=client_files.client_key,
            client_key_password=PASSWORD,
        ) as client:
            assert PASSWORD not in repr(client._options)
            track_numbered(client, 10)
            client.flush(timeout=10)
        summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (10, 0)


# -- proxy credentials ---------------------------------------------------------------------------

AWKWARD_PASSWORD = "pa/ss?w#o@rd"


def test_proxy_credentials_with_url_delimiters_are_used_and_never_shown() -> None:
    url = f"http://proxy-user:{AWKWARD_PASSWORD}@127.0.0.1:3128"
    proxy = resolve_proxy(url, "https://api.example.com")
    assert proxy is not None
    assert proxy.url == "http://127.0.0.1:3128"
    expected = base64.b64encode(f"proxy-user:{AWKWARD_PASSWORD}".encode()).decode()
    assert proxy.headers() == {"Proxy-Authorization": f"Basic {expected}"}
    client = segops.SegOpsClient("https://127.0.0.1:1", KEY, proxy=url)
    shown = repr(client._options) + repr(proxy) + proxy.describe()
    client.shutdown()
    assert "http://***@127.0.0.1:3128" in shown
    for part in ("pa/ss", "w#o", "o@rd", "proxy-user"):
        assert part not in shown, part
    # Unusable for another reason (the scheme), and still masked.
    with pytest.raises(ValueError, match="proxy") as raised:
        segops.SegOpsClient("https://127.0.0.1:1", KEY, proxy=url.replace("http", "socks5"))
    for part in ("pa/ss", "w#o", "o@rd", "proxy-user"):
        assert part not in str(raised.value), part


# -- TLS versions --------------------------------------------------------------------------------


@contextlib.contextmanager
def _tls_server(maximum: ssl.TLSVersion) -> Iterator[tuple[str, str]]:
    """An HTTPS server on loopback speaking at most ``maximum``; yields its URL and CA."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with (
                    contextlib.suppress(OSError),
                    context.wrap_socket(connection, server_side=True) as secured,
                ):
                    secured.recv(65536)
                    secured.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with authority.cert_pem.tempfile() as ca_certs:
        try:
            yield f"https://127.0.0.1:{port}", ca_certs
        finally:
            listener.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_server_is_refused_even_where_openssl_would_allow_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.9's default minimum depends on the OpenSSL build: stage a build that allows
    TLS 1.1, and check the client still refuses it."""
    permissive = ssl.create_default_context

    def create_default_context(*args: object, **kwargs: object) -> ssl.SSLContext:
        context = permissive(*args, **kwargs)  # type: ignore[arg-type]
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        return context

    monkeypatch.setattr(ssl, "create_default_context", create_default_context)
    with _tls_server(ssl.TLSVersion.TLSv1_1) as (url, ca_certs):
        client = segops.SegOpsClient(url, KEY, ca_certs=ca_certs, max_retries=0)
        track_numbered(client, 1)
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        with pytest.raises(segops.SegOpsApiError):
            client.shutdown(timeout=5)
    assert "TLS with 127.0.0.1" in str(raised.value)
    assert client.stats().sent == 0


def test_the_tls_minimum_is_raised_to_1_2_and_never_lowered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert TLSSettings().context().minimum_version == ssl.TLSVersion.TLSv1_2
    strict = ssl.create_default_context

    def create_default_context(*args: object, **kwargs: object) -> ssl.SSLContext:
        context = strict(*args, **kwargs)  # type: ignore[arg-type]
        context.minimum_version = ssl.TLSVersion.TLSv1_3  # a system policy asking for more
        return context

    monkeypatch.setattr(ssl, "create_default_context", create_default_context)
    assert TLSSettings().context().minimum_version == ssl.TLSVersion.TLSv1_3
