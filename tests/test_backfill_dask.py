"""Backfills on a real Dask cluster: a scheduler and two worker processes (each under its
nanny) on loopback, started as ``dask scheduler`` and ``dask worker`` would be; events
counted at LocalIngestServer. Workers are killed with SIGKILL by process id, mid-job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.bag
import orjson
import pytest
from distributed import Client

from segops_fast.backfill import Summary, send_bag
from segops_fast.backfill._dask_ranges import key_proof, look_at_worker
from segops_fast.backfill._engine import SendSettings
from segops_fast.backfill._job import Job, JobSettings
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing._dask import DaskCluster

from .conftest import wait_until
from .test_backfill import assert_exactly_once, event_line, send_command, write_events
from .test_cli_send import TimedServer

WORKERS = 2

#: Where the workers import this module from, for the functions their tasks call.
ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    with DaskCluster(
        tmp_path_factory.mktemp("dask"),
        WORKERS,
        import_path=[ROOT],
        # The workers' own key: it never travels in a task graph.
        environment={"SEGOPS_API_KEY": DEFAULT_SECRET_KEY},
    ) as running:
        yield running


@pytest.fixture
def client(cluster: DaskCluster) -> Iterator[Client]:
    """A client of the cluster, Dask's default while the test runs; every worker is there
    when the test starts (a killed one is back, started again by its nanny)."""
    cluster.wait_for_workers(WORKERS)
    with Client(cluster.address, timeout=60) as connected:
        yield connected


def numbered_event(i: int) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(event_line(i))
    return event


def test_a_bag_of_200_000_events_in_8_partitions_arrives_exactly_once(
    server: LocalIngestServer, client: Client
) -> None:
    bag = dask.bag.range(200_000, npartitions=8).map(numbered_event)
    summary = send_bag(bag, api_url=server.url, source="bag-200k")
    assert (summary.sent, summary.failed, summary.invalid) == (200_000, 0, 0)
    assert_exactly_once(server, 200_000)


def test_a_worker_killed_mid_bag_its_tasks_rerun_and_every_event_is_stored_once(
    server: LocalIngestServer, cluster: DaskCluster, client: Client
) -> None:
    # Four partitions of 20,000 events at 10,000 events/s each: two seconds a task, so the
    # kill lands in the middle of one.
    bag = dask.bag.range(80_000, npartitions=4).map(numbered_event)
    outcome: list[Summary] = []
    sending = threading.Thread(
        target=lambda: outcome.append(
            send_bag(
                bag,
                api_url=server.url,
                source="bag-killed",
                rate=10_000,
                batch_bytes=65_536,
            )
        )
    )
    sending.start()
    try:
        wait_until(
            lambda: server.event_count >= 15_000 and any(client.processing().values()),
            timeout=60,
        )
        busy = next(address for address, tasks in client.processing().items() if tasks)
        killed = cluster.kill_worker(busy)
    finally:
        sending.join(timeout=120)
    assert not sending.is_alive()
    assert killed not in cluster.worker_pids().values()
    (summary,) = outcome
    assert (summary.sent, summary.failed, summary.invalid) == (80_000, 0, 0)
    stored = server.summary()
    # The killed task ran again from its start: the batches it had sent came again, under
    # the keys they had, and the server kept them once.
    assert stored["repeated_key_events"] > 0, stored
    assert_exactly_once(server, 80_000)


def test_invalid_and_refused_events_of_a_partition_reach_the_caller(
    server: LocalIngestServer, client: Client
) -> None:
    events: list[Any] = [numbered_event(i) for i in range(200)]
    # Partition 0: events 0-99 and five that are not events; partition 1: events 100-199.
    events[10:10] = [{"x": n} for n in range(5)]
    bag = dask.bag.from_sequence(events, partition_size=105)
    assert bag.npartitions == 2
    invalid: list[tuple[Any, str]] = []
    failed: list[dict[str, Any]] = []
    server.faults.respond_with(400)  # one batch, one partition's, is refused
    summary = send_bag(
        bag,
        api_url=server.url,
        source="bag-invalid",
        on_invalid=lambda event, reason: invalid.append((event, reason)),
        on_failed=lambda given_up, reason: failed.extend(given_up),
    )
    assert summary.invalid == 5
    assert invalid == [({"x": n}, "user_id is required") for n in range(5)]
    assert (summary.sent, summary.failed) == (100, 100)
    # The refused events themselves, in this process, ready to be sent again.
    assert len(failed) == summary.failed
    refused = {event["payload"]["i"] for event in failed}
    stored = {event["payload"]["i"] for event in server.events}
    assert refused.isdisjoint(stored)
    assert refused | stored == set(range(200))
    assert server.summary()["duplicate_events"] == 0
    with pytest.raises(TypeError, match="concurency"):
        send_bag(bag, api_url=server.url, source="x", concurency=2)
    with pytest.raises(TypeError, match="send_bag takes no api_key"):
        send_bag(bag, api_url=server.url, source="x", api_key=DEFAULT_SECRET_KEY)


def test_the_cluster_is_separate_processes_on_loopback(cluster: DaskCluster) -> None:
    pids = cluster.worker_pids()
    assert len(set(pids.values())) == WORKERS
    assert os.getpid() not in pids.values()
    assert all(address.startswith("tcp://127.0.0.1:") for address in pids)


# -- segops-fast send --dask ---------------------------------------------------------------


def start_send(server: LocalIngestServer, *arguments: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(send_command(server, *arguments), stdout=subprocess.PIPE)


def finish(running: subprocess.Popen[bytes], timeout: float = 120) -> dict[str, Any]:
    """The command's summary, once it exits (killed if it does not within ``timeout``)."""
    try:
        stdout, _ = running.communicate(timeout=timeout)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    summary: dict[str, Any] = orjson.loads(stdout) if stdout else {}
    return summary


