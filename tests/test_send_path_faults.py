"""The send path cannot die silently (issue 28): every fault on the way to the server ends
in on_error, on_drop and the counters, and flush() and shutdown() raise when sending stops.

Each test runs against a real LocalIngestServer; faults it cannot stage (an exception
inside the client's own send path) are injected by replacing one method.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import segops_fast as segops
from segops_fast import _delivery
from segops_fast._delivery import RetryPolicy
from segops_fast._transport import Transport
from segops_fast.testing import DEFAULT_PUBLIC_KEY, LocalIngestServer

from .conftest import MakeClient, assert_idle_invariant, track_numbered, wait_until

#: Stands for an API key inside an exception's text: it must reach no message.
SECRET = "sk_live_do_not_print_me"


class _Recorder:
    """on_error and on_drop that remember what they were told."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.dropped: list[tuple[dict[str, Any], str]] = []
        self._lock = threading.Lock()

    def on_error(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def on_drop(self, events: list[dict[str, Any]], reason: str) -> None:
        with self._lock:
            self.dropped.extend((event, reason) for event in events)

    def reasons(self) -> list[str]:
        with self._lock:
            return [reason for _, reason in self.dropped]

    def texts(self) -> list[str]:
        with self._lock:
            return [str(error) for error in self.errors]


def _assert_no_secret_anywhere(recorder: _Recorder, *raised: BaseException) -> None:
    for error in [*recorder.errors, *raised]:
        seen: BaseException | None = error
        while seen is not None:
            assert SECRET not in str(seen), seen
            seen = seen.__cause__


def test_an_unexpected_exception_while_sending_gives_its_batch_up_and_sending_goes_on(
    server: LocalIngestServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What http.client does with a header value holding a newline: the whole header, key
    # included, goes into the exception's text.
    real_post = Transport.post
    failures_left = [1]

    def post(self: Transport, *args: Any, **kwargs: Any) -> Any:
        if failures_left[0]:
            failures_left[0] -= 1
            raise ValueError(f"Invalid header value b'ApiKey {SECRET}\\n'")
        return real_post(self, *args, **kwargs)

    monkeypatch.setattr(Transport, "post", post)
    recorder = _Recorder()
    client = make_client(
        on_error=recorder.on_error, on_drop=recorder.on_drop, batch_size=10_000, flush_interval=60
    )
    track_numbered(client, 10)
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=10)
    assert raised.value.undelivered == 10
    # Named by its type and where it was raised, never by its text.
    assert "unexpected ValueError in post() at test_send_path_faults.py:" in str(raised.value)
    assert recorder.reasons() == ["unexpected_error"] * 10
    assert [event["payload"]["i"] for event, _ in recorder.dropped] == list(range(10))
    assert any("unexpected ValueError" in text for text in recorder.texts())
    _assert_no_secret_anywhere(recorder, raised.value)
    # The thread lives on: the next events are delivered.
    track_numbered(client, 5, event_type="after")
    client.flush(timeout=10)
    assert server.event_count == 5
    stats = client.stats()
    assert (stats.sent, stats.failed, stats.dropped, stats.queued) == (5, 10, 0, 0)
    assert_idle_invariant(stats)
    client.shutdown(timeout=10)


def test_a_sending_thread_that_stops_releases_a_blocked_track_and_flush_and_shutdown_raise(
    server: LocalIngestServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sys.exit() in a thread ends it without a word: the worst case of a thread that stops.
    in_request = threading.Event()
    let_it_fail = threading.Event()

    def attempt_batch(self: Any, batch: Any) -> Any:
        in_request.set()
        let_it_fail.wait(10)
        raise SystemExit(f"stopped with {SECRET}")

    monkeypatch.setattr(_delivery.Delivery, "attempt_batch", attempt_batch)
    recorder = _Recorder()
    client = make_client(
        max_queue_size=5,
        on_full="block",
        batch_size=5,
        on_error=recorder.on_error,
        on_drop=recorder.on_drop,
    )
    track_numbered(client, 5)
    assert in_request.wait(10)
    # The 5 events held count against max_queue_size: the next track() blocks.
    blocked_track_returned = threading.Event()

    def track_one_more() -> None:
        client.track(user_id="u", event_type="blocked", payload={"i": 5})
        blocked_track_returned.set()

    producer = threading.Thread(target=track_one_more, daemon=True)
    producer.start()
    assert not blocked_track_returned.wait(0.3), "track() should wait for room"
    let_it_fail.set()
    assert blocked_track_returned.wait(10), "a blocked track() must be released"
    producer.join(10)

    wait_until(lambda: len(recorder.dropped) == 6)
    assert sorted(event["payload"]["i"] for event, _ in recorder.dropped) == list(range(6))
    assert recorder.reasons() == ["unexpected_error"] * 6
    assert any(
        "thread sending events stopped on an unexpected SystemExit" in t for t in recorder.texts()
    )
    stats = client.stats()
    assert (stats.enqueued, stats.failed, stats.sent, stats.queued) == (6, 6, 0, 0)
    assert_idle_invariant(stats)

    with pytest.raises(segops.SegOpsApiError, match="sends nothing more") as flushed:
        client.flush(timeout=10)
    with pytest.raises(segops.SegOpsApiError, match="sends nothing more") as shut:
        client.shutdown(timeout=10)
    _assert_no_secret_anywhere(recorder, flushed.value, shut.value)
    assert server.event_count == 0


def test_get_user_raising_is_reported_as_such_and_the_events_wait_for_it(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    broken = [True]

    def get_user() -> segops.UserContext:
        if broken[0]:
            raise LookupError("no request context")
        return segops.UserContext(anonymous_id="a-1")

    recorder = _Recorder()
    client = make_client(
        DEFAULT_PUBLIC_KEY,
        get_user=get_user,
        max_retries=1,
        backoff_base=0.05,
        on_error=recorder.on_error,
        on_drop=recorder.on_drop,
    )
    track_numbered(client, 3)
    with pytest.raises(segops.SegOpsApiError, match=r"get_user\(\) raised LookupError") as raised:
        client.flush(timeout=20)
    assert "stay queued" in str(raised.value)
    assert raised.value.undelivered == 3
    assert any("get_user() raised LookupError" in text for text in recorder.texts())
    assert recorder.dropped == []
    assert client.stats().queued == 3
    # The user's own exception is chained, for their traceback.
    assert isinstance(raised.value.__cause__.__cause__, LookupError)  # type: ignore[union-attr]
    # Mended, the same client delivers what waited: the thread never died.
    broken[0] = False
    client.flush(timeout=20)
    assert sorted(event["payload"]["i"] for event in server.events) == [0, 1, 2]
    assert_idle_invariant(client.stats())


HOSTILE_RETRY_AFTER = [
    "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",  # OverflowError in the date parser
    "nan",
    "-5",
    "inf",
    "1e999",
    "Mon, 01 Jan 2026 99:00:00 GMT",
]


@pytest.mark.parametrize("retry_after", HOSTILE_RETRY_AFTER)
def test_a_hostile_retry_after_falls_back_to_the_backoff_and_loses_nothing(
    server: LocalIngestServer, make_client: MakeClient, retry_after: str
) -> None:
    recorder = _Recorder()
    client = make_client(
        backoff_base=0.01,
        backoff_cap=0.05,
        on_error=recorder.on_error,
        on_drop=recorder.on_drop,
    )
    server.faults.respond_with(503, count=2, retry_after=retry_after)
    track_numbered(client, 20)
    client.flush(timeout=20)
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (20, 0)
    stats = client.stats()
    assert (stats.sent, stats.retried, stats.failed) == (20, 2, 0)
    assert recorder.dropped == []
    assert_idle_invariant(stats)


@pytest.mark.parametrize("retry_after", [*HOSTILE_RETRY_AFTER, "", "soon"])
def test_a_retry_after_that_cannot_be_honoured_asks_for_nothing(retry_after: str) -> None:
    # None means "use the backoff"; "now" (0.0) would let a server make every client retry
    # at once, and a NaN would compare false with every moment.
    assert RetryPolicy(5, 0.5, 30.0).asked_delay(retry_after) is None


def test_retry_after_values_a_server_may_send_are_still_honoured() -> None:
    policy = RetryPolicy(5, 0.5, 30.0)
    assert policy.asked_delay("7") == 7.0
    assert policy.asked_delay("0") == 0.0
    assert policy.asked_delay("3600") == 30.0  # capped by backoff_cap
    assert policy.asked_delay("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0  # already past
