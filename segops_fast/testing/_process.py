"""A :class:`LocalIngestServer` in a process of its own.

This module owns starting ``segops-fast serve`` as a child process, learning its URL, and
reading its counters over HTTP. A server in its own process does not compete with the
client for the GIL, so what a demo or benchmark measures is the client.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import urllib3

from ._app_servers import stop_process


class IngestServerProcess:
    """``segops-fast serve`` on a free loopback port, as a context manager."""

    def __init__(self, extra_arguments: list[str] | None = None) -> None:
        self._arguments = [
            sys.executable,
            "-m",
            "segops_fast",
            "serve",
            "--port",
            "0",
            *(extra_arguments or []),
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""
        #: With ``--tls``: the CA bundle that verifies the server's certificate.
        self.ca_certs: str | None = None
        self._http = urllib3.PoolManager()

    def start(self) -> IngestServerProcess:
        self._process = subprocess.Popen(self._arguments, stdout=subprocess.PIPE)
        assert self._process.stdout is not None
        # The server's first line is its URL: "listening on http://127.0.0.1:PORT".
        first_line = self._process.stdout.readline().decode().strip()
        if not first_line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"segops-fast serve did not start: {first_line!r}")
        self.url = first_line.split()[-1]
        if "--tls" in self._arguments:
            # The second line names the test CA's bundle: "ca_certs PATH".
            self.ca_certs = self._process.stdout.readline().decode().strip().split(" ", 1)[1]
            self._http = urllib3.PoolManager(ca_certs=self.ca_certs)
        return self

    @property
    def pid(self) -> int:
        """The server's process id, for reading its CPU time."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def summary(self) -> dict[str, int]:
        """:meth:`LocalIngestServer.summary` of the server process."""
        result: dict[str, int] = self._get("/_local/summary")
        return result

    def summary_by_event_type(self) -> dict[str, dict[str, int]]:
        """:meth:`LocalIngestServer.summary_by_event_type` of the server process."""
        result: dict[str, dict[str, int]] = self._get("/_local/summary/by-event-type")
        return result

    def reset(self) -> None:
        """:meth:`LocalIngestServer.reset` of the server process."""
        self._http.request("POST", self.url + "/_local/reset", timeout=30.0, retries=False)

    def _get(self, path: str) -> Any:
        response = self._http.request("GET", self.url + path, timeout=30.0, retries=False)
        return orjson.loads(response.data)

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        stop_process(process, timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None

    def __enter__(self) -> IngestServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
