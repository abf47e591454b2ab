"""The flush() callers waiting: what each covers, how long it waits for an API that cannot
be reached, and when it is answered; no server, no thread."""

from __future__ import annotations

from segops_fast._delivery import GivenUp
from segops_fast._errors import SegOpsApiError
from segops_fast._flush_requests import FlushRequest, FlushRequests
from segops_fast._locks import OwnedLock
from segops_fast._transport import NetworkConfigError

PATIENCE = 30.0


def _requests() -> tuple[FlushRequests, OwnedLock]:
    lock = OwnedLock()
    return FlushRequests(lock, outage_patience=PATIENCE), lock


def test_a_flush_counts_only_the_undelivered_events_numbered_below_its_target() -> None:
    request = FlushRequest(target=10, patience_ends_at=0.0)
    refused = SegOpsApiError("refused")
    request.note_undelivered(8, 5, refused, "failed")  # events 8..12: 8 and 9 are its own
    request.note_undelivered(10, 3, ConnectionError("later"), "failed")  # none of its own
    request.note_undelivered(0, 1, refused)  # still queued, not given up
    assert request.undelivered == 3
    assert request.given_up == {"failed": 2}
    assert request.error is refused


def test_given_up_events_are_noted_on_every_request_that_covers_them() -> None:
    requests, lock = _requests()
    with lock:
        early = requests.open(target=4, now=0.0)
        late = requests.open(target=9, now=0.0)
        part = GivenUp([b"{}"] * 3, "retries_exhausted", SegOpsApiError("gave up"), first=3)
        requests.note_given_up(part)
    assert (early.undelivered, early.given_up) == (1, {"retries_exhausted": 1})
    assert (late.undelivered, late.given_up) == (3, {"retries_exhausted": 3})


def test_a_request_is_answered_once_every_event_below_its_target_is_finished() -> None:
    requests, lock = _requests()
    with lock:
        first = requests.open(target=5, now=0.0)
        second = requests.open(target=8, now=0.0)
        asked = requests.begin_cycle()
        assert not requests.asked
        answered = requests.answerable(asked, finished=6, blocked=None, final=False, now=1.0)
    assert answered == [first]
    assert (first.undelivered, first.error) == (0, None)
    assert len(requests) == 1
    assert requests.pending() == [second]


def test_a_flush_waits_for_an_unreachable_api_until_its_patience_ends() -> None:
    requests, lock = _requests()
    down = ConnectionError("connection refused")
    with lock:
        request = requests.open(target=6, now=100.0)
    assert requests.patience_left(110.0) == PATIENCE - 10
    with lock:
        early = requests.answerable([request], finished=2, blocked=down, final=False, now=129.9)
        due = requests.answerable([request], finished=2, blocked=down, final=False, now=130.0)
    assert early == []
    assert due == [request]
    # Events 2 to 5 stay queued: undelivered, not given up.
    assert (request.undelivered, request.given_up, request.error) == (4, {}, down)
    assert requests.patience_left(130.0) is None


def test_a_configuration_error_answers_at_once_and_a_final_cycle_too() -> None:
    requests, lock = _requests()
    misconfigured = NetworkConfigError("the certificate was refused", "pass ca_certs=...")
    with lock:
        tls = requests.open(target=3, now=0.0)
        shutting_down = requests.open(target=3, now=0.0)
        answered = requests.answerable(
            [tls], finished=0, blocked=misconfigured, final=False, now=0.0
        )
        final = requests.answerable(
            [shutting_down], finished=1, blocked=ConnectionError("down"), final=True, now=0.0
        )
    assert answered == [tls]
    assert tls.undelivered == 3
    assert tls.error is misconfigured
    assert final == [shutting_down]
    assert shutting_down.undelivered == 2


def test_requests_tell_whether_one_waits_for_events_not_taken_yet() -> None:
    requests, lock = _requests()
    assert not requests
    assert not requests.waits_beyond(0)
    with lock:
        requests.open(target=7, now=0.0)
    assert requests.asked
    assert requests.waits_beyond(6)
    assert not requests.waits_beyond(7)


def test_finish_releases_the_waiting_caller() -> None:
    request = FlushRequest(target=1, patience_ends_at=0.0)
    assert not request.wait(0)
    request.finish()
    assert request.wait(0)
