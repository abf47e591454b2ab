"""One process's delivery pipeline: its composition, and the order in which it shuts down.

This module owns building everything that belongs to one process (transport, session,
delivery, counters, the buffer, the state holders, the cycle and the driver that runs it)
and the sequences that must run in one order: asking for a flush, shutting down within a
deadline, and stopping when the client is dropped. A fork replaces the whole pipeline,
never mends it. It does not own the public API, the user's errors (the client maps the
outcome of a shutdown to them), nor what a cycle does (``_cycle.py``).

The drivers
-----------
Which thread runs the cycle is the driver's choice. Where Python threads run, a
``Flusher`` (``_flusher.py``) runs it in the background; in uWSGI without threads,
and in the uWSGI master, an ``InlineSender`` (``_inline.py``) runs it on the
caller's thread. Only the drivers and the cycle take the pipeline's lock (one lock, made by
``new_lock()``); the state holders are guarded by it.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Protocol

from . import _concurrency, _uwsgi
from ._batching import new_idempotency_key
from ._buffer import EventBuffer
from ._cycle import Cycle
from ._delivery import Deadline, Delivery, RetryPolicy
from ._encoding import Record, render_event
from ._errors import SegOpsApiError, sentences
from ._flush_requests import FlushRequest, FlushRequests
from ._flusher import Flusher
from ._inline import InlineSender
from ._ledger import Ledger
from ._locks import new_lock
from ._options import Options
from ._proxy import Proxy
from ._reporting import Reporter
from ._schedule import SendSchedule
from ._session import SessionManager
from ._stats import DeliveryCounters, Stats
from ._transport import Transport
from ._types import UserContext


class Driver(Protocol):
    """What runs the cycle: the flusher thread, or the caller's thread (uWSGI)."""

    def wake_up(self) -> None: ...

    def drain(self, *, final: bool) -> None:
        """flush() and shutdown(): send from this thread, if this driver sends from callers'."""

    def make_room(self) -> None:
        """on_full="block": return once the buffer may have room."""

    def join(self, timeout: float | None) -> bool: ...

    @property
    def is_own_thread(self) -> bool: ...


