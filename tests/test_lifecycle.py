"""flush(), shutdown(), the context manager, exit, and what happens to events at the edges."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
import types
import weakref
from typing import Any

import pytest

import segops_fast as segops
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient, assert_idle_invariant, track_numbered, wait_until_nothing_queued


def test_flush_blocks_until_the_server_has_every_event(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=60, batch_size=10_000)
    track_numbered(client, 1234)
    client.flush()
    assert server.event_count == 1234
    stats = client.stats()
    assert (stats.sent, stats.queued) == (1234, 0)
    assert_idle_invariant(stats)


def test_flush_with_nothing_tracked_returns_at_once(make_client: MakeClient) -> None:
    client = make_client()
    client.flush()
    assert threading.active_count() >= 1
    assert not [t for t in threading.enumerate() if t.name.startswith("segops-fast")]


def test_flush_raises_api_error_naming_the_masked_key_when_refused(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    client = make_client("sk_wrong_key_abcd", on_error=errors.append, flush_interval=60)
    client.track(user_id="u", event_type="e")
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush()
    assert raised.value.status == 401
    assert raised.value.undelivered == 1
    assert isinstance(raised.value, RuntimeError)
    assert "sk_...abcd" in str(raised.value)
    assert "sk_wrong_key_abcd" not in str(raised.value)
    assert client.stats().failed == 1
    assert errors, "on_error must hear about the failed batch too"
    assert_idle_invariant(client.stats())


def test_shutdown_flushes_stops_the_thread_and_is_idempotent(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=60, batch_size=10_000)
    track_numbered(client, 100)
    client.shutdown()
    client.shutdown()
    client.close()
    assert server.event_count == 100
    assert not [t for t in threading.enumerate() if t.name.startswith("segops-fast")]


def test_shutdown_whose_final_cycle_starts_the_senders_waits_for_them_and_does_not_raise(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    # Nothing is sent before shutdown, so its final cycle is the first with several
    # batches: the sender threads start during shutdown, and shutdown must wait for them.
    # It once joined only the threads that existed when it began, and then raised that
    # its deadline had passed with 0 events undelivered (in about a third of the runs,
    # hence ten of them).
    for run in range(10):
        client = make_client(flush_interval=60, batch_size=100_000, max_event_bytes=1024,
                             max_batch_bytes=64 * 1024)  # fmt: skip
        track_numbered(client, 5_000, event_type=f"run-{run}")
        client.shutdown(timeout=30)
        assert client.stats().batches > 1
        assert not [t for t in threading.enumerate() if t.name.startswith("segops-fast")]
    assert server.event_count == 10 * 5_000


def test_context_manager_delivers_on_exit(server: LocalIngestServer) -> None:
    with segops.SegOpsClient(server.url, "sk_test_local", flush_interval=60) as client:
        client.track(user_id="u", event_type="e")
    assert server.event_count == 1


def test_track_after_shutdown_is_dropped_counted_and_reported_once(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    dropped: list[tuple[list[dict[str, Any]], str]] = []
    client = make_client(on_error=errors.append, on_drop=lambda e, r: dropped.append((e, r)))
    client.shutdown()
    client.track(user_id="u", event_type="late", payload={"n": 1})
    client.track(user_id="u", event_type="late", payload={"n": 2})
    stats = client.stats()
    assert (stats.dropped, stats.enqueued) == (2, 2)
    assert len(errors) == 1
    assert [reason for _, reason in dropped] == ["closed", "closed"]
    assert dropped[1][0][0]["payload"] == {"n": 2}
    assert server.event_count == 0
    assert_idle_invariant(stats)


def test_default_on_error_logs_to_the_segops_fast_logger(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    client.shutdown()
    with caplog.at_level("ERROR", logger="segops_fast"):
        client.track(user_id="u", event_type="late")
    assert any("after shutdown" in record.getMessage() for record in caplog.records)


def test_full_queue_drops_new_events_counts_them_and_hands_them_to_on_drop(
    make_client: MakeClient,
) -> None:
    # Nothing listens on this port: the flusher holds its first batch until the API can be
    # reached, while the queue fills. The event it holds counts against max_queue_size too.
    dropped: list[str] = []
    errors: list[BaseException] = []
    client = make_client(
        api_url="http://127.0.0.1:9",
        max_queue_size=10,
        backoff_base=30,
        backoff_cap=30,
        on_error=errors.append,
        on_drop=lambda events, reason: dropped.extend([reason] * len(events)),
    )
    client.track(user_id="u", event_type="first")
    time.sleep(0.3)  # let the flusher take the first event
    track_numbered(client, 50)
    stats = client.stats()
    assert stats.dropped == 41
    assert dropped == ["queue_full"] * 41
    assert stats.enqueued == 51
    assert stats.queued == 10
    assert sum("queue is full" in str(error) for error in errors) == 1
    assert_idle_invariant(stats)

    # Still unreachable at shutdown: the 10 events held were never sent, and are handed to
    # on_drop as failed and counted, not lost.
    began = time.monotonic()
    with pytest.raises(segops.SegOpsApiError, match="could not be delivered") as raised:
        client.shutdown(timeout=0.5)
    assert time.monotonic() - began < 2.0
    assert raised.value.undelivered == 10
    wait_until_nothing_queued(client)
    stats = client.stats()
    assert (stats.dropped, stats.failed, stats.queued) == (41, 10, 0)
    assert dropped.count("failed") == 10
    assert_idle_invariant(stats)


def test_on_full_block_waits_for_room_and_loses_nothing(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(max_queue_size=5, on_full="block", batch_size=2)
    track_numbered(client, 2000)
    client.flush()
    assert sorted(event["payload"]["i"] for event in server.events) == list(range(2000))
    assert client.stats().dropped == 0


def test_eight_threads_of_ten_thousand_arrive_exactly_once(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()

    def produce(thread: int) -> None:
        for index in range(10_000):
            client.track(
                user_id=f"user-{thread}", event_type="e", payload={"t": thread, "i": index}
            )

    threads = [threading.Thread(target=produce, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.shutdown()
    seen = [(event["payload"]["t"], event["payload"]["i"]) for event in server.events]
    assert len(seen) == 80_000
    assert set(seen) == {(t, i) for t in range(8) for i in range(10_000)}
    summary = server.summary()
    assert summary["duplicate_events"] == 0
    stats = client.stats()
    assert (stats.sent, stats.dropped, stats.failed, stats.queued) == (80_000, 0, 0, 0)
    assert_idle_invariant(stats)


def test_with_one_request_in_flight_events_arrive_in_the_order_tracked(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(max_batch_bytes=2048, max_event_bytes=512, max_in_flight=1)
    track_numbered(client, 3000)
    client.flush()
    assert [event["payload"]["i"] for event in server.events] == list(range(3000))


def test_a_client_never_shut_down_flushes_at_interpreter_exit(server: LocalIngestServer) -> None:
    script = textwrap.dedent(
        f"""
        import segops_fast as segops
        client = segops.SegOpsClient({server.url!r}, "sk_test_local", flush_interval=60)
        for index in range(500):
            client.track(user_id="u", event_type="at_exit", payload={{"i": index}})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert server.event_count == 500


