"""Telling the user: their callbacks, guarded, and reports that must not flood the log.

This module owns the calls to ``on_error`` and ``on_drop`` (so that nothing they raise
reaches our threads) and ``Throttle``, which lets a report repeated by a lasting
condition (a full queue, an API that cannot be reached) through at most once per interval.
It does not own what the reports say, nor the counting of events (``_stats.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import orjson

from ._delivery import GivenUp

logger = logging.getLogger("segops_fast")

OnError = Callable[[BaseException], None]
OnDrop = Callable[[list[dict[str, Any]], str], None]


def _log_error(error: BaseException) -> None:
    logger.error("%s", error)


class Reporter:
    """The user's callbacks, called so that nothing they raise reaches our threads."""

    def __init__(self, on_error: OnError | None, on_drop: OnDrop | None) -> None:
        self._on_error: OnError = on_error or _log_error
        self._on_drop = on_drop

    def error(self, error: BaseException) -> None:
        try:
            self._on_error(error)
        except Exception:
            logger.exception(
                "SegOps: the on_error callback raised (its traceback follows); sending goes "
                "on. Make the function given as on_error catch its own errors."
            )

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
            logger.exception(
                "SegOps: the on_drop callback raised (its traceback follows); sending goes "
                "on. Make the function given as on_drop catch its own errors."
            )


class Throttle:
    """Lets a repeated report through at most once every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = float("-inf")

    def allows(self, *, always: bool = False) -> bool:
        """True (and the interval starts again) if a report may go out now, or ``always``."""
        now = time.monotonic()
        if always or now - self._last >= self._interval:
            self._last = now
            return True
        return False
