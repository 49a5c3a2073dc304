"""Validation: one data file per invalid case, each naming the diagnostic it must produce.

Each file in tests/data/invalid/ is committed into a real repository next to a small valid
base (a namespace, a ConfigMap and a Secret), and validated from that commit. Its
`# expect:` header lines are the start of the formatted diagnostics it must produce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.samples import CONFIG, NAMESPACE, SECRET, gitorch

CASES = sorted((Path(__file__).parent / "data" / "invalid").glob("*.yaml"))
BASE = {"base/ns.yaml": NAMESPACE, "base/config.yaml": CONFIG, "base/secret.yaml": SECRET.format(password="pw")}


def _expectations(case: Path) -> list[str]:
    return [line.split("# expect: ", 1)[1] for line in case.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_case_reports_where_and_what(case: Path, repo: GitRepo) -> None:
    expected = _expectations(case)
    assert expected, f"{case.name} has no `# expect:` line"
    repo.commit(case.stem, {**BASE, case.name: case.read_text()})
    state = desired.load(open_repository(repo.path), None)
    got = [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]
    for want in expected:
        assert any(g.startswith(want) for g in got), f"expected {want!r}\n got: {got}"


def test_cli_validate_exit_codes_and_json(repo: GitRepo) -> None:
    repo.commit("base", BASE)
    ok = gitorch("validate", cwd=repo.path)
    assert ok.returncode == 0, ok.stderr
    assert "3 objects in 3 files are valid" in ok.stdout
    repo.commit("bad", {"bad.yaml": (CASES[0].parent / "wrong-type.yaml").read_text()})
    bad = gitorch("validate", cwd=repo.path)
    assert bad.returncode == 1
    assert "wrong-type" not in bad.stdout
    assert "bad.yaml:9:13: /spec/replicas: expected integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    data = json.loads(gitorch("validate", "-o", "json", cwd=repo.path).stdout)
    assert data["valid"] is False
    assert data["diagnostics"][0]["line"] == 9


def test_validate_reads_the_commit_not_the_work_tree(repo: GitRepo) -> None:
    repo.commit("base", BASE)
    (repo.path / "base" / "config.yaml").write_text("kind: [broken\n")
    res = gitorch("validate", cwd=repo.path)
    assert res.returncode == 0
    assert "uncommitted changes are not checked" in res.stderr


def test_older_revisions_and_subfolders(repo: GitRepo) -> None:
    first = repo.commit("base", {f"deploy/{k}": v for k, v in BASE.items()} | {"other/junk.yaml": "not: [valid"})
    repo.commit("break it", {"deploy/base/config.yaml": "kind: [broken\n"})
    assert gitorch("validate", "--repo", "deploy", cwd=repo.path).returncode == 1
    assert gitorch("validate", "--repo", "deploy", "--rev", first, cwd=repo.path).returncode == 0
    assert gitorch("validate", "--repo", "deploy", "--rev", "HEAD~1", cwd=repo.path).returncode == 0


def test_gitorch_yaml_narrows_the_manifest_folders(repo: GitRepo) -> None:
    repo.commit("base", BASE | {"ci/pipeline.yml": "stages: [build]\n", "gitorch.yaml": "manifests: [base]\n"})
    res = gitorch("validate", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    repo.commit("typo", {"gitorch.yaml": "manifest: [base]\n"})
    res = gitorch("validate", cwd=repo.path)
    assert res.returncode == 1
    assert "gitorch.yaml: unknown field 'manifest'" in res.stderr


def test_bare_repository(repo: GitRepo, tmp_path: Path) -> None:
    from tests.gitrepo import git

    repo.commit("base", BASE)
    bare = tmp_path / "bare.git"
    git("clone", "-q", "--bare", str(repo.path), str(bare), cwd=tmp_path)
    assert gitorch("validate", "--repo", str(bare), cwd=tmp_path).returncode == 0


def test_not_a_repository_is_one_clear_line(tmp_path: Path) -> None:
    res = gitorch("validate", "--repo", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1
    assert "not inside a Git repository" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_warnings_do_not_fail_validation(repo: GitRepo) -> None:
    service = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: lonely\n  namespace: shop\n"
        "spec:\n  selector: {app: nobody}\n  ports:\n    - port: 80\n"
    )
    repo.commit("base", BASE | {"svc.yaml": service})
    res = gitorch("validate", cwd=repo.path)
    assert res.returncode == 0
    assert "svc.yaml:7:13: /spec/selector: warning: selector app=nobody matches no workload's pods" in res.stdout


def test_secret_values_never_appear_in_errors(repo: GitRepo) -> None:
    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bad\n  namespace: shop\n"
        "data:\n  password: 'not base64 hunter2!'\n"
    )
    repo.commit("bad secret", BASE | {"secret2.yaml": secret})
    res = gitorch("validate", cwd=repo.path)
    assert res.returncode == 1
    assert "secret2.yaml:7:13: /data/password" in res.stderr
    assert "hunter2" not in res.stderr and "hunter2" not in res.stdout


def _daemonset(namespace: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers:
        - {{name: agent, command: [sleep, "3600"]}}
"""


