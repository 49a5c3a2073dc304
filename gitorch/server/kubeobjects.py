"""Kubernetes objects built from what the store knows and where Git says each object is
written: the resources the read-only API serves (server/kubeapi.py), their discovery lists
and their server-side tables.

Purely computational, no side effects. Secret values never enter an object built here.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gitorch.model.objects import LAST_APPLIED
from gitorch.model.selectors import matches

ORIGIN = "gitorch.dev/"  # annotation prefix: commit, path, line
SECRET_KEYS = "gitorch.dev/data-keys"  # a Secret's keys (its values are never served)


@dataclass(frozen=True)
class Resource:
    """One resource of the API, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    store_kind: str = ""
    """The gitorch kind its objects come from (when it is a stored desired object)."""
    verbs: tuple[str, ...] = ("get", "list", "watch")

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("", "v1", "nodes", "Node", False, ("no",)),
    Resource("", "v1", "pods", "Pod", True, ("po",)),
    Resource("", "v1", "services", "Service", True, ("svc",), "Service"),
    Resource("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, ("cm",), "ConfigMap"),
    Resource("", "v1", "secrets", "Secret", True, (), "Secret"),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), "PersistentVolumeClaim"),
    Resource("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), "PersistentVolume"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",), "ServiceAccount"),
    Resource("", "v1", "events", "Event", True, ("ev",)),
    Resource("", "v1", "limitranges", "LimitRange", True, ("limits",), "LimitRange"),
    Resource("", "v1", "resourcequotas", "ResourceQuota", True, ("quota",), "ResourceQuota"),
    Resource("apps", "v1", "deployments", "Deployment", True, ("deploy",), "Deployment"),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), "ReplicaSet"),
    Resource("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), "StatefulSet"),
    Resource("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), "DaemonSet"),
    Resource("batch", "v1", "jobs", "Job", True, (), "Job"),
    Resource("batch", "v1", "cronjobs", "CronJob", True, ("cj",), "CronJob"),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, ()),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",), "NetworkPolicy"),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), "Ingress"),
    Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False, (), "IngressClass"),
    Resource("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ("sc",), "StorageClass"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True, (), "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, (), "RoleBinding"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, (), "ClusterRole"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, (),
             "ClusterRoleBinding"),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), "PodDisruptionBudget"),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("hpa",),
             "HorizontalPodAutoscaler"),
    Resource("autoscaling.k8s.io", "v1", "verticalpodautoscalers", "VerticalPodAutoscaler", True, ("vpa",),
             "VerticalPodAutoscaler"),
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
             verbs=("create",)),
    Resource("gitorch.dev", "v1", "clusters", "Cluster", False, (), "Cluster"),
    Resource("gitorch.dev", "v1", "nodes", "Node", False, ("gnode",), "Node"),
)
BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}
VERBS = ["get", "list", "watch"]
ALL = frozenset({"pods", "services", "deployments", "replicasets", "statefulsets", "daemonsets", "jobs", "cronjobs"})
"""What `kubectl get all` lists (the `all` category)."""


def group_versions() -> dict[str, list[str]]:
    """Group name -> its versions, in discovery order (the core group is "")."""
    out: dict[str, list[str]] = {}
    for r in RESOURCES:
        versions = out.setdefault(r.group, [])
        if r.version not in versions:
            versions.append(r.version)
    return out


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """`/api/v1` or `/apis/GROUP/VERSION`: an APIResourceList, None when there is no such version."""
    found = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not found:
        return None
    resources: list[dict[str, Any]] = []
    for r in found:
        resources.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": list(r.verbs), **({"shortNames": list(r.short_names)}
                                                             if r.short_names else {}),
                          **({"categories": ["all"]} if r.plural in ALL and r.group != "gitorch.dev" else {})})
        if r.plural == "pods":
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": found[0].group_version,
            "resources": resources}


def api_group_list() -> dict[str, Any]:
    """`/apis`: every named group (the core group is `/api`)."""
    groups = []
    for group, versions in group_versions().items():
        if not group:
            continue
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def aggregated_discovery(core: bool) -> dict[str, Any]:
    """`/api` (core) or `/apis` as an APIGroupDiscoveryList (apidiscovery.k8s.io/v2): what
    kubectl asks for first, to learn every resource in one request."""
    items = []
    for group, versions in group_versions().items():
        if (group == "") != core:
            continue
        vs = []
        for v in versions:
            resources = []
            for r in RESOURCES:
                if (r.group, r.version) != (group, v):
                    continue
                entry: dict[str, Any] = {
                    "resource": r.plural, "singularResource": r.singular,
                    "responseKind": {"group": group, "version": v, "kind": r.kind},
                    "scope": "Namespaced" if r.namespaced else "Cluster", "verbs": list(r.verbs),
                }
                if r.short_names:
                    entry["shortNames"] = list(r.short_names)
                if r.plural in ALL and group != "gitorch.dev":
                    entry["categories"] = ["all"]
                if r.plural == "pods":
                    entry["subresources"] = [{"subresource": "log", "responseKind": {"group": "", "version": "v1",
                                                                                      "kind": "Pod"},
                                              "verbs": ["get"]}]
                resources.append(entry)
            vs.append({"version": v, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": vs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


DEFS = "dev.gitorch.defs."  # the shared definitions (schemas/defs.json) as OpenAPI components


def _openapi_schema(node: Any) -> Any:
    """A JSON Schema (2020-12, as gitorch validates with) as an OpenAPI 3.0 schema for
    `kubectl explain`: references to defs.json's definitions made component references,
    `const` an enum of one, keywords OpenAPI 3.0 lacks dropped."""
    if isinstance(node, list):
        return [_openapi_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$schema", "$id", "$defs", "if", "then", "else", "not", "title"):
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = "#/components/schemas/" + DEFS + value.rpartition("/")[2]
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: _openapi_schema(v) for k, v in value.items()}
        else:
            out[key] = _openapi_schema(value)
    return out


def openapi_v3(group_version_path: str, schemas: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """`/openapi/v3` (its index) and `/openapi/v3/api/v1`, `/openapi/v3/apis/G/V`: each kind's
    schema from `schemas` (kind -> JSON Schema, with "defs" the shared definitions), enough for
    `kubectl explain`; a kind without one accepts any object (for clients that validate first)."""
    paths = {("api/" + v if not g else f"apis/{g}/{v}"): (g, v) for g, vs in group_versions().items() for v in vs}
    if not group_version_path:
        return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}"} for p in paths}}
    if group_version_path not in paths:
        return None
    group, version = paths[group_version_path]
    given = schemas or {}
    components: dict[str, Any] = {DEFS + k: _openapi_schema(v) for k, v in _d(given.get("defs")).items()}
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        kind_of: dict[str, Any] = {
            "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": r.kind}]}
        known = given.get(r.store_kind or ("Pod" if r.kind == "Pod" else ""))  # built kinds (Event...): none
        name = f"dev.gitorch.{group or 'core'}.{version}.{r.kind}"
        if known:
            components[name] = {**_openapi_schema(known), **kind_of}
        else:
            components[name] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True, **kind_of}
    operations: dict[str, Any] = {}
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        base = f"/{group_version_path}/" + ("namespaces/{namespace}/" if r.namespaced else "") + r.plural
        gvk = {"group": group, "version": version, "kind": r.kind}
        params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                  {"name": "dryRun", "in": "query", "schema": {"type": "string"}}]
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}}
        operations[base] = {m: {**op, "x-kubernetes-action": a} for m, a in (("get", "list"), ("post", "post"))}
        operations[base + "/{name}"] = {m: {**op, "x-kubernetes-action": a} for m, a in
                                        (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))}
    return {"openapi": "3.0.0", "info": {"title": "gitorch", "version": version}, "paths": operations,
            "components": {"schemas": components}}


