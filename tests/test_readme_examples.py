"""Every Python example in the README runs as pasted, against a real local ingest server.

Each ```python block is written to a file and run in a fresh interpreter, with the
environment a newcomer sets after starting ``segops-fast serve`` (``SEGOPS_API_URL`` and
``SEGOPS_API_KEY``; ``SEGOPS_PUBLIC_KEY`` and ``SEGOPS_HMAC_SECRET`` for the public-key
example) pointing at a LocalIngestServer. It must exit 0, and the server must then hold
exactly the events the block says it stores (``<!-- stores N events -->``, none without
it), each once. Blocks marked ``<!-- not run: REASON -->`` are skipped with that reason,
so the test report lists them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segops_fast.testing import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, LocalIngestServer, PublicKey

from .markdown_examples import CodeBlock, code_blocks

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCKS = [block for block in code_blocks(README) if block.language == "python"]
HMAC_SECRET = "5e" * 32
# Longer than any example needs (the multiprocessing one starts 4 spawned interpreters).
EXAMPLE_TIMEOUT = 120.0
# Proxies from the environment would carry loopback requests away from the local server.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def server() -> Iterator[LocalIngestServer]:
    public_key = PublicKey(hmac_secret=HMAC_SECRET, require_signed_user_id=True)
    with LocalIngestServer(public_keys={DEFAULT_PUBLIC_KEY: public_key}) as running:
        yield running


def newcomer_environment(server: LocalIngestServer) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name not in PROXY_VARIABLES}
    environment.update(
        SEGOPS_API_URL=server.url,
        SEGOPS_API_KEY=DEFAULT_SECRET_KEY,
        SEGOPS_PUBLIC_KEY=DEFAULT_PUBLIC_KEY,
        SEGOPS_HMAC_SECRET=HMAC_SECRET,
    )
    return environment


def test_the_readme_has_python_examples() -> None:
    runnable = [block for block in PYTHON_BLOCKS if block.not_run is None]
    assert len(runnable) >= 5, [block.name for block in PYTHON_BLOCKS]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.name)
def test_python_example_runs_as_pasted(
    block: CodeBlock, server: LocalIngestServer, tmp_path: Path
) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.name} not run: {block.not_run}")
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=newcomer_environment(server),
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert finished.returncode == 0, (
        f"{block.name} exited {finished.returncode}:\n{finished.stderr}"
    )
    summary = server.summary()
    assert summary["rejected_requests"] == 0, (summary, finished.stderr)
    assert summary["events"] == block.stores, (summary, finished.stderr)
    assert summary["duplicate_events"] == 0, summary
