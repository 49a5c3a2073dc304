"""Grants: what a Git signer may change, from the Roles, ClusterRoles and their bindings of one
revision, as Kubernetes' RBAC authorizer decides (rules are additive; nothing is denied
explicitly), and the object-level changes one commit makes.

Purely computational, no side effects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gitorch.model.objects import KINDS, DesiredState, Object, ObjectKey

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = frozenset({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})
ALL_NAMESPACES = "*"


class Verb(StrEnum):
    """What a commit does to an object, in RBAC's words."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, order=True)
class Change:
    """One object a commit creates, updates or deletes."""

    key: ObjectKey
    verb: Verb


def changes(before: DesiredState, after: DesiredState) -> list[Change]:
    """The objects whose manifests differ between two revisions, sorted (where they are
    written is no change: moving a manifest to another file changes nothing)."""
    out = []
    for key in before.objects.keys() | after.objects.keys():
        old, new = before.objects.get(key), after.objects.get(key)
        if old is None:
            out.append(Change(key, Verb.CREATE))
        elif new is None:
            out.append(Change(key, Verb.DELETE))
        elif old.body != new.body:
            out.append(Change(key, Verb.UPDATE))
    return sorted(out)


def resource(kind: str) -> tuple[str, str]:
    """(API group, resource) of a kind, as rules name them: ("apps", "deployments")."""
    info = KINDS.get(kind)
    api = info.api_version if info else "v1"
    group = api.rpartition("/")[0]
    plural = kind.lower()
    if plural.endswith("y"):
        plural = plural[:-1] + "ies"
    else:
        plural += "es" if plural.endswith("s") else "s"
    return group, plural


# --- signers ----------------------------------------------------------------------------

_SSH_KEY = re.compile(r"^(\S+) ([A-Za-z0-9+/]+={0,2})(?: .*)?$")


def ssh_fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (`ssh-keygen -lf` prints it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def signer_id(name: str) -> str | None:
    """The identity a subject's name stands for: an SSH key's SHA256 fingerprint (from the key
    or as given) or an OpenPGP fingerprint in upper case; None if it is neither."""
    name = name.strip()
    if name.startswith("SHA256:"):
        return name
    if re.fullmatch(r"[0-9A-Fa-f]{40}", name):
        return name.upper()
    m = _SSH_KEY.match(name)
    if m is None:
        return None
    try:
        blob = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
    return ssh_fingerprint(blob)


# --- rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One policy rule of a role, scoped to a namespace (or every one, and cluster-scoped
    objects, through a ClusterRoleBinding)."""

    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]  # empty: any name
    namespace: str  # ALL_NAMESPACES: everywhere, cluster-scoped objects included
    via: str  # the binding that grants it, for messages

    def allows(self, change: Change) -> bool:
        key = change.key
        if self.namespace != ALL_NAMESPACES and (not key.namespace or key.namespace != self.namespace):
            return False
        group, plural = resource(key.kind)
        return (
            ("*" in self.verbs or change.verb.value in self.verbs)
            and ("*" in self.groups or group in self.groups)
            and ("*" in self.resources or plural in self.resources)
            and (not self.names or key.name in self.names)
        )


def _strings(value: Any) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()


def _rules(role: Object, namespace: str, via: str) -> list[Rule]:
    out = []
    for rule in role.body.get("rules") or []:
        if isinstance(rule, dict):
            out.append(Rule(_strings(rule.get("apiGroups")), _strings(rule.get("resources")),
                            _strings(rule.get("verbs")), _strings(rule.get("resourceNames")), namespace, via))
    return out


@dataclass(frozen=True)
class Grants:
    """Per signer identity, the rules the bindings of one revision give it. `everything` holds
    identities trusted with every change (`serve --trust-key`, for the first revision)."""

    rules: Mapping[str, tuple[Rule, ...]]
    everything: frozenset[str] = frozenset()

    def known(self, signer: str) -> bool:
        return signer in self.everything or signer in self.rules

    def allows(self, signers: Iterable[str], change: Change) -> bool:
        return any(s in self.everything or any(r.allows(change) for r in self.rules.get(s, ())) for s in signers)


def grants(state: DesiredState) -> Grants:
    """The grants of one revision: each binding's role rules, for each of its User subjects.
    A binding to a missing role grants nothing (as in Kubernetes)."""
    found: dict[str, list[Rule]] = {}
    for binding in [*state.of_kind("RoleBinding"), *state.of_kind("ClusterRoleBinding")]:
        ref = binding.body.get("roleRef")
        if not isinstance(ref, dict) or ref.get("apiGroup", RBAC_GROUP) != RBAC_GROUP:
            continue
        cluster_wide = binding.key.kind == "ClusterRoleBinding"
        ns = ALL_NAMESPACES if cluster_wide else binding.key.namespace
        ref_kind, ref_name = str(ref.get("kind")), str(ref.get("name"))
        role = state.get(ref_kind, "" if ref_kind == "ClusterRole" else binding.key.namespace, ref_name)
        if role is None or (cluster_wide and ref_kind != "ClusterRole"):
            continue
        via = f"{binding.key.kind} {binding.key.namespace + '/' if binding.key.namespace else ''}{binding.key.name}"
        rules = _rules(role, ns, via)
        for subject in binding.body.get("subjects") or []:
            if not isinstance(subject, dict) or subject.get("kind") != "User" \
                    or subject.get("apiGroup", RBAC_GROUP) != RBAC_GROUP:
                continue
            ident = signer_id(str(subject.get("name", "")))
            if ident is not None:
                found.setdefault(ident, []).extend(rules)
    return Grants({k: tuple(v) for k, v in found.items()})


def trusted(keys: Iterable[str]) -> Grants:
    """Grants of every change to the given identities (see signer_id)."""
    return Grants({}, frozenset(keys))


def cluster_git(state: DesiredState) -> dict[str, Any]:
    """The Cluster's `git` settings of a revision ({} when unset)."""
    for cluster in state.of_kind("Cluster"):
        git = cluster.spec.get("git")
        if isinstance(git, dict):
            return git
    return {}


def verifies_commits(state: DesiredState) -> bool:
    return cluster_git(state).get("verifyCommits") is True


def openpgp_keys(state: DesiredState) -> list[str]:
    return [str(k) for k in cluster_git(state).get("openpgpKeys") or []]
