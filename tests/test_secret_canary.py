"""A Secret's values appear in no output of gitorch: a unique canary value is looked for in every
channel (validate, plan in all formats, apply, status, describe, get, events, logs, notifications,
serve's own log, the dashboard's pages, the store's file and the state directory), well-formed and malformed alike.

The lab test runs the whole path on real SSH nodes; the pod proves it got the values by printing
only their SHA-256, so a test that delivered no secret would fail too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.diagnostics import errors
from gitorch.model.objects import HIDDEN
from gitorch.model.revisions import Revision
from gitorch.nodes.lab import Lab
from gitorch.source import desired
from gitorch.source.diffs import diff_states, masked_body
from gitorch.source.git import open_repository
from gitorch.source.rendering import PlanReport, diagnostics_text, plan_json, plan_markdown, plan_text
from tests.gitrepo import GitRepo
from tests.waiting import wait_until

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


# ---- every channel, on real nodes -----------------------------------------------------------

RUN = secrets.token_hex(6)
DATA = f"gitorch-canary-data-{RUN}"  # in `data` (base64 in the manifest)
STRING = f"gitorch-canary-string-{RUN}"  # in `stringData`
BAD = f"gitorch-canary-malformed-{RUN}"  # in a malformed `stringData`
CANARIES = (DATA, STRING, BAD)


def all_leaks(text: str | bytes) -> list[str]:
    return [f for c in CANARIES for f in leaks(text, c)]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


SECRET = secret("creds", f"data:\n  token: {base64.b64encode(DATA.encode()).decode()}\n"
                         f"stringData:\n  password: {STRING}\n", namespace="vault")
# Prints only digests of what it got, so the test knows the values arrived without printing one.
QUIET = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: quiet, namespace: vault}
spec:
  replicas: 1
  selector: {matchLabels: {app: quiet}}
  template:
    metadata: {labels: {app: quiet}}
    spec:
      containers:
        - name: quiet
          command:
            - sh
            - -c
            - |
              d() { printf %s "$1" | sha256sum | cut -c1-64; }
              echo "env-token=$(d "$TOKEN") env-password=$(d "$PASSWORD") file-token=$(d "$(cat /tmp/canary/token)")"
              exec sleep 3600
          env:
            - name: TOKEN
              valueFrom: {secretKeyRef: {name: creds, key: token}}
            - name: PASSWORD
              valueFrom: {secretKeyRef: {name: creds, key: password}}
          volumeMounts: [{name: creds, mountPath: /tmp/canary, readOnly: true}]
      volumes: [{name: creds, secret: {secretName: creds}}]
"""


