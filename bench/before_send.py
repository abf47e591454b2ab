"""What ``before_send`` costs track(): unset, against a source tree without it, and with hooks.

    python bench/before_send.py --base /tmp/segops-base   # a checkout of the code before it
    python bench/before_send.py --rounds 9 --events 50000

Each row is measured in a fresh process that imports segops_fast from the given tree and
times every call as ``compare.py`` does (timer included), with nothing sent while it
runs: the client lingers for an hour, and its queue holds every event. The rows take
turns, one process each per round, because this machine's speed drifts over seconds; a
row's figure is the median over rounds of each process's p50 (and mean).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
THIS_TREE = HERE.parent

#: The rows: (name, which tree, which hook).
_ROWS = (
    ("base tree, no before_send option", "base", "none"),
    ("this tree, before_send unset", "this", "none"),
    ("this tree, before_send returns its argument", "this", "identity"),
    ("this tree, before_send=sample_by_user(1.0)", "this", "sample_all"),
)


def _measure(tree: str, hook: str, events: int) -> dict[str, float]:
    """In the child: time each track() of ``events`` calls with segops_fast from ``tree``."""
    sys.path.insert(0, tree)
    sys.path.insert(1, str(HERE))
    from clients import keywords  # noqa: PLC0415
    from compare import latency_figures, payloads, time_each_call  # noqa: PLC0415

    import segops_fast  # noqa: PLC0415

    options: dict[str, Any] = {}
    if hook == "identity":
        options["before_send"] = lambda event: event
    elif hook == "sample_all":
        options["before_send"] = segops_fast.sample_by_user(1.0)
    client = segops_fast.SegOpsClient(
        "http://127.0.0.1:9",
        "sk_test_local",
        batch_size=events * 2,
        flush_interval=3600,
        max_queue_size=events * 2,
        max_retries=0,
        **options,
    )
    assert Path(segops_fast.__file__).resolve().is_relative_to(Path(tree).resolve())
    calls = payloads("page_viewed", events, keywords)
    time_each_call(client.track, calls[: events // 10])  # warm-up
    figures = latency_figures(time_each_call(client.track, calls))
    with contextlib.suppress(segops_fast.SegOpsApiError):
        client.shutdown(timeout=0.1)  # nothing listens there: give the events up at once
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a segops_fast source tree before this")
    parser.add_argument("--events", type=int, default=50_000, help="track() calls per process")
    parser.add_argument("--rounds", type=int, default=7, help="processes per row, in turns")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "HOOK"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(_measure(*arguments.child, arguments.events)))
        return
    trees = {"base": str(Path(arguments.base).resolve()), "this": str(THIS_TREE)}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in _ROWS}
    for _ in range(arguments.rounds):
        for name, tree, hook in _ROWS:
            completed = subprocess.run(
                [sys.executable, __file__, "--base", trees["base"], "--events",
                 str(arguments.events), "--child", trees[tree], hook],
                capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            figures[name].append(json.loads(completed.stdout.splitlines()[-1]))
    print(f"track() with nothing sent, {arguments.events:,} calls per process, "
          f"median of {arguments.rounds} processes per row (timer included)")  # fmt: skip
    print(f"{'row':48} {'p50 us':>8} {'mean us':>8}")
    for name, rounds in figures.items():
        p50 = statistics.median(round_["p50_us"] for round_ in rounds)
        mean = statistics.median(round_["mean_us"] for round_ in rounds)
        print(f"{name:48} {p50:8.3f} {mean:8.3f}")


if __name__ == "__main__":
    main()
