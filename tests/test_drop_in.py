"""The same script, run with segops 0.2.2 and with segops_fast, stores the same events."""

from __future__ import annotations

import types
from typing import Any

import pytest

import segops_fast
from segops_fast.testing import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, LocalIngestServer

reference = pytest.importorskip("segops")


def documented_usage(segops: types.ModuleType, url: str) -> None:
    """Every documented use of the reference SDK, written against whichever module is given."""
    client = segops.SegOpsClient(url, DEFAULT_SECRET_KEY)
    client.track(user_id="u-123", event_type="order_placed", payload={"total": 42})
    client.track(segops.Event(user_id="u-1", event_type="page_viewed", payload={"path": "/"}))
    client.track(
        {"user_id": "u-2", "event_type": "signed_up", "occurred_at": "2026-01-01T00:00:00+00:00"}
    )
    client.identify(user_id="u-123", traits={"email": "a@example.com", "plan": "pro"})
    client.identify(segops.Context(user_id="u-9", traits={"plan": "free"}))
    client.flush()
    client.shutdown()
    with segops.SegOpsClient(url, DEFAULT_SECRET_KEY, batch=False) as unbatched:
        unbatched.track(user_id="u-3", event_type="sync_sent")
    public = segops.SegOpsClient(
        url, DEFAULT_PUBLIC_KEY, get_user=lambda: segops.UserContext(anonymous_id="anon-1")
    )
    public.track(user_id="u-4", event_type="via_session")
    public.reset_session()
    public.close()


def stored_fields(module: types.ModuleType) -> list[dict[str, Any]]:
    with LocalIngestServer() as server:
        documented_usage(module, server.url)
        events = server.events
    for event in events:
        assert set(event) == {"user_id", "event_type", "occurred_at", "payload"}
        if event["user_id"] != "u-2":
            event["occurred_at"] = "<now>"
    return sorted(events, key=lambda event: (event["user_id"], event["event_type"]))


def test_scripts_for_segops_run_unchanged_and_send_the_same_fields() -> None:
    assert stored_fields(segops_fast) == stored_fields(reference)


def test_the_public_names_of_the_reference_all_exist() -> None:
    missing = [name for name in reference.__all__ if not hasattr(segops_fast, name)]
    assert missing == []


def test_api_errors_are_still_runtime_errors_as_the_reference_raised() -> None:
    assert issubclass(segops_fast.SegOpsApiError, RuntimeError)
