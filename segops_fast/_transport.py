"""HTTP for one process: a pooled, keep-alive urllib3 connection pool to the SegOps API.

This module owns connections: one pool per process, TCP_NODELAY and keep-alive on every
socket, connect and read timeouts, TLS (with the context of :mod:`._tls`), the proxy (of
:mod:`._proxy`: HTTPS tunnelled with CONNECT, plain HTTP forwarded), gzip of request
bodies when asked (here, on the sending thread), and reading each response fully so its
connection goes back to the pool. It tells apart failures before anything was sent (no
connection, a TLS failure, a proxy that refused: :class:`UnreachableError`) from those
after (:class:`TransportError`). It sends bodies that are already bytes and never
serializes anything. It does not own retries, authentication or what a status code means.
"""

from __future__ import annotations

import codecs
import http.client
import socket
import traceback
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError as _ConnectFailed
from urllib3.exceptions import HTTPError as _Urllib3Error

from ._proxy import Proxy
from ._tls import TLSSettings, explain, refused_by_tls, tls_failure
from ._version import __version__

USER_AGENT = f"segops-fast/{__version__}"

# Connecting encodes the host name with the idna codec, whose module is imported on first
# use. A fork while one of our threads holds that import's lock would leave the lock held
# forever in the child, and the child's first connection would hang (found by the demo:
# a worker forked while the parent's senders made their first connections). Looked up now,
# the codec is cached and no sending thread ever imports anything.
codecs.lookup("idna")

