"""A real Dask cluster on loopback: a scheduler and worker processes, each its own process.

This module owns starting ``dask scheduler`` and ``dask worker`` (with its nanny, as a
deployment runs it) as child processes on 127.0.0.1, waiting until every worker has
joined, finding a worker's process id (to kill it as a crash would), and ending every
process it started, by its id. Tests and ``bench/backfill.py`` use it; it needs the
``dask`` extra (``distributed``), imported here only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distributed import Client

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 20.0


class DaskCluster:
    """``workers`` worker processes of ``threads`` threads each, as a context manager.

    ``directory`` holds the scheduler file, the workers' scratch space and each process's
    log (``scheduler.log``, ``worker-N.log``). ``import_path`` goes on the processes'
    ``PYTHONPATH``: tasks that call the caller's own functions need to import them there.
    ``environment`` is added to the processes' environment (the API key a worker reads,
    ``SEGOPS_API_KEY``, for one).
    """

    def __init__(
        self,
        directory: str | Path,
        workers: int = 2,
        *,
        threads: int = 1,
        import_path: list[str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._workers = workers
        self._threads = threads
        self._environment = {**os.environ, **(environment or {})}
        if import_path:
            inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
            self._environment["PYTHONPATH"] = os.pathsep.join([*import_path, *inherited])
        self._scheduler: subprocess.Popen[bytes] | None = None
        self._worker_processes: list[subprocess.Popen[bytes]] = []
        self._client: Client | None = None
        self.address = ""

    @property
    def client(self) -> Client:
        """A client of the cluster, for looking at it (tests make their own for work)."""
        if self._client is None:
            raise RuntimeError("the cluster is not running")
        return self._client

    def start(self) -> DaskCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        scheduler_file = self.directory / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self._scheduler = self._spawn(
            "scheduler",
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not scheduler_file.exists():
            if self._scheduler.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the scheduler did not start: see {self.directory}")
            time.sleep(0.05)
        self.address = json.loads(scheduler_file.read_text())["address"]
        self._client = Client(self.address, timeout=_START_TIMEOUT, set_as_default=False)
        try:
            self.add_workers(self._workers)
        except BaseException:
            self.stop()
            raise
        return self

    def add_workers(
        self, count: int, *, hiding: str | Path | None = None
    ) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` more worker processes and wait until they have joined.

        With ``hiding``, each runs in a mount namespace of its own where an empty ``tmpfs``
        covers that directory, as on a machine that does not share the caller's disk
        (root only, with ``unshare``)."""
        joined = len(self.worker_pids())
        started = []
        for _ in range(count):
            number = len(self._worker_processes)
            scratch = self.directory / f"worker-{number}"
            scratch.mkdir(exist_ok=True)
            prefix: list[str] = []
            if hiding is not None:
                prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hiding)]  # fmt: skip
            process = self._spawn(
                f"worker-{number}",
                ["distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
                 "--nworkers", "1", "--nthreads", str(self._threads), "--no-dashboard",
                 "--local-directory", str(scratch), "--name", f"worker-{number}"],
                prefix=prefix,
            )  # fmt: skip
            self._worker_processes.append(process)
            started.append(process)
        self.wait_for_workers(joined + count)
        return started

    def wait_for_workers(self, count: int, timeout: float = _START_TIMEOUT) -> None:
        """Wait until exactly ``count`` workers are connected (a killed one restarted by its
        nanny, or a stopped one gone)."""
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) != count:
            if any(process.poll() is not None for process in self._worker_processes):
                raise RuntimeError(f"a worker process exited: see {self.directory}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {count} workers after {timeout} s: {self.directory}")
            time.sleep(0.1)

    def worker_pids(self) -> dict[str, int]:
        """Each connected worker's address and process id (the worker, not its nanny)."""
        pids: dict[str, int] = self.client.run(os.getpid)
        return pids

    def kill_worker(self, address: str) -> int:
        """SIGKILL the worker process at ``address``, as the kernel's OOM killer would; its
        nanny starts a new one. Returns the killed process id."""
        pid = self.worker_pids()[address]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        """End one worker started by :meth:`add_workers`, by its process id."""
        _end(process)
        self._worker_processes.remove(process)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        for process in self._worker_processes:
            _end(process)
        self._worker_processes = []
        if self._scheduler is not None:
            _end(self._scheduler)
            self._scheduler = None

    def _spawn(
        self, name: str, arguments: list[str], *, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", *arguments],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment,
            )

    def __enter__(self) -> DaskCluster:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a nanny then closes its worker), SIGKILL if that takes too long."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
