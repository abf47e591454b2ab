"""HTTP load from ``wrk``: running it, and reading requests/s and latency from its report.

This module owns the load generator's command line and the parsing of its text output
(``wrk --latency`` prints the 50/75/90/99th percentiles); nothing else in bench/ reads
wrk's output.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

from segops_fast.testing._app_servers import started

WRK = "wrk"
#: wrk runs at a real-time priority (``chrt --fifo``) where this process may grant one:
#: it shares its CPU with the ingest server, which in production is another machine, and
#: at normal priority every batch the server parses delayed the load for up to a
#: scheduler slice. The worker then sat idle: measured, CPU 0 idle 8-9% of the time with
#: segops_fast delivering against 3-4% with the essence row, which delivers nothing; with
#: wrk first in line, both 3%.
REAL_TIME_PRIORITY = ("chrt", "--fifo", "1")
#: One wrk thread (the app server is the bottleneck, not the load generator) and four
#: connections: enough to keep a one-worker app busy, few enough to queue little.
THREADS = 1
CONNECTIONS = 4

_UNIT_TO_MICROSECONDS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class LoadResult:
    requests: int
    requests_per_second: float
    p50_us: float
    p99_us: float
    #: Connect, read, write and timeout errors, and answers other than 2xx/3xx.
    errors: int


def available() -> bool:
    return shutil.which(WRK) is not None


@functools.cache
def runs_first() -> bool:
    """Whether wrk can run at :data:`REAL_TIME_PRIORITY` here (root, or CAP_SYS_NICE)."""
    if shutil.which(REAL_TIME_PRIORITY[0]) is None:
        return False
    trial = subprocess.run([*REAL_TIME_PRIORITY, "true"], capture_output=True, check=False)
    return trial.returncode == 0


def run(url: str, seconds: float, timeout_margin: float = 30.0) -> LoadResult:
    """``wrk -t1 -c4 -d{seconds}s --latency url`` (first in line: :func:`runs_first`), and
    what it reported."""
    arguments = [
        *(REAL_TIME_PRIORITY if runs_first() else ()),
        WRK,
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        url,
    ]
    with started(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        output, error = child.popen.communicate(timeout=seconds + timeout_margin)
    if child.popen.returncode != 0:
        raise RuntimeError(f"wrk failed ({child.popen.returncode}): {error.decode()}")
    return parse(output.decode())


def parse(report: str) -> LoadResult:
    """The figures of one ``wrk --latency`` report."""
    percentiles = {
        int(which): float(value) * _UNIT_TO_MICROSECONDS[unit]
        for which, value, unit in _PERCENTILE.findall(report)
    }
    requests = _REQUESTS.search(report)
    rate = _RATE.search(report)
    if requests is None or rate is None or set(percentiles) != {50, 99}:
        raise ValueError(f"not a wrk --latency report:\n{report}")
    socket_errors = _SOCKET_ERRORS.search(report)
    non_2xx = _NON_2XX.search(report)
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return LoadResult(
        requests=int(requests.group(1)),
        requests_per_second=float(rate.group(1)),
        p50_us=percentiles[50],
        p99_us=percentiles[99],
        errors=errors,
    )
