"""``SegOpsClient``: the public face, wired to one delivery pipeline per process.

This module owns the public API (the reference SDK's, plus bounded queues, dead letters
and stats), the full-queue and after-shutdown policies, the user's callbacks, and
replacing the whole pipeline in a forked child. Encoding, buffering, sending and
retrying live in their own modules; this one only connects them.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
import weakref
from types import TracebackType
from typing import Any, Callable

import orjson

from . import _async, _concurrency, _lifecycle, _uwsgi
from ._batching import new_idempotency_key
from ._delivery import Deadline, Delivery, GivenUp, RetryPolicy
from ._encoding import (
    RENDERED_TIMESTAMP_BYTES,
    Record,
    context_fields,
    encode_event,
    event_fields,
    render_event,
)
from ._errors import InvalidEventError, SegOpsApiError
from ._flusher import Flusher
from ._options import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEOUT,
    Options,
)
from ._proxy import Proxy, resolve_proxy
from ._session import SessionManager, anonymous_user
from ._stats import DeliveryCounters, Stats
from ._transport import Transport
from ._types import Context, Event, UserContext

logger = logging.getLogger("segops_fast")

#: Why events were dropped before a request was made, as passed to ``on_drop``.
REASON_QUEUE_FULL = "queue_full"
REASON_CLOSED = "closed"

_dumps = orjson.dumps
_JSONEncodeError = orjson.JSONEncodeError
_clock_ns = time.time_ns

#: At most one queue-full report a second: a full queue can refuse thousands of events.
_QUEUE_FULL_REPORT_INTERVAL = 1.0

OnError = Callable[[BaseException], None]
OnDrop = Callable[[list[dict[str, Any]], str], None]


def _log_error(error: BaseException) -> None:
    logger.error("%s", error)


class _Reporter:
    """The user's callbacks, called so that nothing they raise reaches our threads."""

    def __init__(self, on_error: OnError | None, on_drop: OnDrop | None) -> None:
        self._on_error: OnError = on_error or _log_error
        self._on_drop = on_drop

    def error(self, error: BaseException) -> None:
        try:
            self._on_error(error)
        except Exception:
            logger.exception("SegOps: the on_error callback raised")

    def given_up(self, given_up: GivenUp) -> None:
        """Tell the user about events that will not be delivered (already counted)."""
        self.dropped(given_up.events, given_up.reason)
        self.error(given_up.error)

    def dropped(self, events: list[bytes], reason: str) -> None:
        if self._on_drop is None:
            return
        try:
            self._on_drop([orjson.loads(event) for event in events], reason)
        except Exception:
            logger.exception("SegOps: the on_drop callback raised")


class _Pipeline:
    """Everything that belongs to one process: a fork replaces it whole, never mends it.

    Nothing here refers back to the client, so a client dropped without ``shutdown()``
    can be garbage-collected while its thread finishes sending.
    """

    def __init__(
        self,
        options: Options,
        get_user: Callable[[], UserContext],
        reporter: _Reporter,
        proxy: Proxy | None = None,
    ) -> None:
        #: The process this pipeline belongs to.
        self.pid = os.getpid()
        #: Whether its threads, locks and events are gevent's (see ``_concurrency.py``).
        self.greenlets = _concurrency.greenlets()
        #: The uWSGI master imports the application but must never run a thread of ours.
        self.in_uwsgi_master = _uwsgi.is_master()
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
            SessionManager(options.api_key, get_user, self.transport)
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
        self.flusher = Flusher(
            delivery=self.delivery,
            counters=self.counters,
            capacity=options.max_queue_size,
            batch_size=options.batch_size,
            flush_interval=options.flush_interval,
            max_batch_bytes=options.max_batch_bytes,
            max_in_flight=options.max_in_flight,
            # flush() waits for an unreachable API as long as a batch answered 503 would
            # wait for its retries: a deploy's few seconds of refused connections are
            # ridden out, as the retry settings asked.
            outage_patience=policy.longest_wait(),
            deadline=self.deadline,
            background=not (_uwsgi.python_threads_disabled() or self.in_uwsgi_master),
            on_given_up=reporter.given_up,
            report_error=reporter.error,
        )

    def stop_soon(self) -> None:
        """The client was garbage-collected unclosed: send what is left, then end the thread."""
        self.flusher.buffer.close()
        self.flusher.stop()


