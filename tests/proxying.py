"""A real HTTP proxy for the tests: pproxy in a child process, on loopback, with basic auth.

Between the clients and pproxy sits a tap, a plain TCP relay that records every byte the
proxy receives: what the proxy saw, for tests that check it saw only CONNECT and never
the API key. Both are stopped by the tests that start them (the child by its PID).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from segops_fast.testing._app_servers import free_port, stop_process

USER = "proxy-user"
PASSWORD = "pr0xy-s3cret"


class RealProxy:
    """pproxy listening on 127.0.0.1 (HTTP, CONNECT), requiring ``USER:PASSWORD``."""

    def __init__(self, *, block: Path | None = None) -> None:
        #: A file of regular expressions, one a line: pproxy closes connections to the
        #: hosts they match, unanswered.
        self._block = block
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._tap: _Tap | None = None

    def start(self) -> RealProxy:
        listen = f"http://127.0.0.1:{self.port}#{USER}:{PASSWORD}"
        # --auth=-1: every request authenticates (pproxy otherwise trusts an address that
        # did once, for 30 days).
        block = ["-b", str(self._block)] if self._block else []
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pproxy", "-l", listen, "--auth=-1", *block],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            assert self._process.poll() is None, "pproxy exited"
            assert time.monotonic() < deadline, "pproxy did not start listening"
            time.sleep(0.05)
        if self._tap is None:
            self._tap = _Tap(self.port)
        return self

    def stop(self) -> None:
        """Stop the proxy process (the tap stays, refusing nothing, relaying to nobody)."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout=10)

    def close(self) -> None:
        self.stop()
        if self._tap is not None:
            self._tap.close()

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        """The proxy's URL (through the tap), with credentials unless both are empty."""
        assert self._tap is not None
        credentials = f"{user}:{password}@" if user or password else ""
        return f"http://{credentials}127.0.0.1:{self._tap.port}"

    @property
    def seen(self) -> bytes:
        """Every byte clients sent to the proxy."""
        assert self._tap is not None
        return self._tap.seen()

    def __enter__(self) -> RealProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Tap:
    """Relays each connection to the proxy, recording what goes its way."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._seen: list[bytes] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def seen(self) -> bytes:
        with self._lock:
            return b"".join(self._seen)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for each in sockets:
            with contextlib.suppress(OSError):
                each.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
            except OSError:
                client.close()  # the proxy is down: as if nobody listened
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self._seen.append(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for each in (source, target):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)
