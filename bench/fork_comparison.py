"""Which ingestion clients survive a pre-fork server? One scenario, four clients.

Each client, in a fresh process: the parent creates it and tracks 5 events, which stay
queued (none of these clients sends 5 events at once); then it forks 4 children, as
gunicorn with ``preload_app`` does. Each child tracks 1,000 events, flushes, and exits.
The parent then flushes and shuts down. One LocalIngestServer, in its own process,
counts the events of each process. A child still running 20 s after it started is
killed and counted as hung.

    pip install -e ".[dev,bench]"
    python bench/fork_comparison.py            # prints a Markdown table

Exactly once means: the parent's 5 events arrive once (not once per child), and each
child's 1,000 arrive once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import orjson
from harness.clients import BUILDERS, NO_OP, run_fresh

from segops_fast.testing import IngestServerProcess

CHILDREN, CHILD_EVENTS, PARENT_EVENTS = 4, 1000, 5
CHILD_TIMEOUT = 20.0

#: The clients compared: every one but the no-op floor, segops_fast last.
CLIENTS = [name for name in BUILDERS if name not in (NO_OP, "segops_fast")] + ["segops_fast"]


def scenario(name: str, url: str) -> dict[str, Any]:
    """Run in a fresh process: the parent's side of the fork scenario."""
    client = BUILDERS[name](url)
    for index in range(PARENT_EVENTS):
        client.send("u", "parent", {"i": index})
    children = []
    for number in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for index in range(CHILD_EVENTS):
                    client.send("u", f"child-{number}", {"i": index})
                client.flush()
                code = 0
            finally:
                os._exit(code)
        children.append((pid, time.monotonic()))
    hung = failed = 0
    for pid, started in children:
        while True:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                failed += os.waitstatus_to_exitcode(status) != 0
                break
            if time.monotonic() - started > CHILD_TIMEOUT:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung += 1
                break
            time.sleep(0.05)
    client.flush()
    client.shutdown()
    return {"hung_children": hung, "failed_children": failed}


def _row(name: str, outcome: dict[str, Any], by_type: dict[str, dict[str, int]]) -> list[str]:
    parent = by_type.get("parent", {"events": 0, "unique_events": 0})
    children = [by_type.get(f"child-{n}", {"unique_events": 0}) for n in range(CHILDREN)]
    child_unique = sum(child["unique_events"] for child in children)
    duplicates = sum(counts["events"] - counts["unique_events"] for counts in by_type.values())
    exactly_once = (
        parent["events"] == PARENT_EVENTS
        and child_unique == CHILDREN * CHILD_EVENTS
        and duplicates == 0
        and not outcome["hung_children"]
    )
    return [
        name,
        f"{parent['events']} of {PARENT_EVENTS}",
        f"{child_unique:,} of {CHILDREN * CHILD_EVENTS:,}",
        str(duplicates),
        str(outcome["hung_children"]),
        "yes" if exactly_once else "**no**",
    ]


def main() -> None:
    header = [
        "client",
        "parent's events stored",
        "children's events stored",
        "stored twice",
        "children hung",
        "exactly once",
    ]
    rows = [header, ["---"] * len(header)]
    with IngestServerProcess() as server:
        for name in CLIENTS:
            server.reset()
            outcome = run_fresh(__file__, "--scenario", name, server.url, timeout=300)
            rows.append(_row(name, outcome, server.summary_by_event_type()))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--scenario"]:
        print(orjson.dumps(scenario(sys.argv[2], sys.argv[3])).decode())
    else:
        main()
