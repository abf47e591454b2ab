"""The client's own counters as OpenTelemetry metrics: ``instrument(client)``.

    pip install "segops-fast[otel]"        # opentelemetry-api only; bring your SDK

    import segops_fast.otel
    segops_fast.otel.instrument(client)    # the global meter provider, or meter_provider=

This module owns the names, units and attributes of those metrics. Every instrument is
observable: its callback reads ``client.stats()`` when the SDK collects (every export
interval, or at each Prometheus scrape), so ``track()`` pays nothing for them. It holds
the client weakly: a client garbage-collected stops reporting. It does not own the
counters (``_stats.py``) and is never imported by ``import segops_fast``.

The names follow the shape of OpenTelemetry's semantic conventions for SDK
self-observability (``otel.sdk.processor.span.queue.size``, ``.queue.capacity``, and
``otel.sdk.exporter.span.exported`` with ``error.type`` set only for failures, ``queue_full``
among its values), under the ``segops.client.`` prefix, since ``otel.*`` is reserved for
OpenTelemetry's own components. Each client is told apart by ``segops.client.name``,
``segops_fast/0``, ``segops_fast/1``... in the order instrumented, as the conventions'
``otel.component.name`` is built. A meter provider gets one set of instruments, whose
callbacks read every client instrumented on it: the SDK ignores a second instrument of
the same name, and with it the second client's callback.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable
from typing import Callable

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from ._client import SegOpsClient
from ._stats import Stats
from ._version import __version__

__all__ = ["instrument"]

#: The attribute that tells the instrumented clients of a process apart.
CLIENT_NAME = "segops.client.name"
#: Why an event was not delivered: the reason ``on_drop`` is given (semantic conventions'
#: general attribute for the cause of a failure).
ERROR_TYPE = "error.type"


def instrument(client: SegOpsClient, meter_provider: MeterProvider | None = None) -> str:
    """Report ``client``'s counters through ``meter_provider`` (default: the global one);
    return the ``segops.client.name`` its metrics carry.

    The metrics, each with ``segops.client.name``:

    - ``segops.client.event.processed`` (counter, ``{event}``): events whose fate is
      settled; without ``error.type`` those the server acknowledged, with it those given
      up, by the reason ``on_drop`` gets (``queue_full``, ``closed``,
      ``shutdown_deadline``, ``failed``, ``retries_exhausted``, ``unexpected_error``);
    - ``segops.client.event.filtered`` (counter, ``{event}``): events ``before_send``
      dropped;
    - ``segops.client.queue.size`` and ``segops.client.queue.capacity`` (up-down
      counters, ``{event}``): events held (waiting, or in requests not yet answered), and
      ``max_queue_size``;
    - ``segops.client.request.sent`` and ``segops.client.request.retried`` (counters,
      ``{request}``): requests acknowledged, and requests sent again;
    - ``segops.client.request.body.sent`` (counter, ``By``): request body bytes
      acknowledged.

    The counters are this process's: in a forked child they start again at zero, which a
    metrics backend reads as a counter reset, as after a restart.
    """
    if not isinstance(client, SegOpsClient):
        raise TypeError(f"instrument() takes a SegOpsClient, got {type(client).__name__}")
    provider = get_meter_provider() if meter_provider is None else meter_provider
    name = f"segops_fast/{next(_client_numbers)}"
    with _registry_lock:
        instruments = _instruments_by_provider.get(provider)
        if instruments is None:
            instruments = _Instruments(provider.get_meter("segops_fast", __version__))
            _instruments_by_provider[provider] = instruments
        instruments.clients[name] = weakref.ref(client)
    return name


#: What instruments report: (value, attributes) pairs read from one client's stats.
_Reading = Callable[[Stats, int], Iterable[tuple[int, dict[str, str]]]]


class _Instruments:
    """The instruments of one meter provider, and the clients their callbacks read."""

    def __init__(self, meter: Meter) -> None:
        #: Each instrumented client by name, held weakly: a collected one stops reporting.
        self.clients: dict[str, weakref.ref[SegOpsClient]] = {}
        for name, up_down, unit, description, read in _METRICS:
            create = (
                meter.create_observable_up_down_counter
                if up_down
                else meter.create_observable_counter
            )
            create(name, [self._observe(read)], unit=unit, description=description)

    def _observe(self, read: _Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations = []
            for name, client_ref in list(self.clients.items()):
                client = client_ref()
                if client is None:
                    self.clients.pop(name, None)
                    continue
                capacity = client._options.max_queue_size
                observations += [
                    Observation(value, {CLIENT_NAME: name, **attributes})
                    for value, attributes in read(client.stats(), capacity)
                ]
            return observations

        return callback


_client_numbers = itertools.count()
_registry_lock = threading.Lock()
_instruments_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = (
    weakref.WeakKeyDictionary()
)


def _processed(stats: Stats, capacity: int) -> list[tuple[int, dict[str, str]]]:
    settled: list[tuple[int, dict[str, str]]] = [(stats.sent, {})]
    settled += [(count, {ERROR_TYPE: why}) for why, count in stats.given_up_by_reason.items()]
    return settled


#: Every metric: (name, whether it goes down too, unit, description, what it reads).
_METRICS: tuple[tuple[str, bool, str, str, _Reading], ...] = (
    ("segops.client.event.processed", False, "{event}",
     "Events whose fate is settled: acknowledged, or given up (error.type).", _processed),
    ("segops.client.event.filtered", False, "{event}",
     "Events the before_send hook dropped.",
     lambda stats, capacity: [(stats.filtered, {})]),
    ("segops.client.queue.size", True, "{event}",
     "Events held: waiting to be sent, or in requests not yet answered.",
     lambda stats, capacity: [(stats.queued, {})]),
    ("segops.client.queue.capacity", True, "{event}",
     "The most events the client holds (max_queue_size).",
     lambda stats, capacity: [(capacity, {})]),
    ("segops.client.request.sent", False, "{request}",
     "Requests the server acknowledged.",
     lambda stats, capacity: [(stats.batches, {})]),
    ("segops.client.request.retried", False, "{request}",
     "Requests sent again after a retryable failure.",
     lambda stats, capacity: [(stats.retried, {})]),
    ("segops.client.request.body.sent", False, "By",
     "Request body bytes the server acknowledged.",
     lambda stats, capacity: [(stats.bytes_sent, {})]),
)  # fmt: skip
