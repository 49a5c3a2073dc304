"""Limits on everything read from Git (issue 18): each one exceeded is a diagnostic naming the
file (and line), never a crash and never hours of CPU or gigabytes of memory.

The commands run as users run them, in a subprocess, with its CPU time and address space
capped by setrlimit: a regression to exponential alias expansion (29 s and 2.4 GB for 645
bytes before) gets killed and fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired, git
from gitorch.source.git import TreeLimits, open_repository
from gitorch.source.manifests import LIMITS, parse_documents
from tests.gitrepo import GIT_ENV, GitRepo
from tests.samples import NAMESPACE

CPU_SECONDS = 60  # a bound on a runaway, not a speed assertion: the cases below take well under 1 s
MEMORY_BYTES = 1 << 30


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def gitorch_capped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        check=False,
        preexec_fn=_capped,
    )


def _laughs(levels: int = 9) -> str:
    """Nested aliases, each level nine aliases of the one before: 9**levels strings once expanded."""
    lines = ["apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol, namespace: shop}\nx:", '  a: &a ["lol","lol"]']
    prev = "a"
    for n in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"  {n}: &{n} [{','.join([f'*{prev}'] * 9)}]")
        prev = n
    lines.append(f"data: {{big: *{prev}}}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_one_diagnostic(repo: GitRepo) -> None:
    text = _laughs()
    assert len(text) < 700  # the 645-byte file that took 29 s and 2.4 GB
    repo.commit("laughs", {"ns.yaml": NAMESPACE, "lol.yaml": text})
    for args in (["validate"], ["plan"], ["plan", "--format", "json"]):
        res = gitorch_capped(*args, cwd=repo.path)
        assert res.returncode == 1, (args, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
        assert f"aliases expand this document by more than {LIMITS.alias_nodes:,} nodes" in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        pytest.param("a: &x [1, *x]\n", "1:11", "alias *x refers to a node that contains it", id="self-alias"),
        pytest.param("a: &x {b: 1, <<: *x}\n", "1:18", "alias *x refers to a node that contains it", id="self-merge"),
        pytest.param(
            "a: " + "[" * 100_000 + "]" * 100_000 + "\n", "1:67", "nested more than 64 levels", id="flow-100k"
        ),
        pytest.param(
            "a:\n" + "".join(" " * (i + 1) + f"b{i}:\n" for i in range(200)), "65:65", "nested more than 64", id="block"
        ),
        pytest.param("- " * 100 + "x\n", "1:129", "nested more than 64 levels", id="compact-seq"),
        pytest.param(
            "a: &a " + "[" * 40 + "]" * 40 + "\nb: [" + "[" * 30 + "*a" + "]" * 30 + "]\n",
            "2:35",
            "alias *a nests this document more than 64 levels deep",
            id="alias-depth",
        ),
        pytest.param(
            "---\na: 1\n" * (LIMITS.documents + 1), f"{2 * LIMITS.documents + 1}:1", "YAML documents", id="docs"
        ),
    ],
)
def test_parser_limits_are_diagnostics_at_their_line(text: str, where: str, message: str) -> None:
    _, diags = parse_documents("bad.yaml", text)
    assert len(diags) == 1, diags
    assert diags[0].format().startswith(f"bad.yaml:{where}: "), diags[0].format()
    assert message in diags[0].message


def test_documents_before_a_limit_are_kept() -> None:
    docs, diags = parse_documents("m.yaml", "a: 1\n---\nb: *nowhere\n")
    assert [d.body for d in docs] == [{"a": 1}]
    assert diags[0].line == 3


def test_aliases_within_the_limit_still_work() -> None:
    """Anchors are common in real manifests (shared env lists, `<<: *defaults`): they stay allowed."""
    defaults = "defaults: &d {" + ", ".join(f"k{i}: v{i}" for i in range(50)) + "}\n"
    uses = "".join(f"u{i}: {{<<: *d, own: {i}}}\n" for i in range(200))
    docs, diags = parse_documents("ok.yaml", defaults + uses)
    assert diags == []
    assert docs[0].body["u199"]["k49"] == "v49"


def test_file_size_limit_names_the_file(repo: GitRepo) -> None:
    big = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big, namespace: shop}\ndata:\n"
    big += "".join(f"  k{i}: {'x' * 1000}\n" for i in range(LIMITS.file_bytes // 1000 + 10))
    repo.commit("big", {"ns.yaml": NAMESPACE, "big.yaml": big})
    state = desired.load(open_repository(repo.path), None)
    assert [d.format() for d in state.diagnostics] == [
        f"big.yaml: /: file is {len(big):,} bytes; the limit is {LIMITS.file_bytes:,} "
        "(hint: split it into several files)"
    ]


def _fast_import(repo: GitRepo, entries: list[bytes]) -> None:
    """One commit whose tree git's own work tree could not hold (1,200 folders deep, symlinks, submodules)."""
    stream = b"commit refs/heads/main\ncommitter A <a@b.test> 0 +0000\ndata 4\ntree\n" + b"".join(entries) + b"\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo.path, input=stream, check=True, env=GIT_ENV)