def test_atexit_registration_does_not_keep_the_client_alive(server: LocalIngestServer) -> None:
    client = segops.SegOpsClient(server.url, "sk_test_local", flush_interval=60)
    client.track(user_id="u", event_type="collected")
    reference = weakref.ref(client)
    del client
    gc.collect()
    assert reference() is None
    # Collected unclosed, it still sends what it had.
    assert server.wait_for_events(1, timeout=10)


def test_a_raising_callback_never_reaches_the_caller(
    server: LocalIngestServer, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("callback bug")

    client = make_client(on_error=explode, on_drop=explode)
    client.shutdown()
    client.track(user_id="u", event_type="late")
    assert any("callback raised" in record.getMessage() for record in caplog.records)


def test_without_threads_a_full_queue_in_block_mode_sends_from_the_callers_thread(
    server: LocalIngestServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What uWSGI without --enable-threads reports; no thread of ours may start then.
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(has_threads=0))
    with pytest.warns(RuntimeWarning, match="--enable-threads"):
        client = make_client(max_queue_size=10, batch_size=1000, flush_interval=60, on_full="block")
    tracking = threading.Thread(target=track_numbered, args=(client, 50))
    tracking.start()
    tracking.join(timeout=30)
    assert not tracking.is_alive(), "track() blocked for good on a full queue"
    assert not [t for t in threading.enumerate() if t.name.startswith("segops-fast")]
    client.flush()
    assert server.summary()["unique_events"] == 50
    assert_idle_invariant(client.stats())
