"""gitorch installs like any Python tool: the sdist is built from a copy of the source, the wheel
from that sdist, and the wheel is installed into a fresh virtualenv outside the checkout, whose
`gitorch` then validates, plans and applies examples/repo on a one-node lab."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, node_manifests
from tests.conftest import EXAMPLES, ROOT
from tests.gitrepo import GitRepo

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# What an sdist is made from: everything else in the checkout (tests, examples, .venv) is left out.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "gitorch", "schemas")
BUILD_TIMEOUT = 600  # seconds: a cold pip cache downloads setuptools and every dependency


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and the wheel built from it (`python -m build`), from a copy of the source: a
    build writes egg-info and build/ next to its sources, and others use the checkout meanwhile."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("the `build` package is missing: pip install -e '.[test]'", pytrace=False)
    base = tmp_path_factory.mktemp("packaging")
    src, dist = base / "src", base / "dist"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [wheel] = dist.glob("gitorch-*.whl")
    [sdist] = dist.glob("gitorch-*.tar.gz")
    return Built(wheel, sdist)


@pytest.fixture(scope="session")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the checkout with the wheel and its dependencies from the
    package index (pip's cache makes repeated sessions quick); its bin/ folder."""
    home = tmp_path_factory.mktemp("venv") / "gitorch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=120)
    python = home / "bin" / "python"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", str(built.wheel)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home / "bin"


def run(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed `gitorch` with nothing of the checkout on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(venv / "gitorch"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_wheel_carries_every_file_read_at_run_time(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        for schema in sorted((ROOT / "schemas").glob("*.json")):
            # Built from the top-level schemas/, byte for byte: no copy to keep in sync by hand.
            assert wheel.read(f"gitorch/schemas/{schema.name}") == schema.read_bytes(), schema.name
    migrations = "gitorch/store/migrations/"
    assert {f"{migrations}alembic.ini", f"{migrations}script.py.mako", f"{migrations}env.py",
            f"{migrations}versions/0001_initial_schema.py"} <= names
    assert {"gitorch/nodes/agent.py", "gitorch/py.typed"} <= names
    dashboard = ROOT / "gitorch" / "server"  # the dashboard's templates and vendored scripts
    assert {f"gitorch/server/{p.relative_to(dashboard)}" for p in (dashboard / "templates").glob("*.html")} <= names
    assert {f"gitorch/server/static/{p.name}" for p in (dashboard / "static").iterdir()} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "schemas/"))]
    with tarfile.open(built.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"setup.py", "pyproject.toml", "schemas/deployment.json",
            "gitorch/store/migrations/alembic.ini"} <= members


def test_the_installed_wheel_runs_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    version = run(venv, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"gitorch, version {VERSION}", version
    where = subprocess.run(
        [str(venv / "python"), "-c",
         "import gitorch, gitorch.source.validation as v; print(gitorch.__file__); print(v.SCHEMA_DIR)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(not Path(p).is_relative_to(ROOT) and "site-packages" in p for p in where), where
    assert run(venv, "migrate", cwd=tmp_path).returncode == 0  # migrations found in the wheel


def test_pipx_installs_the_wheel_as_a_working_command(built: Built, tmp_path: Path) -> None:
    """How people install Python tools: `pipx install` of the built wheel, in a home of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
            "PIPX_MAN_DIR": str(tmp_path / "man"), "PIPX_DEFAULT_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, "-m", "pipx", "install", str(built.wheel)], env=env, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    command = tmp_path / "bin" / "gitorch"
    version = subprocess.run([str(command), "--version"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"gitorch, version {VERSION}", version
    repo = GitRepo(tmp_path / "repo")
    repo.copy_tree(EXAMPLES)
    repo.commit("examples", {})
    valid = subprocess.run([str(command), "validate"], env={**env, "GITORCH_STATE_DIR": str(tmp_path / "state")},
                           cwd=repo.path, capture_output=True, text=True, timeout=120, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr


def _one_node(lab: Lab) -> str:
    """The first lab node's Node manifest (JSON is YAML): a one-node cluster."""
    return json.dumps(node_manifests(lab)[0], indent=2) + "\n"


@pytest.mark.lab
def test_the_installed_wheel_validates_plans_and_applies_the_examples_on_a_one_node_lab(
    venv: Path, lab: Lab, repo: GitRepo, tmp_path: Path
) -> None:
    repo.copy_tree(EXAMPLES)
    repo.write({"nodes.yaml": _one_node(lab)})
    repo.commit("examples/repo on a one-node lab")

    valid = run(venv, "validate", cwd=repo.path)
    assert valid.returncode == 0 and "are valid" in valid.stdout, valid.stdout + valid.stderr
    plan = run(venv, "plan", cwd=repo.path)
    assert plan.returncode == 0 and "to add, 0 to change, 0 to destroy." in plan.stdout, plan.stderr
    try:
        # Converging ships the wheel's node agent to the node and runs every example workload there.
        applied = run(venv, "apply", "--wait", "--timeout", "120", cwd=repo.path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        pods = json.loads(run(venv, "get", "pods", "-o", "json", cwd=repo.path).stdout)
        assert {p["node"] for p in pods} == {lab.nodes[0].name}
        assert {"Deployment/web", "StatefulSet/kv", "DaemonSet/node-exporter"} <= {p["owner"] for p in pods}
    finally:
        repo.remove("apps")
        repo.remove("cluster.yaml")  # it names the ingress proxy's Service, which goes with apps/
        repo.commit("remove the apps")
        cleaned = run(venv, "apply", "--wait", "--timeout", "60", cwd=repo.path)
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
