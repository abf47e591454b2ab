"""The one writer of ``bench/results/``: each script's figures as JSON, its report as
Markdown, and its chart, all named after the script.

This module owns where results go and how they are named (``NAME.json``, ``NAME.md``,
``NAME.png`` in ``--out``, by default ``bench/results/``); the scripts own what is in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import orjson

RESULTS = Path(__file__).resolve().parent.parent / "results"


def write_results(
    out: Path,
    name: str,
    report: str,
    figures: dict[str, Any] | None = None,
    chart: Callable[[dict[str, Any], Path], None] | None = None,
) -> None:
    """Write ``report`` (Markdown) to ``out/NAME.md``, ``figures`` to ``out/NAME.json``
    and ``chart(figures, out/NAME.png)``, whichever are given; then print the report."""
    out.mkdir(parents=True, exist_ok=True)
    if figures is not None:
        (out / f"{name}.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        if chart is not None:
            chart(figures, out / f"{name}.png")
    (out / f"{name}.md").write_text(report)
    print(report)


def preformatted(text: str) -> str:
    """A report of aligned columns, as Markdown that keeps them aligned."""
    return f"```text\n{text.rstrip()}\n```\n"
