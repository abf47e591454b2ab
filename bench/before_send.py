"""What ``before_send`` costs track(): unset, against a source tree without it, and with hooks.

    python bench/before_send.py --base /tmp/segops-base   # a checkout of the code before it
    python bench/before_send.py --rounds 9 --events 50000

Each row is measured in a fresh process that imports segops_fast from the given tree and
times every call as ``compare.py`` does (timer included), with the idle settings of
``profile_track.py`` (the client lingers for an hour; only a full 512 KiB batch is sent,
to ``segops-fast serve`` in its own process). The rows take
turns, one process each per round, because this machine's speed drifts over seconds; a
row's figure is the median over rounds of each process's p50 (and mean).
"""

from __future__ import annotations

import argparse
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


def _measure(tree: str, hook: str, url: str, events: int) -> dict[str, float]:
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
        url,
        "sk_test_local",
        batch_size=events * 2,
        flush_interval=3600,
        max_queue_size=events * 2,
        **options,
    )
    # The first event starts the threads: all of them exist before the clock starts.
    client.track(user_id="user-0", event_type="first")
    client.flush()
    assert Path(segops_fast.__file__).resolve().is_relative_to(Path(tree).resolve())
    calls = payloads("page_viewed", events, keywords)
    time_each_call(client.track, calls[: events // 10])  # warm-up
    figures = latency_figures(time_each_call(client.track, calls))
    client.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a segops_fast source tree before this")
    parser.add_argument("--events", type=int, default=50_000, help="track() calls per process")
    parser.add_argument("--rounds", type=int, default=7, help="processes per row, in turns")
    parser.add_argument("--child", nargs=3, metavar=("TREE", "HOOK", "URL"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(_measure(*arguments.child, arguments.events)))
        return
    # Imported here, not at the top: a child imports segops_fast from the tree it measures.
    from segops_fast.testing import IngestServerProcess  # noqa: PLC0415

    trees = {"base": str(Path(arguments.base).resolve()), "this": str(THIS_TREE)}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in _ROWS}
    with IngestServerProcess() as server:
        for _ in range(arguments.rounds):
            for name, tree, hook in _ROWS:
                completed = subprocess.run(
                    [sys.executable, __file__, "--base", trees["base"], "--events",
                     str(arguments.events), "--child", trees[tree], hook, server.url],
                    capture_output=True, text=True, check=True, timeout=300,
                )  # fmt: skip
                figures[name].append(json.loads(completed.stdout.splitlines()[-1]))
    print(f"track() idle (a batch sent per 512 KiB), {arguments.events:,} calls per process, "
          f"median of {arguments.rounds} processes per row (timer included)")  # fmt: skip
    print(f"{'row':48} {'p50 us':>8} {'mean us':>8}")
    for name, rounds in figures.items():
        p50 = statistics.median(round_["p50_us"] for round_ in rounds)
        mean = statistics.median(round_["mean_us"] for round_ in rounds)
        print(f"{name:48} {p50:8.3f} {mean:8.3f}")


if __name__ == "__main__":
    main()
