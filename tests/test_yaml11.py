"""Plain scalars read as Kubernetes reads them (go-yaml v2, YAML 1.1: `0644` is octal, `yes` is
true), with a warning naming the unambiguous form; kubectl, Kubernetes' own decoder, is the oracle."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.source.manifests import dump_documents, load_plain, parse_documents
from tests.gitrepo import GitRepo

# (plain scalar, whether YAML 1.2 reads it otherwise, so gitorch warns)
SCALARS: list[tuple[str, bool]] = [
    ("0644", True),
    ("0755", True),
    ("0400", True),
    ("-0644", True),
    ("+0644", True),
    ("0_644", True),
    ("00", False),
    ("007", False),
    ("09", False),
    ("08.5", False),
    ("0o644", False),
    ("0O17", True),
    ("0x1F", False),
    ("0X1f", True),
    ("-0x1f", True),
    ("0x_1F", True),
    ("0b101", True),
    ("0B1", True),
    ("1_000", True),
    ("1_000.5", True),
    ("1_", True),
    ("_1", False),
    ("0o8", False),
    ("yes", True),
    ("Yes", True),
    ("YES", True),
    ("y", True),
    ("Y", True),
    ("on", True),
    ("On", True),
    ("ON", True),
    ("no", True),
    ("No", True),
    ("NO", True),
    ("n", True),
    ("N", True),
    ("off", True),
    ("Off", True),
    ("OFF", True),
    ("true", False),
    ("False", False),
    ("yEs", False),
    ("oN", False),
    ("1:30", False),
    ("190:20:30", False),
    ("2001-12-14", False),
    ("1e3", False),
    ("1.5e3", False),
    (".5", False),
    ("1.", False),
    ("0.", False),
    ("-1", False),
    ("+12", False),
    ("80", False),
    ("~", False),
    ("Null", False),
    ("", False),
    ("yellow", False),
    ("one", False),
    ("no-op", False),
    ("0644x", False),
    ("9223372036854775807", False),
]


def kubernetes_reads(values: list[str], tmp_path: Path) -> dict[str, Any]:
    """What Kubernetes' decoder makes of `spec: {k<i>: <value>}`: kubectl, offline."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is the oracle here; it is installed on every test machine (TEST-NODES.md)"
    f = tmp_path / "oracle.yaml"
    f.write_text(_manifest(values))
    # `create --dry-run=client` needs an API server for the kind's mapping; `label --local`
    # decodes the file the same way (sigs.k8s.io/yaml) without one.
    out = subprocess.run(
        [kubectl, "label", "--local", "-f", str(f), "oracle=yes", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout)["spec"])


def _manifest(values: list[str]) -> str:
    lines = "".join(f"  k{i}: {v}\n" for i, v in enumerate(values))
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: oracle}}\nspec:\n{lines}"


def same(a: Any, b: Any) -> bool:
    """JSON-equal: a boolean is not a number, 1000.0 is 1000 (JSON has one number type)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def test_scalars_read_as_kubectl_reads_them(tmp_path: Path) -> None:
    values = [v for v, _ in SCALARS]
    want = kubernetes_reads(values, tmp_path)
    docs, diags = parse_documents("oracle.yaml", _manifest(values))
    got = docs[0].body["spec"]
    wrong = [
        (v, got[f"k{i}"], want.get(f"k{i}")) for i, v in enumerate(values) if not same(got[f"k{i}"], want.get(f"k{i}"))
    ]
    assert not wrong, f"(scalar, gitorch, kubectl): {wrong}"
    assert all(d.severity is Severity.WARNING for d in diags), diags
    warned = {d.pointer for d in diags}
    for i, (v, differs) in enumerate(SCALARS):
        assert (f"/spec/k{i}" in warned) is differs, (v, differs, [d.format() for d in diags])
        if differs:
            assert [d.line for d in diags if d.pointer == f"/spec/k{i}"] == [5 + i]


def test_warning_names_the_unambiguous_form() -> None:
    _, diags = parse_documents("cm.yaml", "a:\n  defaultMode: 0644\n  b: [on]\n")
    assert [d.format() for d in diags] == [
        "cm.yaml:2:16: /a/defaultMode: warning: '0644' is read as the octal number '420', as Kubernetes does "
        "(YAML 1.1) (hint: write '0o644' or '420', or quote it if you mean a string)",
        "cm.yaml:3:7: /a/b/0: warning: 'on' is read as the boolean 'true', as Kubernetes does (YAML 1.1) "
        "(hint: write true, or quote it if you mean a string)",
    ]


def test_quoted_and_tagged_scalars_stay_as_written() -> None:
    docs, diags = parse_documents("x.yaml", "a: '0644'\nb: \"yes\"\nc: !!str on\nd: 0o644\n")
    assert docs[0].body == {"a": "0644", "b": "yes", "c": "on", "d": 420} and diags == []


def test_load_plain_does_not_fail_on_a_warning() -> None:
    assert load_plain("enabled: yes\nmode: 0600\n") == {"enabled": True, "mode": 384}


def test_volume_default_mode_in_a_deployment_is_octal(repo: GitRepo) -> None:
    repo.commit(
        "octal mode",
        {
            "app.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {a: b}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, command: [sleep, "600"]}]
      volumes:
        - name: conf
          configMap: {name: conf, defaultMode: 0644}
"""
        },
    )
    state = desired.load(open_repository(repo.path), None)
    diags = [d.format() for d in state.diagnostics]
    assert any(
        d.startswith("app.yaml:17:48: /spec/template/spec/volumes/0/configMap/defaultMode: warning: '0644'")
        for d in diags
    ), diags
    assert not [d for d in state.diagnostics if d.severity is Severity.ERROR], diags
    web = next(o for o in state.objects.values() if o.key.kind == "Deployment")
    assert web.body["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"] == 420


@pytest.mark.parametrize("text", ["k: 0644\n", "k: yes\n"])
def test_secret_values_are_not_quoted_in_warnings(repo: GitRepo, text: str) -> None:
    repo.commit("secret", {"s.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  " + text})
    state = desired.load(open_repository(repo.path), None)
    for d in state.diagnostics:
        assert "0644" not in d.format() and "'yes'" not in d.format(), d.format()


def test_dump_quotes_strings_kubernetes_would_read_otherwise() -> None:
    bodies = [{"a": ["y", "n", "on", "0644", "1_000", "0b1", "yes", "plain", "true", "42", "1:30"]}]
    text = dump_documents(bodies)
    docs, diags = parse_documents("out.yaml", text)
    assert diags == [] and [d.body for d in docs] == bodies, text
