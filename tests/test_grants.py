"""Grants (pure): what Roles, ClusterRoles and their bindings let a Git signer change, as
Kubernetes' RBAC decides it; and gpg's status lines as signature checks read them."""

from __future__ import annotations

import pytest

from gitorch.model.objects import ObjectKey
from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.source.grants import Change, Verb, changes, grants, resource, signer_id
from gitorch.source.signatures import parse_gpg_status
from tests.gitrepo import GitRepo

ALICE = "SHA256:" + "A" * 43
BOB = "0123456789ABCDEF0123456789ABCDEF01234567"
RBAC = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: dev}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: web-editor}}
rules:
  - apiGroups: ["apps"]
    resources: ["deployments"]
    resourceNames: ["web"]
    verbs: ["update"]
  - apiGroups: [""]
    resources: ["namespaces"]
    verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: alice, namespace: prod}}
roleRef: {{kind: ClusterRole, name: web-editor}}
subjects: [{{kind: User, name: "{ALICE}"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: anything, namespace: dev}}
rules: [{{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bob, namespace: dev}}
roleRef: {{kind: Role, name: anything}}
subjects: [{{kind: User, name: "{BOB.lower()}"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: dangling, namespace: prod}}
roleRef: {{kind: Role, name: missing}}
subjects: [{{kind: User, name: "{BOB}"}}]
"""


def _key(kind: str, ns: str, name: str) -> ObjectKey:
    return ObjectKey(kind, ns, name)


CASES = [
    pytest.param(ALICE, Verb.UPDATE, _key("Deployment", "prod", "web"), True, id="alice-updates-web-in-prod"),
    pytest.param(ALICE, Verb.CREATE, _key("Deployment", "prod", "web"), False, id="alice-may-not-create-web"),
    pytest.param(ALICE, Verb.UPDATE, _key("Deployment", "prod", "api"), False, id="resource-names-narrow"),
    pytest.param(ALICE, Verb.UPDATE, _key("Deployment", "dev", "web"), False, id="rolebinding-is-one-namespace"),
    pytest.param(ALICE, Verb.UPDATE, _key("StatefulSet", "prod", "web"), False, id="other-resource"),
    pytest.param(ALICE, Verb.CREATE, _key("Namespace", "", "extra"), False,
                 id="clusterrole-through-rolebinding-grants-no-cluster-scoped-object"),
    pytest.param(BOB, Verb.DELETE, _key("Secret", "dev", "db"), True, id="wildcards"),
    pytest.param(BOB, Verb.UPDATE, _key("RoleBinding", "dev", "bob"), True, id="rbac-objects-are-resources-too"),
    pytest.param(BOB, Verb.UPDATE, _key("Deployment", "prod", "web"), False, id="binding-to-a-missing-role"),
    pytest.param("SHA256:" + "B" * 43, Verb.UPDATE, _key("Deployment", "dev", "web"), False, id="unknown-signer"),
]


@pytest.mark.parametrize(("signer", "verb", "key", "allowed"), CASES)
def test_grants(repo: GitRepo, signer: str, verb: Verb, key: ObjectKey, allowed: bool) -> None:
    repo.commit("rbac", {"rbac.yaml": RBAC})
    state = desired.load(open_repository(repo.path), None)
    assert state.ok, [d.format() for d in state.diagnostics]
    assert grants(state).allows([signer], Change(key, verb)) is allowed


def test_a_cluster_role_binding_reaches_cluster_scoped_objects(repo: GitRepo) -> None:
    repo.commit("rbac", {"rbac.yaml": RBAC + f"""\
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: alice}}
roleRef: {{kind: ClusterRole, name: web-editor}}
subjects: [{{kind: User, name: "{ALICE}"}}]
"""})
    g = grants(desired.load(open_repository(repo.path), None))
    assert g.allows([ALICE], Change(_key("Namespace", "", "extra"), Verb.CREATE))
    assert g.allows([ALICE], Change(_key("Deployment", "dev", "web"), Verb.UPDATE))


def test_changes_are_object_level(repo: GitRepo) -> None:
    ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n"
    a = repo.commit("a", {"a.yaml": ns % "one", "b.yaml": ns % "two"})
    repo.remove("a.yaml")
    b = repo.commit("b", {"c.yaml": ns % "three", "moved.yaml": ns % "one",
                          "b.yaml": (ns % "two") + "  labels: {x: y}\n"})
    r = open_repository(repo.path)
    assert changes(desired.load(r, a), desired.load(r, b)) == [
        Change(_key("Namespace", "", "three"), Verb.CREATE), Change(_key("Namespace", "", "two"), Verb.UPDATE)]


@pytest.mark.parametrize(("kind", "expected"), [("Deployment", ("apps", "deployments")), ("Secret", ("", "secrets")),
                                                ("NetworkPolicy", ("networking.k8s.io", "networkpolicies")),
                                                ("ClusterRoleBinding", ("rbac.authorization.k8s.io",
                                                                        "clusterrolebindings")),
                                                ("Cluster", ("gitorch.dev", "clusters")),
                                                ("StorageClass", ("storage.k8s.io", "storageclasses")),
                                                ("PodDisruptionBudget", ("policy", "poddisruptionbudgets"))])
def test_resource_names(kind: str, expected: tuple[str, str]) -> None:
    assert resource(kind) == expected


def test_signer_ids() -> None:
    # ssh-keygen -lf of this key prints this fingerprint.
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl someone@example"
    assert signer_id(key) == "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
    assert signer_id(BOB.lower()) == BOB
    assert signer_id("ssh-ed25519 not*base64") is None


# Captured from gpg 2.2 (`gpg --batch --status-fd 1 --verify`), key ids shortened to the fields read.
GOOD = """\
[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED 5797CE9D187FF917066BB64525B755CD7F0AB510 0
[GNUPG:] SIG_ID abc 2026-12-07 1800000000
[GNUPG:] GOODSIG 25B755CD7F0AB510 ops <ops@example.test>
[GNUPG:] VALIDSIG 1111CE9D187FF917066BB64525B755CD7F0AB510 2026-12-07 1800000000 0 4 0 22 8 00 \
5797CE9D187FF917066BB64525B755CD7F0AB510
[GNUPG:] TRUST_UNDEFINED 0 pgp
"""
MISSING = """\
[GNUPG:] NEWSIG
[GNUPG:] ERRSIG 25B755CD7F0AB510 22 8 00 1800000000 9 5797CE9D187FF917066BB64525B755CD7F0AB510
[GNUPG:] NO_PUBKEY 25B755CD7F0AB510
"""
BAD = """\
[GNUPG:] NEWSIG
[GNUPG:] BADSIG 25B755CD7F0AB510 ops <ops@example.test>
"""
EXPIRED = GOOD.replace("GOODSIG", "EXPKEYSIG")


def test_gpg_status() -> None:
    good = parse_gpg_status(GOOD)
    assert good.good and good.fingerprints == ("1111CE9D187FF917066BB64525B755CD7F0AB510",
                                               "5797CE9D187FF917066BB64525B755CD7F0AB510")
    missing = parse_gpg_status(MISSING)
    assert not missing.good and missing.missing and missing.issuer == "5797CE9D187FF917066BB64525B755CD7F0AB510"
    assert parse_gpg_status(BAD).bad.startswith("is bad")
    expired = parse_gpg_status(EXPIRED)
    assert not expired.good and expired.bad == "was made by an expired key"


def test_validate_warns_about_grants_that_do_nothing(repo: GitRepo) -> None:
    from gitorch.model.diagnostics import warnings

    repo.commit("lockout", {"cluster.yaml": """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: c}
spec:
  git: {verifyCommits: true}
""", "rbac.yaml": """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: admins}
roleRef: {kind: ClusterRole, name: admin}
subjects: []
"""})
    state = desired.load(open_repository(repo.path), None)
    got = [d.format() for d in warnings(state.diagnostics)]
    assert got == [
        "cluster.yaml:5:24: /spec/git/verifyCommits: warning: no RoleBinding or ClusterRoleBinding names a signer: "
        "once this revision is applied, every later commit is refused "
        "(hint: bind a role to the keys that sign commits)",
        "rbac.yaml:4:36: /roleRef/name: warning: ClusterRole 'admin' does not exist: this binding grants nothing "
        "(hint: add the ClusterRole, or fix the name)",
    ], got
    assert state.ok
