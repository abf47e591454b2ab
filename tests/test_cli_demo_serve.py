"""What a user meets with ``segops-fast serve`` and ``segops-fast demo`` when something is off,
and what the wheel imports."""

from __future__ import annotations

import ast
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from segops_fast._cli import main
from segops_fast._cli._demo_servers import SERVERS

PACKAGE = Path(__file__).resolve().parent.parent / "segops_fast"


def test_serve_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "segops_fast", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"segops-fast serve: 127.0.0.1:{port} is in use; "
        "choose another port with --port (--port 0 picks a free one)\n"
    )


@pytest.mark.parametrize(
    ("server", "hidden"),
    [
        ("gunicorn", "gunicorn"),
        ("gevent", "gevent"),
        ("uvicorn", "uvicorn"),
        ("uwsgi", "pyuwsgi"),
        ("celery", "celery"),
    ],
)
def test_demo_names_the_package_a_server_needs(
    server: str, hidden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None in sys.modules is what importlib treats as "not installed".
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--server", server])
    assert str(exit_info.value) == (
        f"segops-fast demo --server {server}: {hidden} is not installed: pip install {hidden}"
    )


def test_demo_help_reads_cleanly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for internal in ("``", ":mod:", ":data:", "_demo", ".py", "====", "LocalIngestServer"):
        assert internal not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for name, (packages, _) in SERVERS.items():
        assert f"  {name} " in text
        assert f"pip install {' '.join(packages)}" in text


def test_the_celery_demo_without_celery_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)
    monkeypatch.delitem(sys.modules, "segops_fast._cli._demo_celery", raising=False)
    with pytest.raises(ImportError, match=r"celery is not installed: pip install celery$"):
        importlib.import_module("segops_fast._cli._demo_celery")


#: What a module of the wheel may import at its top level, beyond the standard library:
#: the declared dependencies everywhere, an extra's packages in the modules of that extra.
DECLARED = {"orjson", "urllib3", "segops_fast"}
EXTRAS = {
    "backfill/_dask_ranges.py": {"distributed"},
    "testing/_dask.py": {"distributed"},
    "otel.py": {"opentelemetry"},
}


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when the module is, not inside a function, a TYPE_CHECKING block
    or a guard that raises first."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_the_wheel_imports_an_undeclared_dependency() -> None:
    stdlib = set(sys.stdlib_module_names) if hasattr(sys, "stdlib_module_names") else None
    if stdlib is None:
        pytest.skip("sys.stdlib_module_names needs Python 3.10")
    undeclared = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        imports = _top_level_imports(ast.parse(path.read_text()))
        extra = imports - stdlib - DECLARED - EXTRAS.get(module, set())
        if module == "_cli/_demo_celery.py":
            # Imported after the guard that names the package to install.
            extra -= {"celery"}
        if extra:
            undeclared[module] = extra
    assert undeclared == {}


def test_the_demo_application_outside_the_demo_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEGOPS_DEMO_API_URL", raising=False)
    monkeypatch.delitem(sys.modules, "segops_fast._cli._demo_apps", raising=False)
    with pytest.raises(ImportError, match="segops-fast demo --server runs; run that command"):
        importlib.import_module("segops_fast._cli._demo_apps")
