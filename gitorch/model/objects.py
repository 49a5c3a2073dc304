"""Objects: the kinds gitorch knows and the typed desired-state objects built from manifests.

Purely computational, no side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gitorch.model.diagnostics import Diagnostic, errors
from gitorch.model.documents import SourceDocument
from gitorch.model.revisions import Revision

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    namespaced: bool
    schema: str  # file name in schemas/
    workload: bool = False
    order: int = 50  # apply order: namespaces and config before the workloads that use them


KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo("Cluster", "gitorch.dev/v1", False, "cluster.json", order=0),
        KindInfo("Node", "gitorch.dev/v1", False, "node.json", order=1),
        KindInfo("Namespace", "v1", False, "namespace.json", order=2),
        # Grants to Git signers (source/grants.py): read from Git, nothing to run on nodes.
        KindInfo("ClusterRole", "rbac.authorization.k8s.io/v1", False, "clusterrole.json", order=3),
        KindInfo("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", False, "clusterrolebinding.json", order=3),
        KindInfo("Role", "rbac.authorization.k8s.io/v1", True, "role.json", order=3),
        KindInfo("RoleBinding", "rbac.authorization.k8s.io/v1", True, "rolebinding.json", order=3),
        KindInfo("ConfigMap", "v1", True, "configmap.json", order=10),
        KindInfo("Secret", "v1", True, "secret.json", order=10),
        KindInfo("StorageClass", "storage.k8s.io/v1", False, "storageclass.json", order=3),
        KindInfo("PersistentVolume", "v1", False, "persistentvolume.json", order=11),
        KindInfo("PersistentVolumeClaim", "v1", True, "persistentvolumeclaim.json", order=11),
        KindInfo("ServiceAccount", "v1", True, "serviceaccount.json", order=12),
        KindInfo("LimitRange", "v1", True, "limitrange.json", order=5),
        KindInfo("ResourceQuota", "v1", True, "resourcequota.json", order=5),
        KindInfo("Service", "v1", True, "service.json", order=20),
        KindInfo("NetworkPolicy", "networking.k8s.io/v1", True, "networkpolicy.json", order=21),
        KindInfo("PodDisruptionBudget", "policy/v1", True, "poddisruptionbudget.json", order=21),
        KindInfo("IngressClass", "networking.k8s.io/v1", False, "ingressclass.json", order=22),
        KindInfo("Ingress", "networking.k8s.io/v1", True, "ingress.json", order=22),
        KindInfo("Deployment", "apps/v1", True, "deployment.json", workload=True, order=30),
        KindInfo("ReplicaSet", "apps/v1", True, "replicaset.json", workload=True, order=30),
        KindInfo("Pod", "v1", True, "pod.json", workload=True, order=30),
        KindInfo("StatefulSet", "apps/v1", True, "statefulset.json", workload=True, order=30),
        KindInfo("DaemonSet", "apps/v1", True, "daemonset.json", workload=True, order=30),
        KindInfo("Job", "batch/v1", True, "job.json", workload=True, order=31),
        KindInfo("CronJob", "batch/v1", True, "cronjob.json", workload=True, order=32),
        KindInfo("HorizontalPodAutoscaler", "autoscaling/v2", True, "horizontalpodautoscaler.json", order=35),
        KindInfo("VerticalPodAutoscaler", "autoscaling.k8s.io/v1", True, "verticalpodautoscaler.json", order=36),
    )
}

# Where each kind keeps values that must never be printed.
SENSITIVE_FIELDS: dict[str, tuple[str, ...]] = {"Secret": ("data", "stringData")}
# The only top-level fields of those kinds that may be printed: anything else (the values, in
# whatever shape, or a misspelt field that may hold them) is masked whole.
PUBLIC_FIELDS: dict[str, frozenset[str]] = {
    "Secret": frozenset({"apiVersion", "kind", "metadata", "type", "immutable"}),
}
# `kubectl apply` leaves a copy of the whole object, values included, in this annotation.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
HIDDEN = "(sensitive value)"


def is_sensitive(kind: str, path: Sequence[str | int]) -> bool:
    """Whether the value at `path` (JSON-pointer tokens) of a `kind` object may hold or contain a
    secret: the whole object, any field but the public ones, and kubectl's last-applied copy."""
    public = PUBLIC_FIELDS.get(kind)
    if public is None:
        return False
    if not path or path[0] not in public:
        return True
    n = min(len(path), 3)
    return tuple(path[:n]) == ("metadata", "annotations", LAST_APPLIED)[:n]


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identity of an object: kind, namespace ("" when cluster-scoped) and name."""

    kind: str
    namespace: str
    name: str
    # Keys are looked up by the hundred thousand in a plan of 10,000 objects: hashed once.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.kind, self.namespace, self.name)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[ObjectKey], tuple[str, str, str]]:  # hashed again where it is loaded
        return (ObjectKey, (self.kind, self.namespace, self.name))

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    @property
    def ref(self) -> str:
        """kubectl-style `kind/name` (namespace kept apart)."""
        return f"{self.kind.lower()}/{self.name}"

    def sort_key(self) -> tuple[int, str, str, str]:
        info = KINDS.get(self.kind)
        return (info.order if info else 99, self.kind, self.namespace, self.name)


@dataclass
class Object:
    """One desired object and where it was written."""

    key: ObjectKey
    body: dict[str, Any]
    document: SourceDocument = field(repr=False)
    _pod: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def pod_as_template(self) -> dict[str, Any]:
        """A bare Pod as the pod template of the workloads (metadata and spec): built once, so
        what is kept by its identity (pod specs, revisions) stays valid."""
        if self._pod is None:
            meta = self.body.get("metadata")
            self._pod = {"metadata": meta if isinstance(meta, dict) else {}, "spec": self.spec}
        return self._pod

    @property
    def path(self) -> str:
        return self.document.path

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        labels = self.body.get("metadata", {}).get("labels")
        return labels if isinstance(labels, dict) else {}

    @property
    def annotations(self) -> dict[str, str]:
        ann = self.body.get("metadata", {}).get("annotations")
        return ann if isinstance(ann, dict) else {}


@dataclass
class DesiredState:
    """Everything one commit asks for: its objects (valid or not) and what is wrong with them."""

    revision: Revision
    objects: dict[ObjectKey, Object]
    diagnostics: list[Diagnostic]
    files: int = 0
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Results computed from this state (it is not changed once loaded): kinds, pod specs."""

    @property
    def ok(self) -> bool:
        return not errors(self.diagnostics)

    def of_kind(self, kind: str) -> list[Object]:
        found = self.memo.get(("of_kind", kind))
        if found is None:
            found = self.memo[("of_kind", kind)] = [o for k, o in sorted(self.objects.items()) if k.kind == kind]
        return list(found)

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        return self.objects.get(ObjectKey(kind, namespace, name))

    def sorted(self) -> list[Object]:
        return [self.objects[k] for k in sorted(self.objects, key=ObjectKey.sort_key)]


def cronjob_run(cronjob: str, job: str) -> bool:
    """Whether a Job named `job` is a run of the CronJob `cronjob` in its namespace: planning
    names a run `<cronjob>-<the minute it was scheduled for>` (unless Git declares that Job)."""
    return job.startswith(f"{cronjob}-") and job[len(cronjob) + 1 :].isdigit()


def autoscaled(state: DesiredState) -> dict[ObjectKey, str]:
    """Workloads a HorizontalPodAutoscaler of `state` scales -> that autoscaler's name (the first
    by name; validation refuses a second). Their `replicas` in Git is only where they start."""
    found = state.memo.get("autoscaled")
    if found is None:
        found = {}
        for key in sorted(k for k in state.objects if k.kind == "HorizontalPodAutoscaler"):
            spec = state.objects[key].spec
            ref: dict[str, Any] = spec["scaleTargetRef"] if isinstance(spec.get("scaleTargetRef"), dict) else {}
            if ref.get("kind") in ("Deployment", "StatefulSet") and isinstance(ref.get("name"), str):
                found.setdefault(ObjectKey(str(ref["kind"]), key.namespace, ref["name"]), key.name)
        state.memo["autoscaled"] = found
    return dict(found)
