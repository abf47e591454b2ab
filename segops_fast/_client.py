"""``SegOpsClient``: the public face, wired to one delivery pipeline per process.

This module owns the public API (the reference SDK's, plus bounded queues, dead letters
and stats), the inline fast path of ``track()``, the errors ``flush()`` and ``shutdown()``
raise, and replacing the whole pipeline in a forked child. Building the pipeline and the
order of its shutdown (:mod:`~segops_fast._pipeline`), the full-queue policy
(:mod:`~segops_fast._backpressure`), encoding, buffering, sending and retrying live in
their own modules; this one only connects them.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from types import TracebackType
from typing import Any, Callable

import orjson

from . import _async, _concurrency, _lifecycle, _uwsgi
from ._backpressure import Refusals
from ._delivery import handed_over, shutdown_deadline_error
from ._encoding import (
    RENDERED_TIMESTAMP_BYTES,
    Record,
    context_fields,
    encode_event,
    event_fields,
)
from ._errors import (
    InvalidEventError,
    SegOpsApiError,
    count_events,
    describe,
    fix_for,
    sentences,
)
from ._flush_requests import FlushRequest
from ._hooks import BeforeSend, HookRunner
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
from ._pipeline import Pipeline
from ._proxy import resolve_proxy
from ._reporting import OnDrop, OnError, Reporter
from ._session import anonymous_user
from ._stats import Stats
from ._types import Context, Event, UserContext

_dumps = orjson.dumps
_JSONEncodeError = orjson.JSONEncodeError
_clock_ns = time.time_ns


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
        before_send: BeforeSend | None = None,
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
        # Copied out of the options: the hot path reads them on every call.
        self._max_event_bytes = max_event_bytes
        # The longest JSON an event may have before track() adds its timestamp.
        self._max_unstamped_event_bytes = max_event_bytes - RENDERED_TIMESTAMP_BYTES
        self._reporter = Reporter(on_error, on_drop)
        # Each process builds its own pipeline; the proxy is decided once, so a forked
        # child uses the proxy its parent was built with.
        self._new_pipeline = functools.partial(
            Pipeline,
            options,
            get_user or anonymous_user,
            self._reporter,
            resolve_proxy(proxy, options.api_url),
        )
        # The bound method itself: track() pays one attribute test when it is unset.
        self._before_send = (
            None
            if before_send is None
            else HookRunner(before_send, max_event_bytes, self._reporter.error).record
        )
        self._closed = False
        self._start_process_state()
        _lifecycle.register(self)
        if batch:
            _uwsgi.warn_if_threads_disabled(stacklevel=2)

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
        if self._before_send is not None:
            record = self._before_send(user_id, event_type, occurred_at, payload)
            if record is None:
                self._pipeline.counters.filtered_at_track(1)
                return
        # The common case in line: a call saved is a tenth of track()'s cost (measured with
        # bench/profile_track.py). Anything else, and every error, goes to encode_event,
        # whose record this must equal (tests/test_validation.py checks that it does).
        elif (
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
            self._refusals.refused(record)

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
        pipeline = self._pipeline
        _refuse_from_own_thread(pipeline, "flush")
        request = pipeline.request_flush()
        if request is None:
            _raise_if_stopped(pipeline)
            return
        pipeline.driver.drain(final=False)
        if not request.wait(timeout):
            assert timeout is not None  # only a timeout ends the wait unanswered
            why = pipeline.cycle.why_undelivered()
            raise _flush_timed_out(timeout, self.stats().queued, why)
        if request.error is not None:
            raise _undelivered_error("flush()", request) from request.error

    def shutdown(self, timeout: float | None = None) -> None:
        """Send everything queued and stop the background thread; idempotent.

        Returns within ``timeout`` seconds (default: ``shutdown_timeout``). Events still
        undelivered then are handed to ``on_drop`` and counted as dropped, and like events
        the server refused they make this raise :class:`SegOpsApiError` with their count.
        """
        if self._closed:
            return
        pipeline = self._pipeline
        _refuse_from_own_thread(pipeline, "shutdown")
        self._closed = True
        self._finalizer.detach()
        deadline = self._options.shutdown_timeout if timeout is None else timeout
        request = pipeline.shutdown(deadline)
        # The threads may also have ended before the deadline, when nothing left could
        # be sent before it (the next retry was due after it): the same message then.
        _raise_if_stopped(pipeline)
        surrender = pipeline.cycle.surrender
        if surrender.given_up_at_deadline:
            error = shutdown_deadline_error(
                surrender.given_up_at_deadline, deadline, surrender.deadline_cause
            )
            raise error from None if request is None else request.error
        if request is not None and request.error is not None:
            raise _undelivered_error("shutdown()", request) from request.error

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
        return self._pipeline.stats()

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
        self._install(self._new_pipeline())

    def _install(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        # The hot path calls this attribute directly: no branch on the batch mode.
        self._append: Callable[[Record], bool] = (
            self._append_first if self._options.batch and pipeline.threaded else pipeline.append
        )
        self._refusals = Refusals(
            pipeline,
            block=self._options.on_full == "block",
            max_queue_size=self._options.max_queue_size,
            closed=lambda: self._closed,
        )
        # Stops this process's thread if the client is dropped without shutdown(); holds
        # the pipeline, not the client, so it never keeps the client alive.
        self._finalizer = weakref.finalize(self, pipeline.stop_soon)
        self._finalizer.atexit = False

    def _append_first(self, record: Record) -> bool:
        """The first event of this process's pipeline: build it again if gevent patched
        ``threading`` since it was built (see ``_concurrency.py``), then hand the hot path
        to the pipeline.

        No lock: one created before gevent patched is native, and building a pipeline can
        yield to another greenlet, which would then block the hub on it. Rebuilding happens
        only among greenlets, which switch only where they yield, so the new pipeline is
        installed only if no other greenlet installed one while it was being built; until
        then every event comes through here. Without a rebuild, concurrent first events
        each just set the same attribute.
        """
        pipeline = self._pipeline
        if not self._closed and pipeline.outdated_by_gevent:
            rebuilt = self._new_pipeline()
            if self._pipeline is pipeline and not self._closed:
                self._finalizer.detach()
                self._install(rebuilt)
            else:
                rebuilt.transport.close()
            pipeline.transport.close()
        self._append = self._pipeline.append
        return self._append(record)

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
            self._pipeline.buffer.close()

    def _shutdown_at_exit(self) -> None:
        try:
            self.shutdown(self._options.shutdown_timeout)
        except SegOpsApiError as error:
            self._reporter.error(error)


def _undelivered_error(call: str, request: FlushRequest) -> SegOpsApiError:
    """Why ``call`` could not deliver some of the events it waited for, and where they are."""
    cause = request.error
    assert cause is not None
    undelivered = request.undelivered
    queued = undelivered - sum(request.given_up.values())
    # Whole, when all went one way: "They were handed to on_drop ..."; else counted.
    whole = len(request.given_up) + bool(queued) == 1
    where = []
    for reason, count in request.given_up.items():
        subject = None if whole else f"{count} of them {'was' if count == 1 else 'were'}"
        where.append(handed_over(count, reason, subject))
    if queued:
        if whole:
            subject = "It stays queued and is" if queued == 1 else "They stay queued and are"
        else:
            subject = f"{queued} of them {'stays' if queued == 1 else 'stay'} queued and"
            subject += " is" if queued == 1 else " are"
        # Only an API that cannot be reached (or a token that cannot be had) keeps events.
        where.append(f"{subject} tried again every flush_interval")
    reason = describe(cause)
    fix = fix_for(cause)
    return SegOpsApiError(
        sentences(
            f"SegOps: {count_events(undelivered)} could not be delivered by {call}: {reason}",
            "; ".join(where),
            fix,
        ),
        status=getattr(cause, "status", None),
        body=getattr(cause, "body", ""),
        undelivered=undelivered,
        reason=reason,
        fix=fix,
    )


def _flush_timed_out(timeout: float, queued: int, why: BaseException | None) -> SegOpsApiError:
    reason = "the API has not answered yet" if why is None else describe(why)
    stays = "It stays" if queued == 1 else "They stay"
    fix = sentences(
        fix_for(why) if why is not None else "",
        "To wait longer, pass flush() a larger timeout",
    )
    return SegOpsApiError(
        sentences(
            f"SegOps: flush(timeout={timeout:g}) returned with {count_events(queued)} "
            f"undelivered: {reason}",
            f"{stays} queued and will be sent once the API answers",
            fix,
        ),
        undelivered=queued,
        reason=reason,
        fix=fix,
    )


def _raise_if_stopped(pipeline: Pipeline) -> None:
    """flush() and shutdown() never return normally once the sending thread has stopped."""
    failure = pipeline.failure
    if failure is not None:
        # A new exception each time: raising one object twice would pile up tracebacks.
        raise SegOpsApiError(str(failure), reason=failure.reason, fix=failure.fix)


def _refuse_from_own_thread(pipeline: Pipeline, method: str) -> None:
    if pipeline.driver.is_own_thread:
        raise RuntimeError(
            f"SegOps: {method}() was called from on_error or on_drop, which run on the "
            f"thread that would have to do its work, so it would wait forever. Call "
            f"{method}() from your own code after the callback returns."
        )