# ---- building objects from the store ----------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an object is written in Git."""

    path: str
    line: int


@dataclass
class Sources:
    """What the objects are built from: store rows (as read), the applied commit and origins."""

    objects: list[Any] = field(default_factory=list)  # ObjectRecord
    pods: list[Any] = field(default_factory=list)  # PodRecord
    nodes: list[Any] = field(default_factory=list)  # NodeRecord
    events: list[Any] = field(default_factory=list)  # Event
    cluster_ips: dict[tuple[str, str], str] = field(default_factory=dict)
    node_ports: dict[tuple[str, str, str], int] = field(default_factory=dict)
    load_balancers: dict[tuple[str, str], str] = field(default_factory=dict)
    commit: str = ""
    origins: dict[tuple[str, str, str], Origin] = field(default_factory=dict)
    """(kind, namespace, name) -> where it is written, for the applied commit."""
    pod_cache: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    """Pods built before, with what they were built from: a pod whose inputs did not change is
    not built again (10,000 pods cost seconds to build, one changed pod should not)."""
    touched_pods: set[tuple[str, str]] | None = None
    """The pods written or deleted since the build of `previous_pods` (None: build all)."""
    previous_pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    previous: Built | None = None
    """The last build, with `touched_pods`: what is not built from a touched pod is taken from it."""
    touched_owners: set[tuple[str, str, str]] = field(default_factory=set)
    """(owner kind, namespace, owner name) of the touched pods, before and after the change."""
    touched_namespaces: set[str] = field(default_factory=set)
    pod_rows: Mapping[tuple[str, str], Any] | None = None
    """Indexes of `pods` kept by the reader as pods change (None: built here, once per build)."""
    pods_by_owner: Mapping[tuple[str, str, str], Mapping[tuple[str, str], Any]] | None = None
    pods_by_namespace: Mapping[str, Mapping[tuple[str, str], Any]] | None = None
    _by_key: Mapping[tuple[str, str], Any] | None = None
    _by_owner: dict[tuple[str, str, str], list[Any]] | None = None

    _first_events: dict[tuple[str, str, str], datetime] | None = None

    def first_event(self, kind: str, namespace: str, name: str) -> datetime | None:
        if self._first_events is None:
            self._first_events = {}
            for e in self.events:
                key = (e.kind, e.namespace, e.name)
                if key not in self._first_events or e.first_time < self._first_events[key]:
                    self._first_events[key] = e.first_time
        return self._first_events.get((kind, namespace, name))

    def reset(self) -> None:
        """Forget the indexes built from the pods and events (after they were replaced)."""
        self._by_key = self._by_owner = self._by_namespace = self._first_events = None

    def pod_index(self) -> Mapping[tuple[str, str], Any]:
        if self.pod_rows is not None:
            return self.pod_rows
        if self._by_key is None:
            self._by_key = {(p.namespace, p.name): p for p in self.pods}
        return self._by_key

    def namespaces_with_pods(self) -> Iterable[str]:
        if self.pods_by_namespace is not None:
            return self.pods_by_namespace.keys()
        return {p.namespace for p in self.pods}

    def job_owners(self) -> list[tuple[str, str]]:
        """(namespace, name) of every Job that owns pods."""
        if self.pods_by_owner is not None:
            return [(ns, name) for kind, ns, name in self.pods_by_owner if kind == "Job"]
        return list(dict.fromkeys((p.namespace, p.owner_name) for p in self.pods if p.owner_kind == "Job"))

    _by_namespace: dict[str, list[Any]] | None = None

    def in_namespace(self, namespace: str) -> list[Any]:
        if self.pods_by_namespace is not None:
            return list(self.pods_by_namespace.get(namespace, {}).values())
        if self._by_namespace is None:
            self._by_namespace = {}
            for p in self.pods:
                self._by_namespace.setdefault(p.namespace, []).append(p)
        return self._by_namespace.get(namespace, [])

    def owned(self, kind: str, namespace: str, name: str) -> list[Any]:
        """The pods of an owner (indexed once per build)."""
        if self.pods_by_owner is not None:
            return list(self.pods_by_owner.get((kind, namespace, name), {}).values())
        if self._by_owner is None:
            self._by_owner = {}
            for p in self.pods:
                self._by_owner.setdefault((p.owner_kind, p.namespace, p.owner_name), []).append(p)
        return self._by_owner.get((kind, namespace, name), [])


Key = tuple[str, str]  # namespace, name
Built = dict[Resource, dict[Key, dict[str, Any]]]


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ts(when: datetime | float | None) -> str | None:
    if when is None:
        return None
    if isinstance(when, int | float):
        when = datetime.fromtimestamp(float(when), tz=UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=200_000)
