"""A Sphinx directive that shows ``segops-fast COMMAND --help`` as the command prints it.

The help is run at build time, in the interpreter that builds the docs, so the page is
always the installed command's own text: a flag added or renamed changes the page with
no one editing it. In MyST::

    ```{cli-help} send
    ```

It owns nothing else about the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# argparse wraps help to the terminal's width: fixed, so the page does not depend on who built it.
HELP_WIDTH = "88"


class CliHelp(SphinxDirective):
    """``segops-fast [COMMAND] --help``, as a literal block."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        command = list(self.arguments)
        environment = {**os.environ, "COLUMNS": HELP_WIDTH}
        finished = subprocess.run(
            [sys.executable, "-m", "segops_fast", *command, "--help"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
        if finished.returncode != 0:
            raise self.error(f"segops-fast {' '.join(command)} --help failed: {finished.stderr}")
        block = nodes.literal_block(finished.stdout, finished.stdout)
        block["language"] = "text"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
