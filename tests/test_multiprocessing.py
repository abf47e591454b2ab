"""multiprocessing and ProcessPoolExecutor with the client as a module-level global.

Nobody calls flush(): each worker process delivers what it tracked as it ends, which
multiprocessing does with ``os._exit()`` after running its own finalizers, not atexit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segops_fast.testing import LocalIngestServer

APP = Path(__file__).parent / "apps" / "multiprocessing_app.py"
TASKS, EVENTS_PER_TASK = 24, 250


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn", "executor"])
def test_every_worker_delivers_exactly_once_as_it_ends(
    server: LocalIngestServer, method: str
) -> None:
    completed = subprocess.run(
        [sys.executable, str(APP), method, str(TASKS), str(EVENTS_PER_TASK)],
        env={**os.environ, "SEGOPS_TEST_API_URL": server.url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    summary = server.summary()
    assert summary["duplicate_events"] == 0
    assert summary["unique_events"] == 5 + TASKS * EVENTS_PER_TASK
    if method != "executor":
        # Workers were recycled every two tasks: some ended while the pool still ran.
        assert int(completed.stdout) > 4
