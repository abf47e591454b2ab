"""Where a backfill finds the API key it is not given: the environment of its process.

This module owns reading the key from ``SEGOPS_API_KEY``, or from the file named by
``SEGOPS_API_KEY_FILE`` (a mounted secret: its content, one final newline allowed), and
refusing a key that cannot be sent (whitespace, control characters) with a masked
message. Dask workers find their key this way, so that it never travels in a task graph,
where any client of the scheduler could read it. It does not send anything.
"""

from __future__ import annotations

import os

from .._secrets import key_problem, mask_key

KEY_VARIABLE = "SEGOPS_API_KEY"
KEY_FILE_VARIABLE = "SEGOPS_API_KEY_FILE"


def api_key_from_environment() -> str:
    """The key in ``SEGOPS_API_KEY``, else in the file ``SEGOPS_API_KEY_FILE`` names;
    ``ValueError`` saying what to set when there is none or it is unusable."""
    key = os.environ.get(KEY_VARIABLE)
    where = KEY_VARIABLE
    if not key:
        path = os.environ.get(KEY_FILE_VARIABLE)
        if not path:
            raise ValueError(
                f"no API key: set {KEY_VARIABLE}, or {KEY_FILE_VARIABLE} to a file that "
                "holds it, in the environment of the process that sends (on Dask, of "
                "every worker)"
            )
        where = f"the file {path} ({KEY_FILE_VARIABLE})"
        try:
            with open(path, encoding="utf-8") as file:
                key = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the API key from {where}: {error}") from None
        # A file ends with a newline by convention (echo, editors): that one only.
        key = key[:-1] if key.endswith("\n") else key
    check_api_key(key, where)
    return key


def check_api_key(key: str, where: str) -> None:
    """``ValueError`` naming ``where`` the key came from if it cannot be sent as it is."""
    problem = key_problem(key)
    if problem:
        raise ValueError(
            f"the API key {shown_masked(key)} in {where} {problem}: strip it where it is "
            "stored or read (it is never stripped silently)"
        )


def shown_masked(key: str) -> str:
    """The key masked, with any control character in what shows escaped (``\\n``), so that
    the message stays on one line."""
    return ascii(mask_key(key))[1:-1]
