"""Signed commits and grants (issue 13, part 2): under the Cluster's git.verifyCommits, real
commits signed with ssh-keygen and gpg keys are pushed to a bare repository with gitorch's
pre-receive hook; the controller checks the same range again before applying."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.reconcile.controller import Controller, ControllerSettings
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo, git
from tests.samples import gitorch
from tests.signers import GpgHome, Signer, ssh_signer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Signer]]:
    """admin (SSH, cluster-wide), dev (SSH, named by fingerprint, staging only), ops (OpenPGP,
    create and update of Deployments in prod), stranger (SSH, no binding)."""
    folder = tmp_path_factory.mktemp("keys")
    home = GpgHome()
    try:
        yield {
            "admin": ssh_signer(folder, "admin"),
            "dev": ssh_signer(folder, "dev"),
            "stranger": ssh_signer(folder, "stranger"),
            "ops": home.signer("ops"),
        }
    finally:
        home.close()


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip().splitlines())


def base_files(keys: dict[str, Signer]) -> dict[str, str]:
    return {
        "cluster.yaml": f"""\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata:
  name: signed
spec:
  git:
    verifyCommits: true
    openpgpKeys:
      - |
{_indent(keys["ops"].public, 8)}
""",
        "namespaces.yaml": """\
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Namespace
metadata: {name: staging}
""",
        "rbac.yaml": f"""\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: admin}}
rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: admins}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}}
subjects:
  - kind: User
    name: {keys["admin"].public}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: editor}}
rules:
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["create", "update", "delete"]
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: editors, namespace: staging}}
roleRef: {{kind: ClusterRole, name: editor}}
subjects:
  - kind: User
    name: "{keys["dev"].fingerprint}"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: deployer, namespace: prod}}
rules:
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: deployers, namespace: prod}}
roleRef: {{kind: Role, name: deployer}}
subjects:
  - kind: User
    name: "{keys["ops"].fingerprint}"
""",
    }


SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: prod
stringData:
  password: CANARY
"""


def deployment(namespace: str, name: str = "web", replicas: int = 1) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: {name}
          command: ["sleep", "3600"]
