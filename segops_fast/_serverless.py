"""``flush_after``: delivering each invocation's events before a serverless platform freezes us.

AWS Lambda and Cloud Functions freeze the process between invocations, so the background
thread cannot be relied on to send once the handler has returned: events tracked late in
an invocation would wait, frozen, until the next one (or be lost with the instance).
This module owns the end-of-invocation flush, bounded in time, that keeps the client (its
pooled connection, its session token) for the next invocation. It does not own sending:
after a freeze, the pool finds connections the server closed meanwhile and opens new ones
(``_transport.py``).
"""

from __future__ import annotations

from contextlib import ContextDecorator
from types import TracebackType

from ._client import SegOpsClient
from ._errors import SegOpsApiError
from ._options import positive

#: The default bound of the end-of-invocation flush (seconds): against a reachable API it
#: takes about a millisecond (bench/serverless_flush.py); the bound matters when the API
#: is not reachable, and the events then stay queued for the next invocation.
DEFAULT_INVOCATION_FLUSH_TIMEOUT = 2.0


class FlushAfter(ContextDecorator):
    """Flushes ``client`` when the ``with`` block, or each call of the decorated function,
    ends; see :func:`flush_after`."""

    def __init__(self, client: SegOpsClient, timeout: float) -> None:
        if not isinstance(client, SegOpsClient):
            raise TypeError(f"flush_after() takes a SegOpsClient, got {type(client).__name__}")
        positive("timeout", timeout)
        self._client = client
        self._timeout = timeout

    def __enter__(self) -> SegOpsClient:
        return self._client

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._client.flush(self._timeout)
        except SegOpsApiError as error:
            # The handler's own outcome must not change because analytics lagged.
            self._client._reporter.error(error)


def flush_after(
    client: SegOpsClient, timeout: float = DEFAULT_INVOCATION_FLUSH_TIMEOUT
) -> FlushAfter:
    """A decorator and context manager that flushes ``client`` at the end of each invocation.

    It waits at most ``timeout`` seconds and never raises: an error (events refused, or
    still undelivered when ``timeout`` passes) goes to the client's ``on_error``, and events
    not yet delivered stay queued for the next invocation. The client stays open, so its
    connection and session token serve the next invocation too.
    """
    return FlushAfter(client, timeout)
