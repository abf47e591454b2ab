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

import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import orjson

from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

CHILDREN, CHILD_EVENTS, PARENT_EVENTS = 4, 1000, 5
CHILD_TIMEOUT = 20.0

#: Each client as (track(event_type, index), flush(), shutdown()) built from a server URL.
#: Each imports its library inside: a scenario process must load only the client it
#: measures, never another library's fork hooks or threads.
Adapter = tuple[Callable[[str, int], None], Callable[[], None], Callable[[], None]]


def _segops_api(module_name: str) -> Callable[[str], Adapter]:
    """segops 0.2.2 and segops_fast share one API: the drop-in promise."""

    def build(url: str) -> Adapter:
        client = importlib.import_module(module_name).SegOpsClient(url, DEFAULT_SECRET_KEY)
        return (
            lambda kind, i: client.track(user_id="u", event_type=kind, payload={"i": i}),
            client.flush,
            client.shutdown,
        )

    return build


def _segment(url: str) -> Adapter:
    from segment.analytics.client import Client  # noqa: PLC0415

    client = Client("write-key", host=url)
    return (
        lambda kind, i: client.track("u", kind, {"i": i}),
        client.flush,
        client.shutdown,
    )


def _posthog(url: str) -> Adapter:
    from posthog import Posthog  # noqa: PLC0415

    client = Posthog("phc_project_key", host=url)
    return (
        lambda kind, i: client.capture(kind, distinct_id="u", properties={"i": i}),
        client.flush,
        client.shutdown,
    )


CLIENTS: dict[str, Callable[[str], Adapter]] = {
    "segops 0.2.2": _segops_api("segops"),
    "segment-analytics-python": _segment,
    "posthog": _posthog,
    "segops_fast": _segops_api("segops_fast"),
}


def scenario(name: str, url: str) -> dict[str, Any]:
    """Run in a fresh process: the parent's side of the fork scenario."""
    track, flush, shutdown = CLIENTS[name](url)
    for index in range(PARENT_EVENTS):
        track("parent", index)
    children = []
    for number in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for index in range(CHILD_EVENTS):
                    track(f"child-{number}", index)
                flush()
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
    flush()
    shutdown()
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
            completed = subprocess.run(
                [sys.executable, __file__, "--scenario", name, server.url],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if completed.returncode != 0:
                raise SystemExit(f"{name}: the scenario failed:\n{completed.stderr}")
            outcome = orjson.loads(completed.stdout.splitlines()[-1])
            rows.append(_row(name, outcome, server.summary_by_event_type()))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--scenario"]:
        print(orjson.dumps(scenario(sys.argv[2], sys.argv[3])).decode())
    else:
        main()
