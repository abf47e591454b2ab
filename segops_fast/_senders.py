"""The sender threads: more than one request under way while a cycle sends many batches.

This module owns up to ``max_in_flight - 1`` sender threads, started the first time a cycle
has more than one batch, and the hand-off of a batch to one that is free. The batches
handed off and the count of free senders are guarded by the pipeline's lock: the cycle
offers a batch with it held (checked with ``SEGOPS_FAST_DEBUG_LOCKS=1``), and the sender
threads, which are drivers, take it to pick one up. It does not own what sending a batch
means (the cycle's ``send``), nor when the senders may end (the flusher says so).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from ._batching import Batch
from ._locks import PipelineLock, lock_held


class SenderPool:
    """Threads that each send one batch at a time, handed to them by the cycle."""

    def __init__(
        self,
        size: int,
        *,
        send: Callable[[Batch], None],
        changed: threading.Condition,
        guard: PipelineLock,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._size = size
        self._send = send
        self._changed = changed
        self._guard = guard
        self._on_failure = on_failure
        self._threads: list[threading.Thread] = []
        #: Batches handed to senders but not yet taken by one.
        self._to_send: deque[Batch] = deque()
        #: Senders waiting for a batch (or about to): one is handed a batch only if it is
        #: free, else the cycle sends the batch itself.
        self._idle = 0
        #: Set as the flusher thread ends; the senders end when they see it.
        self._may_exit = False

    @property
    def threads(self) -> list[threading.Thread]:
        # Only the flusher thread starts senders: once it has ended, this list is complete.
        return list(self._threads)

    @lock_held
    def offer(self, batch: Batch) -> bool:
        """Hand ``batch`` to a free sender (True), or leave it to the caller (False)."""
        if not self._threads:
            self._idle = self._size
            self._threads = [
                start_daemon(self._run, f"segops-fast-sender-{number}")
                for number in range(1, self._size + 1)
            ]
        if self._idle > len(self._to_send):
            self._to_send.append(batch)
            self._changed.notify_all()
            return True
        return False

    @lock_held
    def drop_waiting(self) -> None:
        """Forget the batches not taken yet (they were given up)."""
        self._to_send.clear()

    @lock_held
    def close(self) -> None:
        """The senders end once the batches handed to them are sent."""
        self._may_exit = True
        self._changed.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._guard:
                    self._changed.wait_for(lambda: bool(self._to_send) or self._may_exit)
                    if not self._to_send:
                        return
                    batch = self._to_send.popleft()
                    self._idle -= 1
                try:
                    self._send(batch)
                finally:
                    with self._guard:
                        self._idle += 1
        except BaseException as error:  # as in the flusher thread: nothing ends silently
            self._on_failure(error)


def start_daemon(target: Callable[[], None], name: str) -> threading.Thread:
    # Daemon: a process that exits without shutdown() must not wait for our threads; the
    # exit hook has already given them their deadline.
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