def uid(kind: str, namespace: str, name: str) -> str:
    """A stable UID: the same object has the same one on every serve instance."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gitorch:{kind}/{namespace}/{name}"))


def _meta(kind: str, namespace: str, name: str, sources: Sources, *, created: datetime | None = None,
          labels: Mapping[str, Any] | None = None, annotations: Mapping[str, Any] | None = None,
          origin_of: tuple[str, str, str] | None = None, generation: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["uid"] = uid(kind, namespace, name)
    if created is not None:
        meta["creationTimestamp"] = _ts(created)
    if generation is not None:
        meta["generation"] = generation
    if labels:
        meta["labels"] = {str(k): str(v) for k, v in labels.items()}
    notes = {str(k): str(v) for k, v in (annotations or {}).items() if k != LAST_APPLIED}
    origin = sources.origins.get(origin_of or (kind, namespace, name))
    if sources.commit and origin is not None:
        notes[ORIGIN + "commit"] = sources.commit
        notes[ORIGIN + "path"] = origin.path
        notes[ORIGIN + "line"] = str(origin.line)
    if notes:
        meta["annotations"] = notes
    return meta


def _manifest(record: Any) -> dict[str, Any]:
    manifest = (record.body or {}).get("manifest")
    return _d(manifest)


def _conditions(rows: Iterable[Mapping[str, Any]], *, heartbeat: bool = False) -> list[dict[str, Any]]:
    out = []
    for c in rows:
        item = {"type": str(c.get("type", "")), "status": str(c.get("status", "Unknown"))}
        when = c.get("last_transition_time", c.get("lastTransitionTime"))
        if isinstance(when, str) and when:
            try:
                when = datetime.fromisoformat(when)
            except ValueError:
                when = None
        if isinstance(when, datetime | int | float):
            item["lastTransitionTime"] = _ts(when) or ""
            if heartbeat:
                item["lastHeartbeatTime"] = item["lastTransitionTime"]
        for k in ("reason", "message"):
            if c.get(k):
                item[k] = str(c[k])
        out.append(item)
    return out


def _from_manifest(resource: Resource, record: Any, sources: Sources) -> dict[str, Any]:
    manifest = _manifest(record)
    meta = _d(manifest.get("metadata"))
    obj: dict[str, Any] = {
        "apiVersion": resource.group_version, "kind": resource.kind,
        "metadata": _meta(resource.kind if resource.group != "gitorch.dev" else "gitorch." + resource.kind,
                          record.namespace, record.name, sources, created=_created(record, sources),
                          labels=meta.get("labels"), annotations=meta.get("annotations"),
                          origin_of=(record.kind, record.namespace, record.name), generation=record.generation),
    }
    for k, v in manifest.items():
        if k not in ("apiVersion", "kind", "metadata", "status"):
            obj[k] = v
    return obj


def _created(record: Any, sources: Sources) -> datetime | None:
    """The store keeps no creation time: the first revision's, else the object's first event,
    else its last change."""
    history = (record.body or {}).get("history") or []
    if history and isinstance(history[0], dict) and history[0].get("since"):
        return datetime.fromtimestamp(float(history[0]["since"]), tz=UTC)
    first = sources.first_event(record.kind, record.namespace, record.name)
    return min(first, record.updated_at) if first is not None and record.updated_at is not None else record.updated_at


def _secret(resource: Resource, record: Any, sources: Sources) -> dict[str, Any]:
    manifest = _manifest(record)
    obj = _from_manifest(resource, record, sources)
    keys = sorted({*(manifest.get("data") or {}), *(manifest.get("stringData") or {})})
    for k in list(obj):
        if k not in ("apiVersion", "kind", "metadata", "type", "immutable"):
            del obj[k]  # data, stringData, or anything else that may hold a value
    obj.setdefault("type", "Opaque")
    obj["metadata"].setdefault("annotations", {})[SECRET_KEYS] = ",".join(keys)
    return obj


def _workload(resource: Resource, record: Any, sources: Sources, pods: list[Any]) -> dict[str, Any]:
    obj = _from_manifest(resource, record, sources)
    spec = _d(obj.get("spec"))
    template = _d(spec.get("template"))
    if isinstance(template.get("spec"), dict):  # a copy: the stored manifest stays as it was
        pod_spec = dict(template["spec"])
        pod_spec["containers"] = [_container(c) for c in pod_spec.get("containers") or [] if isinstance(c, dict)]
        spec = obj["spec"] = {**spec, "template": {**template, "spec": pod_spec}}
    mine = sources.owned(record.kind, record.namespace, record.name)
    current = str(((record.body or {}).get("rollout") or {}).get("revision") or "")
    ready = sum(1 for p in mine if p.ready)
    updated = sum(1 for p in mine if current and p.template_hash == current) if current else len(mine)
    status: dict[str, Any] = {"observedGeneration": record.generation}
    conditions = _conditions(record.conditions or [])
    kind = record.kind
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        status.update({"replicas": len(mine), "readyReplicas": ready, "availableReplicas": ready,
                       "updatedReplicas": updated})
        if kind == "StatefulSet":
            status["currentReplicas"] = updated
            if current:
                status["currentRevision"] = status["updateRevision"] = f"{record.name}-{current}"
        healthy = record.health == "Healthy"
        if not any(c["type"] == "Available" for c in conditions):
                conditions.append({"type": "Available", "status": "True" if healthy else "False",
                               "reason": "MinimumReplicasAvailable" if healthy else "MinimumReplicasUnavailable"})
    elif kind == "DaemonSet":
        status.update({"desiredNumberScheduled": len(mine), "currentNumberScheduled": len(mine),
                       "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": updated,
                       "numberMisscheduled": 0})
    elif kind == "Job":
        status.update({"active": sum(1 for p in mine if p.phase in ("Pending", "Running")),
                       "succeeded": sum(1 for p in mine if p.phase == "Succeeded"),
                       "failed": sum(1 for p in mine if p.phase == "Failed"),
                       "ready": ready})
        finished = (record.body or {}).get("finished")
        if isinstance(finished, dict):
            status["completionTime"] = _ts(finished.get("at"))
            conditions.append({"type": "Complete" if finished.get("complete") else "Failed", "status": "True",
                               "message": str(finished.get("message", ""))})
        if mine:
            status["startTime"] = _ts(min(p.created_at for p in mine))
    elif kind == "CronJob":
        last = (record.body or {}).get("lastScheduleTime")
        if last is not None:
            status["lastScheduleTime"] = _ts(last)
    if conditions:
        status["conditions"] = conditions
    obj["status"] = status
    if kind in ("Deployment", "ReplicaSet", "StatefulSet") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
    return obj


def _replica_sets(record: Any, sources: Sources, pods: list[Any]) -> dict[Key, dict[str, Any]]:
    """One ReplicaSet per revision of a Deployment (gitorch keeps revisions as template hashes)."""
    out: dict[Key, dict[str, Any]] = {}
    manifest = _manifest(record)
    spec = _d(manifest.get("spec"))
    template = _d(spec.get("template"))
    history = [h for h in (record.body or {}).get("history") or [] if isinstance(h, dict) and h.get("revision")]
    current = str(((record.body or {}).get("rollout") or {}).get("revision") or "")
    mine = sources.owned("Deployment", record.namespace, record.name)
    seen = [str(h["revision"]) for h in history]
    seen += sorted({p.template_hash for p in mine if p.template_hash and p.template_hash not in seen})
    for number, revision in enumerate(seen, start=1):
        name = f"{record.name}-{revision}"
        pods_of = [p for p in mine if p.template_hash == revision]
        since = next((h.get("since") for h in history if h.get("revision") == revision), None)
        meta = _meta("ReplicaSet", record.namespace, name, sources,
                     created=datetime.fromtimestamp(float(since), tz=UTC) if since else record.updated_at,
                     labels={**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": revision},
                     annotations={"deployment.kubernetes.io/revision": str(number)},
                     origin_of=("Deployment", record.namespace, record.name), generation=1)
        meta["ownerReferences"] = [_owner_ref("apps/v1", "Deployment", record.namespace, record.name)]
        wanted = int(spec.get("replicas", 1)) if revision == current else 0
        ready = sum(1 for p in pods_of if p.ready)
        out[(record.namespace, name)] = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta,
            "spec": {"replicas": wanted, "selector": spec.get("selector") or {}, "template": template},
            "status": {"replicas": len(pods_of), "readyReplicas": ready, "availableReplicas": ready,
                       "fullyLabeledReplicas": len(pods_of), "observedGeneration": 1},
        }
    return out


def _autoscaler_status(record: Any) -> dict[str, Any]:
    """autoscaling/v2's status from what the controller keeps (reconcile/planning.py)."""
    kept = _d((record.body or {}).get("autoscaling"))
    status: dict[str, Any] = {"currentReplicas": kept.get("currentReplicas", 0),
                              "desiredReplicas": kept.get("desiredReplicas", 0),
                              "currentMetrics": kept.get("currentMetrics") or []}
    if kept.get("lastScaleTime") is not None:
        status["lastScaleTime"] = _ts(kept["lastScaleTime"])
    conditions = [c for c in _conditions(record.conditions or [])
                  if c.get("type") in ("AbleToScale", "ScalingActive", "ScalingLimited")]
    if conditions:
        status["conditions"] = conditions
    return status