def test_same_workload_name_in_two_namespaces_is_valid(repo: GitRepo) -> None:
    """Pods are keyed by namespace on a node (issue 19), so equal names in two namespaces coexist."""
    other = NAMESPACE.replace("shop", "ops")
    repo.commit("two daemonsets", BASE | {"ops.yaml": other, "a.yaml": _daemonset("shop"), "b.yaml": _daemonset("ops")})
    state = desired.load(open_repository(repo.path), None)
    assert [d.format() for d in state.diagnostics] == []


def test_an_exception_in_one_objects_checks_is_that_objects_diagnostic(
    repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitorch.source import crosschecks

    def broken(*args: object) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(crosschecks, "_check_service", broken)
    service = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n"
        "spec:\n  selector: {app: web}\n  ports: [{port: 80}]\n"
    )
    bad = (CASES[0].parent / "undefined-volume.yaml").read_text()
    repo.commit("base", BASE | {"svc.yaml": service, "dep.yaml": bad})
    got = [d.format() for d in desired.load(open_repository(repo.path), None).diagnostics]
    assert "svc.yaml:4:9: /metadata/name: internal error checking Service/web: RuntimeError: boom; please report" in got
    assert any(
        g.startswith("dep.yaml:20:21: /spec/template/spec/containers/0/volumeMounts/0/name: volume") for g in got
    )


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27",
        "docker.io/library/nginx:1.27-alpine",
        "registry.example.com:5000/team/app:v2",
        "localhost/gitorch-test:latest",
        "[::1]:5000/app",
        "app@sha256:" + "a" * 64,
        "ghcr.io/org/app:v1.2.3@sha256:" + "0f" * 32,
        "my__app/x--y.z:1_0",
    ],
)
def test_valid_image_references_pass(repo: GitRepo, image: str) -> None:
    body = (CASES[0].parent / "image-option.yaml").read_text().replace("--privileged", f'"{image}"')
    repo.commit("image", BASE | {"img.yaml": body})
    assert [d.format() for d in desired.load(open_repository(repo.path), None).diagnostics] == []


@pytest.mark.parametrize(
    "image", ["-x", "Nginx", "nginx:", "nginx:-tag", "a b", "nginx@sha256:abc", "/nginx", "nginx:" + "t" * 129]
)
def test_invalid_image_references_are_refused(repo: GitRepo, image: str) -> None:
    body = (CASES[0].parent / "image-option.yaml").read_text().replace("--privileged", f'"{image}"')
    repo.commit("image", BASE | {"img.yaml": body})
    got = [d.format() for d in desired.load(open_repository(repo.path), None).diagnostics]
    assert len(got) == 1 and "/spec/template/spec/containers/0/image:" in got[0] and "image reference" in got[0], got
