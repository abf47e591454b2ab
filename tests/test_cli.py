"""The segops-fast command, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

from segops_fast.testing import IngestServerProcess


def test_demo_forks_workers_and_reports_exactly_once_per_process() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "segops_fast", "demo"),
            *("--events", "20000", "--workers", "3", "--threads", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = [line.split() for line in result.stdout.splitlines()[1:6]]
    assert [row[0] for row in table] == ["master", "worker", "worker", "worker", "all"]
    master, workers, total = table[0], table[1:4], table[4]
    assert len({master[1], *(worker[2] for worker in workers)}) == 4, "one process each"
    # tracked, delivered, duplicates, lost
    assert master[2:6] == ["5", "5", "0", "0"]
    for worker in workers:
        assert worker[3:7] == [worker[3], worker[3], "0", "0"]
    assert total[1:5] == ["20,005", "20,005", "0", "0"]
    assert "exactly once: yes" in result.stdout


def test_serve_runs_standalone_and_reports_its_counts() -> None:
    with IngestServerProcess() as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.summary()["events"] == 0


def test_usage_errors_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "segops_fast", "no-such-command"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
