"""A real SegOps ingest server on loopback, for tests, demos and benchmarks.

This module owns the server side of the wire protocol: its lifecycle, the endpoints
with the platform's auth rules (secret keys; public keys exchanged for expiring session
tokens, at most :data:`MAX_SESSIONS` of them kept; signed user ids checked with the key's
HMAC secret, five minutes either way), 400 for malformed requests and 401 for bad
credentials, and the ``/_local/`` controls (``GET /_local/summary``, ``POST
/_local/reset``) through which another process checks exactly-once delivery.

What it stores and counts, within ``max_kept_events``, is :mod:`._store`'s; the HTTP side
(connections, TLS, the Host and Origin checks, the body size limit, idle timeouts and
faults) is :mod:`._http`'s. With ``tls`` it speaks HTTPS (see :mod:`._tls`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from ._faults import Faults
from ._http import INGEST_PATHS, HTTPServer
from ._store import ReceivedEvent, Store
from ._tls import ServerTLS

#: Accepted as a secret key unless the server is told otherwise.
DEFAULT_SECRET_KEY = "sk_test_local"
#: Accepted as a public key unless the server is told otherwise.
DEFAULT_PUBLIC_KEY = "pk_test_local"

SIGNATURE_TOLERANCE_SECONDS = 300

#: Events kept (for :attr:`LocalIngestServer.events` and the summary) unless the server is
#: told otherwise: about 2 GB of memory at the most (bench/soak.py keeps 1.5 million).
DEFAULT_MAX_KEPT_EVENTS = 2_000_000
#: Seconds a connection may sit idle (or stall mid-request) before the server closes it.
DEFAULT_IDLE_TIMEOUT = 120.0
#: Session tokens kept; minting one more forgets the oldest (expired ones go first).
MAX_SESSIONS = 10_000

#: The batch endpoints of Segment's (``/v1/batch``) and PostHog's (``/batch/``) SDKs.
PEER_BATCH_PATHS = ("/v1/batch", "/batch/")


@dataclass(frozen=True)
class PublicKey:
    """How the server treats one ``pk_`` key."""

    #: Hex HMAC secret that signs user ids; None when the key has none.
    hmac_secret: str | None = None
    #: Refuse sessions without a valid ``user_id_sig``.
    require_signed_user_id: bool = False


@dataclass
class _Session:
    expires_at: float
    user_id: str | None


class LocalIngestServer:
    """A threaded SegOps ingest server on 127.0.0.1; a free port unless ``port`` is given.

    Use it as a context manager, or call :meth:`start` and :meth:`stop` (it can be started
    again on the same port, which is how an outage is staged).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        secret_keys: tuple[str, ...] = (DEFAULT_SECRET_KEY,),
        public_keys: Mapping[str, PublicKey] | None = None,
        token_ttl: float = 3600.0,
        tls: ServerTLS | None = None,
        max_kept_events: int = DEFAULT_MAX_KEPT_EVENTS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._requested_port = port
        #: HTTPS when given: ``ServerTLS.for_loopback()`` makes a certificate for
        #: 127.0.0.1 from a test CA (its bundle: ``server.tls.ca_certs``).
        self.tls = tls
        self.secret_keys = frozenset(secret_keys)
        self.public_keys: dict[str, PublicKey] = dict(
            {DEFAULT_PUBLIC_KEY: PublicKey()} if public_keys is None else public_keys
        )
        self.token_ttl = token_ttl
        self.idle_timeout = idle_timeout
        #: What the next ingest requests suffer; see :class:`Faults`.
        self.faults = Faults()
        self._store = Store(max_kept_events)
        #: Guards the sessions.
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._http: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> LocalIngestServer:
        if self._http is not None:
            raise RuntimeError("LocalIngestServer is already running")
        context = None if self.tls is None else self.tls.context()
        self._http = HTTPServer(("127.0.0.1", self._requested_port), self, context)
        # Later restarts reuse the port, so the client's URL stays valid across an outage.
        self._requested_port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="segops-local-ingest",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, keep-alive ones included."""
        http, thread = self._http, self._thread
        if http is None or thread is None:
            return
        http.shutdown()
        http.close_all_connections()
        http.server_close()
        thread.join()
        self._http = None
        self._thread = None

    def __enter__(self) -> LocalIngestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._requested_port

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    # -- what tests read ---------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedEvent]:
        """Every stored event with the Idempotency-Key it came with, in arrival order."""
        return self._store.received()

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._store.events()

    @property
    def event_count(self) -> int:
        return self._store.counts().event_count

    @property
    def request_count(self) -> int:
        return self._store.counts().requests

    @property
    def tls_handshakes(self) -> int:
        """TLS handshakes completed, one per connection a client opened."""
        return self._store.counts().tls_handshakes

    @property
    def tls_handshake_failures(self) -> int:
        return self._store.counts().tls_handshake_failures

    @property
    def gzip_requests(self) -> int:
        """Requests that came with ``Content-Encoding: gzip`` (and decoded)."""
        return self._store.counts().gzip_requests

    @property
    def largest_body(self) -> int:
        """The largest request body received, in bytes, after decoding any gzip."""
        return self._store.counts().largest_body

    def wait_for_events(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` events are stored; False if ``timeout`` passes first."""
        return self._store.wait_for_events(count, timeout)

    def summary(self) -> dict[str, int]:
        """Counts for exactly-once checks: ``duplicate_events`` are stored events identical
        to another stored event; ``repeated_key_events`` arrived again under a key already
        stored and were not stored twice. ``events_not_kept`` were answered 200 past the
        keep limit (``keep_limit_reached``): the other counts leave them out.

        Another process reads the same as JSON: ``GET /_local/summary``."""
        return self._store.summary()

    def summary_by_event_type(self) -> dict[str, dict[str, int]]:
        """``events``, ``unique_events`` and ``duplicate_events`` for each event type."""
        return self._store.summary_by_event_type()

    def revoke_sessions(self) -> None:
        """Invalidate every session token, as a key rotation would: the next use gets 401."""
        with self._lock:
            self._sessions.clear()

    def reset(self) -> None:
        """Forget every event and counter (sessions stay valid). Another process does the
        same with ``POST /_local/reset`` (no body needed)."""
        self._store.reset()

    # -- request handling (called on the server's threads) ---------------------------------

    def _handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        if method == "GET" and path == "/_local/summary":
            return 200, self.summary()
        if method == "GET" and path == "/_local/summary/by-event-type":
            return 200, self.summary_by_event_type()
        if method == "POST" and path == "/_local/reset":
            self.reset()
            return 200, {"reset": True}
        if method != "POST":
            return 405, {"detail": "method not allowed"}
        self._store.add(requests=1)
        if path == "/api/auth/session/":
            status, answer = self._mint(headers.get("Authorization", ""), body)
        elif path in INGEST_PATHS:
            status, answer = self._ingest(path, headers, body)
        elif path in PEER_BATCH_PATHS:
            status, answer = self._ingest_peer_batch(body)
        else:
            status, answer = 404, {"detail": f"no endpoint {path}"}
        if status >= 400:
            self._store.add(rejected_requests=1)
        return status, answer

    def _mint(self, authorization: str, body: bytes) -> tuple[int, Any]:
        scheme, _, key = authorization.partition(" ")
        settings = self.public_keys.get(key) if scheme == "ApiKey" else None
        if settings is None:
            return 401, {
                "detail": "a session needs a known public key: Authorization: ApiKey pk_..."
            }
        fields = _json_object(body)
        if fields is None:
            return 400, {"detail": "the body must be a JSON object"}
        user_id = fields.get("user_id")
        signature = fields.get("user_id_sig")
        if signature is not None or settings.require_signed_user_id:
            problem = _signature_problem(settings, user_id, signature, fields.get("user_id_ts"))
            if problem:
                return 401, {"detail": problem}
        token = secrets.token_urlsafe(24)
        expires_at = time.time() + self.token_ttl
        with self._lock:
            self._forget_sessions_past(MAX_SESSIONS - 1)
            self._sessions[token] = _Session(
                expires_at, user_id if isinstance(user_id, str) else None
            )
        self._store.add(sessions_minted=1)
        moment = datetime.fromtimestamp(expires_at, timezone.utc).isoformat()
        return 200, {"token": token, "expires_at": moment}

    def _forget_sessions_past(self, count: int) -> None:
        """Keep at most ``count`` sessions: the expired ones go first, then the oldest.
        Call with the lock held."""
        if len(self._sessions) <= count:
            return
        now = time.time()
        for token in [t for t, session in self._sessions.items() if session.expires_at <= now]:
            del self._sessions[token]
        while len(self._sessions) > count:
            # Dicts keep insertion order: the first token is the oldest.
            del self._sessions[next(iter(self._sessions))]

    def _ingest(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        problem = self._credential_problem(headers.get("Authorization", ""))
        if problem:
            return 401, {"detail": problem}
        document = _json_object(body)
        if document is None:
            return 400, {"detail": "the body must be a JSON object"}
        if path.endswith("/batch/"):
            events = document.get("events")
            if not isinstance(events, list):
                return 400, {"detail": 'a batch must be {"events": [...]}'}
        else:
            events = [document]
        # One pass with no call per event: at 300,000 events/s a function call each would
        # make this server, not the client, the thing a benchmark measures.
        if not all(
            type(event) is dict
            and type(event.get("user_id")) is str
            and event["user_id"]
            and type(event.get("event_type")) is str
            and event["event_type"]
            for event in events
        ):
            position, problem = next(
                (position, _event_problem(event))
                for position, event in enumerate(events)
                if _event_problem(event)
            )
            return 400, {"detail": f"event {position}: {problem}"}
        self._store.keep(headers.get("Idempotency-Key"), events)
        return 200, {"accepted": len(events)}

    def _ingest_peer_batch(self, body: bytes) -> tuple[int, Any]:
        """Another SDK's batch, stored message by message, so that benchmarks can hold it
        to the same server and the same exactly-once count; no auth, no idempotency."""
        document = _json_object(body)
        messages = None if document is None else document.get("batch")
        if not isinstance(messages, list):
            return 400, {"detail": 'a batch must be {"batch": [...]}'}
        self._store.keep(None, messages)
        return 200, {"status": "Ok"}

    def _credential_problem(self, authorization: str) -> str | None:
        scheme, _, credential = authorization.partition(" ")
        if scheme == "ApiKey":
            if credential in self.secret_keys:
                return None
            if credential in self.public_keys:
                return "a public key cannot write: exchange it at /api/auth/session/"
            return "unknown API key"
        if scheme == "Bearer":
            with self._lock:
                session = self._sessions.get(credential)
            if session is None:
                return "unknown session token"
            if session.expires_at <= time.time():
                return "session token expired"
            return None
        return "missing or malformed Authorization header"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return "not a JSON object"
    for name in ("user_id", "event_type"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            return f"{name} is missing or not a non-empty string"
    return None


def _signature_problem(
    settings: PublicKey, user_id: object, signature: object, timestamp: object
) -> str | None:
    if settings.hmac_secret is None:
        return "this key has no HMAC secret to check user_id_sig with"
    if (
        not isinstance(user_id, str)
        or not isinstance(signature, str)
        or not isinstance(timestamp, int)
    ):
        return "a signed user id needs user_id, user_id_sig and an integer user_id_ts"
    if abs(time.time() - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        return "user_id_ts is more than 5 minutes away from the server's clock"
    expected = hmac.new(
        bytes.fromhex(settings.hmac_secret), f"{user_id}|{timestamp}".encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "user_id_sig does not match user_id and user_id_ts"
    return None
