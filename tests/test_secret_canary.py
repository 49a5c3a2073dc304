"""A Secret's values appear in no output of gitorch: a unique canary value is looked for in every
channel (validate, plan in all formats, apply, status, describe, get, events, logs, notifications,
serve's own log, the store's file and the state directory), well-formed and malformed alike.

The lab test runs the whole path on real SSH nodes; the pod proves it got the values by printing
only their SHA-256, so a test that delivered no secret would fail too.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys

import pytest

from gitorch.model.diagnostics import errors
from gitorch.model.objects import HIDDEN
from gitorch.model.revisions import Revision
from gitorch.source import desired
from gitorch.source.diffs import diff_states, masked_body
from gitorch.source.git import open_repository
from gitorch.source.rendering import PlanReport, diagnostics_text, plan_json, plan_markdown, plan_text
from tests.gitrepo import GitRepo

CANARY = "gitorch-canary-" + secrets.token_hex(8)


def forms(canary: str) -> list[str]:
    """Every spelling of a canary worth looking for: itself and its base64 (a Secret's `data`)."""
    return [canary, base64.b64encode(canary.encode()).decode()]


def leaks(text: str | bytes, canary: str = CANARY) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f for f in forms(canary) if f.encode() in data]


def secret(name: str, body: str, namespace: str = "default") -> str:
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{body}"


# Malformed shapes a person writes by mistake; each holds the canary. `pointer` is where the
# diagnostic must point (None: the Secret is valid, only masking is tested).
MALFORMED = [
    pytest.param('stringData: "plain text {c}"\n', "/stringData", id="stringData-a-string"),
    pytest.param("stringData: |\n  password={c}\n  user=admin\n", "/stringData", id="stringData-a-block-string"),
    pytest.param("stringData:\n  - {c}\n", "/stringData", id="stringData-a-list"),
    pytest.param("stringData:\n  - password={c}\n  - user=admin\n", "/stringData", id="stringData-a-list-of-pairs"),
    pytest.param("stringData:\n  password:\n    nested: {c}\n", "/stringData/password", id="value-a-mapping"),
    pytest.param("stringData:\n  password: [{c}]\n", "/stringData/password", id="value-a-list"),
    pytest.param("data: {c}\n", "/data", id="data-a-string"),
    pytest.param("data:\n  - {c}\n", "/data", id="data-a-list"),
    pytest.param('data:\n  password: "{c}!"\n', "/data/password", id="data-not-base64"),
    pytest.param("data:\n  password: !!int {c}\n", "/data/password", id="data-a-bad-yaml-tag"),
    pytest.param('stringData:\n  password: "{c}\\q"\n', "", id="a-yaml-syntax-error"),
    pytest.param("strngData:\n  password: {c}\n", "/strngData", id="misspelt-field"),
    pytest.param("strngData:\n  password: !!int {c}\n", "/strngData/password", id="misspelt-field-a-bad-tag"),
    pytest.param(
        "type: Opaque\nstringData: {{password: {c}}}\nextra: {c}\n", "/extra", id="unknown-field-beside-values"
    ),
]


def _malformed_repo(repo: GitRepo, body: str, canary: str) -> str:
    return repo.commit("secret", {"secret.yaml": secret("creds", body.format(c=canary))})


@pytest.mark.parametrize(("body", "pointer"), MALFORMED)
def test_a_malformed_secret_is_masked_whole(repo: GitRepo, body: str, pointer: str) -> None:
    """The diagnostic names the place, never the value; the plan shows the field, never the value."""
    head = _malformed_repo(repo, body, CANARY)
    r = open_repository(repo.path)
    state = desired.load(r, head)
    found = [d for d in errors(state.diagnostics) if d.pointer == pointer]
    assert found, diagnostics_text(state.diagnostics)
    # From nothing: the whole object is new, every field shown.
    report = PlanReport(Revision("", "", "", ""), state.revision, diff_states(None, state), state.diagnostics)
    outputs = {
        "diagnostics": diagnostics_text(state.diagnostics),
        "diagnostics json": json.dumps([d.to_json() for d in state.diagnostics]),
        "plan text": plan_text(report),
        "plan markdown": plan_markdown(report),
        "plan json": plan_json(report),
    }
    for name, text in outputs.items():
        assert not leaks(text), f"{name} leaks the value:\n{text}"
    for obj in state.objects.values():  # none when the file does not even parse
        assert not leaks(json.dumps(masked_body("Secret", obj.body)))
        assert HIDDEN in outputs["plan text"]


def test_a_changed_value_shows_as_changed_but_masked(repo: GitRepo) -> None:
    r = open_repository(repo.path)
    old = repo.commit("v1", {"secret.yaml": secret("creds", f"stringData:\n  password: {CANARY}-1\n")})
    new = repo.commit("v2", {"secret.yaml": secret("creds", f'stringData: "password={CANARY}-2"\n')})
    changes = diff_states(desired.load(r, old), desired.load(r, new))
    (change,) = changes.changed()
    assert [(f.op.value, f.path, f.old, f.new) for f in change.fields] == [
        ("-", "stringData.password", HIDDEN, None),
        ("+", "stringData", None, HIDDEN),
    ]
    same = repo.commit("v3", {"secret.yaml": secret("creds", f'stringData: "password={CANARY}-3"\n')})
    (change,) = diff_states(desired.load(r, new), desired.load(r, same)).changed()
    assert [(f.op.value, f.path, f.old, f.new) for f in change.fields] == [("~", "stringData", HIDDEN, HIDDEN)]


def test_kubectls_last_applied_copy_is_masked(repo: GitRepo) -> None:
    """`kubectl apply` keeps the whole Secret, values included, in an annotation; an exported Secret
    carries it into Git."""
    copy = json.dumps({"kind": "Secret", "stringData": {"password": CANARY}})
    head = repo.commit("v1", {"secret.yaml": secret(
        "creds",
        f"stringData:\n  password: {CANARY}\n",
    ).replace("metadata:\n", f"metadata:\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: "
                               f"{json.dumps(copy)}\n")})
    state = desired.load(open_repository(repo.path), head)
    assert state.ok, diagnostics_text(state.diagnostics)
    text = plan_json(PlanReport(state.revision, state.revision, diff_states(None, state)))
    assert not leaks(text), text
    assert "kubectl.kubernetes.io/last-applied-configuration" in text
    body = masked_body("Secret", next(iter(state.objects.values())).body)
    assert not leaks(json.dumps(body))
    assert body["metadata"]["name"] == "creds"


def test_the_cli_prints_no_malformed_value(repo: GitRepo) -> None:
    """Every malformed shape at once, through the real entry point: validate and plan, all formats."""
    files = {}
    for i, p in enumerate(MALFORMED):
        body, _pointer = p.values
        files[f"s{i:02}.yaml"] = secret(f"creds-{i}", str(body).format(c=CANARY))
    head = repo.commit("malformed", files)
    runs = [
        ["validate"], ["validate", "-o", "json"],
        ["plan"], ["plan", "--format", "markdown"], ["plan", "--format", "json"],
        ["plan", "--against-cluster"], ["plan", "--against-cluster", "--format", "json"],
    ]
    for args in runs:
        proc = subprocess.run([sys.executable, "-m", "gitorch", "--log-level", "debug", *args, "--repo",
                               str(repo.path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        out = proc.stdout + proc.stderr
        assert not leaks(out), f"gitorch {' '.join(args)} leaks the value:\n{out}"
        assert head[:7] in out or "error" in out