def test_send_dask_with_a_worker_killed_mid_job_stores_every_event_once(
    server: LocalIngestServer, cluster: DaskCluster, client: Client, tmp_path: Path
) -> None:
    source = write_events(tmp_path / "events.jsonl", 100_000)
    # Three lines that are not events, far apart: each must reach the dead letters once.
    lines = source.read_bytes().splitlines(keepends=True)
    for number in (5_000, 50_000, 95_000):
        lines.insert(number - 1, b'{"event_type": "e", "payload": {}}\n')
    source.write_bytes(b"".join(lines))
    dead_letters = tmp_path / "dead.jsonl"
    running = start_send(server, source, "--dask", cluster.address, "--rate", "20000",
                         "--batch-bytes", "65536", "--checkpoint", tmp_path / "checkpoint",
                         "--dead-letter", dead_letters)  # fmt: skip
    try:
        wait_until(
            lambda: server.event_count >= 30_000 and any(client.processing().values()),
            timeout=60,
        )
        busy = next(address for address, tasks in client.processing().items() if tasks)
        cluster.kill_worker(busy)
    finally:
        summary = finish(running)
    assert running.returncode == 1, summary  # the three invalid lines
    assert (summary["sent"], summary["failed"], summary["invalid"]) == (100_000, 0, 3)
    assert summary["errors"] == []
    stored = server.summary()
    assert stored["repeated_key_events"] > 0, stored
    assert_exactly_once(server, 100_000)
    letters = [orjson.loads(line) for line in dead_letters.read_bytes().splitlines()]
    assert sorted(letter["dead_letter"]["line"] for letter in letters) == [5_000, 50_000, 95_000]


def events_checkpointed(checkpoint: Path, source: Path) -> int:
    """Events before the positions the checkpoint says are settled (one event a line)."""
    content = source.read_bytes()
    ranges = orjson.loads(checkpoint.read_bytes())["ranges"]
    return sum(content[part["start"] : part["done"]].count(b"\n") for part in ranges)