def _file(path: str, text: str) -> bytes:
    data = text.encode()
    return b"M 100644 inline " + path.encode() + b"\ndata %d\n" % len(data) + data + b"\n"


def test_a_tree_1200_folders_deep_is_one_diagnostic(repo: GitRepo) -> None:
    deep = "/".join(["a"] * 1200) + "/ns.yaml"
    _fast_import(repo, [_file(deep, NAMESPACE), _file("ns.yaml", NAMESPACE.replace("shop", "top"))])
    res = gitorch_capped("validate", cwd=repo.path)
    assert res.returncode == 1, res.stderr
    assert "RecursionError" not in res.stderr and "Traceback" not in res.stderr
    shown = "a/" * TreeLimits().depth
    assert f"{shown}: /: folders nested more than {TreeLimits().depth} deep; this one is not read" in res.stderr


def test_symlinks_and_submodules_are_skipped_with_a_warning(repo: GitRepo) -> None:
    _fast_import(
        repo,
        [
            _file("ns.yaml", NAMESPACE),
            b"M 120000 inline link.yaml\ndata 7\nns.yaml\n",
            b"M 120000 inline linked-folder\ndata 4\n/etc\n",
            b"M 160000 " + b"1" * 40 + b" vendored\n",
        ],
    )
    res = gitorch_capped("validate", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    for name, what in (
        ("link.yaml", "a symbolic link"),
        ("linked-folder", "a symbolic link"),
        ("vendored", "a submodule"),
    ):
        assert f"{name}: /: warning: {what}: skipped, gitorch reads only the files and folders" in res.stdout


def test_file_names_that_cannot_be_printed_are_refused(repo: GitRepo) -> None:
    _fast_import(repo, [_file("ns.yaml", NAMESPACE), b'M 100644 inline "bad\\377\\033[2J.yaml"\ndata 2\na\n\n'])
    state = desired.load(open_repository(repo.path), None)
    assert [d.format() for d in state.diagnostics] == [
        "bad\\xff\\u001b[2J.yaml: /: the name is not UTF-8 or holds control characters; it is not read "
        "(hint: rename it with letters, digits, '-', '_' and '.')"
    ]


def test_entry_total_and_folder_limits(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits' logic with small numbers (the defaults would take 100,000 files to reach)."""
    files = {f"ns/n{i:02d}.yaml": NAMESPACE.replace("shop", f"n{i:02d}") for i in range(30)}
    repo.commit("many", files | {"other/skipped.yaml": "x: 1\n", "gitorch.yaml": "manifests: [ns]\n"})
    r = open_repository(repo.path)

    monkeypatch.setattr(git, "TREE_LIMITS", TreeLimits(entries=20))
    diags = [d.format() for d in r.snapshot(None).diagnostics]
    assert diags == [
        "ns/n18.yaml: /: more than 20 files and folders under the manifests folder; this one and the rest are not "
        "read (hint: narrow the manifests with gitorch.yaml (manifests: [...]) or --repo FOLDER)"
    ]  # other/ is not walked: gitorch.yaml excludes it

    monkeypatch.setattr(git, "TREE_LIMITS", TreeLimits(total_bytes=10 * len(files["ns/n00.yaml"])))
    snap = r.snapshot(None)
    assert (
        len(snap.files) == 10 and "ns/n10.yaml: /: the manifests of this commit exceed" in snap.diagnostics[0].format()
    )

    monkeypatch.setattr(git, "TREE_LIMITS", TreeLimits(tree_bytes=100))
    assert "ns/: /: folder listing is" in r.snapshot(None).diagnostics[0].format()


def test_gitorch_yaml_is_read_within_the_same_limits(repo: GitRepo) -> None:
    repo.commit("bomb", {"ns.yaml": NAMESPACE, "gitorch.yaml": "manifests: &m [*m]\n"})
    res = gitorch_capped("validate", cwd=repo.path)
    assert res.returncode == 1
    assert res.stderr == "error: cannot read gitorch.yaml:1:16: alias *m refers to a node that contains it\n"


def test_nan_and_infinity_are_diagnostics_and_plan_json_stays_json(repo: GitRepo) -> None:
    pvc = (
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, namespace: shop}\n"
        "spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: .nan\n"
    )
    repo.commit(
        "nan", {"ns.yaml": NAMESPACE, "pvc.yaml": pvc, "inf.yaml": pvc.replace(".nan", ".inf").replace("data", "d2")}
    )
    res = gitorch_capped("plan", "--format", "json", cwd=repo.path)
    assert res.returncode == 1
    out = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{c} in plan --format json"))
    messages = {(d["path"], d["line"], d["message"]) for d in out["diagnostics"] if d["severity"] == Severity.ERROR}
    assert ("pvc.yaml", 8, "'.nan' is not a finite number: JSON and Kubernetes have no NaN or infinity") in messages
    assert ("inf.yaml", 8, "'.inf' is not a finite number: JSON and Kubernetes have no NaN or infinity") in messages
