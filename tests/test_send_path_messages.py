"""What the library says when events are not delivered (issue 22): each message names what
happened, how many events and where they are now, once, with no message inside another;
and the shutdown deadline has one message, given no earlier than is true.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import segops_fast as segops
from segops_fast._client import _undelivered_error
from segops_fast._errors import MAX_ERROR_TEXT_CHARS
from segops_fast._flush_requests import FlushRequest
from segops_fast.testing import LocalIngestServer

from .conftest import MakeClient, assert_idle_invariant, track_numbered


class _RawServer:
    """A loopback port that accepts connections and then does what ``answer`` says: nothing
    (never answer), or send fixed bytes and close."""

    def __init__(self, answer: bytes | None) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                continue
            self._connections.append(connection)
            if self._answer is not None:
                connection.settimeout(5)
                with contextlib.suppress(OSError):
                    connection.recv(65536)
                    connection.sendall(self._answer)
                    connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def silent_port() -> Iterator[_RawServer]:
    server = _RawServer(None)
    yield server
    server.close()


def _assert_one_segops_message(error: BaseException) -> None:
    text = str(error)
    assert text.count("SegOps:") == 1, text
    assert not re.search(r"\b1 events\b", text), text


def _flush_one_event_and_catch(client: segops.SegOpsClient, timeout: float) -> Any:
    """Track one event, flush, and return the SegOpsApiError flush() raised, checked to hold
    one SegOps message."""
    client.track(user_id="u", event_type="e", payload={})
    with pytest.raises(segops.SegOpsApiError) as raised:
        client.flush(timeout=timeout)
    _assert_one_segops_message(raised.value)
    return raised.value


def test_shutdown_after_a_timed_out_flush_keeps_to_its_deadline_and_says_so_once(
    silent_port: _RawServer,
) -> None:
    dropped: list[tuple[str, float]] = []
    errors: list[BaseException] = []
    client = segops.SegOpsClient(
        silent_port.url,
        "sk_test_local",
        timeout=1.0,
        flush_interval=0.05,
        on_drop=lambda events, reason: dropped.extend((reason, time.monotonic()) for _ in events),
        on_error=errors.append,
    )
    client.track(user_id="u", event_type="e", payload={})
    with pytest.raises(segops.SegOpsApiError) as flushed:
        client.flush(timeout=2)
    _assert_one_segops_message(flushed.value)
    # Why the event is undelivered, not only that time ran out.
    assert str(flushed.value).startswith(
        "SegOps: flush(timeout=2) returned with 1 event undelivered"
    )
    assert "no answer from the API" in str(flushed.value)
    assert "stays queued" in str(flushed.value)

    began = time.monotonic()
    with pytest.raises(segops.SegOpsApiError) as shut:
        client.shutdown(timeout=2)
    raised_at = time.monotonic()
    message = str(shut.value)
    # The deadline path ran: the event was handed over as shutdown_deadline, before
    # shutdown() raised, and within the deadline plus a margin for a loaded machine.
    assert [reason for reason, _ in dropped] == ["shutdown_deadline"]
    assert began <= dropped[0][1] <= raised_at
    assert raised_at - began < 2 + 10
    # One message, which never claims the deadline passed: with the next retry due after
    # it, shutdown gives up before it comes, and says only what is true at any moment.
    assert re.fullmatch(
        r"SegOps: shutdown\(timeout=2\) left 1 event undelivered: it could not be delivered "
        r"within its deadline \(the last attempt: no answer from the API: .+\)\. It was "
        r"handed to on_drop \(reason 'shutdown_deadline'\) and counted in stats\(\)\.dropped; "
        r"if a request for it was under way, the server may have stored it\. To give "
        r"delivery more time, pass a larger timeout to shutdown\(\), or shutdown_timeout\.",
        message,
    ), message
    assert "deadline passed" not in message
    assert shut.value.undelivered == 1
    _assert_one_segops_message(shut.value)
    # on_error heard the same words for the same event.
    deadline_reports = [str(e) for e in errors if "shutdown(timeout=2)" in str(e)]
    assert deadline_reports == [message]
    stats = client.stats()
    assert (stats.dropped, stats.sent, stats.queued) == (1, 0, 0)
    assert_idle_invariant(stats)


def test_shutdown_whose_deadline_passes_with_a_request_under_way_gives_the_same_message(
    silent_port: _RawServer,
) -> None:
    client = segops.SegOpsClient(
        silent_port.url, "sk_test_local", timeout=30.0, on_error=lambda error: None
    )
    # Whether the request has begun by now or not, the deadline comes with both events held.
    track_numbered(client, 2)
    with pytest.raises(segops.SegOpsApiError) as shut:
        client.shutdown(timeout=1)
    assert str(shut.value).startswith(
        "SegOps: shutdown(timeout=1) left 2 events undelivered: they could not be delivered "
        "within its deadline"
    ), shut.value
    _assert_one_segops_message(shut.value)


def test_flush_against_a_refused_connection_says_why_and_where_the_events_are(
    make_client: MakeClient,
) -> None:
    # A port nothing listens on: bound, then closed.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    client = make_client(api_url=f"http://127.0.0.1:{port}", on_error=lambda error: None)
    text = str(_flush_one_event_and_catch(client, 2))
    assert text.startswith("SegOps: flush(timeout=2) returned with 1 event undelivered: ")
    assert str(port) in text  # netsec words it "could not connect to 127.0.0.1:PORT: ..."
    assert "refused" in text.lower()
    assert "It stays queued" in text


def test_flush_with_a_refused_public_key_says_the_key_was_refused(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    client = make_client("pk_not_known_here", on_error=errors.append)
    text = str(_flush_one_event_and_catch(client, 2))
    assert "1 event undelivered" in text
    assert "401" in text
    assert "session" in text
    assert errors
    for error in errors:
        _assert_one_segops_message(error)


def test_refusals_name_the_count_the_cause_and_where_the_events_went_without_nesting(
    server: LocalIngestServer, make_client: MakeClient
) -> None:
    errors: list[BaseException] = []
    client = make_client(on_error=errors.append, flush_interval=60)
    server.faults.respond_with(400)
    error = _flush_one_event_and_catch(client, 10)
    text = str(error)
    assert text.startswith("SegOps: 1 event could not be delivered by flush(): ")
    assert "HTTP 400" in text
    assert "handed to on_drop (reason 'failed') and counted in stats().failed" in text
    # The cause is chained, not quoted whole.
    assert isinstance(error.__cause__, segops.SegOpsApiError)
    assert error.status == 400
    for reported in errors:
        _assert_one_segops_message(reported)


def test_a_huge_error_body_is_cut_in_the_exception_and_its_message() -> None:
    body = b"x" * (1024 * 1024)
    answer = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    server = _RawServer(answer)
    errors: list[BaseException] = []
    try:
        client = segops.SegOpsClient(server.url, "sk_test_local", on_error=errors.append)
        client.track(user_id="u", event_type="e", payload={})
        with pytest.raises(segops.SegOpsApiError) as raised:
            client.flush(timeout=10)
        client.shutdown(timeout=5)
    finally:
        server.close()
    error: Any = raised.value
    limit = MAX_ERROR_TEXT_CHARS + 100
    assert len(error.body) < limit
    assert "more characters cut" in error.body
    assert len(str(error)) < limit + 1000
    assert all(len(str(reported)) < limit + 1000 for reported in errors)


def test_any_error_text_is_bounded_whoever_built_the_message() -> None:
    # The session mint (and anything else) may quote a server's whole answer.
    error = segops.SegOpsApiError("SegOps: session mint failed: " + "y" * 10_000_000)
    assert len(str(error)) < 3 * MAX_ERROR_TEXT_CHARS
    assert str(error).endswith("more characters cut]")
    assert len(error.reason) < 3 * MAX_ERROR_TEXT_CHARS


def test_a_flush_whose_events_went_several_ways_says_how_many_went_each_way() -> None:
    refused = segops.SegOpsApiError("SegOps: refused", reason="the API refused the request")
    request = FlushRequest(target=3, patience_ends_at=0.0)
    request.note_undelivered(0, 2, refused, "failed")
    request.note_undelivered(2, 1, refused)
    text = str(_undelivered_error("flush()", request))
    assert text == (
        "SegOps: 3 events could not be delivered by flush(): the API refused the request. "
        "2 of them were handed to on_drop (reason 'failed') and counted in stats().failed; "
        "1 of them stays queued and is tried again every flush_interval."
    )
