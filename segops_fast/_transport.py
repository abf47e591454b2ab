"""HTTP for one process: a pooled, keep-alive urllib3 connection pool to the SegOps API.

This module owns connections: one pool per process, TCP_NODELAY and keep-alive on every
socket, connect and read timeouts, TLS (with the context of :mod:`._tls`), the proxy (of
:mod:`._proxy`: HTTPS tunnelled with CONNECT, plain HTTP forwarded), gzip of request
bodies when asked (here, on the sending thread), and reading each response: at most
:data:`MAX_RESPONSE_BYTES` of it, decompressed or not, to its end when it fits so that its
connection goes back to the pool. It tells apart failures before anything was sent (no
connection, a TLS failure, a proxy that refused: :class:`UnreachableError`) from those
after (:class:`TransportError`), and says what failed in the user's terms (host and port,
the OS's or OpenSSL's reason, the timeout), never in urllib3's. It sends bodies that are
already bytes and never serializes anything. It does not own retries, authentication or
what a status code means.
"""

from __future__ import annotations

import codecs
import errno
import http.client
import socket
import string
import traceback
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError as _ConnectFailed
from urllib3.exceptions import HTTPError as _Urllib3Error
from urllib3.exceptions import NewConnectionError as _NewConnectionFailed
from urllib3.exceptions import TimeoutError as _Urllib3Timeout

from ._proxy import Proxy
from ._tls import TLSSettings, causes, explain, refused_by_tls, tls_failure
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


#: The most of a response body that is read, after decompression. The API's answers are a
#: few hundred bytes; a server (or something posing as one) that sends more gets its first
#: 64 KiB read and its connection closed, so neither a huge body nor a small gzip bomb
#: (200 KiB that inflate to 200 MiB) can fill the client's memory.
MAX_RESPONSE_BYTES = 64 * 1024

