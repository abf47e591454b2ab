"""The segops-fast command, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

from segops_fast.testing import IngestServerProcess


def test_demo_reports_exactly_once_and_its_rate() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "segops_fast", "demo", "--events", "20000", "--threads", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines() if "  " in line)
    values = {label.strip(): value.strip() for label, value in lines.items()}
    assert values["events tracked"] == "20,000"
    assert values["delivered (distinct, at the server)"] == "20,000"
    assert values["duplicates (stored twice)"] == "0"
    assert values["lost"] == "0"
    assert float(values["delivered events/s"].replace(",", "")) > 0
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
