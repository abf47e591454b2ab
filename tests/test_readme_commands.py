"""The shell commands of the README and the docs: flags that exist, and curl lines that work.

Every ``segops-fast COMMAND --flag`` in a ```bash block must name a flag that
``segops-fast COMMAND --help`` lists, as must every row of the ``send`` options table
(``docs/backfills/cli.md``). The curl lines that read and reset the local server's
counts (``docs/testing.md``) are run as pasted, against ``segops-fast serve`` on a free
port instead of 8008. The README's two set-up commands are the ones ``.ci/run`` runs.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator

import pytest

import segops_fast as segops
from segops_fast.testing import DEFAULT_SECRET_KEY, IngestServerProcess

from .markdown_examples import (
    DOCS,
    README,
    REPOSITORY,
    CodeBlock,
    code_blocks,
    documentation_files,
)

BASH_BLOCKS = [
    block
    for path in documentation_files()
    for block in code_blocks(path)
    if block.language == "bash"
]
SEND_PAGE = DOCS / "backfills" / "cli.md"
README_PORT = "127.0.0.1:8008"


def shell_lines(blocks: list[CodeBlock] = BASH_BLOCKS) -> list[str]:
    """Each command of the bash blocks, continuation lines joined, comments left out."""
    commands = []
    for block in blocks:
        for line in block.code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True, posix=True) if line.strip() else []
            if words:
                commands.append(shlex.join(words))
    return commands


def segops_fast_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag given to ``segops-fast COMMAND`` in a bash block, and
    for every row of the ``send`` options table."""
    found: set[tuple[str, str]] = set()
    for command in shell_lines():
        words = shlex.split(command)
        if words[0] == "segops-fast":
            found.update((words[1], word.split("=")[0]) for word in words if word.startswith("--"))
    options = SEND_PAGE.read_text("utf-8").split("## Options", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| (`--.*?) \|", options, flags=re.MULTILINE):
        found.update(("send", flag) for flag in re.findall(r"`(--[\w-]+)", row))
    return sorted(found)


@functools.cache
def command_help(command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "segops_fast", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


FLAGS = segops_fast_flags()


def test_the_docs_give_segops_fast_flags() -> None:
    commands = {command for command, _ in FLAGS}
    assert {"serve", "send"} <= commands, commands


@pytest.mark.parametrize(
    ("command", "flag"), FLAGS, ids=[f"{command} {flag}" for command, flag in FLAGS]
)
def test_each_flag_in_the_readme_exists(command: str, flag: str) -> None:
    assert re.search(rf"{re.escape(flag)}\b", command_help(command)), (
        f"the docs give segops-fast {command} {flag}, which its --help does not list"
    )


@pytest.fixture
def serve() -> Iterator[IngestServerProcess]:
    with IngestServerProcess() as running:
        yield running


def test_the_curl_lines_read_and_reset_the_counts(serve: IngestServerProcess) -> None:
    curls = [command for command in shell_lines() if command.startswith("curl ")]
    summary, by_event_type, reset = (
        next(command for command in curls if command.endswith(path))
        for path in ("/_local/summary", "/_local/summary/by-event-type", "/_local/reset")
    )
    with segops.SegOpsClient(serve.url, DEFAULT_SECRET_KEY) as client:
        client.track(user_id="u-1", event_type="page_viewed")

    def run(command: str) -> object:
        pasted = shlex.split(command.replace(README_PORT, serve.url.split("://", 1)[1]))
        finished = subprocess.run(pasted, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(finished.stdout)

    assert run(summary)["events"] == 1  # type: ignore[index]
    assert run(by_event_type)["page_viewed"]["unique_events"] == 1  # type: ignore[index]
    run(reset)
    assert run(summary)["events"] == 0  # type: ignore[index]


def test_the_readme_gives_the_set_up_commands_that_ci_runs() -> None:
    readme = [block for block in BASH_BLOCKS if block.path == README]
    ci = (REPOSITORY / ".ci" / "run").read_text("utf-8")
    install, test = 'python -m pip install -e ".[dev]"', "python -m pytest -p no:cacheprovider"
    commands = shell_lines(readme)
    assert shlex.join(shlex.split(install)) in commands, commands
    assert test in commands, commands
    assert '-m pip install --quiet -e ".[dev]"' in ci
    assert "-m pytest -p no:cacheprovider" in ci