def _recommender_status(record: Any) -> dict[str, Any]:
    """autoscaling.k8s.io/v1's status from what the recommender keeps (reconcile/recommending.py)."""
    kept = _d((record.body or {}).get("recommendation"))
    status: dict[str, Any] = {}
    if isinstance(kept.get("recommendation"), dict):
        status["recommendation"] = kept["recommendation"]
    conditions = [c for c in _conditions(record.conditions or [])
                  if c.get("type") in ("RecommendationProvided", "LowConfidence", "NoPodsMatched")]
    if conditions:
        status["conditions"] = conditions
    return status


def _owner_ref(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid(kind, namespace, name),
            "controller": True, "blockOwnerDeletion": True}


_OWNER_API = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
              "Job": "batch/v1", "CronJob": "batch/v1"}


def _cron_of(manifests: Mapping[tuple[str, str, str], dict[str, Any]], namespace: str, job: str) -> str | None:
    """The CronJob a Job run (`NAME-SCHEDULEDMINUTE`) was made by, when it has no manifest of its own."""
    name, _, stamp = job.rpartition("-")
    return name if stamp.isdigit() and ("CronJob", namespace, name) in manifests else None


def _pod_template(manifests: Mapping[tuple[str, str, str], dict[str, Any]], pod: Any) -> dict[str, Any]:
    manifest = manifests.get((pod.owner_kind, pod.namespace, pod.owner_name)) or {}
    if not manifest and pod.owner_kind == "Job":
        cron = _cron_of(manifests, pod.namespace, pod.owner_name)
        manifest = manifests.get(("CronJob", pod.namespace, cron or "")) or {}
        spec = _d(_d(_d(manifest.get("spec")).get("jobTemplate")).get("spec"))
        return _d(spec.get("template"))
    spec = _d(manifest.get("spec"))
    if pod.owner_kind == "Pod":
        return {"metadata": manifest.get("metadata") or {}, "spec": spec}
    if pod.owner_kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    template = spec.get("template")
    return _d(template)


def _container(c: dict[str, Any]) -> dict[str, Any]:
    if not c.get("ports"):
        return c
    return {**c, "ports": [{"protocol": "TCP", **p} for p in c["ports"] if isinstance(p, dict)]}


def pod(record: Any, sources: Sources, template: Mapping[str, Any], nodes: Mapping[str, Any]) -> dict[str, Any]:
    """A PodRecord as a v1 Pod: its owner's template, where it runs and what its node reported."""
    tmeta = _d(template.get("metadata"))
    spec = dict(template.get("spec") or {}) if isinstance(template.get("spec"), dict) else {}
    labels = dict(tmeta.get("labels") or {})
    if record.template_hash and record.owner_kind in ("Deployment", "ReplicaSet"):
        labels["pod-template-hash"] = record.template_hash
    meta = _meta("Pod", record.namespace, record.name, sources, created=record.created_at, labels=labels,
                 annotations=tmeta.get("annotations"), origin_of=(record.owner_kind, record.namespace,
                                                                   record.owner_name))
    if record.owner_kind == "Deployment" and record.template_hash:
        meta["ownerReferences"] = [_owner_ref("apps/v1", "ReplicaSet", record.namespace,
                                              f"{record.owner_name}-{record.template_hash}")]
    elif record.owner_kind in _OWNER_API:
        meta["ownerReferences"] = [_owner_ref(_OWNER_API[record.owner_kind], record.owner_kind, record.namespace,
                                              record.owner_name)]
    if record.node:
        spec["nodeName"] = record.node
    spec["containers"] = [_container(c) for c in spec.get("containers") or [] if isinstance(c, dict)]
    started = _ts(record.started_at or record.created_at)
    statuses = []
    for i, c in enumerate(spec.get("containers") or []):
        name = str(c.get("name", "")) if isinstance(c, dict) else ""
        state: dict[str, Any]
        if record.phase == "Running":
            state = {"running": {"startedAt": started}}
        elif record.phase in ("Succeeded", "Failed"):
            state = {"terminated": {"exitCode": 0 if record.phase == "Succeeded" else 1,
                                    "reason": "Completed" if record.phase == "Succeeded"
                                    else (record.reason or "Error"),
                                    "finishedAt": _ts(record.updated_at)}}
        else:
            state = {"waiting": {"reason": record.reason or "ContainerCreating",
                                 **({"message": record.message} if record.message else {})}}
        statuses.append({"name": name, "image": str(c.get("image", "")) if isinstance(c, dict) else "",
                         "imageID": "", "ready": bool(record.ready), "started": record.phase == "Running",
                         "restartCount": record.restarts if i == 0 else 0, "state": state})
    scheduled = record.node is not None
    running = record.phase == "Running"
    conditions = [
        {"type": "PodScheduled", "status": "True" if scheduled else "False",
         **({} if scheduled else {"reason": "Unschedulable", "message": record.message})},
        {"type": "Initialized", "status": "True" if scheduled else "False"},
        {"type": "ContainersReady", "status": "True" if record.ready else "False"},
        {"type": "Ready", "status": "True" if record.ready else "False",
         **({"lastTransitionTime": _ts(record.ready_at)} if record.ready_at else {})},
    ]
    status: dict[str, Any] = {"phase": record.phase, "conditions": conditions, "containerStatuses": statuses,
                              "qosClass": "BestEffort"}
    if record.reason and not running:
        status["reason"] = record.reason
    if record.message:
        status["message"] = record.message
    node = nodes.get(record.node or "")
    if node is not None and node.address:
        status["hostIP"] = node.address
        status["hostIPs"] = [{"ip": node.address}]
    if record.ip:
        status["podIP"] = record.ip
        status["podIPs"] = [{"ip": record.ip}]
    if scheduled:
        status["startTime"] = started
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def node(record: Any, sources: Sources, status_row: Any = None) -> dict[str, Any]:
    """A NodeRecord as a v1 Node: conditions, capacity, addresses and nodeInfo from the agent's facts;
    with its Node object's status row, cordons and the cluster autoscaler's state as Kubernetes shows
    them: spec.unschedulable (cordoned, drained, on standby or being scaled down), the taint
    ToBeDeletedByClusterAutoscaler while it drains, DeletionCandidateOfClusterAutoscaler while unneeded."""
    facts = record.facts or {}
    labels = {"kubernetes.io/hostname": record.name, "kubernetes.io/os": "linux", **(record.labels or {})}
    if facts.get("goarch"):
        labels.setdefault("kubernetes.io/arch", str(facts["goarch"]))
    meta = _meta("Node", "", record.name, sources, created=None, labels=labels,
                 origin_of=("Node", "", record.name))
    capacity = {k: str(v) for k, v in (record.capacity or {}).items()}
    if not capacity and facts.get("cpus") is not None:
        capacity["cpu"] = str(facts["cpus"])
        total = (facts.get("memory") or {}).get("totalBytes")
        if total:
            capacity["memory"] = f"{int(total) // 1024}Ki"
    capacity.setdefault("pods", "110")
    allocatable = {k: str(v) for k, v in (record.allocatable or {}).items()} or dict(capacity)
    addresses = [{"type": "InternalIP", "address": record.address}] if record.address else []
    addresses.append({"type": "Hostname", "address": str(facts.get("hostname") or record.name)})
    conditions = _conditions(record.conditions or [], heartbeat=True)
    if not any(c["type"] == "Ready" for c in conditions):
        conditions.append({"type": "Ready", "status": "True" if record.ready else "Unknown"})
    for c in conditions:
        if record.last_heartbeat is not None:
            c["lastHeartbeatTime"] = _ts(record.last_heartbeat)
    spec: dict[str, Any] = {}
    if record.pod_cidr:
        spec["podCIDR"] = record.pod_cidr
        spec["podCIDRs"] = [record.pod_cidr]
    taints = list(record.taints or [])
    body = (status_row.body or {}) if status_row is not None else {}
    manifest_spec = _d(_d(body.get("manifest")).get("spec"))
    scaling = _d(body.get("scaling"))
    state = scaling.get("state")
    if manifest_spec.get("unschedulable") or manifest_spec.get("drain") or state in ("Standby", "ScalingDown"):
        spec["unschedulable"] = True
        taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": None})
    if state == "ScalingDown":
        taints.append({"key": "ToBeDeletedByClusterAutoscaler", "value": str(int(scaling.get("since") or 0)),
                       "effect": "NoSchedule"})
    elif isinstance(scaling.get("unneededSince"), int | float):
        taints.append({"key": "DeletionCandidateOfClusterAutoscaler", "value": str(int(scaling["unneededSince"])),
                       "effect": "PreferNoSchedule"})
    if state:
        meta.setdefault("annotations", {})[ORIGIN + "autoscaling"] = state + (
            f": {scaling['reason']}" if scaling.get("reason") else "")
    if taints:
        spec["taints"] = [{k: v for k, v in t.items() if v is not None} for t in taints]
    info = {
        "machineID": "", "systemUUID": "", "bootID": str(facts.get("bootId") or ""),
        "kernelVersion": str(facts.get("kernel") or ""), "osImage": str(facts.get("os") or ""),
        "containerRuntimeVersion": ",".join(str(r) for r in facts.get("runtimes") or []),
        "kubeletVersion": f"gitorch-agent-{record.agent_version or facts.get('agentVersion') or 'unknown'}",
        "kubeProxyVersion": "", "operatingSystem": str(facts.get("goos") or "linux"),
        "architecture": str(facts.get("goarch") or ""),
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
            "status": {"conditions": conditions, "capacity": capacity, "allocatable": allocatable,
                       "addresses": addresses, "nodeInfo": info}}


