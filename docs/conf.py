"""Sphinx configuration of the segops_fast documentation (build: see contributing.md).

Pages are MyST Markdown; the API reference is autodoc reading the library's docstrings as
they are (reST roles, ``#:`` attribute comments). The CLI's help is generated at build
time by ``_ext/cli_help.py``, so it cannot drift from ``segops-fast COMMAND --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import segops_fast  # noqa: E402

project = "segops_fast"
author = "segops_fast contributors"
project_copyright = author
release = segops_fast.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "cli_help"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Headings up to ### get anchors, so that pages link to each other's sections.
myst_heading_anchors = 3

# Every cross-reference must resolve: a broken one fails the build (with -W).
nitpicky = True
# Types from outside this project that its docstrings and signatures name; there is no
# intersphinx (the build runs offline), so these stay plain text.
nitpick_ignore_regex = [
    ("py:.*", r"(datetime|collections|typing|types|os|ssl|http|urllib|urllib3|logging)(\..*)?"),
    ("py:.*", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Literal|Optional|Union)"),
    ("py:.*", r"(dask|distributed|opentelemetry)(\..*)?"),
    ("py:.*", r"(int|float|str|bytes|bool|dict|list|tuple|object|None|Exception)"),
    ("py:.*", r"(TypeError|ValueError|RuntimeError|OSError|TimeoutError|KeyError)"),
    # The callbacks' type aliases, private to their modules; their shapes are in the prose.
    ("py:class", r"(OnError|OnDrop|OnFailed|OnInvalid|Bag)"),
    # Private names that the internals pages' module docstrings mention: those modules'
    # members are not documented one by one.
    ("py:.*", r"(EventBuffer\.append|_attention_at|greenlets|refuse_eventlet)"),
]

# segops_fast.otel imports opentelemetry-api (the otel extra), which the docs extra does not
# install: its reference is built from the docstrings either way.
autodoc_mock_imports = ["opentelemetry"]

autodoc_member_order = "bysource"
# Types go into the parameter lists the docstrings write; the options are explained once, in
# configuration.md, so the constructor's own list would be bare names.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"

# Commands and flags are shown as typed: no curly quotes, no en dash for "--".
smartquotes = False

html_theme = "furo"
html_title = f"segops_fast {release}"
html_static_path: list[str] = []
