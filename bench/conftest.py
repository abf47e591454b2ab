"""Fixtures for ``pytest bench --benchmark-only``: one ingest server in its own process.

The server runs in a separate process so that it never competes with the client for the
GIL: what is timed is the client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess


@pytest.fixture(scope="session")
def server() -> Iterator[IngestServerProcess]:
    with IngestServerProcess() as running:
        yield running


@pytest.fixture
def client(server: IngestServerProcess) -> Iterator[segops.SegOpsClient]:
    """A client with default settings whose events all reach the server."""
    created = segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY)
    yield created
    created.shutdown()
    stats = created.stats()
    assert stats.sent == stats.enqueued, stats