class Receiver:
    """A notification target that keeps every request whole (path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.events: list[tuple[str, str]] = []  # (event, revision)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(f"{self.path}\n{self.headers}".encode() + body)
                note = json.loads(body)
                outer.events.append((note["event"], note["revision"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, event: str, oid: str, timeout: float = 60.0) -> None:
        wait_until(f"{event} of {oid[:7]}", lambda: self.events, timeout=timeout, interval=0.1,
                   accept=lambda got: (event, oid) in got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver()
    try:
        yield target
    finally:
        target.close()


class Channels:
    """Runs gitorch commands (debug logs on) and keeps what each printed, by name."""

    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self.seen: dict[str, bytes] = {}

    def run(self, name: str, *args: str, ok: bool = True) -> str:
        proc = subprocess.run([sys.executable, "-m", "gitorch", "--log-level", "debug", *args], cwd=self.repo.path,
                              capture_output=True, text=True, timeout=300, check=False)
        self.seen[name] = (proc.stdout + proc.stderr).encode()
        if ok:
            assert proc.returncode == 0, f"gitorch {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout


@pytest.mark.lab
def test_no_channel_shows_a_secret(lab: Lab, repo: GitRepo, receiver: Receiver, tmp_path: Path,
                                   _state_dir: Path) -> None:
    cluster = (f"apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata:\n  name: canary\nspec:\n  notifications:\n"
               f"    - name: chat\n      url: {receiver.url}\n      events: [deployed, syncFailed, degraded]\n")
    good = repo.commit("a quiet pod with a secret", {
        "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
        "ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: vault\n",
        "cluster.yaml": cluster, "secret.yaml": SECRET, "app.yaml": QUIET,
    })
    c = Channels(repo)
    serve_log = tmp_path / "serve.log"
    serve: subprocess.Popen[bytes] | None = None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        c.run("validate", "validate")
        c.run("validate json", "validate", "-o", "json")
        for fmt in ("text", "markdown", "json"):
            c.run(f"plan {fmt}", "plan", "--format", fmt)
        c.run("apply", "apply", "--wait", "--timeout", "180")
        for fmt in ("text", "markdown", "json"):
            c.run(f"plan --against-cluster {fmt}", "plan", "--against-cluster", "--format", fmt)
        saved = tmp_path / "reviewed.json"
        c.run("plan --out", "plan", "--out", str(saved))
        c.seen["saved plan"] = saved.read_bytes()
        c.run("status", "status")
        c.run("status json", "status", "-o", "json")
        pods = json.loads(c.run("get pods json", "get", "pods", "-n", "vault", "-o", "json"))
        (pod,) = [p["name"] for p in pods]
        for what in ("pods", "deployments", "revisions"):
            c.run(f"get {what}", "get", what, "-n", "vault")
        for ref in ("secret/creds", "deployment/quiet", f"pod/{pod}"):
            c.run(f"describe {ref}", "describe", ref, "-n", "vault")
        c.run("events", "events")
        c.run("events json", "events", "-o", "json")
        c.run("drift", "drift", "--run", ok=False)
        # The values reached the pod, as env and as a file: it printed their digests.
        wait_until("the pod's digests in its log", lambda: c.run("logs", "logs", pod, "-n", "vault"), timeout=30,
                   interval=0.5, accept=lambda log: f"env-token={sha(DATA)}" in log)
        assert f"env-password={sha(STRING)} file-token={sha(DATA)}" in c.seen["logs"].decode()

        # serve: the deployed notification, then a revision whose Secret is malformed.
        with serve_log.open("wb") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "gitorch", "--log-level", "debug", "serve", "--repo", str(repo.path),
                 "--branch", "main", "--poll", "1", "--interval", "1", "--listen", f"127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT)
        receiver.wait_for("deployed", good)
        bad = repo.commit("a malformed secret", {"a-bad.yaml": secret(
            "broken", f'stringData: "password={BAD}"\n', namespace="vault")})
        receiver.wait_for("syncFailed", bad)
        # The dashboard (loopback, no token): every page, and the plans of both revisions.
        for path in ("/", "/objects", "/revisions", f"/revisions/{good}", f"/revisions/{bad}", "/drift", "/events",
                     "/nodes", f"/pods/vault/{pod}/logs"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
                c.seen[f"dashboard {path}"] = resp.read()
        assert b"Secret vault/broken" in c.seen[f"dashboard /revisions/{bad}"]  # its plan was rendered
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, serve_log.read_text()[-3000:]
        c.seen["serve log"] = serve_log.read_bytes()
        assert f"{bad[:7]} INVALID".encode() in c.seen["serve log"]

        c.run("validate malformed", "validate", ok=False)
        c.run("validate malformed json", "validate", "-o", "json", ok=False)
        for fmt in ("text", "markdown", "json"):
            c.run(f"plan malformed {fmt}", "plan", "--base", good, "--format", fmt, ok=False)
        c.run("status after", "status", "-o", "json")
        c.run("events after", "events", "-o", "json")
        revisions = c.run("get revisions after", "get", "revisions", "-o", "json")
        assert "/stringData" in revisions  # the stored error names the field, not the value
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
            serve.wait()
        repo.remove("app.yaml", "secret.yaml")
        if (repo.path / "a-bad.yaml").exists():
            repo.remove("a-bad.yaml")
        repo.commit("empty")
        c.run("cleanup", "apply", "--wait", "--timeout", "120", ok=False)

    for i, request in enumerate(receiver.requests):
        c.seen[f"notification {i}"] = request
    assert len(receiver.requests) >= 2
    # The store's file (with its journal files) and everything else in the state directory.
    files = [p for p in _state_dir.rglob("*") if p.is_file()]
    assert _state_dir / "gitorch.db" in files
    for f in files:
        c.seen[f"state file {f.relative_to(_state_dir)}"] = f.read_bytes()
    leaked = {name: all_leaks(text) for name, text in c.seen.items() if all_leaks(text)}
    assert not leaked, f"secret values seen in: {leaked}"
    # And the state directory is its owner's only.
    modes = {str(p.relative_to(_state_dir)): (p.is_dir(), p.stat().st_mode & 0o777)
             for p in [_state_dir, *_state_dir.rglob("*")]}
    assert all(m == (0o700 if is_dir else 0o600) for is_dir, m in modes.values()), modes


# ---- SOPS-encrypted Secrets -------------------------------------------------------------------


def _encrypted(state_dir: Path, body: str) -> str:
    """`body` encrypted for the state folder's age key, as `gitorch secret encrypt` writes it."""
    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    path = sops.key_file_path(state_dir)
    if not path.exists():
        sops.generate_key_file(path)
    recipients = [sops.recipient_of(i) for i in sops.load_key_file(path)]
    return dump_documents([sops.encrypt_document(load_plain(body), recipients)])


