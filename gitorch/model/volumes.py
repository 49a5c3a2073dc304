"""Volumes: PersistentVolumeClaims bound to node-local directories, as Kubernetes' volume
binder does with local PersistentVolumes and a local-path provisioner.

Purely computational, no side effects. A claim is bound either to a PersistentVolume of the
repository (its `local.path` or `hostPath.path` on the node its nodeAffinity names: static
provisioning), or, through a StorageClass with a local provisioner (or no class at all), to a
directory made on the node where its first pod lands (WaitForFirstConsumer). A bound claim
pins every pod that uses it to that node. The binding of a provisioned claim is recorded with
the claim's status (the controller keeps it); static bindings follow from the repository alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from gitorch.model.objects import Object, ObjectKey
from gitorch.model.quantities import QuantityError, parse_quantity

VOLUME_ROOT = "/var/lib/gitorch/volumes"
"""Where provisioned claims' directories live on a node: <root>/<namespace>/<claim>."""

# Provisioners that make a directory on the consumer's node; no-provisioner means static only.
LOCAL_PROVISIONERS = frozenset({"gitorch.dev/local", "rancher.io/local-path"})
NO_PROVISIONER = "kubernetes.io/no-provisioner"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


@dataclass(frozen=True)
class Binding:
    """Where a claim's data lives: a node, a directory on it, and what happens to the
    directory when the claim leaves Git (Delete: removed; Retain: kept)."""

    node: str
    path: str
    reclaim: str  # Delete | Retain
    volume: str = ""  # the PersistentVolume's name, for a static binding

    def record(self) -> dict[str, str]:
        return {"node": self.node, "path": self.path, "reclaim": self.reclaim, "volume": self.volume}

    @staticmethod
    def from_record(raw: Any) -> Binding | None:
        if not isinstance(raw, dict) or not raw.get("node") or not raw.get("path"):
            return None
        return Binding(str(raw["node"]), str(raw["path"]), str(raw.get("reclaim") or "Retain"),
                       str(raw.get("volume") or ""))


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _size(value: Any) -> Fraction | None:
    try:
        return parse_quantity(value) if isinstance(value, str | int | float) else None
    except QuantityError:
        return None


def volume_node(pv: Mapping[str, Any]) -> str | None:
    """The node a local PersistentVolume is on: its nodeAffinity's one required hostname."""
    terms = _map(_map(_map(pv.get("spec")).get("nodeAffinity")).get("required")).get("nodeSelectorTerms") or []
    for term in terms:
        for expr in _map(term).get("matchExpressions") or []:
            expr = _map(expr)
            values = expr.get("values") or []
            if expr.get("key") == "kubernetes.io/hostname" and expr.get("operator") == "In" and len(values) == 1:
                return str(values[0])
        for expr in _map(term).get("matchFields") or []:
            expr = _map(expr)
            values = expr.get("values") or []
            if expr.get("key") == "metadata.name" and expr.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def volume_path(pv: Mapping[str, Any]) -> str | None:
    spec = _map(pv.get("spec"))
    for source in ("local", "hostPath"):
        path = _map(spec.get(source)).get("path")
        if isinstance(path, str) and path:
            return path
    return None


def claim_class(claim: Object, classes: Mapping[str, Object]) -> str | None:
    """The StorageClass a claim asks for: its storageClassName, else the default class (none
    when there is none). "" asks for no class: a static volume."""
    name = claim.spec.get("storageClassName")
    if isinstance(name, str):
        return name
    defaults = sorted(n for n, c in classes.items()
                      if str(_map(c.body.get("metadata")).get("annotations", {}).get(DEFAULT_CLASS, "")) == "true")
    return defaults[0] if defaults else None


def provisioned(claim: Object, classes: Mapping[str, Object]) -> tuple[bool, str]:
    """(whether gitorch makes the claim's directory itself, its reclaim policy). No class at
    all keeps gitorch's own default: a directory on the first pod's node, kept (Retain)."""
    name = claim_class(claim, classes)
    if name is None:
        return True, "Retain"
    if name == "":
        return False, "Retain"
    cls = classes.get(name)
    if cls is None:
        return False, "Retain"
    reclaim = str(cls.body.get("reclaimPolicy") or "Delete")
    # Any provisioner but no-provisioner makes a local directory (validation warns of others).
    return str(cls.body.get("provisioner")) != NO_PROVISIONER, reclaim


def static_bindings(objects: Iterable[Object]) -> dict[ObjectKey, Binding]:
    """Claims bound to PersistentVolumes of the repository, as Kubernetes' binder matches
    them: a claim's volumeName, a volume's claimRef, then the smallest Available volume of the
    claim's class (storageClassName, "" matching none) with enough capacity and the access
    modes asked for. Claims are matched in name order, so the answer is stable."""
    objs = list(objects)
    volumes = {o.key.name: o for o in objs if o.key.kind == "PersistentVolume"}
    if not volumes:
        return {}
    classes = {o.key.name: o for o in objs if o.key.kind == "StorageClass"}
    claims = sorted((o for o in objs if o.key.kind == "PersistentVolumeClaim"), key=lambda o: o.key)
    taken: dict[str, ObjectKey] = {}
    out: dict[ObjectKey, Binding] = {}

    def bind(claim: Object, pv: Object) -> None:
        node, path = volume_node(pv.body), volume_path(pv.body)
        if node is None or path is None:
            return
        taken[pv.key.name] = claim.key
        reclaim = str(pv.spec.get("persistentVolumeReclaimPolicy") or "Retain")
        out[claim.key] = Binding(node, path, reclaim, pv.key.name)

    for pv in volumes.values():  # pre-bound by the volume's claimRef
        ref = _map(pv.spec.get("claimRef"))
        key = ObjectKey("PersistentVolumeClaim", str(ref.get("namespace") or "default"), str(ref.get("name") or ""))
        ref_claim = next((c for c in claims if c.key == key), None)
        if ref_claim is not None and ref_claim.spec.get("volumeName") in (None, pv.key.name):
            bind(ref_claim, pv)
    for claim in claims:
        name = claim.spec.get("volumeName")
        if claim.key in out or not isinstance(name, str):
            continue
        named = volumes.get(name)
        if named is not None and named.key.name not in taken:
            bind(claim, named)
    for claim in claims:
        if claim.key in out or claim.spec.get("volumeName"):
            continue
        want_class = claim_class(claim, classes) or ""
        if provisioned(claim, classes)[0]:
            continue
        want = _size(_map(_map(claim.spec.get("resources")).get("requests")).get("storage")) or Fraction(0)
        modes = set(claim.spec.get("accessModes") or [])
        fits = []
        for pv in volumes.values():
            if pv.key.name in taken or _map(pv.spec.get("claimRef")):
                continue
            if str(pv.spec.get("storageClassName") or "") != want_class:
                continue
            if not modes <= set(pv.spec.get("accessModes") or []):
                continue
            size = _size(_map(pv.spec.get("capacity")).get("storage"))
            if size is not None and size >= want:
                fits.append((size, pv.key.name, pv))
        if fits:
            bind(claim, min(fits, key=lambda f: (f[0], f[1]))[2])
    return out


def provisioned_path(namespace: str, claim: str) -> str:
    return f"{VOLUME_ROOT}/{namespace}/{claim}"
