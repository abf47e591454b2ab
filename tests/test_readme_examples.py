"""Every Python example in the README and the docs runs as pasted, against a real local server.

Each ```python block is written to a file and run in a fresh interpreter, with the
environment a newcomer sets after starting ``segops-fast serve`` (``SEGOPS_API_URL`` and
``SEGOPS_API_KEY``; ``SEGOPS_PUBLIC_KEY`` and ``SEGOPS_HMAC_SECRET`` for the public-key
example) pointing at a LocalIngestServer. It must exit 0, and the server must then hold
exactly the events the block says it stores (``<!-- stores N events -->``, none without
it), each once. Blocks marked ``<!-- not run: REASON -->`` are skipped with that reason,
so the test report lists them. The ASGI recipe is also served as its comment says, with
uvicorn, and stopped with SIGTERM: the order it is sent is stored.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from segops_fast.testing import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY, LocalIngestServer, PublicKey

from .markdown_examples import README, CodeBlock, code_blocks, documentation_files

PYTHON_BLOCKS = [
    block
    for path in documentation_files()
    for block in code_blocks(path)
    if block.language == "python"
]
HMAC_SECRET = "5e" * 32
# The ASGI recipe's first line says how it is served, and the test serves it that way.
ASGI_RECIPE_FIRST_LINE = "# app.py, served by: uvicorn app:app"
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


def test_the_readme_and_the_docs_have_python_examples() -> None:
    runnable = [block for block in PYTHON_BLOCKS if block.not_run is None]
    assert len(runnable) >= 8, [block.name for block in PYTHON_BLOCKS]
    assert any(block.path == README for block in runnable), "the README's quickstart must run"


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


def test_the_asgi_recipe_delivers_an_order_when_uvicorn_is_stopped(
    server: LocalIngestServer, tmp_path: Path
) -> None:
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    (recipe,) = [block for block in PYTHON_BLOCKS if block.code.startswith(ASGI_RECIPE_FIRST_LINE)]
    (tmp_path / "app.py").write_text(recipe.code, encoding="utf-8")
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", "0"],
        cwd=tmp_path,
        env=newcomer_environment(server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert uvicorn.stderr is not None
    output: list[str] = []
    url = ""
    try:
        # uvicorn says when it serves, and on which port; reading its log is the wait.
        for line in uvicorn.stderr:
            output.append(line.decode())
            serving = re.search(r"Uvicorn running on (http://\S+)", output[-1])
            if serving:
                url = serving.group(1)
                break
        assert url, "".join(output)
        order = {"user_id": "u-1", "total": 42.0}
        answer = urllib3.request("POST", f"{url}/orders", json=order)
        assert answer.status == 200, (answer.data, output)
        uvicorn.send_signal(signal.SIGTERM)
        output.append(uvicorn.stderr.read().decode())
        uvicorn.wait(EXAMPLE_TIMEOUT)
    finally:
        if uvicorn.poll() is None:
            uvicorn.kill()
            uvicorn.wait()
    errors = "".join(output)
    assert [event["payload"] for event in server.events] == [order], errors
    assert server.summary()["rejected_requests"] == 0
