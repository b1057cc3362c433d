"""The package as users install it: the wheel in a clean venv, with only its declared dependencies.

The dev environment holds every dev-group package too, so a runtime import that only a dev
dependency provides (``httpx`` once was) passes every other test and breaks ``pip install
llmtap``. The static test catches that class of bug cheaply; the install test proves the
wheel's commands start in a venv holding nothing else.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import duckdb
import pytest

from tests.proxyproc import free_port

ROOT = Path(__file__).parent.parent
PACKAGES = ("collector", "analytics", "app")
# The first test given the `installed` venv pays for building the wheel and installing its
# dependencies within its own timeout: far more than the suite's default on a cold cache.
pytestmark = pytest.mark.timeout(900)


def _canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies() -> set[str]:
    """The distribution names in ``[project].dependencies`` (versions and markers dropped)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        names.add(_canonical(match.group(1)))
    return names


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def runtime_imports(path: Path) -> set[str]:
    """Absolute modules ``path`` imports, leaving out ``if TYPE_CHECKING:`` blocks (never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def providing_distributions(module: str, top_level: dict[str, list[str]]) -> set[str]:
    """The installed distributions that provide ``module``.

    A namespace package (``opentelemetry``) is shared by many distributions, so a declared
    ``opentelemetry-sdk`` must not count for ``opentelemetry.trace`` (``opentelemetry-api``):
    the longest dotted prefix of ``module`` that some distribution's files hold decides."""
    parts = module.split(".")
    candidates = top_level.get(parts[0], [])
    for depth in range(len(parts), 0, -1):
        prefix = "/".join(parts[:depth])
        owners = set()
        for dist in candidates:
            files = metadata.distribution(dist).files or []
            if any(str(f).startswith(prefix + "/") or str(f).startswith(prefix + ".") for f in files):
                owners.add(_canonical(dist))
        if owners:
            return owners
    return set()


def test_every_runtime_import_is_a_declared_dependency():
    declared = declared_dependencies()
    top_level = metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in runtime_imports(path):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__":
                    continue
                providers = providing_distributions(module, top_level)
                assert providers, (
                    f"{path.relative_to(ROOT)} imports {module}, which nothing installed provides"
                )
                if not providers & declared:
                    missing.setdefault(f"{module} ({', '.join(sorted(providers))})", set()).add(
                        str(path.relative_to(ROOT))
                    )
    assert not missing, f"imported at run time but not in [project].dependencies: {missing}"


# -- the wheel in a clean venv ----------------------------------------------------------------


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without what points at the dev venv or the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["HOME"] = str(home)  # nothing may fall back to the user's ~/.llmtap
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """(bin directory, environment, working directory) of a fresh venv holding only the wheel
    and its dependencies. The working directory is outside the source tree: ``python -m``
    (the spool loader, the dashboard) puts it on sys.path, where the sources would hide a
    broken install."""
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in $UV
    assert uv, "uv must be on the PATH"
    base = tmp_path_factory.mktemp("packaging")
    work = base / "work"
    work.mkdir()
    env = _clean_env(base)
    # uv's own cache (found from the real HOME) holds the wheels `uv sync` fetched: the venv
    # stays clean, and the install need not download every dependency again.
    cache = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True, timeout=60)
    uv_env = env | {"UV_CACHE_DIR": cache.stdout.strip()}
    dist = base / "dist"
    subprocess.run([uv, "build", "--wheel", "-o", str(dist)], cwd=ROOT, env=uv_env, check=True, timeout=300)
    (wheel,) = dist.glob("llmtap-*.whl")
    venv = base / "venv"
    # This interpreter (3.12, as the project requires): uv creates the venv from its base
    # installation, with none of the dev venv's packages, and needs no interpreter download.
    subprocess.run(
        [uv, "venv", "--python", sys.executable, str(venv)], cwd=work, env=uv_env, check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [uv, "pip", "install", "--python", str(python), str(wheel)],
        cwd=work,
        env=uv_env,
        check=True,
        timeout=600,
    )
    yield venv / "bin", env, work


def test_installed_help(installed):
    bin_dir, env, work = installed
    done = subprocess.run(
        [str(bin_dir / "llmtap"), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "proxy" in done.stdout


def test_installed_proxy_starts_and_stops(installed):
    bin_dir, env, work = installed
    port = free_port()
    proc = subprocess.Popen(
        [str(bin_dir / "llmtap"), "proxy", "--port", str(port), "--data-dir", str(work / "proxy-data")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in first, first + proc.stderr.read()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert (work / "proxy-data" / "llmtap.duckdb").exists()


def test_installed_demo_records_calls(installed):
    bin_dir, env, work = installed
    done = subprocess.run(
        [str(bin_dir / "llmtap"), "demo", "--no-ui", "--calls", "20", "--data-dir", str(work / "demo-data")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    with duckdb.connect(str(work / "demo-data" / "llmtap.duckdb"), read_only=True) as con:
        (calls,) = con.execute("SELECT count(*) FROM llm_calls").fetchone()
    assert calls >= 20
