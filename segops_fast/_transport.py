"""HTTP for one process: a pooled, keep-alive urllib3 connection pool to the SegOps API.

This module owns connections: one pool per process, TCP_NODELAY and keep-alive on every
socket, connect and read timeouts, and reading each response fully so its connection goes
back to the pool. It sends bodies that are already bytes and never serializes anything.
It does not own retries, authentication or what a status code means.
"""

from __future__ import annotations

import codecs
import socket
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError as _ConnectFailed
from urllib3.exceptions import HTTPError as _Urllib3Error

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


class Transport:
    """POSTs JSON bodies to one SegOps deployment over a connection pool."""

    def __init__(self, api_url: str, *, timeout: float, max_connections: int) -> None:
        url = urllib3.util.parse_url(api_url)
        self._path_prefix = (url.path or "").rstrip("/")
        self._timeout = timeout
        self._pool = urllib3.connection_from_url(
            api_url,
            maxsize=max_connections,
            block=False,
            retries=False,
            socket_options=_SOCKET_OPTIONS,
        )

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], at_most: float | None = None
    ) -> Response:
        """Send one request; return its response whatever the status, or raise TransportError.

        ``at_most`` shortens the connect and read timeouts (a shutdown deadline is near).
        """
        seconds = self._timeout if at_most is None else min(self._timeout, at_most)
        all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        try:
            response = self._pool.urlopen(
                "POST",
                self._path_prefix + path,
                body=body,
                headers=all_headers,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=seconds, read=seconds),
                preload_content=True,
            )
        except (_Urllib3Error, OSError) as error:
            _release_frames(error)
            # urllib3 raises NewConnectionError and NameResolutionError as subclasses of
            # ConnectTimeoutError: every way of failing before a byte was sent.
            failure = UnreachableError if isinstance(error, _ConnectFailed) else TransportError
            raise failure(f"{type(error).__name__}: {error}") from error
        return Response(response.status, response.data, response.headers.get("Retry-After"))

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