def wait_until_steady(server: LocalIngestServer, quiet: float, timeout: float = 30) -> int:
    """Wait until no event has arrived for ``quiet`` seconds; the count then."""
    deadline = time.monotonic() + timeout
    count, since = server.event_count, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"events still arriving after {timeout} s"
        time.sleep(0.1)
        if server.event_count != count:
            count, since = server.event_count, time.monotonic()
    return count


def test_send_dask_coordinator_killed_then_resumed_and_interrupted_then_resumed(
    server: LocalIngestServer, cluster: DaskCluster, tmp_path: Path
) -> None:
    source = write_events(tmp_path / "events.jsonl", 100_000)
    checkpoint = tmp_path / "checkpoint.json"
    arguments = (source, "--dask", cluster.address, "--checkpoint", checkpoint,
                 "--batch-bytes", "65536")  # fmt: skip
    running = start_send(server, *arguments, "--rate", "20000")
    try:
        wait_until(lambda: server.event_count >= 20_000 and checkpoint.exists(), timeout=60)
        running.send_signal(signal.SIGKILL)
    finally:
        finish(running)
    # Its tasks run on without it for a moment (to the end of their ranges, or until they
    # miss its heartbeat), then stop.
    arrived = wait_until_steady(server, quiet=2.0)
    assert arrived < 100_000
    settled = events_checkpointed(checkpoint, source)
    assert 0 < settled <= arrived
    # Resumed with the same command, slowly (six seconds a range), then interrupted as
    # Ctrl-C would.
    running = start_send(server, *arguments, "--rate", "4000")
    try:
        wait_until(lambda: server.event_count >= arrived + 4000, timeout=60)
        interrupted_at = time.monotonic()
        running.send_signal(signal.SIGINT)
    finally:
        summary = finish(running)
    # The tasks under way were told to stop, rather than left to finish their ranges.
    assert time.monotonic() - interrupted_at < 4
    assert running.returncode == 130, summary
    assert (summary["resumed"], summary["interrupted"]) == (True, True)
    # Everything the interrupted run counted is in the checkpoint it left...
    assert summary["this_run"]["sent"] > 0
    assert events_checkpointed(checkpoint, source) == settled + summary["this_run"]["sent"]
    assert summary["sent"] == settled + summary["this_run"]["sent"]
    settled += summary["this_run"]["sent"]
    # ...and the last run sends exactly the rest; its summary covers the whole job.
    running = start_send(server, *arguments)
    summary = finish(running)
    assert running.returncode == 0, summary
    assert (summary["resumed"], summary["this_run"]["sent"]) == (True, 100_000 - settled)
    assert summary["sent"] == 100_000
    assert_exactly_once(server, 100_000)


def test_send_dask_tasks_stop_by_themselves_once_their_coordinator_is_killed(
    server: LocalIngestServer, cluster: DaskCluster, tmp_path: Path
) -> None:
    # Eight ranges of 2,500 events; at 100 events/s a task (a batch of about 310 every
    # 3 s), a range takes 25 s.
    source = write_events(tmp_path / "events.jsonl", 20_000)
    running = start_send(server, source, "--dask", cluster.address, "--rate", "200",
                         "--batch-bytes", "40000")  # fmt: skip
    try:
        wait_until(lambda: server.event_count > 0, timeout=60)
        running.send_signal(signal.SIGKILL)
    finally:
        finish(running)
    killed_at = time.monotonic()
    arrived = wait_until_steady(server, quiet=4.0)
    # The two running tasks missed the heartbeat and stopped about 10 s later, far from
    # the end of their ranges (5,000 events, 25 s); the ranges queued behind them never ran.
    assert time.monotonic() - killed_at < 20
    assert arrived < 4_000
    assert server.summary()["duplicate_events"] == 0