def _service(resource: Resource, record: Any, sources: Sources) -> dict[str, Any]:
    obj = _from_manifest(resource, record, sources)
    spec = dict(obj.get("spec") or {})
    key = (record.namespace, record.name)
    if spec.get("clusterIP") != "None" and key in sources.cluster_ips:
        spec["clusterIP"] = sources.cluster_ips[key]
        spec["clusterIPs"] = [sources.cluster_ips[key]]
    spec.setdefault("type", "ClusterIP")
    ports = []
    for p in spec.get("ports") or []:
        if not isinstance(p, dict):
            continue
        p = {"protocol": "TCP", **p}
        port = sources.node_ports.get((record.namespace, record.name, str(p.get("name", ""))))
        if port is not None and spec["type"] in ("NodePort", "LoadBalancer"):
            p["nodePort"] = port
        p.setdefault("targetPort", p.get("port"))
        ports.append(p)
    spec["ports"] = ports
    obj["spec"] = spec
    lb = sources.load_balancers.get(key)
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": lb}]} if lb else {}}
    return obj


def _endpoints(service: dict[str, Any], pods: list[Any], built_pods: Mapping[Key, dict[str, Any]],
               sources: Sources) -> dict[str, Any] | None:
    spec = service.get("spec") or {}
    selector = spec.get("selector")
    ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
    if not isinstance(selector, dict) or not selector:
        return None
    ready: list[dict[str, Any]] = []
    not_ready: list[dict[str, Any]] = []
    for p in sources.in_namespace(ns):
        if not p.ip:
            continue
        built = built_pods.get((p.namespace, p.name))
        labels = (built or {}).get("metadata", {}).get("labels", {})
        if not all(labels.get(k) == v for k, v in selector.items()):
            continue
        address = {"ip": p.ip, "targetRef": {"kind": "Pod", "namespace": ns, "name": p.name,
                                             "uid": uid("Pod", ns, p.name)}}
        if p.node:
            address["nodeName"] = p.node
        (ready if p.ready else not_ready).append(address)
    ports = []
    for port in spec.get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        ports.append({"name": port.get("name", ""), "port": target if isinstance(target, int) else port.get("port"),
                      "protocol": port.get("protocol", "TCP")})
    subset: dict[str, Any] = {"ports": ports}
    ready.sort(key=lambda a: (a["ip"], a["targetRef"]["name"]))  # whatever order the pods were read in
    not_ready.sort(key=lambda a: (a["ip"], a["targetRef"]["name"]))
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    meta = _meta("Endpoints", ns, name, sources, labels=service["metadata"].get("labels"),
                 origin_of=("Service", ns, name))
    if service["metadata"].get("creationTimestamp"):
        meta["creationTimestamp"] = service["metadata"]["creationTimestamp"]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
            "subsets": [subset] if ready or not_ready else []}


def _endpoints_stay(service: dict[str, Any], sources: Sources, built: Mapping[Key, dict[str, Any]]) -> bool:
    """Whether none of the touched pods was or is selected by a Service (its Endpoints as built)."""
    ns = service["metadata"]["namespace"]
    if ns not in sources.touched_namespaces:
        return True
    selector = (service.get("spec") or {}).get("selector")
    if not isinstance(selector, dict) or not selector:
        return True
    for key in sources.touched_pods or ():
        if key[0] != ns:
            continue
        for pod_obj in (sources.previous_pods.get(key), built.get(key)):
            labels = (pod_obj or {}).get("metadata", {}).get("labels", {})
            if pod_obj is not None and all(labels.get(k) == v for k, v in selector.items()):
                return False
    return True


def endpoint_slice(endpoints: dict[str, Any]) -> dict[str, Any]:
    """The EndpointSlice of a Service's Endpoints (one per Service: gitorch's are small)."""
    meta = endpoints["metadata"]
    name = meta["name"]
    slice_meta = {**meta, "name": f"{name}-gitorch", "uid": uid("EndpointSlice", meta["namespace"], name),
                  "labels": {**meta.get("labels", {}), "kubernetes.io/service-name": name,
                             "endpointslice.kubernetes.io/managed-by": "gitorch.dev"},
                  "ownerReferences": [_owner_ref("v1", "Service", meta["namespace"], name)]}
    slice_meta.pop("resourceVersion", None)
    found: list[dict[str, Any]] = []
    ports: list[dict[str, Any]] = []
    for subset in endpoints.get("subsets") or []:
        ports = subset.get("ports") or ports
        for ready, group in ((True, "addresses"), (False, "notReadyAddresses")):
            for a in subset.get(group) or []:
                entry: dict[str, Any] = {"addresses": [a["ip"]], "conditions": {
                    "ready": ready, "serving": ready, "terminating": False}, "targetRef": a.get("targetRef")}
                if a.get("nodeName"):
                    entry["nodeName"] = a["nodeName"]
                found.append(entry)
    family = "IPv6" if any(":" in e["addresses"][0] for e in found) else "IPv4"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": slice_meta,
            "addressType": family, "endpoints": found, "ports": ports}


