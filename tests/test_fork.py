"""os.fork: each event is sent once, by the process that tracked it, and no child hangs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_PUBLIC_KEY, LocalIngestServer

from .conftest import MakeClient, assert_accounted, track_numbered
from .forking import fork_child, reap

# Our own tests fork from threaded processes on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")


def _child_tracks(client: segops.SegOpsClient, tag: str, count: int) -> None:
    # Everything starts at zero in the child: the parent's queue is not ours.
    assert_accounted(client.stats(), tracked=0)
    track_numbered(client, count, event_type=tag)
    client.flush(timeout=30)
    assert_accounted(client.stats(), tracked=count, sent=count, dropped=0, failed=0)


def test_children_never_resend_the_parents_queue(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=60)
    track_numbered(client, 5, event_type="parent")
    assert client.stats().queued == 5
    pids = [
        fork_child(lambda number=number: _child_tracks(client, f"child-{number}", 1000))
        for number in range(4)
    ]
    assert reap(pids, timeout=60) == [0, 0, 0, 0]
    client.shutdown()
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (4005, 0)
    assert_accounted(client.stats(), tracked=5, sent=5, dropped=0, failed=0)


def test_fork_while_another_thread_holds_every_internal_lock(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(DEFAULT_PUBLIC_KEY)
    client.track(user_id="u", event_type="before")
    client.flush()
    pipeline = client._pipeline
    locks = [
        pipeline.cycle.guard,
        pipeline.buffer._room,
        pipeline.counters._lock,
        pipeline.session._lock,  # type: ignore[union-attr]
        pipeline.transport._pool.pool.mutex,  # type: ignore[union-attr]
    ]
    held, release = threading.Event(), threading.Event()

    def hold_them_all() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait(30)
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold_them_all)
    holder.start()
    assert held.wait(10)
    try:
        pid = fork_child(lambda: _child_tracks(client, "child", 100))
        assert reap([pid], timeout=30) == [0]
    finally:
        release.set()
        holder.join()
    client.shutdown()
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (101, 0)
    # The child minted its own session: it never reused the parent's token.
    assert summary["sessions_minted"] == 2


def test_fork_while_the_flusher_waits_for_a_response(
    server: LocalIngestServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = server._handle
    request_arrived = threading.Event()

    def slow_handle(method: str, path: str, headers: dict[str, str], body: bytes) -> object:
        if b'"parent"' in body:
            request_arrived.set()
            time.sleep(0.5)
        return handle(method, path, headers, body)

    monkeypatch.setattr(server, "_handle", slow_handle)
    client = make_client()
    track_numbered(client, 50, event_type="parent")
    flushing = threading.Thread(target=client.flush)
    flushing.start()
    assert request_arrived.wait(10)
    pid = fork_child(lambda: _child_tracks(client, "child", 100))
    assert reap([pid], timeout=30) == [0]
    flushing.join()
    client.shutdown()
    summary = server.summary()
    assert (summary["unique_events"], summary["duplicate_events"]) == (150, 0)
    assert_accounted(client.stats(), tracked=50, sent=50, dropped=0, failed=0)


def test_fork_stress_eight_tracking_threads_and_two_hundred_children(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client()
    stop = threading.Event()
    tracked = [0] * 8

    def keep_tracking(number: int) -> None:
        while not stop.is_set():
            client.track(user_id=f"t{number}", event_type="parent", payload={"i": tracked[number]})
            tracked[number] += 1
            if tracked[number] % 100 == 0:
                time.sleep(0.001)  # leave the forking thread a share of the GIL

    threads = [threading.Thread(target=keep_tracking, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    pids = []
    try:
        for number in range(200):
            pids.append(fork_child(lambda n=number: _child_tracks(client, f"child-{n}", 50)))
            if len(pids) >= 8:
                # Bounded concurrency: reap the oldest before forking more.
                assert reap(pids[:1], timeout=60) == [0]
                pids.pop(0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert reap(pids, timeout=60) == [0] * len(pids)
    client.shutdown(timeout=60)
    assert_accounted(client.stats(), tracked=sum(tracked), sent=sum(tracked), dropped=0, failed=0)
    summary = server.summary()
    assert summary["duplicate_events"] == 0
    assert summary["unique_events"] == sum(tracked) + 200 * 50


def test_a_process_that_never_tracks_stays_single_threaded_when_it_forks(
    server: LocalIngestServer,
) -> None:
    # -W error: on Python 3.12+ forking a multi-threaded process is a DeprecationWarning.
    script = textwrap.dedent(
        f"""
        import os, threading
        import segops_fast as segops
        client = segops.SegOpsClient({server.url!r}, "sk_test_local", flush_interval=60)
        assert threading.active_count() == 1, threading.enumerate()
        pid = os.fork()
        if pid == 0:
            client.track(user_id="u", event_type="child")
            client.flush(timeout=30)
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        client.track(user_id="u", event_type="parent")
        assert threading.active_count() > 1
        """
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert server.wait_for_events(2, timeout=10)
    assert sorted(event["event_type"] for event in server.events) == ["child", "parent"]


def test_a_fork_while_another_thread_imports_leaves_a_working_child(
    server: LocalIngestServer,
) -> None:
    # Found by the demo: a worker forked while the parent's senders made their first
    # connections, which import the idna codec to encode the host name; the child then
    # hung forever on that import's lock. Here another thread holds that lock at the fork,
    # deterministically, in a fresh interpreter where nothing has connected yet.
    script = textwrap.dedent(
        f"""
        import importlib._bootstrap as bootstrap, os, sys, threading
        import segops_fast as segops
        held, release = threading.Event(), threading.Event()

        def importing():
            with bootstrap._ModuleLockManager("encodings.idna"):
                held.set()
                release.wait()

        threading.Thread(target=importing, daemon=True).start()
        held.wait()
        client = segops.SegOpsClient({server.url!r}, "sk_test_local")
        pid = os.fork()
        if pid == 0:
            client.track(user_id="u", event_type="child")
            client.flush(timeout=10)
            os._exit(0)
        release.set()
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert [event["event_type"] for event in server.events] == ["child"]
