"""Property tests: payloads survive the trip exactly, and the buffer behaves like a queue."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import hypothesis.strategies as st
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import segops_fast as segops
from segops_fast._batching import Batch, assemble_batches
from segops_fast._buffer import EventBuffer
from segops_fast._encoding import Record, render_events
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer

# What JSON and orjson can carry exactly: 64-bit integers, finite floats, any unicode.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)
payloads = st.dictionaries(st.text(), json_values, max_size=6)

#: 2025-12-01T00:00:00+00:00, in nanoseconds since the epoch.
_A_SECOND_STARTS = 1_764_547_200 * 10**9


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, user_id=st.text(min_size=1), event_type=st.text(min_size=1))
def test_any_json_payload_arrives_exactly_as_given(
    payload: dict[str, Any], user_id: str, event_type: str
) -> None:
    with LocalIngestServer() as server:
        with segops.SegOpsClient(server.url, DEFAULT_SECRET_KEY, flush_interval=60) as client:
            client.track(user_id=user_id, event_type=event_type, payload=payload)
        (event,) = server.events
    assert event["payload"] == payload
    assert (event["user_id"], event["event_type"]) == (user_id, event_type)


class BufferAgainstAModel(RuleBasedStateMachine):
    """The buffer must act as a bounded FIFO list, whatever mix of operations it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0
        self.buffer = EventBuffer(capacity=8, batch_size=3, on_batch_ready=self._woken)
        self.model: list[Record] = []
        self.taken_total = 0
        self.closed = False
        self.counter = 0

    def _woken(self) -> None:
        self.wakes += 1

    @rule()
    def append(self) -> None:
        self.counter += 1
        record: Record = (None, b"%d}" % self.counter)
        accepted = self.buffer.append(record)
        expected = not self.closed and len(self.model) < 8
        assert accepted == expected
        if accepted:
            self.model.append(record)

    @rule()
    def take(self) -> None:
        taken = self.buffer.take()
        assert taken == self.model
        self.taken_total += len(taken)
        self.model = []

    @rule(first_event=st.booleans())
    def arm(self, first_event: bool) -> None:
        self.buffer.arm(first_event=first_event)

    @rule()
    def disarm(self) -> None:
        self.buffer.disarm()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.buffer.close()
        self.closed = True

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.buffer) == len(self.model)
        assert self.buffer.taken == self.taken_total


BufferAgainstAModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_buffer_against_a_model = BufferAgainstAModel.TestCase


def test_an_armed_buffer_wakes_its_consumer_once_per_batch() -> None:
    wakes: list[int] = []
    buffer = EventBuffer(
        capacity=100, batch_size=5, on_batch_ready=lambda: wakes.append(len(buffer))
    )
    buffer.append((None, b"}"))  # the first event starts the consumer
    buffer.take()
    buffer.arm(first_event=False)
    for _ in range(12):
        buffer.append((None, b"}"))
    assert wakes == [1, 5]


def test_an_idle_consumer_is_woken_by_the_next_event_alone() -> None:
    wakes: list[int] = []
    buffer = EventBuffer(
        capacity=100, batch_size=5, on_batch_ready=lambda: wakes.append(len(buffer))
    )
    buffer.append((None, b"}"))
    buffer.take()
    buffer.arm(first_event=True)
    for _ in range(12):
        buffer.append((None, b"}"))
    assert wakes == [1, 1]


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(min_value=0, max_value=4_000_000_000_000_000_000)),
            st.binary(min_size=2, max_size=300).map(
                lambda fields: b'"x":' + fields.hex().encode() + b"}"
            ),
        ),
        max_size=80,
    ),
    max_batch_bytes=st.integers(min_value=64, max_value=4000),
)
def test_batches_keep_order_fit_their_bound_and_are_as_full_as_it_allows(
    records: list[tuple[int | None, bytes]], max_batch_bytes: int
) -> None:
    batches = list(assemble_batches(records, max_batch_bytes))
    assert [record for batch in batches for record in batch.records] == records
    for number, batch in enumerate(batches):
        body = batch.render_body()
        assert len(body) <= max_batch_bytes or len(batch) == 1
        if number + 1 < len(batches):
            # Greedy: the next event would not have fitted.
            with_next = Batch([*batch.records, batches[number + 1].records[0]], "k")
            assert len(with_next.render_body()) > max_batch_bytes


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            # From the epoch to the year 2100, in nanoseconds, or the caller's own occurred_at;
            # and stamps within 2 ms of a second's start, which share their second and their
            # millisecond and cross from one second to the next, as a burst of events does.
            st.one_of(
                st.none(),
                st.integers(min_value=0, max_value=4_102_444_800 * 10**9 - 1),
                st.integers(
                    min_value=_A_SECOND_STARTS - 2_000_000, max_value=_A_SECOND_STARTS + 2_000_000
                ),
            ),
            st.integers(min_value=0, max_value=2**63),
        ),
        max_size=40,
    )
)
def test_rendered_events_are_comma_separated_objects_stamped_to_the_microsecond(
    events: list[tuple[int | None, int]],
) -> None:
    records: list[Record] = []
    for stamp, number in events:
        fields = {"i": number, "occurred_at": "given"} if stamp is None else {"i": number}
        records.append((stamp, orjson.dumps(fields)[1:]))
    parts = [b"["]
    render_events(parts, records)
    parts.append(b"]")
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    expected = [
        {"i": number, "occurred_at": "given"}
        if stamp is None
        else {
            "occurred_at": (epoch + timedelta(microseconds=stamp // 1000)).isoformat(
                timespec="microseconds"
            ),
            "i": number,
        }
        for stamp, number in events
    ]
    assert orjson.loads(b"".join(parts)) == expected