_EVENT_API = {r.kind: r.group_version for r in RESOURCES if r.group != "gitorch.dev"}


def event(record: Any, sources: Sources) -> dict[str, Any]:
    ns = record.namespace or "default"
    name = f"{record.name}.{record.id:x}"
    meta = _meta("Event", ns, name, sources, created=record.first_time)
    kind, about = record.kind, record.name
    # gitorch records a pod's events on its owner, the message starting with the pod's name;
    # Kubernetes records them on the pod, where `kubectl describe pod` looks for them.
    pod_name, sep, _ = str(record.message).partition(": ")
    if sep and record.namespace and (record.namespace, pod_name) in sources.pod_index():
        kind, about = "Pod", pod_name
    return {
        "apiVersion": "v1", "kind": "Event", "metadata": meta,
        "involvedObject": {"kind": kind, "namespace": record.namespace, "name": about,
                           "uid": uid(kind, record.namespace, about),
                           "apiVersion": _EVENT_API.get(kind, "gitorch.dev/v1")},
        "reason": record.reason, "message": record.message, "type": record.type, "count": record.count,
        "firstTimestamp": _ts(record.first_time), "lastTimestamp": _ts(record.last_time),
        "source": {"component": "gitorch"}, "reportingComponent": "gitorch",
    }


def build(sources: Sources) -> Built:
    """Every object of every resource, keyed by (namespace, name)."""
    out: Built = {r: {} for r in RESOURCES}
    by = {(r.group, r.kind): r for r in RESOURCES}
    manifests = {(o.kind, o.namespace, o.name): _manifest(o) for o in sources.objects}
    nodes = {n.name: n for n in sources.nodes}
    namespaces: dict[str, Any] = {"default": None}
    for o in sources.objects:
        if o.kind == "Namespace":
            namespaces[o.name] = o
        elif o.namespace:
            namespaces.setdefault(o.namespace, None)
    for ns in sources.namespaces_with_pods():
        namespaces.setdefault(ns, None)
    # Only pods moved since `prev` was built: what no touched pod feeds into is taken from it.
    prev = sources.previous if sources.touched_pods is not None else None
    ns_res = by[("", "Namespace")]
    for name, record in sorted(namespaces.items()):
        if prev is not None and ("", name) in prev[ns_res]:
            out[ns_res][("", name)] = prev[ns_res][("", name)]
            continue
        if record is not None:
            obj = _from_manifest(ns_res, record, sources)
        else:
            obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta("Namespace", "", name, sources)}
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        out[ns_res][("", name)] = obj
    node_res = by[("", "Node")]
    node_rows = {o.name: o for o in sources.objects if o.kind == "Node"}  # their status: standby, cordons
    for n in sources.nodes:
        kept = prev[node_res].get(("", n.name)) if prev is not None else None
        out[node_res][("", n.name)] = kept if kept is not None else node(n, sources, node_rows.get(n.name))
    pods_res = by[("", "Pod")]
    owners = {(o.kind, o.namespace, o.name): (o.spec_hash, o.last_applied_revision) for o in sources.objects}
    addresses = {n.name: n.address for n in sources.nodes}
    previous = sources.pod_cache

    def one(p: Any) -> dict[str, Any]:
        owner = (p.owner_kind, p.namespace, p.owner_name)
        # The row itself (a new object whenever the pod was read again), and what else it is built from.
        marker = (p, owners.get(owner), addresses.get(p.node or ""), sources.commit, sources.origins.get(owner))
        key = (p.namespace, p.name)
        kept = previous.get(key)
        built = kept[1] if kept is not None and kept[0] == marker else pod(p, sources, _pod_template(manifests, p),
                                                                           nodes)
        previous[key] = (marker, built)
        return built

    if sources.touched_pods is not None:
        # Only pods moved since the last build: the others are the objects built then.
        pod_out = out[pods_res] = dict(sources.previous_pods)
        rows = sources.pod_index()
        for key in sources.touched_pods:
            row = rows.get(key)
            if row is None:
                pod_out.pop(key, None)
                previous.pop(key, None)
            else:
                pod_out[key] = one(row)
    else:
        pod_out = out[pods_res]
        for p in sources.pods:
            pod_out[(p.namespace, p.name)] = one(p)
        for key in set(previous) - set(pod_out):
            del previous[key]
    # The counts autoscalers set: a workload's spec.replicas in the API, as its scale is in Kubernetes.
    scales = {(str(a["target"][0]), o.namespace, str(a["target"][1])): a["desiredReplicas"]
              for o in sources.objects if o.kind == "HorizontalPodAutoscaler"
              and isinstance(a := (o.body or {}).get("autoscaling"), dict)
              and isinstance(a.get("target"), list) and len(a["target"]) == 2
              and isinstance(a.get("desiredReplicas"), int)}
    ep_res, eps_res = by[("", "Endpoints")], by[("discovery.k8s.io", "EndpointSlice")]
    rs_res = by[("apps", "ReplicaSet")]
    rs_of: dict[tuple[str, str], list[Key]] = {}  # the ReplicaSets `prev` built for each Deployment
    if prev is not None:
        for rs_key, rs in prev[rs_res].items():
            refs = rs["metadata"].get("ownerReferences") or []
            if refs and refs[0].get("kind") == "Deployment":
                rs_of.setdefault((rs_key[0], refs[0]["name"]), []).append(rs_key)
    for o in sources.objects:
        if o.kind in ("Cluster", "Node"):
            res = by[("gitorch.dev", o.kind)]
            kept = prev[res].get(("", o.name)) if prev is not None else None
            out[res][("", o.name)] = kept if kept is not None else _from_manifest(res, o, sources)
            continue
        found = next((r for r in RESOURCES if r.store_kind == o.kind and r.group != "gitorch.dev"), None)
        if found is None:
            continue
        res = found
        key = (o.namespace, o.name)
        if prev is not None and key in prev[res] and (o.kind, o.namespace, o.name) not in sources.touched_owners:
            # Built from this record and, for a workload, its pods: neither moved.
            out[res][key] = prev[res][key]
            if o.kind == "Service":
                eps_key = (o.namespace, f"{o.name}-gitorch")
                ep = prev[ep_res].get(key)
                if ep is not None and _endpoints_stay(out[res][key], sources, out[pods_res]):
                    out[ep_res][key] = ep
                    out[eps_res][eps_key] = prev[eps_res][eps_key]
                    continue
            elif o.kind == "Deployment":
                for rs_key in rs_of.get(key, ()):
                    out[rs_res][rs_key] = prev[rs_res][rs_key]
                continue
            else:
                continue
        if o.kind == "Secret":
            out[res][key] = _secret(res, o, sources)
        elif o.kind == "Service":
            svc = out[res].get(key) or _service(res, o, sources)
            out[res][key] = svc
            ep = _endpoints(svc, sources.pods, out[pods_res], sources)
            if ep is not None:
                out[ep_res][key] = ep
                eps = endpoint_slice(ep)
                out[eps_res][(o.namespace, eps["metadata"]["name"])] = eps
        elif o.kind in _OWNER_API:
            out[res][key] = _workload(res, o, sources, sources.pods)
            scaled = scales.get((o.kind, o.namespace, o.name))
            if scaled is not None and isinstance(out[res][key].get("spec"), dict):
                out[res][key]["spec"] = {**out[res][key]["spec"], "replicas": scaled}
            if o.kind == "Deployment":
                out[rs_res].update(_replica_sets(o, sources, sources.pods))
        else:
            obj = _from_manifest(res, o, sources)
            if o.kind == "PersistentVolumeClaim":
                obj["status"] = {"phase": "Bound"}
            elif o.kind == "HorizontalPodAutoscaler":
                obj["status"] = _autoscaler_status(o)
            elif o.kind == "VerticalPodAutoscaler":
                obj["status"] = _recommender_status(o)
            out[res][key] = obj
    jobs = by[("batch", "Job")]
    runs = sources.job_owners()
    if prev is not None:  # the runs no touched pod belongs to are as they were built
        for job_key, job in prev[jobs].items():
            if job_key not in out[jobs] and ("Job", *job_key) not in sources.touched_owners:
                out[jobs][job_key] = job
        runs = [(ns, name) for kind, ns, name in sources.touched_owners if kind == "Job"]
    for ns, job_name in runs:  # the runs of a CronJob, as the Jobs Kubernetes would have made
        cron = _cron_of(manifests, ns, job_name)
        mine = sources.owned("Job", ns, job_name)
        if cron is None or (ns, job_name) in out[jobs] or not mine:
            continue
        template = _d(_d(manifests[("CronJob", ns, cron)].get("spec")).get("jobTemplate"))
        meta = _meta("Job", ns, job_name, sources, created=min(q.created_at for q in mine),
                     origin_of=("CronJob", ns, cron))
        meta["ownerReferences"] = [_owner_ref("batch/v1", "CronJob", ns, cron)]
        succeeded = sum(1 for q in mine if q.phase == "Succeeded")
        failed = sum(1 for q in mine if q.phase == "Failed")
        status: dict[str, Any] = {"active": len(mine) - succeeded - failed, "succeeded": succeeded,
                                  "failed": failed, "startTime": _ts(min(q.created_at for q in mine))}
        if succeeded:
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        elif failed and not status["active"]:
            status["conditions"] = [{"type": "Failed", "status": "True"}]
        out[jobs][(ns, job_name)] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
                                                  "spec": _d(template.get("spec")), "status": status}
    ev_res = by[("", "Event")]
    for e in sources.events if sources.touched_pods is None else ():  # only pods moved: events did not
        built = event(e, sources)
        out[ev_res][(built["metadata"]["namespace"], built["metadata"]["name"])] = built
    return out


