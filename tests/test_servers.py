"""Every way the services run: a uWSGI master that tracks at import, gevent, ASGI, Celery.

Each test runs the real server in its own process group of processes, sends requests (or
tasks) that each track one event, recycles workers, stops the server gracefully, and
requires LocalIngestServer to hold every event exactly once, counted by event type. Every
process is ended by its PID if a test fails.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing import _app_servers as harness
from tests.servers import (
    APPS,
    environment,
    running,
    send_requests,
    stop_gracefully,
    uwsgi_command,
)

AT_IMPORT = 3


def _assert_stored_exactly_once(server: LocalIngestServer, expected: dict[str, int]) -> None:
    by_type = server.summary_by_event_type()
    stored = {kind: counts["unique_events"] for kind, counts in by_type.items()}
    duplicates = {kind: counts["duplicate_events"] for kind, counts in by_type.items()}
    assert stored == expected, by_type
    assert not any(duplicates.values()), by_type


def _pids(answers: list[dict[str, Any]]) -> Counter[int]:
    return Counter(answer["pid"] for answer in answers)


@pytest.mark.parametrize("fork_hooks", [False, True], ids=["uwsgi-hook", "py-fork-hooks"])
@pytest.mark.parametrize("threads", ["enable-threads", "default-threads"])
def test_uwsgi_master_that_tracks_at_import_without_lazy_apps(
    server: LocalIngestServer, threads: str, fork_hooks: bool, tmp_path: Path
) -> None:
    """The master imports the application, which tracks; every worker must still answer.

    A thread started in the master would deadlock the workers uWSGI forks from C, so the
    master sends its own events synchronously: each must be stored once, not once per
    worker or per respawn.
    """
    pytest.importorskip("pyuwsgi")
    port = harness.free_port()
    command = uwsgi_command(
        port,
        # A worker stuck (the deadlock this test is for) is killed instead of waited for.
        "--harakiri", "20",
        *(["--enable-threads"] if threads == "enable-threads" else []),
        *(["--py-call-uwsgi-fork-hooks"] if fork_hooks else []),
    )  # fmt: skip
    env = environment(server, SEGOPS_TEST_AT_IMPORT=str(AT_IMPORT))
    requests = 200
    with running(command, port, env, tmp_path / "log") as uwsgi:
        answers = send_requests(port, 0, requests)
        # See test_prefork_servers: let uWSGI finish respawning before the stop signal.
        harness.wait_until_quiet(tmp_path / "log")
        stop_gracefully(uwsgi)
    assert len(_pids(answers)) > 4, "no worker was recycled"
    # The master has no thread of ours; the workers do.
    assert all(answer["segops_threads"] for answer in answers)
    _assert_stored_exactly_once(server, {"at_import": AT_IMPORT, "request_handled": requests * 5})


def _gunicorn(port: int, worker_class: str, app: str, *options: str) -> list[str]:
    # --timeout: a worker that blocks its hub is killed after this, so a hang fails fast.
    options = ("--graceful-timeout", "30", "--timeout", "20", *options)
    return harness.gunicorn(
        port, app, workers=4, worker_class=worker_class, max_requests=25, options=options
    )


@pytest.mark.parametrize(
    ("preload", "at_import"),
    [(False, 0), (True, 0), (True, AT_IMPORT)],
    ids=["no-preload", "preload", "preload-master-tracks"],
)
def test_gunicorn_gevent_workers(
    server: LocalIngestServer, preload: bool, at_import: int, tmp_path: Path
) -> None:
    """The client is built before gevent patches the worker (in the master, or by the fork
    hook): its first event must rebuild it from greenlets, or the worker hangs."""
    pytest.importorskip("gevent")
    port = harness.free_port()
    command = _gunicorn(port, "gevent", "wsgi_app:application", *(["--preload"] if preload else []))
    env = environment(server, SEGOPS_TEST_AT_IMPORT=str(at_import))
    requests = 200
    with running(command, port, env, tmp_path / "log") as gunicorn:
        answers = send_requests(port, 0, requests // 2)
        # A gevent worker past max_requests goes on accepting until its loop looks.
        _until_a_new_worker_answers(port, set(_pids(answers)))
        answers += send_requests(port, requests // 2, requests // 2)
        stop_gracefully(gunicorn)
    expected = {"request_handled": requests * 5}
    if at_import:
        expected["at_import"] = at_import
    _assert_stored_exactly_once(server, expected)


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """The next line the script prints; fails instead of waiting for ever for a hung one."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"the script printed nothing within {timeout} s"
    return stream.readline()


