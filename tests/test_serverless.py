"""``flush_after``: each invocation's events delivered at its end, across a frozen process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, LocalIngestServer, ServerTLS

from .conftest import MakeClient

# A function instance: each line on stdin is an invocation tracking that many events; it
# answers with the client's stats and every error on_error was told, as JSON.
_FUNCTION = """
import json, sys
import segops_fast as segops

errors = []
client = segops.SegOpsClient(
    sys.argv[1],
    sys.argv[2],
    ca_certs=sys.argv[3] or None,
    timeout=30.0,
    on_error=lambda error: errors.append(repr(error)),
)

@segops.flush_after(client, timeout=20.0)
def handler(count, invocation):
    for index in range(count):
        client.track(user_id="u", event_type="invoked", payload={"n": invocation, "i": index})

for invocation, line in enumerate(sys.stdin):
    handler(int(line), invocation)
    stats = client.stats()
    print(json.dumps({"sent": stats.sent, "retried": stats.retried, "errors": errors}), flush=True)
"""


class _Function:
    """The function's process, invoked through its stdin."""

    def __init__(self, server: LocalIngestServer, ca_certs: str = "") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FUNCTION, server.url, DEFAULT_SECRET_KEY, ca_certs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def invoke(self, count: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def end(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def function(server: LocalIngestServer) -> Iterator[_Function]:
    running = _Function(server)
    yield running
    running.end()


def test_each_invocation_s_events_are_stored_when_it_returns(
    server: LocalIngestServer, function: _Function
) -> None:
    for invocation in range(3):
        answer = function.invoke(10)
        # Stored by the time the invocation returned: no waiting on the server's side.
        assert server.event_count == 10 * (invocation + 1)
        assert answer["sent"] == 10 * (invocation + 1)
    assert answer["errors"] == []


def test_a_frozen_instance_whose_connections_the_server_closed_sends_on_waking(
    tls_server: LocalIngestServer, tls: ServerTLS
) -> None:
    """Over HTTPS, so that the server's count of handshakes shows a new connection."""
    server = tls_server
    function = _Function(server, str(tls.ca_certs))
    try:
        assert function.invoke(10)["sent"] == 10
        assert server.tls_handshakes == 1
        os.kill(function.process.pid, signal.SIGSTOP)
        # While the instance is frozen the server closes its idle keep-alive connections,
        # as servers and load balancers do after their idle timeout (a private method of
        # the test server: it has no idle timeout of its own).
        assert server._http is not None
        server._http.close_all_connections()
        os.kill(function.process.pid, signal.SIGCONT)

        answer = function.invoke(10)
    finally:
        function.end()

    # Not retried, and no error: the pool saw the closed connection before using it. A
    # wait for the request timeout (30 s) would have passed the flush bound (20 s) and
    # been reported as an error.
    assert answer == {"sent": 20, "retried": 0, "errors": []}
    assert sorted((e["payload"]["n"], e["payload"]["i"]) for e in server.events) == [
        (n, i) for n in range(2) for i in range(10)
    ]
    assert server.summary()["duplicate_events"] == 0
    assert server.tls_handshakes == 2  # the closed connection was replaced, not used


def test_an_unreachable_api_is_reported_after_the_bound_and_the_client_stays_open(
    make_client: MakeClient,
) -> None:
    errors: list[BaseException] = []
    client = make_client(api_url="http://127.0.0.1:9", on_error=errors.append)

    @segops.flush_after(client, timeout=0.2)
    def handler() -> str:
        client.track(user_id="u", event_type="e")
        return "handled"

    assert handler() == "handled"  # the handler's result, not an analytics error
    assert any(
        "flush(timeout=0.2) returned with 1 event undelivered" in str(error) for error in errors
    ), errors
    assert client.stats().queued == 1  # kept for the next invocation


def test_a_handler_that_raises_is_flushed_too(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    client = make_client(flush_interval=3600)

    @segops.flush_after(client)
    def failing_handler() -> None:
        client.track(user_id="u", event_type="e")
        raise KeyError("handler failed")

    with pytest.raises(KeyError, match="handler failed"):
        failing_handler()
    assert server.event_count == 1


@pytest.mark.parametrize("timeout", [0, -1, "2"])
def test_a_bad_timeout_is_refused(make_client: MakeClient, timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout must be a number above 0"):
        segops.flush_after(make_client(), timeout=timeout)