# ---- list filters -----------------------------------------------------------------------------


def field_value(obj: Mapping[str, Any], path: str) -> str | None:
    """A dotted field of an object as a string (fieldSelector semantics), None when absent."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """`a=b,c!=d` -> [(path, equal, value)]; raises ValueError."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "!=" in part:
            path, _, value = part.partition("!=")
            out.append((path.strip(), False, value.strip()))
        elif "=" in part:
            path, _, value = part.partition("==" if "==" in part else "=")
            out.append((path.strip(), True, value.strip()))
        else:
            raise ValueError(f"fieldSelector {part!r}: expected FIELD=VALUE or FIELD!=VALUE")
    return out


def selected(obj: Mapping[str, Any], labels: Mapping[str, Any] | None,
             fields: list[tuple[str, bool, str]]) -> bool:
    if labels and not matches(labels, obj.get("metadata", {}).get("labels") or {}):
        return False
    for path, equal, value in fields:
        have = field_value(obj, path)
        if path == "metadata.namespace" and have is None:
            have = ""
        if (have == value) != equal:
            return False
    return True


# ---- server-side tables ------------------------------------------------------------------------

Column = tuple[str, str, int, str]  # name, type, priority, description


AGE_MARK = "\x00"
"""`table_cells(..., now=None)` writes each age as MARK + timestamp + MARK, for `ages()` to fill in
later: the cells of an unchanged object are encoded once, their ages on every request."""