def test_an_encrypted_secret_validates_and_plans_without_showing_a_value(repo: GitRepo, _state_dir: Path) -> None:
    from gitorch.source import sops

    r = open_repository(repo.path)
    old = repo.commit("v1", {"secret.yaml": _encrypted(
        _state_dir, secret("creds", f"stringData:\n  password: {CANARY}-1\n"))})
    new = repo.commit("v2", {"secret.yaml": _encrypted(
        _state_dir, secret("creds", f"stringData:\n  password: {CANARY}-2\n"))})
    assert not leaks(subprocess.run(["git", "log", "-p", "--all"], cwd=repo.path, capture_output=True).stdout)
    keyring = sops.keyring_from_state(_state_dir, required=True)
    for keys in (keyring, sops.NO_KEYS):  # with the key it decrypts; without, structure only
        a, b = desired.load(r, old, keys), desired.load(r, new, keys)
        assert a.ok and b.ok, diagnostics_text(b.diagnostics)
        (change,) = diff_states(a, b).changed()
        assert [(f.op.value, f.path, f.old, f.new) for f in change.fields] == [
            ("~", "stringData.password", HIDDEN, HIDDEN)]
        report = PlanReport(a.revision, b.revision, diff_states(a, b), b.diagnostics)
        for text in (plan_text(report), plan_json(report), plan_markdown(report)):
            assert not leaks(text) and not leaks(text, f"{CANARY}-2")
    (obj,) = desired.load(r, new, keyring).objects.values()
    assert obj.body["stringData"]["password"] == f"{CANARY}-2" and "sops" not in obj.body
    # The controller without a key: an error naming the file and what to do, never a value.
    state = desired.load(r, new, sops.Keyring((), required=True))
    (err,) = errors(state.diagnostics)
    assert err.path == "secret.yaml" and err.pointer == "/sops" and "gitorch secret keygen" in err.hint
    # Altered after encryption: refused by its MAC.
    text = (repo.path / "secret.yaml").read_text().replace("name: creds", "name: creds2")
    bad = repo.commit("v3", {"secret.yaml": text})
    (err,) = errors(desired.load(r, bad, keyring).diagnostics)
    assert "MAC mismatch" in err.message and not leaks(err.message)
    # The CLI finds the key in the state folder.
    proc = subprocess.run([sys.executable, "-m", "gitorch", "plan", "--base", old, "--head", new, "--repo",
                           str(repo.path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "stringData.password" in proc.stdout and not leaks(proc.stdout + proc.stderr)


SEALED_CLUSTER = """apiVersion: gitorch.dev/v1
kind: Cluster
metadata:
  name: sealed
spec:
  secrets:
    requireEncryption: true
"""


def test_require_encryption_refuses_values_the_sops_rules_leave_in_plaintext(repo: GitRepo, _state_dir: Path) -> None:
    from gitorch.source import sops
    from gitorch.source.manifests import dump_documents, load_plain

    path = sops.key_file_path(_state_dir)
    recipients = [sops.generate_key_file(path)]
    body = load_plain(secret("creds", f"stringData:\n  password: {CANARY}\n  empty: ''\n"
                                      f"data:\n  token: {forms(CANARY)[1]}\n"))
    half = dump_documents([sops.encrypt_document(body, recipients, rules=sops.Rules("encrypted_regex", "^data$"))])
    whole = dump_documents([sops.encrypt_document(body, recipients)])
    r = open_repository(repo.path)
    bad = repo.commit("half sealed", {"cluster.yaml": SEALED_CLUSTER, "secret.yaml": half})
    line = next(n for n, t in enumerate(half.splitlines(), 1) if "password:" in t)
    for keys in (sops.keyring_from_state(_state_dir, required=True), sops.NO_KEYS):  # decrypted, or keyless
        state = desired.load(r, bad, keys)
        (err,) = errors(state.diagnostics)  # the empty value is not a secret; data.token is encrypted
        assert (err.path, err.line, err.column, err.pointer) == ("secret.yaml", line, 13, "/stringData/password")
        assert "is in plaintext" in err.message and "secrets.requireEncryption" in err.message
        assert not leaks(diagnostics_text(state.diagnostics))
    good = repo.commit("sealed", {"secret.yaml": whole})
    assert desired.load(r, good, sops.NO_KEYS).ok
    # Without requireEncryption the same file is the author's choice.
    repo.remove("cluster.yaml")
    loose = repo.commit("loose", {"secret.yaml": half})
    assert desired.load(r, loose, sops.NO_KEYS).ok


@pytest.mark.lab
def test_an_encrypted_secret_reaches_the_pod_and_not_the_repository_plan_or_store(
        lab: Lab, repo: GitRepo, _state_dir: Path) -> None:
    head = repo.commit("a quiet pod with an encrypted secret", {
        "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
        "ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: vault\n",
        "secret.yaml": _encrypted(_state_dir, SECRET), "app.yaml": QUIET,
    })
    c = Channels(repo)
    try:
        c.seen["repository"] = subprocess.run(["git", "log", "-p", "--all"], cwd=repo.path, capture_output=True,
                                              check=True).stdout
        c.run("validate", "validate")
        c.run("plan json", "plan", "--format", "json")
        c.run("apply", "apply", "--wait", "--timeout", "180")
        pods = json.loads(c.run("get pods json", "get", "pods", "-n", "vault", "-o", "json"))
        (pod,) = [p["name"] for p in pods]
        c.run("describe secret", "describe", "secret/creds", "-n", "vault")
        wait_until("the pod's digests in its log", lambda: c.run("logs", "logs", pod, "-n", "vault"), timeout=30,
                   interval=0.5, accept=lambda log: f"env-token={sha(DATA)}" in log)
        assert f"env-password={sha(STRING)} file-token={sha(DATA)}" in c.seen["logs"].decode()
        assert head[:7] in c.run("status", "status")
    finally:
        repo.remove("app.yaml", "secret.yaml")
        repo.commit("empty")
        c.run("cleanup", "apply", "--wait", "--timeout", "120", ok=False)
    for f in (p for p in _state_dir.rglob("*") if p.is_file()):
        c.seen[f"state file {f.relative_to(_state_dir)}"] = f.read_bytes()
    leaked = {name: all_leaks(text) for name, text in c.seen.items() if all_leaks(text)}
    assert not leaked, f"secret values seen in: {leaked}"
