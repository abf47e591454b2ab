"""Reading a Markdown file's code blocks and cited figures, for the tests that check them.

This module owns the conventions by which a Markdown file (the README today, any page of a
documentation site later) says what its examples and figures are:

- A fenced code block is an example in the language its fence names (```` ```python ````).
- An HTML comment on the line just before a fence says how it is checked, and renders as
  nothing: ``<!-- not run: REASON -->`` (it cannot run here, and why) or
  ``<!-- stores N events -->`` (run against a local ingest server, it stores N events;
  without that comment, a block that runs is expected to store none).
- ``<!-- from bench/results/FILE -->`` on the line just before a block (a fenced block, or
  lines up to the next blank line, such as a table) says the block is copied from that file:
  each of its non-blank lines must appear in the file.
- ``<!-- from bench/results/FILE: "figure", "figure" -->`` inside a paragraph says the
  paragraph cites those figures from that file: each must appear both in the file and in
  the paragraph (where "us" may be written "µs").

The documentation is the README and every page of the site in ``docs/``
(:func:`documentation_files`); the tests read all of them the same way.

It owns nothing about running examples or comparing figures: the tests do that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(```+)\s*([\w+-]*)")
_COMMENT = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
_NOT_RUN = re.compile(r"^not run:\s*(.+)$")
_STORES = re.compile(r"^stores (\d+) events?$")
_FROM = re.compile(r"<!--\s*from\s+(\S+?)(?::\s*(.*?))?\s*-->")
_QUOTED = re.compile(r'"([^"]+)"')
_ANY_COMMENT = re.compile(r"<!--.*?-->")
_CODE_SPAN = re.compile(r"`+[^`]*`+")

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
DOCS = REPOSITORY / "docs"
# Sphinx's output, when the site has been built in the clone.
_BUILD = DOCS / "_build"


def documentation_files() -> list[Path]:
    """The README and every Markdown page of the documentation site, in a stable order."""
    pages = sorted(path for path in DOCS.rglob("*.md") if _BUILD not in path.parents)
    return [README, *pages]


def shown_name(path: Path) -> str:
    """A file's path from the repository's root, as test ids and messages show it."""
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else path.name


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: its language, its text, and how the comment before it says to check it."""

    path: Path
    #: The line of the opening fence, counted from 1.
    line: int
    language: str
    code: str
    #: Why it cannot run here, from ``<!-- not run: REASON -->``; None when it runs.
    not_run: str | None
    #: How many events it stores at the local server, from ``<!-- stores N events -->``.
    stores: int

    @property
    def name(self) -> str:
        return f"{shown_name(self.path)}:{self.line}"


@dataclass(frozen=True)
class Citation:
    """A block or a paragraph that says where its figures come from."""

    path: Path
    #: The line of the ``<!-- from ... -->`` comment, counted from 1.
    line: int
    #: The results file, relative to the repository.
    source: str
    #: The figures a paragraph names in its comment; empty for a copied block.
    figures: tuple[str, ...]
    #: The copied block's lines, or the paragraph's text without its comments.
    text: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{shown_name(self.path)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced code block of the Markdown file at ``path``, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, language = opening.groups()
        end = _closing_fence(lines, index, fence)
        comment = _comment_before(lines, index)
        not_run = _NOT_RUN.match(comment)
        stores = _STORES.match(comment)
        blocks.append(
            CodeBlock(
                path=path,
                line=index + 1,
                language=language,
                code="\n".join(lines[index + 1 : end]) + "\n",
                not_run=not_run.group(1) if not_run else None,
                stores=int(stores.group(1)) if stores else 0,
            )
        )
        index = end + 1
    return blocks


def citations(path: Path) -> list[Citation]:
    """Every ``<!-- from FILE -->`` comment of the Markdown file at ``path``, with its text."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in prose_lines(lines):
        for match in _FROM.finditer(line):
            source, listed = match.groups()
            if listed is None:
                text = _block_after(lines, index)
                figures: tuple[str, ...] = ()
            else:
                text = _paragraph_around(lines, index)
                figures = tuple(_QUOTED.findall(listed))
            found.append(Citation(path, index + 1, source, figures, text))
    return found


def prose_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(index, line) of each line outside fenced blocks, its code spans left out: a comment
    shown as code (say, in a page that explains these conventions) is not one."""
    prose = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is not None:
            index = _closing_fence(lines, index, opening.group(1)) + 1
            continue
        prose.append((index, _CODE_SPAN.sub("", lines[index])))
        index += 1
    return prose


def _closing_fence(lines: list[str], opening: int, fence: str) -> int:
    for index in range(opening + 1, len(lines)):
        if lines[index].strip() == fence:
            return index
    raise ValueError(f"the code block opened at line {opening + 1} is never closed")


def _comment_before(lines: list[str], fence: int) -> str:
    if fence == 0:
        return ""
    match = _COMMENT.match(lines[fence - 1])
    return match.group(1) if match else ""


def _block_after(lines: list[str], comment: int) -> tuple[str, ...]:
    start = comment + 1
    opening = _FENCE.match(lines[start]) if start < len(lines) else None
    if opening is not None:
        end = _closing_fence(lines, start, opening.group(1))
        return tuple(lines[start + 1 : end])
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return tuple(lines[start:end])


def _paragraph_around(lines: list[str], comment: int) -> tuple[str, ...]:
    start = comment
    while start > 0 and lines[start - 1].strip():
        start -= 1
    end = comment
    while end < len(lines) and lines[end].strip():
        end += 1
    # The comment names the figures itself: only the prose around it may count.
    return tuple(_ANY_COMMENT.sub("", line) for line in lines[start:end])
