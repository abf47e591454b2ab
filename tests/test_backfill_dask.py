"""Backfills on a real Dask cluster: a scheduler and two worker processes (each under its
nanny) on loopback, started as ``dask scheduler`` and ``dask worker`` would be; events
counted at LocalIngestServer. Workers are killed with SIGKILL by process id, mid-job."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.bag
import orjson
import pytest
from distributed import Client

from segops_fast.backfill import Summary, send_bag
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer
from segops_fast.testing._dask import DaskCluster

from .conftest import wait_until
from .test_backfill import assert_exactly_once, event_line

WORKERS = 2

#: Where the workers import this module from, for the functions their tasks call.
ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    with DaskCluster(tmp_path_factory.mktemp("dask"), WORKERS, import_path=[ROOT]) as running:
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
    summary = send_bag(bag, api_url=server.url, api_key=DEFAULT_SECRET_KEY, source="bag-200k")
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
                api_key=DEFAULT_SECRET_KEY,
                source="bag-killed",
                rate=10_000,
                batch_bytes=65_536,
            )
        )
    )
    sending.start()
    try:
        wait_until(lambda: server.event_count >= 15_000, timeout=60)
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
        api_key=DEFAULT_SECRET_KEY,
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
        send_bag(bag, api_url=server.url, api_key=DEFAULT_SECRET_KEY, source="x", concurency=2)


def test_the_cluster_is_separate_processes_on_loopback(cluster: DaskCluster) -> None:
    pids = cluster.worker_pids()
    assert len(set(pids.values())) == WORKERS
    assert os.getpid() not in pids.values()
    assert all(address.startswith("tcp://127.0.0.1:") for address in pids)
