"""The client's settings: their defaults, and the checks that refuse bad ones at construction.

This module owns configuration only; nothing here runs after the client is built. Besides
refusing bad settings it warns, once per API URL and process, about a risky one: a secret
key sent in clear over ``http://`` to another machine.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import warnings
from dataclasses import dataclass, fields

from ._secrets import key_problem, mask_key, mask_url
from ._tls import TLSSettings
from ._transport import COMPRESSIONS

#: What delivery costs a web worker is per request, not per event: each request is a few
#: hundred microseconds of Python (urllib3's request path, waking a thread) on the very CPU
#: that serves the app, while each event adds well under a microsecond (rendering its
#: timestamp, its share of the body: bench/results/app_profile.md). So the flusher lingers
#: until a request carries many events: at most ``batch_size`` events or
#: ``flush_interval`` seconds, whichever comes first. With these defaults, a gunicorn sync
#: worker tracking one event per request loses about as much as with an empty function
#: call or with capturing the events alone, and makes one ingest request for about a
#: thousand events (bench/app_overhead.py; its figures are in
#: bench/results/app_overhead.md, and the README's "Cheap inside a web app" compares them
#: with the reference's 20 events a request). 0.5 s is also what Segment and PostHog
#: linger, and 10x sooner than the reference's 5 s, so events reach the API sooner than
#: before, not later.
DEFAULT_BATCH_SIZE = 1000
DEFAULT_FLUSH_INTERVAL = 0.5
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_QUEUE_SIZE = 100_000
DEFAULT_MAX_BATCH_BYTES = 512 * 1024
DEFAULT_MAX_EVENT_BYTES = 32 * 1024
#: Two requests under way: the flusher assembles the next batch while the server reads the
#: last; more adds little unless the server is far away (the max_in_flight table in
#: bench/results/comparison.md).
DEFAULT_MAX_IN_FLIGHT = 2
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0

ON_FULL_POLICIES = ("drop", "block")

# The smallest request body that can hold one event of max_event_bytes: {"events":[...]}
_BATCH_ENVELOPE_BYTES = 13


@dataclass(frozen=True)
class Options:
    api_url: str
    api_key: str
    batch: bool
    batch_size: int
    flush_interval: float
    timeout: float
    max_queue_size: int
    on_full: str
    max_batch_bytes: int
    max_event_bytes: int
    max_in_flight: int
    max_retries: int
    backoff_base: float
    backoff_cap: float
    shutdown_timeout: float
    #: The network (README, "Networks"): None takes the proxy from the environment.
    proxy: str | None = None
    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: str | None = None
    compression: str | None = None

    def __repr__(self) -> str:
        """Every setting, with the API key, any proxy credentials and the key password
        masked."""
        shown = {field.name: getattr(self, field.name) for field in fields(self)}
        shown["api_key"] = mask_key(self.api_key) if isinstance(self.api_key, str) else "?"
        if isinstance(self.proxy, str):
            shown["proxy"] = mask_url(self.proxy)
        if self.client_key_password is not None:
            shown["client_key_password"] = "***"
        return "Options(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"

    @property
    def tls(self) -> TLSSettings:
        return TLSSettings(
            self.ca_certs, self.client_cert, self.client_key, self.client_key_password
        )

    @property
    def uses_session(self) -> bool:
        """A public key cannot write; it is exchanged for a session token first."""
        return self.api_key.startswith("pk_")

    def check(self) -> None:
        """Raise ``ValueError`` (or ``TypeError``) naming the first unusable setting."""
        if not isinstance(self.api_url, str) or not self.api_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"api_url must be an http:// or https:// URL, got {self.api_url!r}")
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ValueError("api_key must be a non-empty str (sk_... or pk_...)")
        problem = key_problem(self.api_key)
        if problem is not None:
            # Sent as it is, the key would fail inside http.client, whose error quotes the
            # whole header; stripped here, a key with a stray character in the middle
            # would be "fixed" without anyone knowing where it came from.
            # Shown masked as if stripped, so that the mask is the familiar one.
            raise ValueError(
                f"api_key {mask_key(self.api_key.strip())} {problem}: strip it where it is read "
                "(a secret file or a .env with CRLF line endings often adds a newline); "
                "segops_fast never strips a key itself"
            )
        at_least("batch_size", self.batch_size, 1)
        positive("flush_interval", self.flush_interval)
        positive("timeout", self.timeout)
        at_least("max_queue_size", self.max_queue_size, 1)
        if self.on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, got {self.on_full!r}")
        at_least("max_event_bytes", self.max_event_bytes, 64)
        at_least(
            "max_batch_bytes", self.max_batch_bytes, self.max_event_bytes + _BATCH_ENVELOPE_BYTES
        )
        at_least("max_in_flight", self.max_in_flight, 1)
        at_least("max_retries", self.max_retries, 0)
        positive("backoff_base", self.backoff_base)
        at_least("backoff_cap", self.backoff_cap, self.backoff_base)
        at_least("shutdown_timeout", self.shutdown_timeout, 0)
        self.tls.check()
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.api_url.startswith("http://") and not self.uses_session:
            _warn_secret_key_in_clear(self.api_url)


#: The API URLs already warned about in this process.
_warned_in_clear: set[str] = set()


def _warn_secret_key_in_clear(api_url: str) -> None:
    """Warn, once per URL, that a secret key is about to cross a network unencrypted.

    A warning, not a refusal: plain HTTP inside a private network (a sidecar, a cluster's
    internal service name) is a deliberate choice some deployments make, and refusing it
    would break them. Loopback never leaves the machine, so it is not warned about.
    """
    host = urllib.parse.urlsplit(api_url).hostname or ""
    if host == "localhost" or _is_loopback_address(host) or api_url in _warned_in_clear:
        return
    _warned_in_clear.add(api_url)
    warnings.warn(
        f"segops_fast: api_url {api_url!r} is plain http://, so the secret (sk_) key crosses "
        "the network unencrypted, readable by anyone on the path; use https:// unless this "
        "network is private to you",
        UserWarning,
        # Options.check <- SegOpsClient.__init__ <- the caller's line.
        stacklevel=4,
    )


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a number above 0, got {value!r}")


def at_least(name: str, value: float, minimum: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a number of at least {minimum}, got {value!r}")
