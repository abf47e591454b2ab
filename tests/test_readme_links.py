"""Every link of the README resolves, on GitHub and in a clone.

A relative link must name a file of the repository; a ``#fragment`` must name a heading of
that Markdown file, as GitHub and the docs site (MyST's heading anchors) spell it. Links to
other sites are not followed (the tests run offline); there should be none that matter.
The pages of ``docs/`` are checked by the docs build itself (``sphinx-build -W -n``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .markdown_examples import README, REPOSITORY, prose_lines

# [text](target): the target up to a space or the closing parenthesis.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def readme_links() -> list[str]:
    lines = README.read_text("utf-8").splitlines()
    # Code spans and fenced blocks hold no links.
    return [link for _, line in prose_lines(lines) for link in _LINK.findall(line)]


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them from the text."""
    anchors = set()
    for _, line in prose_lines(page.read_text("utf-8").splitlines()):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading:
            text = heading.group(1).strip().lower().replace("`", "")
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


LINKS = readme_links()
LOCAL_LINKS = [link for link in LINKS if not re.match(r"\w+:", link)]


def test_the_readme_links_into_the_docs() -> None:
    pages = {link.split("#")[0] for link in LOCAL_LINKS}
    assert len([page for page in pages if page.startswith("docs/")]) >= 20, pages


@pytest.mark.parametrize("link", LOCAL_LINKS)
def test_each_readme_link_resolves(link: str) -> None:
    path, _, fragment = link.partition("#")
    target = (REPOSITORY / path).resolve()
    assert target.is_file(), f"README.md links to {link}, and {path} is not a file"
    if fragment:
        anchors = heading_anchors(target)
        assert fragment in anchors, f"README.md links to {link}: no such heading in {anchors}"
