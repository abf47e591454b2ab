"""``segops_fast.otel.instrument``: the client's counters read back through OpenTelemetry's SDK."""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import segops_fast as segops
import segops_fast.otel
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient

Points = dict[tuple[tuple[str, Any], ...], Any]


def _collect(reader: InMemoryMetricReader) -> dict[str, Points]:
    """{metric name: {sorted attributes: value}}, with the unit under the key "unit"."""
    collected: dict[str, Points] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != "segops_fast":
                continue  # the SDK's own metrics, in some versions
            for metric in scope_metrics.metrics:
                points: Points = {(("unit", metric.unit),): metric.unit}
                for point in metric.data.data_points:
                    points[tuple(sorted(point.attributes.items()))] = point.value
                collected[metric.name] = points
    assert collected, "no metric of segops_fast's scope"
    return collected


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_every_outcome_is_read_from_the_client_s_counters(
    server: LocalIngestServer, make_client: MakeClient, reader: InMemoryMetricReader
) -> None:
    client = make_client(
        before_send=lambda event: None if event["event_type"] == "noise" else event,
        max_queue_size=100,
        on_error=lambda error: None,
    )
    name = segops_fast.otel.instrument(client, MeterProvider(metric_readers=[reader]))
    me = (("segops.client.name", name),)

    for index in range(30):
        client.track(user_id="u", event_type="e", payload={"i": index})
    client.track(user_id="u", event_type="noise")
    client.flush(timeout=10)
    server.faults.respond_with(503, count=1)
    server.faults.respond_with(400, count=1)
    for index in range(5):
        client.track(user_id="u", event_type="refused", payload={"i": index})
    with pytest.raises(segops.SegOpsApiError):
        client.flush(timeout=10)
    client.shutdown(timeout=10)
    client.track(user_id="u", event_type="after")

    stats = client.stats()
    metrics = _collect(reader)
    assert metrics["segops.client.event.processed"] == {
        (("unit", "{event}"),): "{event}",
        me: 30,
        (("error.type", "failed"), *me): 5,
        (("error.type", "closed"), *me): 1,
    }
    assert metrics["segops.client.event.filtered"][me] == 1
    assert metrics["segops.client.queue.size"][me] == 0
    assert metrics["segops.client.queue.capacity"][me] == 100
    assert metrics["segops.client.request.sent"][me] == stats.batches >= 1
    assert metrics["segops.client.request.retried"][me] == stats.retried == 1
    assert metrics["segops.client.request.body.sent"][me] == stats.bytes_sent > 0
    assert metrics["segops.client.request.body.sent"][(("unit", "By"),)] == "By"
    assert (stats.sent, stats.failed, stats.dropped, stats.filtered) == (30, 5, 1, 1)


def test_the_queue_size_and_queue_full_drops_show_while_the_api_is_down(
    make_client: MakeClient, reader: InMemoryMetricReader
) -> None:
    client = make_client(
        api_url="http://127.0.0.1:9",
        max_queue_size=10,
        flush_interval=3600,
        on_error=lambda error: None,
    )
    name = segops_fast.otel.instrument(client, MeterProvider(metric_readers=[reader]))
    for index in range(15):
        client.track(user_id="u", event_type="e", payload={"i": index})
    metrics = _collect(reader)
    me = (("segops.client.name", name),)
    assert metrics["segops.client.queue.size"][me] == 10
    assert metrics["segops.client.event.processed"][(("error.type", "queue_full"), *me)] == 5


def test_two_clients_are_told_apart_and_a_collected_one_stops_reporting(
    server: LocalIngestServer, reader: InMemoryMetricReader
) -> None:
    provider = MeterProvider(metric_readers=[reader])
    kept = segops.SegOpsClient(server.url, "sk_test_local", max_queue_size=7)
    gone = segops.SegOpsClient(server.url, "sk_test_local", max_queue_size=9)
    kept_name = segops_fast.otel.instrument(kept, provider)
    gone_name = segops_fast.otel.instrument(gone, provider)
    assert kept_name != gone_name
    capacity = _collect(reader)["segops.client.queue.capacity"]
    assert capacity[(("segops.client.name", kept_name),)] == 7
    assert capacity[(("segops.client.name", gone_name),)] == 9

    gone.shutdown()
    del gone
    gc.collect()
    capacity = _collect(reader)["segops.client.queue.capacity"]
    assert (("segops.client.name", gone_name),) not in capacity
    assert capacity[(("segops.client.name", kept_name),)] == 7
    kept.shutdown()


def test_tracking_reads_no_metric(
    make_client: MakeClient, reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instruments are read at collection only: stats() is not called by track()."""
    client = make_client(flush_interval=3600)
    segops_fast.otel.instrument(client, MeterProvider(metric_readers=[reader]))
    calls: list[int] = []
    real_stats = client.stats
    monkeypatch.setattr(client, "stats", lambda: calls.append(1) or real_stats())
    for _ in range(100):
        client.track(user_id="u", event_type="e")
    assert calls == []
    _collect(reader)
    assert len(calls) == 7  # one per instrument


def test_instrument_refuses_what_is_not_a_client() -> None:
    with pytest.raises(TypeError, match="instrument\\(\\) takes a SegOpsClient, got str"):
        segops_fast.otel.instrument("client")  # type: ignore[arg-type]


def test_importing_segops_fast_imports_no_opentelemetry() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, segops_fast; print('opentelemetry' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert completed.stdout.strip() == "False"