def test_send_dask_refuses_inputs_a_worker_cannot_read(
    server: LocalIngestServer, cluster: DaskCluster, tmp_path: Path
) -> None:
    source = write_events(tmp_path / "events.jsonl", 1000)
    command = send_command(server, "--dask", cluster.address)
    finished = subprocess.run(
        command, input=source.read_bytes(), capture_output=True, timeout=60, check=False
    )
    assert finished.returncode == 2
    assert b"- is a stream" in finished.stderr
    finished = subprocess.run(
        [*command, "--processes", "2", source], capture_output=True, timeout=60, check=False
    )
    assert (finished.returncode, b"exclude each other" in finished.stderr) == (2, True)
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a worker that cannot see this disk needs root and unshare")
    # A worker on a machine that does not share this disk: the test's directory is empty there.
    before = set(cluster.worker_pids())
    (stranger,) = cluster.add_workers(1, hiding=tmp_path)
    try:
        (stranger_address,) = set(cluster.worker_pids()) - before
        finished = subprocess.run([*command, source], capture_output=True, timeout=60, check=False)
    finally:
        cluster.stop_worker(stranger)
    assert finished.returncode == 2, finished.stderr
    assert f"worker {stranger_address} cannot read {source}".encode() in finished.stderr
    assert b"No such file or directory" in finished.stderr
    assert server.event_count == 0


# -- the API key on a cluster ---------------------------------------------------------------


def test_send_dask_ships_no_key_in_the_task_graph_and_no_log_holds_it(
    server: LocalIngestServer,
    cluster: DaskCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_events(tmp_path / "events.jsonl", 20_000)
    shipped: list[Any] = []
    submit = Client.submit

    def recording_submit(self: Client, function: Any, *arguments: Any, **options: Any) -> Any:
        shipped.append((arguments, options))
        return submit(self, function, *arguments, **options)

    monkeypatch.setattr(Client, "submit", recording_submit)
    send = SendSettings(api_url=server.url, api_key=DEFAULT_SECRET_KEY)
    job = Job(JobSettings([str(source)], send, 1, 32768, None, None, cluster.address))
    totals = job.run()
    assert (totals.sent, job.problems) == (20_000, [])
    assert_exactly_once(server, 20_000)
    assert shipped
    for arguments, options in shipped:
        assert options["settings"].api_key == ""
        assert DEFAULT_SECRET_KEY not in repr((arguments, options))
    for log in cluster.directory.glob("*.log"):
        assert DEFAULT_SECRET_KEY.encode() not in log.read_bytes(), log


def test_send_dask_refuses_workers_that_hold_another_key(
    server: LocalIngestServer, cluster: DaskCluster, tmp_path: Path
) -> None:
    source = write_events(tmp_path / "events.jsonl", 100)
    finished = subprocess.run(
        [sys.executable, "-m", "segops_fast", "send", str(source), "--api-url", server.url,
         "--dask", cluster.address],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SEGOPS_API_KEY": "sk_another_key"},
    )  # fmt: skip
    assert finished.returncode == 2
    assert "has another API key" in finished.stderr
    assert "each worker reads the key from its own environment" in finished.stderr
    assert "sk_another_key" not in finished.stderr
    assert server.request_count == 0


def test_a_worker_without_a_key_shows_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SEGOPS_API_KEY", raising=False)
    monkeypatch.delenv("SEGOPS_API_KEY_FILE", raising=False)
    assert look_at_worker([], b"nonce") == (None, [])
    key_file = tmp_path / "key"
    key_file.write_text(DEFAULT_SECRET_KEY + "\n")
    monkeypatch.setenv("SEGOPS_API_KEY_FILE", str(key_file))
    assert look_at_worker([], b"nonce") == (key_proof(DEFAULT_SECRET_KEY, b"nonce"), [])


def test_send_dask_rate_is_shared_by_the_tasks_measured_at_the_server(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    source = write_events(tmp_path / "events.jsonl", 4000)
    with TimedServer() as timed_server:
        running = start_send(timed_server, source, "--dask", cluster.address, "--rate", "1000")
        summary = finish(running)
        assert (running.returncode, summary["sent"]) == (0, 4000), summary
        assert_exactly_once(timed_server, 4000)
        assert timed_server.most_in(2.0) <= 2 * 1000 * 1.05
