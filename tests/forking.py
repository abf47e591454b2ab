"""Forked children for tests: run a function in a child, and reap children with a deadline."""

from __future__ import annotations

import os
import signal
import time
import traceback
from typing import Callable


def fork_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child that exits 0 if it returned and 1 if it raised."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            # Never return into the test runner's stack in the child.
            os._exit(code)
    return pid


def reap(pids: list[int], timeout: float) -> list[int]:
    """Exit codes of ``pids``; kills and fails on any child still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                finished, status = os.waitpid(pid, os.WNOHANG)
                if finished:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    hung = [pid for pid in pids if pid not in codes]
    for pid in hung:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not hung, f"{len(hung)} children still running after {timeout}s: {hung}"
    return [codes[pid] for pid in pids]
