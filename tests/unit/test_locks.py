"""The lock rule's debug check: a state holder's mutating method called without the
pipeline's lock fails, naming the method."""

from __future__ import annotations

import threading

import pytest

from segops_fast import _locks
from segops_fast._buffer import EventBuffer
from segops_fast._flush_requests import FlushRequests
from segops_fast._ledger import Ledger
from segops_fast._locks import OwnedLock, checked
from segops_fast._schedule import SendSchedule
from segops_fast._stats import DeliveryCounters


class _Holder:
    def __init__(self, guard: OwnedLock) -> None:
        self._guard = guard
        self.changes = 0

    @checked
    def change(self) -> None:
        self.changes += 1


def test_a_checked_method_runs_only_with_the_lock_held_by_this_thread() -> None:
    lock = OwnedLock()
    holder = _Holder(lock)
    with pytest.raises(AssertionError, match=r"_Holder.change\(\) called without"):
        holder.change()
    with lock:
        holder.change()
    assert holder.changes == 1
    # Held by another thread is not held here.
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    assert taken.wait(10)
    try:
        with pytest.raises(AssertionError):
            holder.change()
    finally:
        release.set()
        other.join()


def test_a_condition_on_the_checked_lock_keeps_its_owner_across_wait() -> None:
    lock = OwnedLock()
    changed = threading.Condition(lock)  # type: ignore[arg-type]
    holder = _Holder(lock)
    with changed:
        assert not changed.wait(timeout=0.001)
        holder.change()
    assert not lock.held_here()


@pytest.mark.skipif(not _locks.CHECKING, reason=f"set {_locks.DEBUG_LOCKS_VARIABLE}=1")
def test_the_state_holders_are_checked_when_the_variable_is_set() -> None:
    lock = OwnedLock()
    schedule = SendSchedule(1.0, guard=lock)
    buffer = EventBuffer(10, 5, lambda: None)
    ledger = Ledger(lock, buffer, schedule, DeliveryCounters())
    requests = FlushRequests(lock, outage_patience=1.0)
    for call in (
        ledger.take,
        lambda: ledger.register([]),
        lambda: schedule.retry_later([]),
        lambda: requests.open(1, 0.0),
    ):
        with pytest.raises(AssertionError, match="without the pipeline's lock"):
            call()


def test_unchecked_the_lock_is_a_plain_lock_and_methods_are_not_wrapped() -> None:
    if _locks.CHECKING:
        assert isinstance(_locks.new_lock(), OwnedLock)
    else:
        assert not isinstance(_locks.new_lock(), OwnedLock)
        assert Ledger.register.__name__ == "register"
        assert not hasattr(Ledger.register, "__wrapped__")