def _age(when: str | None, now: datetime | None) -> str:
    if not when:
        return "<unknown>"
    if now is None:
        return f"{AGE_MARK}{when}{AGE_MARK}"
    try:
        then = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int((now - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _ports(spec: Mapping[str, Any]) -> str:
    out = []
    for p in spec.get("ports") or []:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _images(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec") or {})
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return (",".join(str(c.get("name", "")) for c in containers),
            ",".join(str(c.get("image", "")) for c in containers))


def _selector_text(obj: Mapping[str, Any]) -> str:
    sel = (obj.get("spec") or {}).get("selector") or {}
    labels = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    return ",".join(f"{k}={v}" for k, v in labels.items() if isinstance(v, str)) or "<none>"


def table_columns(resource: Resource) -> list[Column]:
    name: Column = ("Name", "string", 0, "Name must be unique within a namespace.")
    age: Column = ("Age", "string", 0, "CreationTimestamp of the object.")
    kind = resource.kind
    if resource.group == "gitorch.dev":
        return [name, ("Health", "string", 0, ""), ("Commit", "string", 0, ""), ("Path", "string", 0, ""), age]
    return {
        "Pod": [name, ("Ready", "string", 0, ""), ("Status", "string", 0, ""), ("Restarts", "string", 0, ""), age,
                ("IP", "string", 1, ""), ("Node", "string", 1, ""), ("Nominated Node", "string", 1, ""),
                ("Readiness Gates", "string", 1, "")],
        "Node": [name, ("Status", "string", 0, ""), ("Roles", "string", 0, ""), age, ("Version", "string", 0, ""),
                 ("Internal-IP", "string", 1, ""), ("External-IP", "string", 1, ""), ("OS-Image", "string", 1, ""),
                 ("Kernel-Version", "string", 1, ""), ("Container-Runtime", "string", 1, "")],
        "Namespace": [name, ("Status", "string", 0, ""), age],
        "Service": [name, ("Type", "string", 0, ""), ("Cluster-IP", "string", 0, ""),
                    ("External-IP", "string", 0, ""), ("Port(s)", "string", 0, ""), age,
                    ("Selector", "string", 1, "")],
        "Endpoints": [name, ("Endpoints", "string", 0, ""), age],
        "ConfigMap": [name, ("Data", "integer", 0, ""), age],
        "Secret": [name, ("Type", "string", 0, ""), ("Data", "integer", 0, ""), age],
        "PersistentVolumeClaim": [name, ("Status", "string", 0, ""), age],
        "Event": [("Last Seen", "string", 0, ""), ("Type", "string", 0, ""), ("Reason", "string", 0, ""),
                  ("Object", "string", 0, ""), ("Message", "string", 0, "")],
        "Deployment": [name, ("Ready", "string", 0, ""), ("Up-to-date", "integer", 0, ""),
                       ("Available", "integer", 0, ""), age, ("Containers", "string", 1, ""),
                       ("Images", "string", 1, ""), ("Selector", "string", 1, "")],
        "ReplicaSet": [name, ("Desired", "integer", 0, ""), ("Current", "integer", 0, ""),
                       ("Ready", "integer", 0, ""), age, ("Containers", "string", 1, ""),
                       ("Images", "string", 1, ""), ("Selector", "string", 1, "")],
        "StatefulSet": [name, ("Ready", "string", 0, ""), age, ("Containers", "string", 1, ""),
                        ("Images", "string", 1, "")],
        "DaemonSet": [name, ("Desired", "integer", 0, ""), ("Current", "integer", 0, ""),
                      ("Ready", "integer", 0, ""), ("Up-to-date", "integer", 0, ""),
                      ("Available", "integer", 0, ""), ("Node Selector", "string", 0, ""), age,
                      ("Containers", "string", 1, ""), ("Images", "string", 1, "")],
        "Job": [name, ("Status", "string", 0, ""), ("Completions", "string", 0, ""),
                ("Duration", "string", 0, ""), age, ("Containers", "string", 1, ""), ("Images", "string", 1, "")],
        "CronJob": [name, ("Schedule", "string", 0, ""), ("Suspend", "boolean", 0, ""),
                    ("Active", "integer", 0, ""), ("Last Schedule", "string", 0, ""), age,
                    ("Containers", "string", 1, ""), ("Images", "string", 1, "")],
        "NetworkPolicy": [name, ("Pod-Selector", "string", 0, ""), age],
        "Ingress": [name, ("Class", "string", 0, ""), ("Hosts", "string", 0, ""), ("Address", "string", 0, ""),
                    ("Ports", "string", 0, ""), age],
        "EndpointSlice": [name, ("AddressType", "string", 0, ""), ("Ports", "string", 0, ""),
                          ("Endpoints", "string", 0, ""), age],
    }.get(kind, [name, age])


def table_cells(resource: Resource, obj: Mapping[str, Any], now: datetime | None) -> list[Any]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    age = _age(meta.get("creationTimestamp"), now)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    kind = resource.kind
    if resource.group == "gitorch.dev":
        notes = meta.get("annotations") or {}
        return [name, "", notes.get(ORIGIN + "commit", "")[:7], notes.get(ORIGIN + "path", ""), age]
    if kind == "Pod":
        cs = status.get("containerStatuses") or []
        shown = status.get("phase", "")
        for c in cs:
            waiting = (c.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason"):
                shown = waiting["reason"]
        if status.get("phase") == "Failed" and status.get("reason"):
            shown = status["reason"]
        restarts = sum(int(c.get("restartCount", 0)) for c in cs)
        return [name, f"{sum(1 for c in cs if c.get('ready'))}/{len(cs)}", shown, restarts, age,
                status.get("podIP", "<none>"), spec.get("nodeName", "<none>"), "<none>", "<none>"]
    if kind == "Node":
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        info = status.get("nodeInfo") or {}
        internal = next((a["address"] for a in status.get("addresses") or [] if a.get("type") == "InternalIP"),
                        "<none>")
        shown = "Ready" if ready.get("status") == "True" else "NotReady"
        if str((meta.get("annotations") or {}).get(ORIGIN + "autoscaling", "")).startswith("Standby"):
            shown += ",Standby"
        elif spec.get("unschedulable"):
            shown += ",SchedulingDisabled"
        return [name, shown, "<none>", age,
                info.get("kubeletVersion", ""), internal, "<none>", info.get("osImage", ""),
                info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]
    if kind == "Namespace":
        return [name, status.get("phase", "Active"), age]
    if kind == "Service":
        lb = [i.get("ip") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        external = ",".join(str(i) for i in lb) or ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
        sel = spec.get("selector") or {}
        return [name, spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), external, _ports(spec), age,
                ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>"]
    if kind == "Endpoints":
        eps = [f"{a['ip']}:{p['port']}" for s in obj.get("subsets") or [] for a in s.get("addresses") or []
               for p in s.get("ports") or []]
        return [name, ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "") or "<none>", age]
    if kind == "ConfigMap":
        return [name, len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), age]
    if kind == "Secret":
        keys = (meta.get("annotations") or {}).get(SECRET_KEYS, "")
        return [name, obj.get("type", "Opaque"), len([k for k in keys.split(",") if k]), age]
    if kind == "PersistentVolumeClaim":
        return [name, status.get("phase", ""), age]
    if kind == "Event":
        inv = obj.get("involvedObject") or {}
        return [_age(obj.get("lastTimestamp"), now), obj.get("type", ""), obj.get("reason", ""),
                f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}", obj.get("message", "")]
    containers, images = _images(obj)
    if kind == "Deployment":
        return [name, f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}", status.get("updatedReplicas", 0),
                status.get("availableReplicas", 0), age, containers, images, _selector_text(obj)]
    if kind == "ReplicaSet":
        return [name, spec.get("replicas", 0), status.get("replicas", 0), status.get("readyReplicas", 0), age,
                containers, images, _selector_text(obj)]
    if kind == "StatefulSet":
        return [name, f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}", age, containers, images]
    if kind == "DaemonSet":
        node_sel = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
        return [name, status.get("desiredNumberScheduled", 0), status.get("currentNumberScheduled", 0),
                status.get("numberReady", 0), status.get("updatedNumberScheduled", 0),
                status.get("numberAvailable", 0), ",".join(f"{k}={v}" for k, v in node_sel.items()) or "<none>",
                age, containers, images]
    if kind == "Job":
        done = next((c["type"] for c in status.get("conditions") or [] if c.get("type") in ("Complete", "Failed")),
                    "Running")
        return [name, done, f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}", "", age, containers, images]
    if kind == "CronJob":
        return [name, spec.get("schedule", ""), bool(spec.get("suspend", False)), 0,
                _age(status.get("lastScheduleTime"), now) if status.get("lastScheduleTime") else "<none>", age,
                containers, images]
    if kind == "Ingress":
        hosts = [str(r.get("host")) for r in spec.get("rules") or [] if isinstance(r, dict) and r.get("host")]
        lb = [str(i.get("ip") or i.get("hostname")) for i in (status.get("loadBalancer") or {}).get("ingress") or []]
        return [name, spec.get("ingressClassName", "<none>"), ",".join(hosts) or "*", ",".join(lb),
                "80, 443" if spec.get("tls") else "80", age]
    if kind == "EndpointSlice":
        addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
        return [name, obj.get("addressType", ""), ",".join(str(p.get("port")) for p in obj.get("ports") or [])
                or "<unset>", ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3
                                                         else "") or "<unset>", age]
    if kind == "NetworkPolicy":
        sel = (spec.get("podSelector") or {}).get("matchLabels") or {}
        return [name, ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>", age]
    return [name, age]


_MARKED = re.compile(rb"\\u0000([0-9TZ:-]{1,32})\\u0000")


def ages(encoded: bytes, now: datetime) -> bytes:
    """JSON of cells made with `now=None`, with each age computed for `now`."""
    known: dict[bytes, bytes] = {}  # many objects share a timestamp: each is parsed once

    def age(m: re.Match[bytes]) -> bytes:
        stamp = m.group(1)
        found = known.get(stamp)
        if found is None:
            found = known[stamp] = _age(stamp.decode(), now).encode()
        return found

    return _MARKED.sub(age, encoded)


def table(resource: Resource, objects: Iterable[Mapping[str, Any]], include: str, now: datetime,
          list_meta: Mapping[str, Any]) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: the columns `kubectl get` prints, one row per object."""
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": table_cells(resource, obj, now)}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    columns = [{"name": n, "type": t, "format": "name" if n == "Name" else "", "description": d, "priority": p}
               for n, t, p, d in table_columns(resource)]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": dict(list_meta),
            "columnDefinitions": columns, "rows": rows}
