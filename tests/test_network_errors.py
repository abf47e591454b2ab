"""Network failures in the user's terms: host and port, the operating system's or OpenSSL's
reason, the timeout that ran out, never urllib3's class names; and a TLS or proxy refusal
that a command line can re-word with its own flags."""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
from collections.abc import Iterator

import pytest

import segops_fast as segops
from segops_fast._proxy import resolve_proxy
from segops_fast._tls import TLSSettings
from segops_fast._transport import (
    NetworkConfigError,
    Transport,
    TransportError,
    UnreachableError,
)
from segops_fast.testing import LocalIngestServer, ServerTLS

from .conftest import track_numbered

#: What no message may show: urllib3's and http.client's names for things.
INTERNAL_NAMES = ("_Marked", "HTTPConnection", "NewConnectionError", "urllib3", "Errno")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def _listener(answer: bool) -> Iterator[int]:
    """A port that accepts connections, reads the request, and then either never answers
    (``answer=False``) or closes the connection without a word (``answer=True``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                connection, _ = listener.accept()
                connection.recv(65536)
                if answer:
                    connection.close()
                else:
                    held.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for connection in held:
            connection.close()


def _post(transport: Transport) -> BaseException:
    with pytest.raises(TransportError) as raised:
        transport.post("/api/ingestion/track/batch/", b"{}", {"Authorization": "ApiKey sk_x"})
    transport.close()
    return raised.value


def _clean(message: str) -> str:
    for name in INTERNAL_NAMES:
        assert name not in message, (name, message)
    return message


def test_a_refused_connection_names_host_port_and_reason() -> None:
    port = _closed_port()
    error = _post(Transport(f"http://127.0.0.1:{port}", timeout=1.0, max_connections=1))
    assert isinstance(error, UnreachableError)
    assert _clean(str(error)) == f"could not connect to 127.0.0.1:{port}: connection refused"


def test_a_server_that_never_answers_names_the_timeout() -> None:
    with _listener(answer=False) as port:
        error = _post(Transport(f"http://127.0.0.1:{port}", timeout=1.0, max_connections=1))
    assert not isinstance(error, UnreachableError)  # sent: the server may have it
    assert _clean(str(error)) == f"timed out after 1.0s waiting for 127.0.0.1:{port}"


def test_a_server_that_hangs_up_says_so() -> None:
    with _listener(answer=True) as port:
        error = _post(Transport(f"http://127.0.0.1:{port}", timeout=5.0, max_connections=1))
    assert not isinstance(error, UnreachableError)
    assert _clean(str(error)) == (
        f"the connection to 127.0.0.1:{port} failed before an answer came: "
        "the server closed the connection"
    )


def test_a_proxy_that_is_down_is_named_masked() -> None:
    proxy_port, api_port = _closed_port(), _closed_port()
    proxy = resolve_proxy(f"http://user:pw-secret@127.0.0.1:{proxy_port}", "http://x")
    transport = Transport(
        f"https://127.0.0.1:{api_port}", timeout=1.0, max_connections=1, proxy=proxy
    )
    error = _post(transport)
    assert isinstance(error, UnreachableError)
    assert _clean(str(error)) == (
        f"could not connect to the proxy http://***@127.0.0.1:{proxy_port} (from proxy=): "
        f"connection refused, so nothing was sent to 127.0.0.1:{api_port}"
    )


def test_the_client_reports_the_cause_in_these_words() -> None:
    port = _closed_port()
    errors: list[BaseException] = []
    client = segops.SegOpsClient(
        f"http://127.0.0.1:{port}", "sk_x", max_retries=0, on_error=errors.append
    )
    track_numbered(client, 2)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=10)
    with pytest.raises(segops.SegOpsApiError):
        client.shutdown(timeout=5)
    expected = f"could not connect to 127.0.0.1:{port}: connection refused"
    assert expected in _clean(str(raised.value))
    assert errors
    for error in errors:
        assert expected in _clean(str(error))


def test_a_tls_failure_is_addressed_to_the_library_or_to_a_command_line() -> None:
    with LocalIngestServer(tls=ServerTLS.for_loopback()) as server:
        transport = Transport(server.url, timeout=5.0, max_connections=1, tls=TLSSettings())
        error = _post(transport)
    assert isinstance(error, NetworkConfigError)
    host = f"127.0.0.1:{server.port}"
    assert error.problem.startswith(f"TLS with {host} failed, so nothing was sent: ")
    assert "CERTIFICATE_VERIFY_FAILED" in error.problem
    assert error.settings == ("ca_certs",)
    # The library's reader gets keyword arguments...
    assert str(error) == f"{error.problem}. {error.fix()}."
    assert "ca_certs=..." in str(error)
    # ...a command line's, its flags, with the same advice.
    flags = error.fix({"ca_certs": "--ca-certs FILE"})
    assert "with --ca-certs FILE (or the SSL_CERT_FILE environment variable)" in flags
    assert "ca_certs=" not in flags
    # It crosses processes (a Dask worker's error) whole.
    copied = pickle.loads(pickle.dumps(error))
    assert (str(copied), copied.settings) == (str(error), error.settings)


def test_a_host_name_mismatch_names_api_url() -> None:
    tls = ServerTLS.for_loopback(hosts=("api.example.com",))
    with LocalIngestServer(tls=tls) as server:
        settings = TLSSettings(ca_certs=tls.ca_certs)
        error = _post(Transport(server.url, timeout=5.0, max_connections=1, tls=settings))
    assert isinstance(error, NetworkConfigError)
    assert error.settings == ("api_url",)
    assert "--api-url" in error.fix({"api_url": "--api-url"})
