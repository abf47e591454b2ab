"""A loopback HTTP server that answers every request with bytes of the test's choosing.

For the faults LocalIngestServer refuses to stage: hostile session tokens, huge bodies,
decompression bombs. Each connection gets one answer and is closed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Callable

#: What the raw server answers: the status line and headers (without the blank line), and
#: the body, given as chunks so that a huge one is never held whole.
Answer = tuple[str, Callable[[], Iterator[bytes]]]


class RawServer:
    """Answers each HTTP request on 127.0.0.1 with ``answer(path)``, then closes."""

    def __init__(self, answer: Callable[[str], Answer]) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.paths: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        # Wakes the accept() the thread is blocked in; it sees _stopping and returns.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
            pass
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while True:
            connection, _ = self._listener.accept()
            if self._stopping.is_set():
                connection.close()
                return
            with connection, contextlib.suppress(OSError):
                self._handle(connection)

    def _handle(self, connection: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                return
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        while len(body) < length:
            body += connection.recv(65536)
        path = lines[0].split(" ")[1]
        self.paths.append(path)
        status_and_headers, chunks = self._answer(path)
        connection.sendall(f"{status_and_headers}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        for chunk in chunks():
            connection.sendall(chunk)
