"""Shared fixtures: a real LocalIngestServer per test (over HTTPS too), and clients that are
always shut down."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

MakeClient = Callable[..., segops.SegOpsClient]


@pytest.fixture
def server() -> Iterator[LocalIngestServer]:
    with LocalIngestServer() as running:
        yield running


@pytest.fixture(scope="module")
def tls() -> ServerTLS:
    """A certificate for 127.0.0.1 from a test CA; clients trust it with ``tls.ca_certs``."""
    return ServerTLS.for_loopback()


@pytest.fixture
def tls_server(tls: ServerTLS) -> Iterator[LocalIngestServer]:
    with LocalIngestServer(tls=tls) as running:
        yield running


@pytest.fixture
def make_client(server: LocalIngestServer) -> Iterator[MakeClient]:
    """Build clients against ``server`` (fast flush interval); shut down whatever is left."""
    clients: list[segops.SegOpsClient] = []

    def build(api_key: str = DEFAULT_SECRET_KEY, **options: Any) -> segops.SegOpsClient:
        options.setdefault("flush_interval", 0.05)
        client = segops.SegOpsClient(options.pop("api_url", server.url), api_key, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        with contextlib.suppress(segops.SegOpsApiError):
            client.shutdown(timeout=10)


def track_numbered(client: segops.SegOpsClient, count: int, event_type: str = "e") -> None:
    """Track ``count`` events whose payloads are ``{"i": 0}`` to ``{"i": count - 1}``."""
    for index in range(count):
        client.track(user_id="u", event_type=event_type, payload={"i": index})


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it still does not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not true after {timeout} s"
        time.sleep(0.02)


def wait_until_nothing_queued(client: segops.SegOpsClient, timeout: float = 5.0) -> None:
    """After a shutdown deadline the threads settle what they held; wait for that."""
    wait_until(lambda: client.stats().queued == 0, timeout)


def assert_idle_invariant(stats: segops.Stats) -> None:
    assert stats.enqueued == stats.sent + stats.dropped + stats.failed + stats.queued, stats