class SegOpsClient:
    """Sends user events to SegOps from a background thread; safe for concurrent use.

    ``track()`` validates and serializes the event on the caller's thread, appends it to a
    bounded in-memory buffer and returns: it never does network I/O and never blocks
    (unless ``on_full="block"``). A background thread, started by the first event, sends
    batches. Every event ends up acknowledged by the server, handed to ``on_drop``, or
    counted in :meth:`stats` as dropped or failed.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        get_user: Callable[[], UserContext] | None = None,
        batch: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        on_error: OnError | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        on_full: str = "drop",
        on_drop: OnDrop | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        proxy: str | None = None,
        ca_certs: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        client_key_password: str | None = None,
        compression: str | None = None,
    ) -> None:
        options = Options(
            api_url=api_url.rstrip("/") if isinstance(api_url, str) else api_url,
            api_key=api_key,
            batch=batch,
            batch_size=batch_size,
            flush_interval=flush_interval,
            timeout=timeout,
            max_queue_size=max_queue_size,
            on_full=on_full,
            max_batch_bytes=max_batch_bytes,
            max_event_bytes=max_event_bytes,
            max_in_flight=max_in_flight,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            shutdown_timeout=shutdown_timeout,
            proxy=proxy,
            ca_certs=ca_certs,
            client_cert=client_cert,
            client_key=client_key,
            client_key_password=client_key_password,
            compression=compression,
        )
        options.check()
        _concurrency.refuse_eventlet()
        self._options = options
        # Decided once: a forked child uses the proxy its parent was built with.
        self._proxy = resolve_proxy(proxy, options.api_url)
        # Copied out of the options: the hot path reads them on every call.
        self._max_event_bytes = max_event_bytes
        # The longest JSON an event may have before track() adds its timestamp.
        self._max_unstamped_event_bytes = max_event_bytes - RENDERED_TIMESTAMP_BYTES
        self._get_user = get_user or anonymous_user
        self._reporter = _Reporter(on_error, on_drop)
        self._closed = False
        self._start_process_state()
        _lifecycle.register(self)
        if batch and _uwsgi.python_threads_disabled():
            warnings.warn(
                "segops_fast: uWSGI runs without Python threads, so no background thread can "
                "send events; they are sent from the request's thread whenever a batch is "
                "due (batch_size events, or flush_interval after the oldest) and at worker "
                "exit. Start uWSGI with --enable-threads to send them in the background.",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- the reference API -----------------------------------------------------------------

    def track(
        self,
        event: Event | dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
        event_type: str | None = None,
        occurred_at: Any | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Enqueue one event, given as an :class:`Event`, a dict, or keyword fields.

        Raises :class:`InvalidEventError` (a ``TypeError`` and a ``ValueError``) naming the
        problem when the event cannot be sent; nothing is enqueued then. Never raises for
        anything the server does.
        """
        if event is not None:
            if (
                user_id is not None
                or event_type is not None
                or occurred_at is not None
                or payload is not None
            ):
                raise InvalidEventError("track() takes an event or keyword fields, not both")
            user_id, event_type, occurred_at, payload = event_fields(event)  # type: ignore[assignment]
        record: Record | None = None
        # The common case in line: a call saved is a tenth of track()'s cost (measured with
        # bench/profile_track.py). Anything else, and every error, goes to encode_event,
        # whose record this must equal (tests/test_validation.py checks that it does).
        if (
            occurred_at is None
            and type(payload) is dict
            and type(user_id) is str
            and user_id
            and type(event_type) is str
            and event_type
        ):
            stamp = _clock_ns()
            try:
                encoded = _dumps({"user_id": user_id, "event_type": event_type, "payload": payload})
            except _JSONEncodeError:
                pass  # encode_event raises, naming the problem
            else:
                if len(encoded) <= self._max_unstamped_event_bytes:
                    record = (stamp, encoded[1:])
        if record is None:
            record = encode_event(user_id, event_type, occurred_at, payload, self._max_event_bytes)
        if not self._append(record):
            self._refused(record)

    def identify(
        self,
        context: Context | dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
        traits: dict[str, Any] | None = None,
    ) -> None:
        """Record a user's traits as a ``context_identified`` event whose payload is the traits."""
        if context is not None:
            if user_id is not None or traits is not None:
                raise InvalidEventError("identify() takes a context or keyword fields, not both")
            user_id, traits = context_fields(context)  # type: ignore[assignment]
        self.track(user_id=user_id, event_type="context_identified", payload=traits)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event enqueued before this call is acknowledged.

        Raises :class:`SegOpsApiError` when some could not be delivered, or when
        ``timeout`` seconds pass first; events not yet sent then stay queued. While the
        API cannot be reached it waits for it as long as the retry schedule would wait
        for a batch answered 503, then raises with the count undelivered.
        """
        if self._closed or not self._options.batch:
            return
        flusher = self._pipeline.flusher
        self._refuse_from_own_thread(flusher, "flush")
        request = flusher.request_flush()
        if request is None:
            return
        if not flusher.has_background_thread:
            flusher.send_everything_here(final=False)
        if not request.wait(timeout):
            raise SegOpsApiError(
                f"SegOps: flush timed out after {timeout}s; undelivered events stay queued",
                undelivered=self.stats().queued,
            )
        if request.error is not None:
            raise _undelivered_error(request.undelivered, request.error)

    def shutdown(self, timeout: float | None = None) -> None:
        """Send everything queued and stop the background thread; idempotent.

        Returns within ``timeout`` seconds (default: ``shutdown_timeout``). Events still
        undelivered then are handed to ``on_drop`` and counted as dropped, and like events
        the server refused they make this raise :class:`SegOpsApiError` with their count.
        """
        if self._closed:
            return
        pipeline = self._pipeline
        flusher = pipeline.flusher
        self._refuse_from_own_thread(flusher, "shutdown")
        self._closed = True
        self._finalizer.detach()
        flusher.buffer.close()
        request = flusher.request_flush()
        deadline = self._options.shutdown_timeout if timeout is None else timeout
        pipeline.deadline.set(deadline)
        if not flusher.has_background_thread:
            flusher.send_everything_here(final=True)
        flusher.stop()
        if not flusher.join(deadline):
            pipeline.deadline.expire_now()
            undelivered = flusher.abandon()
            raise SegOpsApiError(
                f"SegOps: shutdown deadline of {deadline}s passed with {undelivered} events "
                "undelivered; they are handed to on_drop and counted as dropped",
                undelivered=undelivered,
            )
        pipeline.transport.close()
        if request is not None and request.error is not None:
            raise _undelivered_error(request.undelivered, request.error)

    def close(self) -> None:
        """The same as :meth:`shutdown`."""
        self.shutdown()

    async def aflush(self, timeout: float | None = None) -> None:
        """:meth:`flush` for coroutines: waits without blocking the event loop."""
        await _async.in_thread(lambda: self.flush(timeout), "segops-fast-aflush")

    async def ashutdown(self, timeout: float | None = None) -> None:
        """:meth:`shutdown` for coroutines: waits without blocking the event loop."""
        await _async.in_thread(lambda: self.shutdown(timeout), "segops-fast-ashutdown")

    def reset_session(self) -> None:
        """Forget the session token, so the next request mints one for the current user."""
        session = self._pipeline.session
        if session is not None:
            session.invalidate()

    def stats(self) -> Stats:
        """Counters of this client in this process; see :class:`Stats`."""
        pipeline = self._pipeline
        buffer = pipeline.flusher.buffer
        return pipeline.counters.snapshot(buffer.taken, len(buffer))

    def __enter__(self) -> SegOpsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    async def __aenter__(self) -> SegOpsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.ashutdown()

    # -- per-process state -------------------------------------------------------------------

    def _start_process_state(self) -> None:
        self._install(_Pipeline(self._options, self._get_user, self._reporter, self._proxy))

    def _install(self, pipeline: _Pipeline) -> None:
        self._pipeline = pipeline
        # The hot path calls this attribute directly: no branch on the batch mode.
        self._append: Callable[[Record], bool]
        if not self._options.batch:
            self._append = self._send_now
        elif pipeline.in_uwsgi_master:
            self._append = self._send_from_uwsgi_master
        elif pipeline.flusher.has_background_thread:
            self._append = self._append_first
        else:
            self._append = pipeline.flusher.append_and_send_when_due
        self._told_closed = False
        self._last_full_report = 0.0
        # Stops this process's thread if the client is dropped without shutdown(); holds
        # the pipeline, not the client, so it never keeps the client alive.
        self._finalizer = weakref.finalize(self, pipeline.stop_soon)
        self._finalizer.atexit = False

    def _append_first(self, record: Record) -> bool:
        """The first event of this process's pipeline: make sure it is built from the kind
        of thread and lock in force now, then hand the hot path to the buffer.

        gevent may have patched ``threading`` since the pipeline was built (a gevent worker
        forked from a master that preloads the application patches after the fork hook
        ran). No thread of ours exists yet and nothing is queued, so building the pipeline
        again loses nothing; using the old one would make greenlets wait on native locks.

        No lock: one created before gevent patched is native, and building a pipeline can
        yield to another greenlet, which would then block the hub on it. Rebuilding happens
        only among greenlets, which switch only where they yield, so the new pipeline is
        installed only if no other greenlet installed one while it was being built; until
        then every event comes through here. Without a rebuild, concurrent first events
        each just set the same attribute.
        """
        pipeline = self._pipeline
        if (
            not self._closed
            and pipeline.greenlets != _concurrency.greenlets()
            and pipeline.flusher.buffer.taken == 0
            and not len(pipeline.flusher.buffer)
        ):
            rebuilt = _Pipeline(self._options, self._get_user, self._reporter, self._proxy)
            if self._pipeline is pipeline and not self._closed:
                self._finalizer.detach()
                self._install(rebuilt)
            else:
                rebuilt.transport.close()
            pipeline.transport.close()
        self._append = self._pipeline.flusher.buffer.append
        return self._append(record)

    def _send_from_uwsgi_master(self, record: Record) -> bool:
        """In the uWSGI master: send now, from this thread, everything waiting.

        The master must not start a thread (see ``_uwsgi.py``), and it cannot hand its
        events to the workers: each worker starts with a copy of them, so either all would
        send them or, with one chosen, every respawn of that one would again. The master
        tracks only while it imports the application, so sending each event as it is
        tracked costs a request per event at start-up (about a millisecond each here),
        bounded like any request by ``timeout`` and the retry schedule. If the API cannot
        be reached they stay queued for the master's next event (uWSGI's master runs no
        Python exit hook at its stop).
        """
        flusher = self._pipeline.flusher
        if not flusher.buffer.append(record):
            return False
        # A callback that tracks while this thread sends leaves its event for the next call.
        if not flusher.is_own_thread:
            flusher.send_everything_here(final=False)
        return True

    def _after_fork_in_child(self) -> None:
        """In a forked child: events queued before the fork belong to the parent.

        Everything is replaced, never repaired: the parent's threads do not exist here, and
        any lock one of them held at the fork would stay held forever in this copy.
        """
        if self._pipeline.pid == os.getpid():
            # Told twice about one fork (uWSGI with --py-call-uwsgi-fork-hooks).
            return
        self._finalizer.detach()
        self._pipeline.transport.abandon_after_fork()
        self._start_process_state()
        if self._closed:
            self._pipeline.flusher.buffer.close()

    def _shutdown_at_exit(self) -> None:
        try:
            self.shutdown(self._options.shutdown_timeout)
        except SegOpsApiError as error:
            self._reporter.error(error)

    # -- events that are not enqueued ------------------------------------------------------

    def _send_now(self, record: Record) -> bool:
        """``batch=False``: send on the caller's thread, as the reference SDK does."""
        pipeline = self._pipeline
        pipeline.counters.sending_synchronously(1)
        given_up = pipeline.delivery.deliver_single(render_event(record), new_idempotency_key())
        if given_up is not None:
            pipeline.counters.given_up(1, failed=given_up.failed)
            self._reporter.given_up(given_up)
        return True

    def _refused(self, record: Record) -> None:
        if self._options.on_full == "block" and not self._closed:
            flusher = self._pipeline.flusher
            while not self._closed:
                if flusher.has_background_thread:
                    flusher.buffer.wait_for_room(None)
                else:
                    # Nobody else will make room: send from here.
                    flusher.send_everything_here(final=False)
                if flusher.buffer.append(record):
                    return
        reason = REASON_CLOSED if self._closed else REASON_QUEUE_FULL
        self._pipeline.counters.refused_at_track(1)
        self._reporter.dropped([render_event(record)], reason)
        if reason == REASON_CLOSED:
            if not self._told_closed:
                self._told_closed = True
                self._reporter.error(
                    RuntimeError("SegOps: track() after shutdown(); the event is dropped")
                )
        else:
            now = time.monotonic()
            if now - self._last_full_report >= _QUEUE_FULL_REPORT_INTERVAL:
                self._last_full_report = now
                self._reporter.error(
                    RuntimeError(
                        f"SegOps: queue full ({self._options.max_queue_size} events); "
                        "dropping new events (see stats().dropped)"
                    )
                )

    @staticmethod
    def _refuse_from_own_thread(flusher: Flusher, method: str) -> None:
        if flusher.is_own_thread:
            raise RuntimeError(
                f"SegOps: {method}() cannot be called from on_error or on_drop: "
                "those run on the thread that would have to do the work"
            )


def _undelivered_error(undelivered: int, cause: BaseException) -> SegOpsApiError:
    status = getattr(cause, "status", None)
    body = getattr(cause, "body", "")
    return SegOpsApiError(
        f"SegOps: {undelivered} events could not be delivered: {cause}",
        status=status,
        body=body,
        undelivered=undelivered,
    )
