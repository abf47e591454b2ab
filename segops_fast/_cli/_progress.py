"""The progress bar of ``segops-fast send``, drawn on a terminal by tqdm when it is installed.

This module owns what the bar shows and when there is one. It counts events settled
(sent, failed or invalid; for a resumed job, from where the job stood), with their rate;
the share of the input read comes second, as a figure beside it, since reading runs ahead
of sending (by far, under ``--rate``). There is a bar only when the stream is a terminal
and the ``cli`` extra (tqdm) is installed; otherwise it does nothing. It is removed when
it closes, so that only the summary is left; lines printed meanwhile go above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from ..backfill._job import Totals

try:
    import tqdm
except ImportError:  # without the cli extra: no bar
    tqdm = None  # type: ignore[assignment]


class Progress:
    def __init__(self, *, total_bytes: int | None, stream: TextIO) -> None:
        self._bar: Any = None
        self._total_bytes = total_bytes
        self._shown = 0
        if tqdm is None or not stream.isatty():
            return
        self._bar = tqdm.tqdm(
            unit=" events",
            unit_scale=True,
            file=stream,
            leave=False,
            dynamic_ncols=True,
            desc="segops-fast send",
        )

    def update(self, totals: Totals) -> None:
        if self._bar is None:
            return
        done = totals.sent + totals.failed + totals.invalid
        read = ""
        if self._total_bytes:
            share = min(100, 100 * totals.bytes_read // self._total_bytes)
            read = f", {share}% of {_size(self._total_bytes)} read"
        self._bar.set_postfix_str(
            f"{totals.sent:,} sent, {totals.failed:,} failed, {totals.invalid:,} invalid{read}",
            refresh=False,
        )
        self._bar.update(done - self._shown)
        self._shown = done

    def clear_for(self, write: Callable[[], None]) -> None:
        """Call ``write`` (which prints a line) with the bar out of its way."""
        if self._bar is None:
            write()
            return
        with self._bar.external_write_mode():
            write()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _size(count: int) -> str:
    """``130.2 MB``: bytes in the units of a file manager."""
    value, unit = float(count), "bytes"
    for larger in ("KB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{count:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