_GZIP_WINDOW_BITS = 16 + zlib.MAX_WBITS
_DECODERS = {"gzip": _GZIP_WINDOW_BITS, "x-gzip": _GZIP_WINDOW_BITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    retry_after: str | None = None
    #: The body was longer than :data:`MAX_RESPONSE_BYTES`; ``body`` is its beginning.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        text = self.body.decode("utf-8", "replace")
        return f"{text}... (cut at {MAX_RESPONSE_BYTES} bytes)" if self.truncated else text


class TransportError(Exception):
    """No response: the connection failed, was reset, or timed out."""


class UnreachableError(TransportError):
    """No connection could be made (refused, unresolvable, or too slow to connect), so the
    request was not sent: the server certainly does not have it."""


class NetworkConfigError(UnreachableError):
    """TLS or the proxy refused the connection, so nothing was sent; trying again will not
    help until the configuration (CA bundle, host name, proxy credentials) is fixed.

    Its message is addressed to the library's caller (``ca_certs=...``). A command line
    composes its own from :attr:`problem` and :meth:`fix`, given its flags by setting name,
    and :attr:`settings` says which names it needs.
    """

    def __init__(self, problem: str, fix: str) -> None:
        #: What happened in the user's terms (host and port, OpenSSL's or the proxy's
        #: answer), without advice.
        self.problem = problem
        #: The advice, with a ``{name}`` slot for each setting that fixes it.
        self._fix = fix
        #: The library's keyword arguments that fix it, such as ``("ca_certs",)``.
        self.settings = tuple(name for _, name, _, _ in string.Formatter().parse(fix) if name)
        super().__init__(f"{problem}. {self.fix()}.")

    def fix(self, names: Mapping[str, str] | None = None) -> str:
        """How to fix it, naming each setting as ``names`` does (a command line passes its
        flags: ``{"ca_certs": "--ca-certs FILE"}``), else as a keyword argument."""
        given = names or {}
        return self._fix.format_map(
            {name: given.get(name, f"{name}=...") for name in self.settings}
        )

    def __reduce__(self) -> tuple[type[NetworkConfigError], tuple[str, str]]:
        # Pickled across processes (a Dask worker's error) with both parts.
        return (type(self), (self.problem, self._fix))


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
                # Read here, within a bound, and decompressed here, within the same one.
                preload_content=False,
                decode_content=False,
            )
            try:
                answer, truncated = _read_bounded(response)
            finally:
                response.release_conn()
        except _NotConnectedError as not_connected:
            _release_frames(not_connected)
            raise self._not_connected(not_connected.error, seconds) from not_connected.error
        except (_Urllib3Error, OSError) as error:
            _release_frames(error)
            failure = tls_failure(error)
            if failure is not None and refused_by_tls(failure):
                # The server's side of the handshake failed: it read no request.
                raise NetworkConfigError(*explain(self._host, failure)) from error
            # urllib3 raises NewConnectionError and NameResolutionError as subclasses of
            # ConnectTimeoutError: every way of failing before a byte was sent.
            if isinstance(error, _ConnectFailed):
                raise UnreachableError(_connect_failure(self._host, error, seconds)) from error
            raise TransportError(_answer_failure(self._host, error, seconds)) from error
        if self._forwarded and response.status == 407:
            raise NetworkConfigError(*self._proxy_refused(f"{response.status} {response.reason}"))
        return Response(
            response.status, answer, response.headers.get("Retry-After"), truncated=truncated
        )

    def _not_connected(self, error: Exception, seconds: float) -> UnreachableError:
        """What a failure to connect (to the API, or through the proxy) means."""
        failure = tls_failure(error)
        if failure is not None:
            return NetworkConfigError(*explain(self._host, failure))
        if self._proxy is not None:
            message = str(error)
            if message.startswith("Tunnel connection failed: "):
                return NetworkConfigError(
                    *self._proxy_refused(message.removeprefix("Tunnel connection failed: "))
                )
            if isinstance(error, http.client.HTTPException):
                # The proxy closed the connection instead of answering CONNECT.
                return NetworkConfigError(*self._proxy_refused("it closed the connection"))
            reason = _connect_failure(f"the proxy {self._proxy.describe()}", error, seconds)
            return UnreachableError(f"{reason}, so nothing was sent to {self._host}")
        return UnreachableError(_connect_failure(self._host, error, seconds))

    def _proxy_refused(self, answer: str) -> tuple[str, str]:
        assert self._proxy is not None
        return (
            f"the proxy {self._proxy.describe()} refused the connection to {self._host} "
            f"({answer}), so nothing was sent",
            "Check the proxy's address and credentials ({proxy}, or the https_proxy / "
            "http_proxy environment variables, with no_proxy for hosts to reach directly)",
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


def _read_bounded(response: urllib3.BaseHTTPResponse) -> tuple[bytes, bool]:
    """The body of ``response``, decompressed, at most :data:`MAX_RESPONSE_BYTES` of it, and
    whether there was more. A body cut short leaves its connection closed, not pooled."""
    raw = response.read(MAX_RESPONSE_BYTES + 1, decode_content=False)
    more_on_the_wire = len(raw) > MAX_RESPONSE_BYTES
    if more_on_the_wire:
        raw = raw[:MAX_RESPONSE_BYTES]
        # Reading on to reuse the connection would cost whatever the server chose to send.
        response.close()
    else:
        response.read(decode_content=False)  # the end of the body; keeps the connection
    encoding = (response.headers.get("Content-Encoding") or "").strip().lower()
    window_bits = _DECODERS.get(encoding)
    if window_bits is None:
        # Plain, or an encoding not asked for: kept as it came (a message shows it mangled).
        return raw, more_on_the_wire
    decoder = zlib.decompressobj(window_bits)
    try:
        body = decoder.decompress(raw, MAX_RESPONSE_BYTES)
    except zlib.error:
        return raw, more_on_the_wire
    return body, more_on_the_wire or bool(decoder.unconsumed_tail)


def _connect_failure(where: str, error: BaseException, seconds: float) -> str:
    """``could not connect to HOST:PORT: REASON``, or the connect timeout."""
    if _timed_out(error):
        return f"timed out after {round(seconds, 2)}s connecting to {where}"
    return f"could not connect to {where}: {_os_reason(error)}"


def _answer_failure(where: str, error: BaseException, seconds: float) -> str:
    """What happened to a request that was sent (or partly sent) and got no answer."""
    if _timed_out(error):
        return f"timed out after {round(seconds, 2)}s waiting for {where}"
    return f"the connection to {where} failed before an answer came: {_os_reason(error)}"


def _timed_out(error: BaseException) -> bool:
    return any(
        # urllib3 makes NewConnectionError (refused, unresolvable) a kind of timeout.
        isinstance(cause, (TimeoutError, socket.timeout, _Urllib3Timeout))
        and not isinstance(cause, _NewConnectionFailed)
        for cause in causes(error)
    )


def _os_reason(error: BaseException) -> str:
    """The operating system's reason, lower-cased as in a sentence (``connection refused``)."""
    for cause in causes(error):
        if isinstance(cause, socket.gaierror):
            return f"the host name does not resolve ({cause.strerror})"
        if isinstance(cause, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
            return "the server closed the connection"
        if isinstance(cause, OSError) and cause.errno is not None:
            reason = cause.strerror or errno.errorcode.get(cause.errno, str(cause.errno))
            return reason[:1].lower() + reason[1:]
    return "the connection was lost"


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
