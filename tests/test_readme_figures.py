"""The measured figures of the README and the docs, and the versions they name, agree with
their sources.

A figure is measured once, by a script under ``bench/`` that writes ``bench/results/``.
The docs' benchmark pages include those files; prose that quotes a figure cites it with a
``<!-- from bench/results/FILE -->`` comment (see ``tests/markdown_examples.py``), and this
test fails as soon as the two differ: after a benchmark is run again, or when a page is
edited by hand. The versions of the peers that ``bench/`` compares against are pinned in
``pyproject.toml``; wherever the README or a page names one of them with a version, it
must be the pinned one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .markdown_examples import (
    REPOSITORY,
    Citation,
    citations,
    documentation_files,
    prose_lines,
    shown_name,
)

FILES = documentation_files()
CITATIONS = [citation for path in FILES for citation in citations(path)]
PYPROJECT = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
PINNED = sorted(set(re.findall(r'"([A-Za-z][\w.-]*)==([\d.]+)"', PYPROJECT)))
# A list item, a heading, a fence or a table: a line that begins a block of its own.
STARTS_A_BLOCK = re.compile(r"\s*([-*] |\d+\. |#|```|\|)")


def test_the_docs_cite_their_figures() -> None:
    sources = {citation.source for citation in CITATIONS}
    assert len(sources) >= 5, sources


@pytest.mark.parametrize("citation", CITATIONS, ids=lambda citation: citation.name)
def test_cited_figures_are_in_their_results_file(citation: Citation) -> None:
    source = REPOSITORY / citation.source
    assert source.is_file(), f"{citation.name} cites {citation.source}, which does not exist"
    results = source.read_text(encoding="utf-8")
    if citation.figures:
        paragraph = " ".join(citation.text).replace("µs", "us")
        for figure in citation.figures:
            assert figure in results, f"{citation.name}: {figure!r} is not in {citation.source}"
            assert figure in paragraph, f"{citation.name}: the text does not say {figure!r}"
    else:
        # A copy may wrap long lines, and align a table's columns, differently.
        copied = [line for line in citation.text if line.strip()]
        assert copied, f"{citation.name}: nothing follows the comment"
        differing = [line for line in copied if _bare(line) not in _bare(results)]
        assert not differing, f"{citation.name}: not in {citation.source}: {differing}"


@pytest.mark.parametrize(("package", "version"), PINNED, ids=[name for name, _ in PINNED])
def test_the_docs_name_the_pinned_version(package: str, version: str) -> None:
    mention = re.compile(rf"\b{re.escape(package)}`?,? (\d+(?:\.\d+)+)")
    named = {
        (shown_name(path), found)
        for path in FILES
        for found in mention.findall(path.read_text("utf-8"))
    }
    assert named, f"neither the README nor the docs name {package} with its version"
    wrong = sorted(where for where, found in named if found != version)
    assert not wrong, f"{package} is pinned at {version}, but named otherwise in {wrong}"


def _bare(text: str) -> str:
    """The text without whitespace and table bars, which wrapping and alignment change."""
    return re.sub(r"[\s|]", "", text)


def test_check_comments_never_split_the_prose() -> None:
    """A line that starts with ``<!--`` is an HTML block in Markdown, up to its ``-->``: it
    ends the paragraph before it, and text after it on that line shows as raw HTML. So a
    comment stands on a line of its own (or inside a table row), and not between two
    lines of one paragraph."""
    misplaced = [place for path in FILES for place in _misplaced_comments(path)]
    assert not misplaced, misplaced


def _misplaced_comments(path: Path) -> list[str]:
    lines = path.read_text("utf-8").splitlines()
    misplaced = []
    for index, line in prose_lines(lines):
        if "<!--" not in line or line.lstrip().startswith("|"):
            continue
        before = lines[index - 1] if index > 0 else ""
        after = lines[index + 1] if index + 1 < len(lines) else ""
        alone = re.fullmatch(r"\s*(<!--.*?-->)+\s*", line) is not None
        inside_a_paragraph = bool(before.strip()) and bool(after.strip())
        if not alone or (inside_a_paragraph and not STARTS_A_BLOCK.match(after)):
            misplaced.append(f"{shown_name(path)}:{index + 1}")
    return misplaced