@pytest.mark.parametrize("patched", ["before", "after"])
def test_plain_gevent_script_delivers_and_keeps_its_deadlines(
    server: LocalIngestServer, patched: str
) -> None:
    pytest.importorskip("gevent")
    script = subprocess.Popen(
        [sys.executable, str(APPS / "gevent_script.py"), patched],
        env=environment(server),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert script.stdout is not None
        assert script.stdin is not None
        assert _read_line(script.stdout, 30) == b"flushed\n"
        assert server.summary()["unique_events"] == 1000
        server.faults.hang(seconds=5.0, count=10)
        script.stdin.write(b"go\n")
        script.stdin.flush()
        seen = orjson.loads(_read_line(script.stdout, 30))
        assert script.wait(timeout=30) == 0
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert seen["flush_raised"], seen
    assert 0.25 < seen["flush_seconds"] < 1.0, seen
    # The hub kept running while flush() waited: about 30 ticks of 10 ms.
    assert seen["ticks_during_flush"] >= 10, seen
    assert seen["shutdown_seconds"] < 2.0, seen
    _assert_stored_exactly_once(server, {"greenlet": 1000})


@pytest.mark.parametrize(
    ("tasks", "options"),
    [(30, ["--max-tasks-per-child", "1"]), (120, [])],
    ids=["max-tasks-per-child-1", "default"],
)
def test_celery_prefork_workers_deliver_without_user_wiring(
    server: LocalIngestServer, tasks: int, options: list[str], tmp_path: Path
) -> None:
    """Pool children end with os._exit() and skip atexit and multiprocessing's finalizers."""
    pytest.importorskip("celery")
    env = environment(server, SEGOPS_TEST_BROKER_DIR=str(tmp_path))
    command = harness.celery_worker(
        "celery_app", concurrency=2, options=[*options, "--loglevel", "INFO"]
    )
    subprocess.run(
        [sys.executable, "celery_app.py", str(tasks)], cwd=APPS, env=env, check=True, timeout=60
    )
    with running(command, None, env, tmp_path / "log") as worker:
        lines = harness.wait_for_lines(worker, tmp_path / "done", tasks, timeout=90)
        # Warm shutdown: the pool's children finish and exit.
        stop_gracefully(worker)
    children = {line.split()[1] for line in lines}
    if options:
        assert len(children) > 2, "no pool child was replaced"
    _assert_stored_exactly_once(server, {"task_ran": tasks})


def _until_a_new_worker_answers(port: int, seen: set[int]) -> int:
    """Ask (tracking nothing) until a worker that is not in ``seen`` answers; its pid.

    Requests take well under a millisecond, and an ASGI or async worker notices that it
    is past its request limit only when its loop next looks (uvicorn: every 0.1 s), so a
    burst lands on the first workers; a recycled worker's replacement then needs a second
    or two to import the application.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid: int = harness.get_json(port, "/track?request=-1&events=0")["pid"]
        if pid not in seen:
            return pid
        time.sleep(0.1)
    raise AssertionError("no recycled worker was replaced within 30 s")


@pytest.mark.parametrize("server_kind", ["uvicorn", "gunicorn-uvicorn"])
def test_asgi_workers_with_recycling_and_a_graceful_stop(
    server: LocalIngestServer, server_kind: str, tmp_path: Path
) -> None:
    """FastAPI whose lifespan awaits ashutdown(): uvicorn re-raises the stop signal with
    its default action once it has shut down, which ends the worker without exit hooks."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = harness.free_port()
    if server_kind == "uvicorn":
        command = harness.uvicorn(port, "asgi_app:app", workers=4, max_requests=25)
    else:
        command = _gunicorn(port, "uvicorn.workers.UvicornWorker", "asgi_app:app")
    requests = 200
    with running(command, port, environment(server), tmp_path / "log") as asgi:
        answers = send_requests(port, 0, requests // 2)
        new_worker = _until_a_new_worker_answers(port, set(_pids(answers)))
        answers += send_requests(port, requests // 2, requests // 2)
        stop_gracefully(asgi)
    assert new_worker not in {answer["pid"] for answer in answers[: requests // 2]}
    _assert_stored_exactly_once(server, {"request_handled": requests * 5})


@pytest.mark.parametrize("server_name", ["gunicorn", "gevent", "uvicorn", "uwsgi", "celery"])
def test_demo_runs_its_exactly_once_check_under_each_server(server_name: str) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "segops_fast", "demo", "--server", server_name),
            *("--events", "2000", "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    # tracked, stored, duplicates
    assert rows["request"] == ["2,000", "2,000", "0"]
    at_import = "0" if server_name == "uvicorn" else "5"
    assert rows["at_import"] == [at_import, at_import, "0"]
    assert "exactly once: yes" in result.stdout


def test_in_the_uwsgi_master_each_event_is_sent_at_once_and_no_thread_starts(
    server: LocalIngestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the master sees while it imports the application (uWSGI without lazy-apps)."""
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(masterpid=os.getpid))
    client = segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY)
    try:
        started = time.perf_counter()
        for index in range(AT_IMPORT):
            client.track(user_id="importer", event_type="at_import", payload={"i": index})
        seconds = time.perf_counter() - started
        # Stored before track() returned: nothing is left for a forked worker to inherit.
        assert server.summary()["unique_events"] == AT_IMPORT
        assert client.stats().queued == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("segops-fast")]
        assert seconds < 1.0
    finally:
        client.shutdown()


def test_eventlet_is_refused_at_construction_with_the_reason(
    server: LocalIngestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What eventlet.monkey_patch() leaves behind, without installing eventlet.
    patched = types.SimpleNamespace(is_monkey_patched=lambda module: module == "thread")
    monkeypatch.setitem(sys.modules, "eventlet.patcher", patched)
    with pytest.raises(RuntimeError, match=r"eventlet.*Use gevent"):
        segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY)