class Pipeline:
    """Everything that belongs to one process: a fork replaces it whole, never mends it.

    Nothing here refers back to the client, so a client dropped without ``shutdown()``
    can be garbage-collected while its thread finishes sending.
    """

    def __init__(
        self,
        options: Options,
        get_user: Callable[[], UserContext],
        reporter: Reporter,
        proxy: Proxy | None = None,
    ) -> None:
        #: The process this pipeline belongs to.
        self.pid = os.getpid()
        #: Whether its threads, locks and events are gevent's (see ``_concurrency.py``).
        self.greenlets = _concurrency.greenlets()
        #: The uWSGI master imports the application but must never run a thread of ours.
        in_uwsgi_master = _uwsgi.is_master()
        #: False under uWSGI without threads, and in its master: callers send then.
        self.threaded = not (_uwsgi.python_threads_disabled() or in_uwsgi_master)
        self.reporter = reporter
        self.counters = DeliveryCounters()
        self.transport = Transport(
            options.api_url,
            timeout=options.timeout,
            max_connections=options.max_in_flight,
            tls=options.tls,
            proxy=proxy,
            compression=options.compression,
        )
        self.session = (
            SessionManager(options.api_key, _checked(get_user), self.transport)
            if options.uses_session
            else None
        )
        self.deadline = Deadline()
        policy = RetryPolicy(options.max_retries, options.backoff_base, options.backoff_cap)
        self.delivery = Delivery(
            transport=self.transport,
            api_key=options.api_key,
            session=self.session,
            policy=policy,
            counters=self.counters,
            deadline=self.deadline,
        )
        self.buffer = EventBuffer(options.max_queue_size, options.batch_size, self._wake_driver)
        lock = new_lock()
        schedule = SendSchedule(options.flush_interval, guard=lock)
        wake = threading.Event()
        self.cycle = Cycle(
            ledger=Ledger(lock, self.buffer, schedule, self.counters),
            # flush() waits for an unreachable API as long as a batch answered 503 would
            # wait for its retries: a deploy's few seconds of refused connections are
            # ridden out, as the retry settings asked.
            requests=FlushRequests(lock, outage_patience=policy.longest_wait()),
            buffer=self.buffer,
            delivery=self.delivery,
            counters=self.counters,
            guard=lock,
            wake=wake,
            deadline=self.deadline,
            flush_interval=options.flush_interval,
            max_batch_bytes=options.max_batch_bytes,
            # Without a background thread every request is sent from the caller's thread.
            max_in_flight=options.max_in_flight if self.threaded else 1,
            on_given_up=reporter.given_up,
            report_error=reporter.error,
        )
        #: Where ``track()`` hands an encoded event for this mode.
        self.append: Callable[[Record], bool]
        self.driver: Driver
        if self.threaded:
            self.driver = Flusher(
                cycle=self.cycle,
                buffer=self.buffer,
                wake=wake,
                batch_size=options.batch_size,
                flush_interval=options.flush_interval,
                deadline=self.deadline,
            )
            self.append = self.buffer.append
        else:
            inline = InlineSender(
                cycle=self.cycle,
                buffer=self.buffer,
                batch_size=options.batch_size,
                flush_interval=options.flush_interval,
                deadline=self.deadline,
            )
            self.driver = inline
            self.append = inline.append_and_send_all if in_uwsgi_master else inline.append
        if not options.batch:
            self.append = self._send_now

    def _wake_driver(self) -> None:
        self.driver.wake_up()

    def _send_now(self, record: Record) -> bool:
        """``batch=False``: send on the caller's thread, as the reference SDK does."""
        self.counters.sending_synchronously(1)
        given_up = self.delivery.deliver_single(render_event(record), new_idempotency_key())
        if given_up is not None:
            self.counters.given_up(1, failed=given_up.failed, reason=given_up.reason)
            self.reporter.given_up(given_up)
        return True

    @property
    def failure(self) -> SegOpsApiError | None:
        """Why sending stopped for good (a thread of ours failed); None while it goes on."""
        return self.cycle.surrender.failure

    @property
    def outdated_by_gevent(self) -> bool:
        """True if gevent has patched ``threading`` since this pipeline was built, and no
        event has reached it yet: it must be built again, which loses nothing (no thread
        of ours exists yet and nothing is queued), where using it would make greenlets wait
        on native locks (see ``_concurrency.py``)."""
        return (
            self.greenlets != _concurrency.greenlets()
            and self.buffer.taken == 0
            and not len(self.buffer)
        )

    def stats(self) -> Stats:
        return self.counters.snapshot(self.buffer.taken, len(self.buffer))

    def request_flush(self) -> FlushRequest | None:
        """Ask for everything enqueued so far to be sent now; None if there is nothing."""
        request = self.cycle.open_request()
        if request is not None:
            self.driver.wake_up()
        return request

    def shutdown(self, seconds: float) -> FlushRequest | None:
        """Send what is left within ``seconds``, then give up the rest; end the threads.

        The order matters: no event is accepted once the flush is asked for, the deadline
        is set before anything is sent, and the transport is closed only once every thread
        has ended (else everything left is abandoned, and later answers are ignored).
        Returns the final flush request (None if nothing was left); ``self.cycle.surrender``
        says what the deadline gave up.
        """
        self.buffer.close()
        request = self.request_flush()
        self.deadline.set(seconds)
        self.driver.drain(final=True)
        self.cycle.stop()
        if self.driver.join(seconds):
            self.transport.close()
        else:
            self.deadline.expire_now()
            self.cycle.surrender.abandon()
        return request

    def stop_soon(self) -> None:
        """The client was garbage-collected unclosed: send what is left, then end the thread."""
        self.buffer.close()
        self.cycle.stop()


_GET_USER_FIX = "Fix the function given as get_user"


def _checked(get_user: Callable[[], UserContext]) -> Callable[[], UserContext]:
    """``get_user`` whose failures are reported as what they are: the session mint that
    needs the user cannot be made, and the events wait for it, as for a refused mint."""

    def current_user() -> UserContext:
        try:
            user = get_user()
        except Exception as error:
            # Its type only: the user's own exception is chained, for their traceback.
            cause = f"get_user() raised {type(error).__name__}, so no session token could be had"
            raise SegOpsApiError(
                sentences(f"SegOps: {cause}", _GET_USER_FIX), reason=cause, fix=_GET_USER_FIX
            ) from error
        if not isinstance(user, UserContext):
            cause = (
                f"get_user() returned a {type(user).__name__}, not a UserContext, so no "
                "session token could be had"
            )
            raise SegOpsApiError(
                sentences(f"SegOps: {cause}", _GET_USER_FIX), reason=cause, fix=_GET_USER_FIX
            )
        return user

    return current_user
