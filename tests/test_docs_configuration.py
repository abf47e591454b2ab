"""The configuration page's options table names every keyword of ``SegOpsClient``, with its
default, and nothing else.

The table in ``docs/configuration.md`` is the one place the options are explained; this
test holds it to the constructor's signature, so that an option added, renamed or given
a new default fails here until the table says so. A default written as code (`` `1000` ``)
must be the signature's default exactly; a default written in words ("system trust
store", "none") must stand for ``None``; "required" means no default.
"""

from __future__ import annotations

import inspect
import re

import pytest

import segops_fast as segops

from .markdown_examples import DOCS

PAGE = DOCS / "configuration.md"
PARAMETERS = {
    name: parameter
    for name, parameter in inspect.signature(segops.SegOpsClient).parameters.items()
    if name != "self"
}


def table_rows() -> dict[str, str]:
    """Each option the table names (a row may name several), with its default column."""
    rows = {}
    for line in PAGE.read_text("utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = cells[1]
    return rows


ROWS = table_rows()


def test_the_table_names_every_option_and_no_other() -> None:
    assert set(ROWS) == set(PARAMETERS), {
        "in the signature, not the table": sorted(set(PARAMETERS) - set(ROWS)),
        "in the table, not the signature": sorted(set(ROWS) - set(PARAMETERS)),
    }


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_the_table_gives_the_default(name: str) -> None:
    default = PARAMETERS[name].default
    written = ROWS.get(name)
    assert written is not None, f"docs/configuration.md has no row for {name}"
    shown = re.match(r"`([^`]+)`", written)
    if default is inspect.Parameter.empty:
        assert written == "required", f"{name} has no default; the table says {written!r}"
    elif shown is not None:
        assert shown.group(1) == repr(default).replace("'", '"'), (
            f"{name} defaults to {default!r}; the table says {written!r}"
        )
    else:
        assert default is None, f"{name} defaults to {default!r}; the table says {written!r}"