"""


@pytest.fixture
def remote(tmp_path: Path, keys: dict[str, Signer]) -> Path:
    bare = tmp_path / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    pub = tmp_path / "admin.pub"
    pub.write_text(keys["admin"].public + "\n")
    res = gitorch("hook", "install", str(bare), "--branch", "main", "--trust-key", str(pub), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return bare


def _push(repo: GitRepo, remote: Path) -> tuple[int, str]:
    res = git("push", str(remote), "HEAD:refs/heads/main", cwd=repo.path, check=False)
    return res.returncode, res.stderr


def _tip(remote: Path) -> str:
    return git("rev-parse", "main", cwd=remote).stdout.strip()


@pytest.fixture
def pushed(repo: GitRepo, remote: Path, keys: dict[str, Signer]) -> str:
    """The first revision, signed by the key the hook trusts, pushed."""
    first = keys["admin"].commit(repo, "cluster with grants", base_files(keys))
    code, err = _push(repo, remote)
    assert code == 0, err
    assert _tip(remote) == first
    return first


def test_the_first_revision_must_be_signed_by_a_trusted_key(
        repo: GitRepo, remote: Path, keys: dict[str, Signer]) -> None:
    keys["dev"].commit(repo, "cluster with grants", base_files(keys))
    code, err = _push(repo, remote)
    assert code != 0
    assert (f"is signed by SSH key {keys['dev'].fingerprint}, which no --trust-key names, nor is any commit "
            "before it signed by a --trust-key key") in err
    assert "Traceback" not in err
    git("commit", "-q", "--amend", "--no-edit", "--no-gpg-sign", cwd=repo.path)
    code, err = _push(repo, remote)
    assert code != 0 and "is not signed" in err


def test_an_unsigned_push_is_refused(repo: GitRepo, remote: Path, pushed: str) -> None:
    unsigned = repo.commit("unsigned", {"web.yaml": deployment("staging")})
    code, err = _push(repo, remote)
    assert code != 0
    assert f"commit {unsigned[:7]} is not signed" in err
    assert "git commit -S" in err and "Traceback" not in err
    assert _tip(remote) == pushed


def test_a_key_without_a_grant_for_prod_is_refused_naming_commit_signer_object_and_verb(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    dev = keys["dev"]
    oid = dev.commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
    code, err = _push(repo, remote)
    assert code != 0
    assert (f"prod/web.yaml:4:9: /metadata/name: commit {oid[:7]} signed by ssh {dev.fingerprint} may not create "
            f"Deployment prod/web: no role bound to the signer in the tip of 'main' {pushed[:7]} grants "
            "'create' on deployments (apps API group) in namespace prod") in err, err
    assert _tip(remote) == pushed


def test_a_key_not_named_by_any_binding_is_refused(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    oid = keys["stranger"].commit(repo, "web", {"web.yaml": deployment("staging")})
    code, err = _push(repo, remote)
    assert code != 0
    assert f"commit {oid[:7]} is signed by SSH key {keys['stranger'].fingerprint}, which no binding names" in err


def test_allowed_changes_are_accepted_ssh_and_openpgp(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    keys["dev"].commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
    keys["ops"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
    head = keys["ops"].commit(repo, "scale prod", {"prod/web.yaml": deployment("prod", replicas=2)})
    code, err = _push(repo, remote)
    assert code == 0, err
    assert _tip(remote) == head
    # ops may create and update Deployments in prod, not delete them.
    repo.remove("prod/web.yaml")
    gone = keys["ops"].commit(repo, "drop prod web")
    code, err = _push(repo, remote)
    assert code != 0
    assert (f"commit {gone[:7]} signed by openpgp {keys['ops'].fingerprint} may not delete Deployment prod/web"
            in err), err


def test_a_commit_adding_its_own_signer_to_a_role_binding_is_refused(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    dev = keys["dev"]
    rbac = (repo.path / "rbac.yaml").read_text()
    widened = rbac.replace(f'    name: "{keys["ops"].fingerprint}"\n',
                           f'    name: "{keys["ops"].fingerprint}"\n  - kind: User\n    name: "{dev.fingerprint}"\n')
    assert widened != rbac
    oid = dev.commit(repo, "let me deploy to prod", {"rbac.yaml": widened})
    code, err = _push(repo, remote)
    assert code != 0
    assert f"commit {oid[:7]} signed by ssh {dev.fingerprint} may not update RoleBinding prod/deployers" in err
    assert "'update' on rolebindings (rbac.authorization.k8s.io API group) in namespace prod" in err
    # Nor does a later commit of the same push, granted by the binding it adds, get through.
    keys["dev"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
    code, err = _push(repo, remote)
    assert code != 0 and "may not create Deployment prod/web" in err
    assert _tip(remote) == pushed


def test_a_tampered_signature_does_not_verify(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    keys["dev"].commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
    # Same signature header, other content: git's commit object rewritten by hand.
    raw = git("cat-file", "commit", "HEAD", cwd=repo.path).stdout
    forged = raw.replace("web in staging", "web in staging!")
    oid = git("hash-object", "-t", "commit", "-w", "--stdin", cwd=repo.path, input=forged).stdout.strip()
    git("reset", "-q", "--soft", oid, cwd=repo.path)
    code, err = _push(repo, remote)
    assert code != 0
    assert f"commit {oid[:7]} has an SSH signature by {keys['dev'].fingerprint} that does not verify" in err


# --- the controller checks again ---------------------------------------------------------------


def test_the_controller_refuses_a_range_pushed_around_the_hook(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    admin = tmp_path / "admin.pub"
    admin.write_text(keys["admin"].public + "\n")
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    settings = ControllerSettings(trust_keys=(str(admin),))
    controller = Controller(open_repository(repo.path), store, tmp_path / "state", settings)
    try:
        first = keys["admin"].commit(repo, "cluster with grants", base_files(keys))
        assert controller.reconcile().valid
        last = store.last_applied_revision()
        assert last is not None and last.commit == first
        # Committed straight into the repository the controller reads: no hook ran.
        bad = keys["dev"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        result = controller.reconcile()
        assert not result.valid
        assert f"commit {bad[:7]} signed by ssh {keys['dev'].fingerprint} may not create Deployment prod/web" \
            in result.diagnostics[0]
        stored = store.revision(bad)
        assert stored is not None and stored.outcome == "invalid"
        event = next(e for e in store.events() if e.reason == "InvalidRevision" and e.revision == bad)
        for part in (bad[:7], keys["dev"].fingerprint, "Deployment prod/web", "'create'"):
            assert part in event.message
        last = store.last_applied_revision()
        assert last is not None and last.commit == first
        assert result.state is not None and result.state.revision.oid == first  # the last good one runs on
        # A commit on top, even one reverting it and signed by the admin, does not launder it: every
        # commit of the range is checked.
        repo.remove("prod/web.yaml")
        keys["admin"].commit(repo, "revert web in prod")
        assert not controller.reconcile().valid
        # A history that drops it (reset to the applied revision, force-pushed) is checked as one change
        # from the applied revision, signed by its head's signer.
        git("reset", "-q", "--hard", first, cwd=repo.path)
        staged = keys["dev"].commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
        result = controller.reconcile()
        assert result.valid, result.diagnostics
        last = store.last_applied_revision()
        assert last is not None and last.commit == staged
        git("reset", "-q", "--hard", first, cwd=repo.path)
        replaced = keys["dev"].commit(repo, "web in prod again", {"prod/web.yaml": deployment("prod")})
        result = controller.reconcile()
        assert not result.valid
        # Relative to the applied revision it deletes staging/web and creates prod/web: both refused.
        assert any(f"commit {replaced[:7]} signed by ssh {keys['dev'].fingerprint} may not create Deployment "
                   "prod/web" in d for d in result.diagnostics), result.diagnostics
    finally:
        controller.close()
        store.close()


def test_the_controller_applies_an_allowed_range_and_needs_a_trusted_first_revision(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    untrusting = Controller(open_repository(repo.path), store, tmp_path / "state")
    try:
        first = keys["admin"].commit(repo, "cluster with grants", base_files(keys))
        result = untrusting.reconcile()
        assert not result.valid
        assert "the Cluster sets git.verifyCommits and nothing was applied yet" in result.diagnostics[0]
        assert "--trust-key" in result.diagnostics[0]
    finally:
        untrusting.close()
    settings = ControllerSettings(trust_keys=(keys["admin"].fingerprint,))
    controller = Controller(open_repository(repo.path), store, tmp_path / "state", settings)
    try:
        assert controller.reconcile().valid
        keys["dev"].commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
        head = keys["ops"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        result = controller.reconcile()
        assert result.valid, result.diagnostics
        last = store.last_applied_revision()
        assert last is not None and last.commit == head and last.commit != first
        assert result.state is not None and result.state.get("Deployment", "prod", "web") is not None
    finally:
        controller.close()
        store.close()


def test_a_controller_started_after_some_pushes_trusts_the_newest_commit_its_key_signed(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    keys["admin"].commit(repo, "cluster with grants", base_files(keys))
    keys["dev"].commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
    bad = keys["dev"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    settings = ControllerSettings(trust_keys=(keys["admin"].public,))
    controller = Controller(open_repository(repo.path), store, tmp_path / "state", settings)
    try:
        # The commits after the admin's are checked against its grants: dev's second one is refused.
        result = controller.reconcile()
        assert not result.valid
        assert (f"commit {bad[:7]} signed by ssh {keys['dev'].fingerprint} may not create Deployment prod/web: no "
                "role bound to the signer in the newest revision signed by a --trust-key key") in result.diagnostics[0]
        git("reset", "-q", "--hard", "HEAD~1", cwd=repo.path)  # dropped: nothing was applied, so nothing to replace
        head = keys["ops"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        result = controller.reconcile()
        assert result.valid, result.diagnostics
        last = store.last_applied_revision()
        assert last is not None and last.commit == head
    finally:
        controller.close()
        store.close()


def test_apply_refuses_an_unsigned_head_with_one_clear_line(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    keys["admin"].commit(repo, "cluster with grants", base_files(keys))
    res = gitorch("apply", "--repo", str(repo.path), "--trust-key", keys["admin"].fingerprint, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    unsigned = repo.commit("unsigned", {"staging/web.yaml": deployment("staging")})
    res = gitorch("apply", "--repo", str(repo.path), cwd=tmp_path)
    assert res.returncode == 1
    assert f"commit {unsigned[:7]} is not signed" in res.stderr and "Traceback" not in res.stderr
    res = gitorch("apply", "--repo", str(repo.path), "--trust-key", "not-a-key", cwd=tmp_path)
    assert res.returncode == 1 and "--trust-key not-a-key: expected an SSH public key" in res.stderr


# --- gitorch audit -------------------------------------------------------------------------------


def test_audit_says_who_changed_what_with_which_signature_and_what_the_controller_did(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    import json

    from gitorch.model.settings import Settings

    settings = Settings.from_env()
    store = Store.open(settings.database_url)
    controller = Controller(open_repository(repo.path), store, settings.state_dir,
                            ControllerSettings(trust_keys=(keys["admin"].fingerprint,)))
    try:
        keys["admin"].commit(repo, "cluster with grants", base_files(keys))
        assert controller.reconcile().valid
        created = keys["ops"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        assert controller.reconcile().valid
        keys["admin"].commit(repo, "db password", {"prod/db.yaml": SECRET.replace("CANARY", "first-canary-5151")})
        keys["admin"].commit(repo, "new db password",
                             {"prod/db.yaml": SECRET.replace("CANARY", "second-canary-6262")})
        assert controller.reconcile().valid
        scaled = keys["dev"].commit(repo, "scale prod", {"prod/web.yaml": deployment("prod", replicas=3)})
        assert not controller.reconcile().valid
    finally:
        controller.close()
        store.close()
    res = gitorch("audit", "--repo", str(repo.path), "--object", "deployment/prod/web", "-o", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    entries = json.loads(res.stdout)
    assert [(e["commit"], e["verb"]) for e in entries] == [(scaled, "update"), (created, "create")]
    refused, applied = entries
    assert refused["signature"] == {"method": "ssh", "signer": keys["dev"].fingerprint, "verified": True,
                                    "problem": ""}
    assert not refused["granted"] and refused["outcome"] == "invalid"
    assert refused["summary"] == "spec.replicas: 1 -> 3"
    assert any(e["reason"] == "InvalidRevision" and "may not update Deployment prod/web" in e["message"]
               for e in refused["events"])
    assert applied["signature"]["method"] == "openpgp" and applied["signature"]["signer"] == keys["ops"].fingerprint
    assert applied["signature"]["verified"] and applied["granted"]
    assert applied["outcome"] == "applied" and applied["appliedIn"] == created and applied["appliedAt"]
    # The table for people: every object of every commit, newest first.
    res = gitorch("audit", "--repo", str(repo.path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["TIME", "COMMIT", "SIGNER", "SIGNATURE", "CHANGE", "OBJECT", "SUMMARY", "CONTROLLER"]
    assert scaled[:7] in lines[1] and "verified, not granted" in lines[1] and "invalid in" in lines[1]
    assert any("ClusterRoleBinding/admins" in line and keys["admin"].fingerprint in line and "applied" in line
               for line in lines)
    res = gitorch("audit", "--repo", str(repo.path), "--object", "secret/prod/db", "-o", "json", cwd=tmp_path)
    assert [e["verb"] for e in json.loads(res.stdout)] == ["update", "create"]
    for output in ("table", "json"):
        res = gitorch("audit", "--repo", str(repo.path), "-o", output, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert ("Secret/prod/db" if output == "table" else '"name": "db"') in res.stdout
        assert "canary" not in res.stdout  # secret values are masked where the diff is made
    res = gitorch("audit", "--repo", str(repo.path), "--since", "1d", "--object", "role/prod/deployer",
                  "-o", "json", cwd=tmp_path)
    assert res.returncode == 0 and [e["verb"] for e in json.loads(res.stdout)] == ["create"]
    res = gitorch("audit", "--repo", str(repo.path), "--object", "deployment", cwd=tmp_path)
    assert res.returncode == 1 and "expected KIND/NAMESPACE/NAME" in res.stderr and "Traceback" not in res.stderr
    res = gitorch("audit", "--repo", str(repo.path), "--since", "yesterday", cwd=tmp_path)
    assert res.returncode == 1 and "--since 'yesterday'" in res.stderr


def test_audit_checks_each_commit_against_the_last_applied_grants_not_a_refused_parent(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    from gitorch.reconcile import auditing

    dev = keys["dev"]
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    controller = Controller(open_repository(repo.path), store, tmp_path / "state",
                            ControllerSettings(trust_keys=(keys["admin"].fingerprint,)))
    try:
        first = keys["admin"].commit(repo, "cluster with grants", base_files(keys))
        assert controller.reconcile().valid
        rbac = (repo.path / "rbac.yaml").read_text()
        ops = f'    name: "{keys["ops"].fingerprint}"\n'
        widened = rbac.replace(ops, f'{ops}  - kind: User\n    name: "{dev.fingerprint}"\n')
        widen = dev.commit(repo, "let me deploy to prod", {"rbac.yaml": widened})
        assert not controller.reconcile().valid
        deploy = dev.commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        assert not controller.reconcile().valid
        entries = {(e.revision.oid, str(e.key)): e for e in auditing.audit(open_repository(repo.path), store, rev=None)}
        # Its parent (the refused widening) would grant dev the Deployment; the applied revision does not.
        (web,) = [e for (oid, _), e in entries.items() if oid == deploy]
        assert web.signature.verified and not web.granted and web.outcome == "invalid"
        (binding,) = [e for (oid, _), e in entries.items() if oid == widen]
        assert not binding.granted
        # Without the store (no applied revision known), each commit is checked against its parent.
        (web,) = [e for e in auditing.audit(open_repository(repo.path), None, rev=None) if e.revision.oid == deploy]
        assert web.granted and web.outcome == ""
        # Once the admin applies a revision that grants it, later commits are checked against that one.
        git("reset", "-q", "--hard", first, cwd=repo.path)
        keys["admin"].commit(repo, "dev may deploy to prod", {"rbac.yaml": widened})
        assert controller.reconcile().valid
        again = dev.commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        assert controller.reconcile().valid
        (web,) = [e for e in auditing.audit(open_repository(repo.path), store, rev=None) if e.revision.oid == again]
        assert web.granted and web.outcome == "applied"
    finally:
        controller.close()
        store.close()


def test_a_force_push_is_checked_as_one_change_from_the_tip(
        repo: GitRepo, remote: Path, keys: dict[str, Signer], pushed: str) -> None:
    dev = keys["dev"]
    dev.commit(repo, "web in staging", {"staging/web.yaml": deployment("staging")})
    assert _push(repo, remote)[0] == 0
    git("reset", "-q", "--hard", pushed, cwd=repo.path)
    replaced = dev.commit(repo, "web in prod instead", {"prod/web.yaml": deployment("prod")})
    res = git("push", "--force", str(remote), "HEAD:refs/heads/main", cwd=repo.path, check=False)
    assert res.returncode != 0
    # From the tip it replaces, it deletes staging/web (allowed) and creates prod/web (not).
    assert f"commit {replaced[:7]} signed by ssh {dev.fingerprint} may not create Deployment prod/web" in res.stderr
    assert "may not delete" not in res.stderr
    git("reset", "-q", "--hard", pushed, cwd=repo.path)
    again = dev.commit(repo, "web in staging, scaled", {"staging/web.yaml": deployment("staging", replicas=2)})
    res = git("push", "--force", str(remote), "HEAD:refs/heads/main", cwd=repo.path, check=False)
    assert res.returncode == 0, res.stderr
    assert _tip(remote) == again


def test_openpgp_signatures_need_the_armored_key_and_ssh_subjects_match_by_fingerprint(
        repo: GitRepo, keys: dict[str, Signer]) -> None:
    from gitorch.source.git import signed_commit
    from gitorch.source.grants import trusted
    from gitorch.source.signatures import Verifier

    ops, dev = keys["ops"], keys["dev"]
    r = open_repository(repo.path)
    by_ops = signed_commit(r, ops.commit(repo, "by ops"))
    by_dev = signed_commit(r, dev.commit(repo, "by dev"))
    with Verifier(trusted([ops.fingerprint]), []) as v:
        sig = v.check(by_ops.signature, by_ops.signed_data)
        assert not sig.verified and "not among the Cluster's git.openpgpKeys" in sig.problem
    with Verifier(trusted([ops.fingerprint]), [ops.public]) as v:
        assert v.check(by_ops.signature, by_ops.signed_data).verified
        # The right key, other bytes: refused.
        assert not v.check(by_ops.signature, by_ops.signed_data + b"\n").verified
    with Verifier(trusted([dev.fingerprint]), []) as v:
        sig = v.check(by_dev.signature, by_dev.signed_data)
        assert sig.verified and sig.signer == dev.fingerprint and sig.method == "ssh"
        assert not v.check(by_dev.signature, by_dev.signed_data.replace(b"by dev", b"by eve")).verified
        assert v.check(b"", b"").problem == "is not signed"


def test_serve_applies_what_the_hook_accepts_and_refuses_a_push_around_the_hook(
        repo: GitRepo, remote: Path, tmp_path: Path, keys: dict[str, Signer], pushed: str) -> None:
    from gitorch.model.settings import Settings
    from tests.test_gitops import Serve, last_applied
    from tests.waiting import wait_until

    pub = tmp_path / "admin.pub"  # written by the `remote` fixture
    server = Serve(remote, tmp_path / "serve.log", interval=0.5, extra=("--trust-key", str(pub)))
    try:
        wait_until("the first revision applied", last_applied, timeout=60, interval=0.2,
                   accept=lambda got: got == pushed)
        allowed = keys["ops"].commit(repo, "web in prod", {"prod/web.yaml": deployment("prod")})
        code, err = _push(repo, remote)
        assert code == 0, err
        wait_until("the allowed push applied", last_applied, timeout=60, interval=0.2,
                   accept=lambda got: got == allowed)
        # Someone with the server's disk pushes with the hook set aside: the controller checks again.
        hook = remote / "hooks" / "pre-receive"
        hook.rename(hook.with_suffix(".off"))
        bad = keys["dev"].commit(repo, "web in prod, scaled", {"prod/web.yaml": deployment("prod", replicas=5)})
        code, err = _push(repo, remote)
        hook.with_suffix(".off").rename(hook)
        assert code == 0, err

        def refused() -> str:
            with Store.open(Settings.from_env().database_url) as s:
                row = s.revision(bad)
                return row.error if row is not None and row.outcome == "invalid" else ""

        error = wait_until("the controller refusing the range", refused, timeout=60, interval=0.2,
                           accept=lambda got: bool(got))
        assert f"commit {bad[:7]} signed by ssh {keys['dev'].fingerprint} may not update Deployment prod/web" in error
        assert last_applied() == allowed
        res = gitorch("events", "-o", "json", cwd=tmp_path)
        assert "InvalidRevision" in res.stdout and "'update' on deployments" in res.stdout
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_a_rewritten_history_that_drops_verify_commits_is_not_applied_without_a_trust_key(
        repo: GitRepo, tmp_path: Path, keys: dict[str, Signer]) -> None:
    """The last applied revision, which required signatures, is gone from the repository the
    controller reads, and the new head drops git.verifyCommits: without --trust-key nobody vouches
    for it, so it is refused (checking it as a first revision would let it through)."""
    admin = tmp_path / "admin.pub"
    admin.write_text(keys["admin"].public + "\n")
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    first_controller = Controller(open_repository(repo.path), store, tmp_path / "state",
                                  ControllerSettings(trust_keys=(str(admin),)))
    keys["admin"].commit(repo, "cluster with grants", base_files(keys))
    assert first_controller.reconcile().valid
    first_controller.close()
    # Another repository with none of that history, unsigned, without verifyCommits.
    other = GitRepo(tmp_path / "other")
    files = {k: v.replace("verifyCommits: true", "verifyCommits: false") for k, v in base_files(keys).items()}
    other.commit("unsigned, verifyCommits off", files)
    controller = Controller(open_repository(other.path), store, tmp_path / "state2")
    try:
        result = controller.reconcile()
        assert not result.valid
        assert "is gone from the repository, and it required signed commits" in result.diagnostics[0]
    finally:
        controller.close()
        store.close()
