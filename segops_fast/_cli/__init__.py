"""The ``segops-fast`` command: argument parsing and dispatch to one module per subcommand.

Exit status: 0 success, 1 the command ran but its check failed (or, for ``send``, some
events failed or were invalid, or it stopped on an error before the end of its input),
2 usage error, 130 interrupted (``send``). ``--version`` prints the package's version.
"""

from __future__ import annotations

import argparse

from .._version import __version__
from . import _demo, _send, _serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segops-fast", description="The segops_fast ingestion client's tools."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve.add_parser(commands)
    _demo.add_parser(commands)
    _send.add_parser(commands)
    arguments = parser.parse_args(argv)
    result: int = arguments.run(arguments)
    return result
