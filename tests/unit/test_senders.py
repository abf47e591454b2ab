"""The sender threads: a batch goes to a free sender or stays with the cycle, and the
senders end when told, or report an exception nobody expected. No server; each wait is on
an event, never a sleep."""

from __future__ import annotations

import threading

from segops_fast._batching import Batch
from segops_fast._locks import OwnedLock
from segops_fast._senders import SenderPool

TIMEOUT = 10.0


class _Pool:
    def __init__(self, size: int) -> None:
        self.lock = OwnedLock()
        self.changed = threading.Condition(self.lock)  # type: ignore[arg-type]
        self.sent: list[int] = []
        self.failures: list[BaseException] = []
        self.release = threading.Event()
        self.pool = SenderPool(
            size,
            send=self._send,
            changed=self.changed,
            guard=self.lock,
            on_failure=self.failures.append,
        )

    def _send(self, batch: Batch) -> None:
        if batch.first < 0:
            raise RuntimeError("a bug")
        assert self.release.wait(TIMEOUT)
        with self.lock:
            self.sent.append(batch.first)

    def end(self) -> None:
        self.release.set()
        with self.lock:
            self.pool.close()
        for thread in self.pool.threads:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in self.pool.threads)


def _batch(first: int) -> Batch:
    return Batch([(None, b"{}")], "key", first)


def test_no_thread_starts_before_the_first_offer() -> None:
    held = _Pool(2)
    assert held.pool.threads == []
    held.end()


def test_a_batch_goes_to_a_free_sender_and_the_rest_stay_with_the_caller() -> None:
    held = _Pool(2)
    with held.lock:
        # The senders cannot pick anything up while the lock is held: two are free.
        offered = [held.pool.offer(_batch(number)) for number in range(3)]
    assert offered == [True, True, False]
    assert [thread.name for thread in held.pool.threads] == [
        "segops-fast-sender-1",
        "segops-fast-sender-2",
    ]
    held.end()
    assert sorted(held.sent) == [0, 1]


def test_batches_not_taken_yet_are_dropped_when_given_up() -> None:
    held = _Pool(2)
    with held.lock:
        assert held.pool.offer(_batch(0))
        held.pool.drop_waiting()
    held.end()
    assert held.sent == []


def test_a_sender_that_meets_an_unexpected_exception_reports_it() -> None:
    held = _Pool(1)
    with held.lock:
        assert held.pool.offer(_batch(-1))
    (sender,) = held.pool.threads
    sender.join(TIMEOUT)
    assert not sender.is_alive()
    assert [str(error) for error in held.failures] == ["a bug"]
    held.end()
