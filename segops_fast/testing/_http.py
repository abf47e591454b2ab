"""The HTTP side of LocalIngestServer: connections, the guards at the door, and faults.

This module owns what happens between a socket and :meth:`LocalIngestServer._handle`:
HTTP/1.1 with keep-alive and TCP_NODELAY (without the latter, Nagle's algorithm and
delayed ACKs stall each keep-alive response by ~40 ms, and the server, not the client,
is what a benchmark measures); the TLS handshake on the connection's own thread; acting
out scripted faults; and the guards that make the server safe to leave running:

- **Host**: every request must name this server by a loopback name (an address in
  127.0.0.0/8, ``localhost`` or ``[::1]``) with its port, so that a web page cannot reach
  it through a DNS name rebound to 127.0.0.1;
- **Origin**: ``/_local/`` refuses any request a browser marks as coming from a page
  (``Origin``, or ``Sec-Fetch-Site`` other than ``none``);
- **size**: a body over :data:`MAX_BODY_BYTES`, as sent or once gunzipped, is answered
  413 without being read (or inflated) further;
- **idle connections** are closed after the server's ``idle_timeout``.

It does not own the endpoints, the auth rules or what is stored: that is
:mod:`._server`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

from ._faults import HANG, RESET_AFTER_STORE, RESET_BEFORE_BODY, STATUS

if TYPE_CHECKING:
    from ._server import LocalIngestServer

#: The largest request body accepted, as sent and once gunzipped (32 MiB): 64 times the
#: client's default ``max_batch_bytes``. A larger one is answered 413, which the client
#: meets by halving its batch.
MAX_BODY_BYTES = 32 * 1024 * 1024

#: The endpoints that faults apply to.
INGEST_PATHS = ("/api/ingestion/track/", "/api/ingestion/track/batch/")

#: Where the server's own controls live (summary, reset): never for web pages.
LOCAL_PREFIX = "/_local/"

_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")


class HTTPServer(ThreadingHTTPServer):
    """Accepts on 127.0.0.1 and tracks its connections, so that stopping can close them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        owner: LocalIngestServer,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.owner = owner
        self.tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap the socket, leaving the handshake to the handler's thread
        (a slow or failing client must not hold up the accepting one)."""
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (a timed-out retry, a staged reset)."""
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_all_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections, so they end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def host_problem(host: str | None, port: int, default_port: int) -> str | None:
    """Why ``host`` (a Host header) does not name this server by a loopback name; None if
    it does. The port may be left out only where it is the scheme's default."""
    if not host:
        return "a request needs a Host header"
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
    else:
        name, _, rest = host.partition(":")
        rest = ":" + rest if rest else ""
    if not _is_loopback_name(name):
        return f"Host {host!r} is not a loopback name"
    if rest not in (f":{port}", "" if port == default_port else f":{port}"):
        return f"Host {host!r} does not name this server's port {port}"
    return None


def _is_loopback_name(name: str) -> bool:
    if name.lower() in ("localhost", "[::1]"):
        return True
    try:
        return ipaddress.IPv4Address(name) in _LOOPBACK_V4
    except ValueError:
        return False


def _came_from_a_web_page(headers: Any) -> bool:
    """Browsers mark what a page sends: ``Origin`` on cross-origin and unsafe requests,
    ``Sec-Fetch-Site`` on every request (``none`` only for what the user typed)."""
    fetch_site = headers.get("Sec-Fetch-Site")
    return headers.get("Origin") is not None or fetch_site not in (None, "none")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: HTTPServer

    def setup(self) -> None:
        owner = self.server.owner
        # Every wait for the client, whether for its next request on a kept-alive
        # connection, for the rest of a body or for the TLS handshake, ends after this.
        self.request.settimeout(owner.idle_timeout)
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                owner._store.add(tls_handshake_failures=1)
                raise
            owner._store.add(tls_handshakes=1)
        super().setup()

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        owner = self.server.owner
        refusal = self._refusal()
        if refusal is not None:
            status, detail = refusal
            # What was not read of the request would be taken for the next one.
            self.close_connection = True
            owner._store.add(requests=1, rejected_requests=1)
            self._respond(status, {"detail": detail})
            return
        length = int(self.headers.get("Content-Length") or 0)
        faults = owner.faults
        fault = None
        if method == "POST" and self.path in INGEST_PATHS:
            if faults.latency:
                time.sleep(faults.latency)
            fault = faults.next_fault()
            if fault is not None:
                owner._store.add(faults_acted=1)
                if fault.kind == HANG:
                    time.sleep(fault.seconds)
                elif fault.kind == RESET_BEFORE_BODY:
                    self._reset_connection()
                    return
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            decoded = _gunzip(body)
            if isinstance(decoded, tuple):
                owner._store.add(requests=1, rejected_requests=1)
                self._respond(*decoded)
                return
            body = decoded
            owner._store.add(gzip_requests=1)
        owner._store.note_body(len(body))
        if fault is not None and fault.kind == STATUS:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._respond(fault.status, {"detail": "a scripted fault"}, extra)
            return
        limit = faults.max_body_bytes
        if limit is not None and self.path in INGEST_PATHS and len(body) > limit:
            owner._store.add(requests=1, rejected_requests=1)
            self._respond(413, {"detail": f"the body is over {limit} bytes"})
            return
        headers = dict(self.headers.items())
        status, answer = owner._handle(method, self.path, headers, body)
        if fault is not None and fault.kind == RESET_AFTER_STORE:
            self._reset_connection()
            return
        self._respond(status, answer)

    def _refusal(self) -> tuple[int, str] | None:
        """The status and reason to refuse this request with before reading its body."""
        owner = self.server.owner
        problem = host_problem(
            self.headers.get("Host"), owner.port, 80 if owner.tls is None else 443
        )
        if problem is not None:
            return 403, f"{problem}: use {owner.url}"
        if self.path.startswith(LOCAL_PREFIX) and _came_from_a_web_page(self.headers):
            return 403, f"{LOCAL_PREFIX} answers scripts, not web pages"
        if self.headers.get("Transfer-Encoding") is not None:
            return 411, "send the body with a Content-Length, not a Transfer-Encoding"
        length = self.headers.get("Content-Length")
        if length is not None and not length.isdigit():
            return 400, f"Content-Length {length!r} is not a number of bytes"
        if length is not None and int(length) > MAX_BODY_BYTES:
            return 413, f"the body is over this server's limit of {MAX_BODY_BYTES} bytes"
        return None

    def _respond(
        self, status: int, answer: Any, extra_headers: dict[str, str] | None = None
    ) -> None:
        payload = orjson.dumps(answer)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (extra_headers or {}).items())
        closing = "Connection: close\r\n" if self.close_connection else ""
        # Status line, headers and body in one write: one segment for small responses.
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"{closing}{extra}\r\n"
        ).encode("latin-1")
        self.wfile.write(head + payload)

    def _reset_connection(self) -> None:
        """Close with a TCP reset (RST), not a polite FIN: what a crashed proxy does."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test server that logs every request drowns the test output."""


def _gunzip(body: bytes) -> bytes | tuple[int, dict[str, str]]:
    """The body inflated, never past :data:`MAX_BODY_BYTES`; or the status and answer
    that refuse it (400 for a broken gzip, 413 for too much once inflated)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        decoded = inflater.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error:
        decoded = b""
    else:
        if len(decoded) > MAX_BODY_BYTES:
            return 413, {"detail": f"the body is over {MAX_BODY_BYTES} bytes once gunzipped"}
        if inflater.eof and not inflater.unused_data:
            return decoded
    return 400, {"detail": "Content-Encoding: gzip, but the body is not gzip"}
