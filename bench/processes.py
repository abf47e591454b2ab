"""Child processes that a benchmark starts, and the guarantee that each one ends.

This module owns starting a child in a session of its own and ending it by its id: politely
first (SIGTERM, which lets a server stop gracefully and its clients flush), then with
SIGKILL if it will not go. Whatever happens in between, an exception or Ctrl-C, the
child and the processes it was seen to start are ended when the ``with`` block is left.

Each child runs in a new session, so a Ctrl-C at the terminal reaches the benchmark
alone: the benchmark, not the terminal, decides how its children end. Nothing here
ends processes by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

from proc_usage import start_time

#: How long a polite stop may take before it becomes SIGKILL.
DEFAULT_STOP_TIMEOUT = 60.0


class Child:
    """A started process, and the ids of the processes it started that must end with it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        #: Processes the child started (a pre-fork server's workers), ended with it: their
        #: ids and start times, so that an id reused since is never signalled.
        self._descendants: list[tuple[int, int]] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def adopt(self, pid: int) -> None:
        """Count process ``pid``, which the child started, as the child's: ended with it."""
        started_at = start_time(pid)
        if started_at is not None:
            self._descendants.append((pid, started_at))

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` for the child to exit, then SIGKILL it and the
        descendants it left. Returns the child's exit status (negative: the signal)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid, started_at in self._descendants:
            # A worker that outlived its master (killed, or crashed) would run on, orphaned.
            if start_time(pid) == started_at:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGKILL)
        return self.popen.returncode


@contextlib.contextmanager
def started(arguments: list[str], **popen_options: Any) -> Iterator[Child]:
    """Start ``arguments`` in a session of its own; stop it, if still running, on leaving."""
    child = Child(subprocess.Popen(arguments, start_new_session=True, **popen_options))
    try:
        yield child
    finally:
        child.stop()
