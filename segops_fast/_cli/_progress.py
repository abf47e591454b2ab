"""The progress bar of ``segops-fast send``, drawn on a terminal by tqdm when it is installed.

This module owns what the bar shows (input read, with percentage and ETA when the size is
known, events done, events/s, failures) and when there is one: only when the stream is a
terminal and the ``cli`` extra (tqdm) is installed; otherwise it does nothing. The bar is
removed when it closes, so that only the summary is left.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from ..backfill._job import Totals

try:
    import tqdm
except ImportError:  # without the cli extra: no bar
    tqdm = None  # type: ignore[assignment]


class Progress:
    def __init__(self, *, total_bytes: int | None, stream: TextIO) -> None:
        self._bar: Any = None
        self._began = time.monotonic()
        self._bytes_shown = 0
        if tqdm is None or not stream.isatty():
            return
        self._bar = tqdm.tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=stream,
            leave=False,
            dynamic_ncols=True,
            desc="segops-fast send",
        )

    def update(self, totals: Totals) -> None:
        if self._bar is None:
            return
        elapsed = time.monotonic() - self._began
        done = totals.sent + totals.failed + totals.invalid
        rate = totals.sent / elapsed if elapsed > 0 else 0.0
        self._bar.set_postfix_str(
            f"{done:,} events, {rate:,.0f} events/s, {totals.failed:,} failed, "
            f"{totals.invalid:,} invalid",
            refresh=False,
        )
        self._bar.update(totals.bytes_read - self._bytes_shown)
        self._bytes_shown = totals.bytes_read

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