# urllib3's defaults already disable Nagle (TCP_NODELAY); keep-alive probes let a dead
# peer be noticed on idle pooled connections.
_SOCKET_OPTIONS = [
    *HTTPConnection.default_socket_options,
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class TransportError(Exception):
    """No response: the connection failed, was reset, or timed out."""


class UnreachableError(TransportError):
    """No connection could be made (refused, unresolvable, or too slow to connect), so the
    request was not sent: the server certainly does not have it."""


class NetworkConfigError(UnreachableError):
    """TLS or the proxy refused the connection, so nothing was sent; trying again will not
    help until the configuration (CA bundle, host name, proxy credentials) is fixed."""


#: The values of the ``compression`` option.
COMPRESSIONS = (None, "gzip")
#: Level 1: bench/compression.py measured it at half the CPU of zlib's default (6) or
#: less, for bodies at most a third larger (see the README, "Networks").
GZIP_LEVEL = 1


class Transport:
    """POSTs JSON bodies to one SegOps deployment over a connection pool."""

    def __init__(
        self,
        api_url: str,
        *,
        timeout: float,
        max_connections: int,
        tls: TLSSettings | None = None,
        proxy: Proxy | None = None,
        compression: str | None = None,
    ) -> None:
        url = urllib3.util.parse_url(api_url)
        self._host = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        self._proxy = proxy
        path_prefix = (url.path or "").rstrip("/")
        # Through a proxy, plain HTTP requests name the whole URL; HTTPS ones are tunnelled
        # and name only the path, as without a proxy.
        forwarded = proxy is not None and url.scheme == "http"
        self._path_prefix = api_url.rstrip("/") if forwarded else path_prefix
        self._forwarded = forwarded
        self._timeout = timeout
        self._gzip = compression == "gzip"
        settings: dict[str, Any] = {
            "maxsize": max_connections,
            "block": False,
            "retries": False,
            "socket_options": _SOCKET_OPTIONS,
        }
        if url.scheme == "https":
            settings["ssl_context"] = (tls or TLSSettings()).context()
        if proxy is None:
            self._pool = urllib3.connection_from_url(api_url, **settings)
        else:
            manager = urllib3.ProxyManager(
                proxy.url, num_pools=1, proxy_headers=proxy.headers(), **settings
            )
            self._pool = manager.connection_from_url(api_url)
        # Connections that say when they fail before a byte of the request was sent.
        self._pool.ConnectionCls = (
            _MarkedHTTPSConnection if url.scheme == "https" else _MarkedHTTPConnection
        )

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], at_most: float | None = None
    ) -> Response:
        """Send one request; return its response whatever the status, or raise TransportError.

        ``at_most`` shortens the connect and read timeouts (a shutdown deadline is near).
        """
        seconds = self._timeout if at_most is None else min(self._timeout, at_most)
        all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        if self._gzip:
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
            all_headers["Content-Encoding"] = "gzip"
        try:
            response = self._pool.urlopen(
                "POST",
                self._path_prefix + path,
                body=body,
                headers=all_headers,
                retries=False,
                redirect=False,
                # Forwarded through a proxy, the URL names the API, not the proxy.
                assert_same_host=not self._forwarded,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                preload_content=True,
            )
        except _NotConnectedError as not_connected:
            _release_frames(not_connected)
            raise self._not_connected(not_connected.error) from not_connected.error
        except (_Urllib3Error, OSError) as error:
            _release_frames(error)
            failure = tls_failure(error)
            if failure is not None and refused_by_tls(failure):
                # The server's side of the handshake failed: it read no request.
                raise NetworkConfigError(explain(self._host, failure)) from error
            # urllib3 raises NewConnectionError and NameResolutionError as subclasses of
            # ConnectTimeoutError: every way of failing before a byte was sent.
            kind = UnreachableError if isinstance(error, _ConnectFailed) else TransportError
            raise kind(f"{type(error).__name__}: {error}") from error
        if self._forwarded and response.status == 407:
            raise NetworkConfigError(self._proxy_refused(f"{response.status} {response.reason}"))
        return Response(response.status, response.data, response.headers.get("Retry-After"))

    def _not_connected(self, error: Exception) -> UnreachableError:
        """What a failure to connect (to the API, or through the proxy) means."""
        failure = tls_failure(error)
        if failure is not None:
            return NetworkConfigError(explain(self._host, failure))
        if self._proxy is not None:
            message = str(error)
            if message.startswith("Tunnel connection failed: "):
                return NetworkConfigError(
                    self._proxy_refused(message.removeprefix("Tunnel connection failed: "))
                )
            if isinstance(error, http.client.HTTPException):
                # The proxy closed the connection instead of answering CONNECT.
                return NetworkConfigError(self._proxy_refused(f"no answer ({error!r})"))
            return UnreachableError(
                f"SegOps: could not connect to the proxy {self._proxy.describe()}, so "
                f"nothing was sent to {self._host}: {type(error).__name__}: {error}"
            )
        return UnreachableError(f"{type(error).__name__}: {error}")

    def _proxy_refused(self, answer: str) -> str:
        assert self._proxy is not None
        return (
            f"SegOps: the proxy {self._proxy.describe()} refused the connection to "
            f"{self._host} ({answer}), so nothing was sent. Check the proxy's address and "
            "credentials (proxy=..., or the https_proxy / http_proxy environment variables, "
            "with no_proxy for hosts to reach directly). Events stay queued until it lets "
            "requests through."
        )

    def close(self) -> None:
        self._pool.close()

    def abandon_after_fork(self) -> None:
        """In a forked child: close the inherited sockets without using them.

        A fork can happen while another thread of the parent holds the pool's queue lock;
        the child's copy of that lock would then stay locked forever, and closing the pool
        (now, or from urllib3's finalizer at exit) would hang. The child is single-threaded
        here, so re-initializing the lock is safe. Closing a socket in the child only drops
        the child's file descriptor: the parent's connection is untouched.
        """
        connections = self._pool.pool
        # Under gevent the pool's queue is gevent's, which has no mutex (and no OS lock).
        mutex = getattr(connections, "mutex", None)
        if mutex is not None:
            mutex._at_fork_reinit()
        self._pool.close()


class _NotConnectedError(Exception):
    """Connecting failed (TCP, the proxy's CONNECT, or the TLS handshake): nothing of the
    request was sent. Not an urllib3 or OS error, so urllib3 lets it through as it is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _MarkedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        try:
            super().connect()
        except Exception as error:
            raise _NotConnectedError(error) from error


class _MarkedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        try:
            super().connect()
        except Exception as error:
            raise _NotConnectedError(error) from error


def _release_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames in ``error``'s tracebacks.

    urllib3 keeps the exception it is handling in a local variable of a frame that is in
    that exception's own traceback: a reference cycle, which only the cyclic garbage
    collector frees. Each of its frames also holds its caller's frame, so the cycle kept
    the whole sending stack alive with it, batch and rendered body included. In a long
    outage the collector ran rarely enough that dozens of failed batches piled up
    (measured: memory grew 0.3 MB/s after the queue was full). Clearing the frames breaks
    the cycles, and everything is freed as soon as the request has failed.
    """
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        traceback.clear_frames(cause.__traceback__)
        cause = cause.__cause__ or cause.__context__
