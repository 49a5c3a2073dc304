"""Cross-object rules: what needs more than one object of a commit (references, selectors,
namespaces, addresses), and a few single-object rules schemas cannot say.

Purely computational, no side effects beyond the memos the caller hands in. A rule's result
depends on its object and on what it reads of the others; each read goes through `_Reads`,
which notes it, and the result is kept in the object's memo (kept with its file in the
source cache) beside those notes. The next commit reuses it while every read gives the same
answer -- the same body (parsed bodies are shared between loads while their blob is
unchanged), the same names, the same Nodes -- so a commit that changes one file re-runs the
rules of the objects that read it, and the rest cost a few lookups each.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import ipaddress
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Set
from fractions import Fraction
from typing import Any

from gitorch.model import admission, selectors, volumes
from gitorch.model.diagnostics import Diagnostic, Severity, escape_token
from gitorch.model.objects import DEFAULT_NAMESPACE, KINDS, SENSITIVE_FIELDS, Object, ObjectKey
from gitorch.model.quantities import QuantityError, parse_quantity
from gitorch.model.routes import (
    CONTROLLER,
    Route,
    conflicts,
    default_backend,
    defaults,
    ingress_classes,
    missing_backends,
    routes,
    serving_problem,
)
from gitorch.source import podsecurity

Memo = MutableMapping[str, Any]
"""One object's memo: what its rules last found and read; it lives as long as its parsed file."""


def suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def internal_error(
    path: str, line: int, column: int, ptr: str, what: str, exc: BaseException, sensitive: bool
) -> Diagnostic:
    """An unexpected exception as a diagnostic: the input is reported, never a traceback."""
    detail = type(exc).__name__ if sensitive else f"{type(exc).__name__}: {str(exc)[:200]}"
    return Diagnostic(path, line, column, ptr, f"internal error checking {what}: {detail}; please report")


def _diag(
    obj: Object, ptr: str, message: str, hint: str = "", *, warning: bool = False, key: bool = False
) -> Diagnostic:
    path, pos = obj.document.locate(ptr, key=key)  # a kustomize patch's file for a value it set
    return Diagnostic(
        path,
        pos.line,
        pos.column,
        ptr,
        message,
        hint,
        Severity.WARNING if warning else Severity.ERROR,
    )


def _map(value: Any) -> dict[str, Any]:
    """`value` when it is a mapping, else an empty one: cross checks read any shape safely."""
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def pod_template(obj: Object) -> tuple[str, dict[str, Any]] | None:
    """The pointer and body of a workload's pod template."""
    spec = obj.spec
    if obj.key.kind == "Pod":
        return "", obj.pod_as_template
    if obj.key.kind == "CronJob":
        tmpl = _map(_map(spec.get("jobTemplate")).get("spec")).get("template")
        return ("/spec/jobTemplate/spec/template", tmpl) if isinstance(tmpl, dict) else None
    tmpl = spec.get("template")
    return ("/spec/template", tmpl) if isinstance(tmpl, dict) else None


def _containers(tmpl_ptr: str, tmpl: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    pod = _map(tmpl.get("spec"))
    for field in ("initContainers", "containers"):
        for i, c in enumerate(_seq(pod.get(field))):
            if isinstance(c, dict):
                yield f"{tmpl_ptr}/spec/{field}/{i}", c


def _guarded(obj: Object, check: Callable[[], list[Diagnostic]]) -> list[Diagnostic]:
    """One object's checks; an unexpected exception is that object's error, never the commit's."""
    try:
        return check()
    except Exception as exc:
        pos = obj.document.position("/metadata/name")
        what = f"{obj.key.kind}/{obj.key.name}"
        sensitive = obj.key.kind in SENSITIVE_FIELDS
        return [internal_error(obj.path, pos.line, pos.column, "/metadata/name", what, exc, sensitive)]


_ORDER = operator.attrgetter("key.kind", "key.namespace", "key.name")  # ObjectKey's order, compared in C
_WORKLOADS = frozenset(("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"))


class _World:
    """One commit's objects and the indexes rules look things up in."""

    def __init__(self, objects: Mapping[ObjectKey, Object], invalid: Set[ObjectKey]) -> None:
        self.objects = objects
        self.ordered = sorted(objects.values(), key=_ORDER)
        self.nodes = [o for o in self.ordered if o.key.kind == "Node" and o.key not in invalid]
        self.nodes_seen = _same_nodes(tuple(n.body for n in self.nodes))
        # (namespace, label, value) -> labels of the pod templates carrying it, so a Service's
        # selector is checked against a few candidates instead of every workload.
        labels_index: dict[tuple[str, str, str], list[Any]] = {}
        for obj in self.ordered:
            if KINDS[obj.key.kind].workload and obj.key not in invalid:
                labels = _template_labels(obj)
                if isinstance(labels, dict):
                    for k, v in labels.items():
                        labels_index.setdefault((obj.key.namespace, k, str(v)), []).append(labels)
        self.pod_labels = {k: tuple(v) for k, v in labels_index.items()}
        self._names: dict[tuple[str, str], tuple[str, ...]] | None = None
        self._templates: dict[str, tuple[tuple[Object, dict[str, str], bool], ...]] | None = None

    def templates(self, namespace: str) -> tuple[tuple[Object, dict[str, str], bool], ...]:
        """The workloads of a namespace with their pod labels and whether they use hostNetwork
        (what a NetworkPolicy's podSelector picks from)."""
        if self._templates is None:
            index: dict[str, list[tuple[Object, dict[str, str], bool]]] = {}
            for obj in self.ordered:
                found = pod_template(obj) if KINDS[obj.key.kind].workload else None
                if found is not None:
                    labels = {str(k): str(v) for k, v in _map(_map(found[1].get("metadata")).get("labels")).items()}
                    host = _map(found[1].get("spec")).get("hostNetwork") is True
                    index.setdefault(obj.key.namespace, []).append((obj, labels, host))
            self._templates = {k: tuple(v) for k, v in index.items()}
        return self._templates.get(namespace, ())

    def names(self, kind: str, namespace: str) -> tuple[str, ...]:
        """Names of the objects of a kind in a namespace, in the commit's order (for suggestions)."""
        if self._names is None:
            index: dict[tuple[str, str], list[str]] = {}
            for k in self.objects:
                index.setdefault((k.kind, k.namespace), []).append(k.name)
            self._names = {k: tuple(v) for k, v in index.items()}
        return self._names.get((kind, namespace), ())


# The Nodes' bodies as last seen: an equal tuple is replaced by that very one, so a memo tells
# "the same Nodes" by identity. It holds one commit's Nodes (its retention: the latest only).
_NODES: list[tuple[Any, ...]] = [()]
_NODES_LOCK = threading.Lock()


def _same_nodes(bodies: tuple[Any, ...]) -> tuple[Any, ...]:
    with _NODES_LOCK:
        if bodies == _NODES[0]:
            return _NODES[0]
        _NODES[0] = bodies
        return bodies


_GET, _NAMES, _NODES_READ, _LABELS = "get", "names", "nodes", "labels"
_Log = tuple[tuple[str, Any, Any], ...]


class _Reads:
    """A rule's view of the other objects, noting each read and its answer."""

    __slots__ = ("log", "world")

    def __init__(self, world: _World) -> None:
        self.world = world
        self.log: list[tuple[str, Any, Any]] = []

    def get(self, key: ObjectKey) -> Object | None:
        obj = self.world.objects.get(key)
        self.log.append((_GET, key, None if obj is None else obj.body))
        return obj

    def names(self, kind: str, namespace: str) -> tuple[str, ...]:
        found = self.world.names(kind, namespace)
        self.log.append((_NAMES, (kind, namespace), found))
        return found

    def nodes(self) -> list[Object]:
        self.log.append((_NODES_READ, None, self.world.nodes_seen))
        return self.world.nodes

    def pod_labels(self, namespace: str, label: str, value: str) -> tuple[Any, ...]:
        found = self.world.pod_labels.get((namespace, label, value), ())
        self.log.append((_LABELS, (namespace, label, value), found))
        return found


def _still_holds(world: _World, log: _Log) -> bool:
    """Whether every read in `log` gives the same answer in `world`: the very same body
    (parsed bodies are shared while their blob is unchanged), equal names, the same Nodes."""
    for what, key, seen in log:
        if what is _GET:
            obj = world.objects.get(key)
            if (None if obj is None else obj.body) is not seen:
                return False
        elif what is _NAMES:
            if world.names(*key) != seen:
                return False
        elif what is _NODES_READ:
            if world.nodes_seen is not seen:
                return False
        elif world.pod_labels.get(key, ()) != seen:
            return False
    return True


def _run(
    obj: Object, world: _World, rule: Callable[[Object, _Reads], list[Diagnostic]], memo: Memo | None
) -> list[Diagnostic]:
    """`rule` on `obj`, or its last result when everything it read is unchanged."""
    name = rule.__name__
    if memo is not None:
        last = memo.get(name)
        if last is not None and _still_holds(world, last[0]):
            return list(last[1])
    reads = _Reads(world)
    out = _guarded(obj, functools.partial(rule, obj, reads))
    if memo is not None:
        memo[name] = (tuple(reads.log), tuple(out))
    return out


def _template_labels(obj: Object) -> Any:
    found = pod_template(obj)
    return _map(found[1].get("metadata")).get("labels") if found else None


def _plaintext_secrets(objects: Mapping[ObjectKey, Object], clusters: list[Object],
                       invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """With the Cluster's `secrets.requireEncryption`, a Secret not in SOPS's format is an error, and
    so is each value under its data or stringData that the file's SOPS rules left in plaintext
    (an encrypted_regex, say, that does not match stringData)."""
    valid = [c for c in clusters if c.key not in invalid]
    secrets = valid[0].body.get("spec", {}).get("secrets") if valid else None
    if not isinstance(secrets, dict) or secrets.get("requireEncryption") is not True:
        return []
    out = []
    for key, obj in objects.items():
        if key.kind != "Secret":
            continue
        if not getattr(obj.document, "encrypted", False):
            out.append(_diag(obj, "/metadata/name", f"Secret {key.namespace}/{key.name} is not encrypted, and the "
                             "Cluster sets secrets.requireEncryption",
                             f"encrypt it: gitorch secret encrypt -i {obj.path}"))
            continue
        out.extend(
            _diag(obj, ptr, f"Secret {key.namespace}/{key.name}: this value is in plaintext (the file's SOPS rules "
                  "leave it unencrypted), and the Cluster sets secrets.requireEncryption",
                  f"let the rules cover data and stringData: gitorch secret decrypt -i {obj.path} && gitorch secret "
                  f"encrypt -i {obj.path}, whose default is encrypted_regex ^(data|stringData)$")
            for ptr in getattr(obj.document, "exposed", ()))
    return out


def _check_grants(objects: Mapping[ObjectKey, Object], clusters: list[Object],
                  invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """Warnings for grants that do nothing: a binding to a role that does not exist, and a
    Cluster that sets git.verifyCommits while no binding names a signer (every later push would
    be refused)."""
    out = []
    bindings = [o for k, o in objects.items() if k.kind in ("RoleBinding", "ClusterRoleBinding") and k not in invalid]
    for b in bindings:
        ref = b.body.get("roleRef") or {}
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        if ObjectKey(kind, "" if kind == "ClusterRole" else b.key.namespace, name) not in objects:
            where = f" in namespace {b.key.namespace}" if kind == "Role" else ""
            out.append(_diag(b, "/roleRef/name", f"{kind} {name!r} does not exist{where}: this binding grants nothing",
                             f"add the {kind}, or fix the name", warning=True))
    valid = [c for c in clusters if c.key not in invalid]
    git = valid[0].body.get("spec", {}).get("git") if valid else None
    if isinstance(git, dict) and git.get("verifyCommits") is True and not any(b.body.get("subjects") for b in bindings):
        out.append(_diag(valid[0], "/spec/git/verifyCommits",
                         "no RoleBinding or ClusterRoleBinding names a signer: once this revision is applied, "
                         "every later commit is refused", "bind a role to the keys that sign commits", warning=True))
    return out


def cross_check(
    objects: Mapping[ObjectKey, Object],
    invalid: Set[ObjectKey] = frozenset(),
    memos: Mapping[ObjectKey, Memo] | None = None,
) -> list[Diagnostic]:
    """Rules that need more than one object (and a few single-object rules schemas cannot say).

    Objects in `invalid` failed their schema check: they still count as targets of references,
    but their own rules are skipped, as their shapes may be anything. `memos` (per object, as
    long-lived as its body) let an unchanged object whose reads are unchanged skip its rules."""
    out: list[Diagnostic] = []
    world = _World(objects, invalid)
    namespaces = {k.name for k in objects if k.kind == "Namespace"} | {DEFAULT_NAMESPACE}
    ordered = world.ordered
    clusters = [o for o in ordered if o.key.kind == "Cluster"]
    for extra in clusters[1:]:
        out.append(
            _diag(
                extra,
                "/metadata/name",
                f"a second Cluster ({extra.key.name}); a repository describes one cluster",
                f"keep only {clusters[0].key.name!r} (in {clusters[0].path})",
            )
        )
    for c in clusters:
        if c.key not in invalid:
            out.extend(_guarded(c, functools.partial(_check_cluster, c)))
    out.extend(_plaintext_secrets(objects, clusters, invalid))
    out.extend(_check_grants(objects, clusters, invalid))
    out.extend(_check_nodes(world.nodes))
    balanced = [o for o in ordered if o.key.kind == "Service" and o.key not in invalid
                and o.spec.get("type") == "LoadBalancer"]
    if balanced or clusters:
        out.extend(_check_load_balancers(balanced, clusters[0] if clusters and clusters[0].key not in invalid
                                         else None))
    proxy = _map(_map(clusters[0].spec.get("ingress")).get("service")) if clusters else {}
    if proxy and clusters[0].key not in invalid:
        named = ObjectKey("Service", str(proxy.get("namespace")), str(proxy.get("name")))
        found = objects.get(named)
        if found is None:
            out.append(_diag(clusters[0], "/spec/ingress/service", f"{named} does not exist",
                             "add a Service without a selector there (type LoadBalancer for an address of its own), "
                             "with ports whose targetPort is 80 and 443"))
        elif found.spec.get("selector"):
            out.append(_diag(clusters[0], "/spec/ingress/service", f"{named} has a selector",
                             "remove its selector: its endpoints are the ingress nodes"))
    ingresses = [o for o in ordered if o.key.kind == "Ingress" and o.key not in invalid]
    if ingresses:
        cluster = clusters[0] if clusters and clusters[0].key not in invalid else None
        out.extend(_check_ingresses(ingresses, objects, invalid, cluster))
    for obj in ordered:
        if obj.key.kind == "Secret" and obj.key not in invalid and obj.body.get("type") == TLS_SECRET:
            out.extend(_guarded(obj, functools.partial(_check_tls_secret, obj)))
    out.extend(_check_admission(world, invalid))
    out.extend(_check_volumes(world, invalid))
    for obj in ordered:
        key = obj.key
        if key.namespace == SYSTEM_NAMESPACE or (key.kind == "Namespace" and key.name == SYSTEM_NAMESPACE):
            out.append(_diag(obj, "/metadata/namespace" if key.namespace else "/metadata/name",
                             f"namespace {SYSTEM_NAMESPACE!r} is gitorch's own (its nodes' ingress proxy runs there)",
                             "use another namespace"))
            continue
        if key.namespace and key.namespace not in namespaces:
            out.append(
                _diag(
                    obj,
                    "/metadata/namespace",
                    f"namespace {key.namespace!r} does not exist",
                    f"add a Namespace named {key.namespace!r}, or fix the name",
                )
            )
        if key in invalid:
            continue
        if key.kind in _WORKLOADS:
            out.extend(_run(obj, world, _check_workload, memos.get(key) if memos is not None else None))
        if key.kind in ("Deployment", "DaemonSet"):
            out.extend(_check_rollout_budget(obj))
        if key.kind == "Service":
            out.extend(_run(obj, world, _check_service, memos.get(key) if memos is not None else None))
        elif key.kind == "Namespace":
            out.extend(_check_pod_security_labels(obj))
        elif key.kind == "NetworkPolicy":
            out.extend(_guarded(obj, functools.partial(_check_network_policy, obj, world)))
        elif key.kind == "HorizontalPodAutoscaler":
            out.extend(_guarded(obj, functools.partial(_check_autoscaler, obj, world, invalid)))
        elif key.kind == "VerticalPodAutoscaler":
            out.extend(_guarded(obj, functools.partial(_check_vertical, obj, world, invalid)))
    return out


def _capability_hint(name: str) -> str:
    """The hint for an unknown capability: the nearest name, then every valid one."""
    near = suggest(name, podsecurity.CAPABILITIES)
    every = f"one of: ALL, {', '.join(podsecurity.CAPABILITIES)}"
    return f"{near}; {every}" if near else every


def _check_pod_security_labels(obj: Object) -> list[Diagnostic]:
    """A Namespace's Pod Security labels: known levels and versions, as the API server admits
    them; a version other than latest is checked as latest, and audit has no effect (warnings)."""
    out: list[Diagnostic] = []
    for label in podsecurity.LEVEL_LABELS:
        level = obj.labels.get(label)
        if level is not None and level not in podsecurity.LEVELS:
            out.append(_diag(obj, f"/metadata/labels/{escape_token(label)}", f"unknown level {level!r}",
                             f"one of: {', '.join(podsecurity.LEVELS)}"))
        elif label == podsecurity.AUDIT_LABEL and level is not None:
            out.append(_diag(obj, f"/metadata/labels/{escape_token(label)}", "label has no effect: gitorch keeps no "
                             "audit log", f"{podsecurity.WARN_LABEL} gives the same checks as warnings", warning=True))
        tag = podsecurity.version_label(label)
        version = obj.labels.get(tag)
        if version is None:
            continue
        ptr = f"/metadata/labels/{escape_token(tag)}"
        problem = podsecurity.version_problem(version)
        if problem is not None:
            out.append(_diag(obj, ptr, f"invalid version {version!r}: {problem}", '"latest", or a version such as '
                             '"v1.30"'))
        elif version != podsecurity.LATEST:
            out.append(_diag(obj, ptr, f"version {version} is checked as latest",
                             "gitorch has only the latest Pod Security Standards, which may refuse what an older "
                             'version allowed: set "latest" to say so', warning=True))
    return out


def _autoscaler_target(world: _World, obj: Object, field: str, out: list[Diagnostic], does: str, also: str,
                       fix: str) -> tuple[dict[str, Any], ObjectKey, Object | None]:
    """An autoscaler's target reference (`spec.<field>`), the target's key and the target: a
    target missing from the revision is a warning, another autoscaler of the same kind on it an
    error (both added to `out`)."""
    ref = _map(obj.spec.get(field))
    target_key = ObjectKey(str(ref.get("kind")), obj.key.namespace, str(ref.get("name")))
    target = world.objects.get(target_key)
    if target is None:
        hint = suggest(target_key.name, world.names(target_key.kind, obj.key.namespace))
        out.append(_diag(obj, f"/spec/{field}/name",
                         f"{target_key} is not in this revision: the autoscaler has nothing to {does}",
                         hint or f"add the {target_key.kind}, or fix {field}", warning=True))
    others = sorted(k.name for k, o in world.objects.items() if k.kind == obj.key.kind
                    and k != obj.key and k.namespace == obj.key.namespace
                    and _map(o.spec.get(field)).get("kind") == ref.get("kind")
                    and _map(o.spec.get(field)).get("name") == ref.get("name"))
    if others:
        out.append(_diag(obj, f"/spec/{field}", f"{target_key} {also} {obj.key.kind} {', '.join(others)}", fix))
    return ref, target_key, target


def _check_vertical(vpa: Object, world: _World, invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """What the schema cannot say: updateMode "Off" (gitorch recommends, Git decides), the target
    exists and has one VerticalPodAutoscaler, container policies name its containers once each,
    and minAllowed is at most maxAllowed."""
    out: list[Diagnostic] = []
    spec = vpa.spec
    mode = _map(spec.get("updatePolicy")).get("updateMode")
    if mode != "Off":
        ptr = "/spec/updatePolicy/updateMode" if mode is not None else (
            "/spec/updatePolicy" if "updatePolicy" in spec else "/spec")
        said = f"updateMode {mode!r}" if mode is not None else "no updateMode (Kubernetes' default is \"Auto\")"
        out.append(_diag(vpa, ptr, f"{said}: gitorch only recommends; requests change through a commit, "
                                   "since Git is the source of truth (a controller rewriting them would drift from it)",
                         'set updatePolicy: {updateMode: "Off"} and commit what `gitorch recommend` prints'))
    ref, target_key, target = _autoscaler_target(
        world, vpa, "targetRef", out, "recommend for", "also has",
        "one VerticalPodAutoscaler per workload (VPA's choice between several is undefined)")
    scalers = sorted(k.name for k, o in world.objects.items() if k.kind == "HorizontalPodAutoscaler"
                     and k.namespace == vpa.key.namespace
                     and _map(o.spec.get("scaleTargetRef")).get("kind") == ref.get("kind")
                     and _map(o.spec.get("scaleTargetRef")).get("name") == ref.get("name"))
    if scalers:
        out.append(_diag(vpa, "/spec/targetRef",
                         f"{target_key} is also scaled by HorizontalPodAutoscaler {', '.join(scalers)} on CPU or "
                         "memory: its utilization is a share of the requests these recommendations change",
                         "review a resize with the autoscaler's targets in mind (Kubernetes advises against "
                         "VPA and HPA on the same resource)", warning=True))
    containers: set[str] = set()
    if target is not None and target_key not in invalid:
        tmpl = _map(target.spec.get("template"))
        containers = {str(c.get("name")) for c in _seq(_map(tmpl.get("spec")).get("containers")) if isinstance(c, dict)}
    seen: set[str] = set()
    for i, policy in enumerate(_seq(_map(spec.get("resourcePolicy")).get("containerPolicies"))):
        policy = _map(policy)
        ptr = f"/spec/resourcePolicy/containerPolicies/{i}"
        name = str(policy.get("containerName"))
        if name in seen:
            out.append(_diag(vpa, f"{ptr}/containerName", f"a second policy for container {name!r}",
                             "one policy per container name"))
        seen.add(name)
        if containers and name != "*" and name not in containers:
            out.append(_diag(vpa, f"{ptr}/containerName", f"{target_key} has no container {name!r}",
                             suggest(name, containers) or f"one of: {', '.join(sorted(containers))}, or \"*\""))
        low, high = _map(policy.get("minAllowed")), _map(policy.get("maxAllowed"))
        for resource in ("cpu", "memory"):
            try:
                lo = parse_quantity(low[resource]) if resource in low else None
                hi = parse_quantity(high[resource]) if resource in high else None
            except QuantityError:
                continue  # the schema's quantity check says it
            if lo is not None and hi is not None and lo > hi:
                out.append(_diag(vpa, f"{ptr}/minAllowed/{resource}",
                                 f"minAllowed {resource} {low[resource]} is above maxAllowed {high[resource]}",
                                 f"make minAllowed.{resource} at most {high[resource]}"))
    return out


def _check_autoscaler(hpa: Object, world: _World, invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """What the schema cannot say: the target exists and has one autoscaler, the bounds are in
    order, each metric has its source and target value, and Utilization has requests to divide by."""
    out: list[Diagnostic] = []
    spec = hpa.spec
    low, high = spec.get("minReplicas", 1), spec.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        out.append(_diag(hpa, "/spec/minReplicas", f"minReplicas {low} is above maxReplicas {high}",
                         f"make minReplicas at most {high}"))
    _, target_key, target = _autoscaler_target(
        world, hpa, "scaleTargetRef", out, "scale", "is also scaled by",
        "one autoscaler per workload (Kubernetes refuses both: AmbiguousSelector)")
    containers: dict[str, Any] = {}
    if target is not None and target_key not in invalid:
        tmpl = _map(target.spec.get("template"))
        containers = {str(c.get("name")): c for c in _seq(_map(tmpl.get("spec")).get("containers"))
                      if isinstance(c, dict)}
    for i, metric in enumerate(_seq(spec.get("metrics"))):
        metric = _map(metric)
        field = "resource" if metric.get("type") == "Resource" else "containerResource"
        src = metric.get(field)
        ptr = f"/spec/metrics/{i}"
        if not isinstance(src, dict):
            out.append(_diag(hpa, ptr, f"a {metric.get('type')} metric needs `{field}`",
                             f"add {field}: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}"))
            continue
        target_spec = _map(src.get("target"))
        wanted = "averageUtilization" if target_spec.get("type") == "Utilization" else "averageValue"
        if target_spec.get(wanted) is None:
            out.append(_diag(hpa, f"{ptr}/{field}/target", f"a {target_spec.get('type')} target needs `{wanted}`",
                             "e.g. averageUtilization: 80" if wanted == "averageUtilization"
                             else "e.g. averageValue: 500m (cpu) or 256Mi (memory)"))
        if not containers:
            continue
        resource = str(src.get("name"))
        chosen = containers
        if field == "containerResource":
            name = str(src.get("container"))
            if name not in containers:
                out.append(_diag(hpa, f"{ptr}/{field}/container", f"{target_key} has no container {name!r}",
                                 suggest(name, containers) or f"one of: {', '.join(containers)}"))
                continue
            chosen = {name: containers[name]}
        if target_spec.get("type") == "Utilization":
            lacking = [n for n, c in chosen.items()
                       if resource not in _map(_map(c.get("resources")).get("requests"))
                       and resource not in _map(_map(c.get("resources")).get("limits"))]
            if lacking:
                out.append(_diag(hpa, f"{ptr}/{field}/target",
                                 f"Utilization of {resource} is a percentage of requests, and container(s) "
                                 f"{', '.join(lacking)} of {target_key} request no {resource}",
                                 f"set resources.requests.{resource} on every container, "
                                 "or use an AverageValue target"))
    return out


# count/<resource>.<group> names of a quota, for the kinds gitorch has.
_COUNTED = {
    "count/pods": None, "count/services": "Service", "count/configmaps": "ConfigMap", "count/secrets": "Secret",
    "count/persistentvolumeclaims": "PersistentVolumeClaim", "count/deployments.apps": "Deployment",
    "count/replicasets.apps": "ReplicaSet", "count/statefulsets.apps": "StatefulSet",
    "count/daemonsets.apps": "DaemonSet", "count/jobs.batch": "Job", "count/cronjobs.batch": "CronJob",
    "count/networkpolicies.networking.k8s.io": "NetworkPolicy",
}


def _steady_pods(obj: Object, nodes: int) -> int:
    """How many pods a workload keeps running once rolled out (Jobs and CronJobs: none steady;
    their pods are admitted, or kept Pending, when they start)."""
    kind = obj.key.kind
    if kind == "Pod":
        return 1
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        replicas = obj.spec.get("replicas", 1)
        return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 1
    if kind == "DaemonSet":
        return nodes
    return 0


def _check_admission(world: _World, invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """LimitRange bounds on every pod template of their namespace (after its defaults), and
    ResourceQuota caps against what the namespace's desired state keeps running, in Kubernetes'
    words. Only namespaces that have either are looked at."""
    ranges: dict[str, list[Object]] = {}
    quotas: dict[str, list[Object]] = {}
    for obj in world.ordered:
        if obj.key in invalid:
            continue
        if obj.key.kind == "LimitRange":
            ranges.setdefault(obj.key.namespace, []).append(obj)
        elif obj.key.kind == "ResourceQuota":
            quotas.setdefault(obj.key.namespace, []).append(obj)
    if not ranges and not quotas:
        return []
    out: list[Diagnostic] = []
    for ns in sorted(set(ranges) | set(quotas)):
        items = admission.limit_items((o.key.name, o.spec) for o in ranges.get(ns, []))
        caps = [(o, admission.quota(o.key.name, o.spec)) for o in quotas.get(ns, [])]
        used: dict[str, Any] = {}
        for obj in world.ordered:
            if obj.key.namespace != ns or obj.key in invalid:
                continue
            kind = obj.key.kind
            counted = [r for r, k in _COUNTED.items() if k == kind]
            if kind in admission.OBJECT_COUNTS.values():
                counted.append(next(r for r, k in admission.OBJECT_COUNTS.items() if k == kind))
            if kind == "Service" and obj.spec.get("type") in ("NodePort", "LoadBalancer"):
                counted.append("services.nodeports")
            if kind == "Service" and obj.spec.get("type") == "LoadBalancer":
                counted.append("services.loadbalancers")
            for r in counted:
                admission.add(used, {r: Fraction(1)})
            if kind == "PersistentVolumeClaim":
                out.extend(_claim_bounds(obj, "/spec", obj.spec, items, used))
            if not KINDS[kind].workload:
                continue
            found = pod_template(obj)
            if found is None:
                continue
            ptr, tmpl = found
            defaulted = admission.defaulted_template(tmpl, items)
            what = f"pods of {kind} {obj.key.name}"
            for v in admission.limit_violations(defaulted, items):
                out.append(_diag(obj, f"{ptr}/spec{v.pointer}", f"{what} are forbidden: {v.message}",
                                 f"keep within LimitRange {v.range_name} of namespace {ns}, or change it"))
            for q_obj, q in caps:
                for container, resource in admission.must_specify(q, defaulted):
                    where, _, res = resource.partition(".")
                    out.append(_diag(obj, f"{ptr}/spec", f"{what} are forbidden: failed quota: {q.name}: "
                                     f"must specify {resource} for: {container}",
                                     f"set resources.{where}.{res} on container {container}, or give the "
                                     f"namespace a LimitRange default ({q_obj.path})"))
            steady = _steady_pods(obj, len(world.nodes))
            if steady:
                usage = admission.pod_usage(defaulted)
                admission.add(used, usage, steady)
                admission.add(used, {"count/pods": usage["pods"]}, steady)
            if kind == "StatefulSet":
                for i, t in enumerate(_seq(obj.spec.get("volumeClaimTemplates"))):
                    claim = _map(_map(t).get("spec"))
                    for _ in range(steady):
                        out.extend(_claim_bounds(obj, f"/spec/volumeClaimTemplates/{i}/spec", claim, items, used))
        for q_obj, q in caps:
            for r in sorted(q.hard):
                full = admission.ALIASES.get(r, r)
                have = used.get(full, Fraction(0))
                if have > q.hard[r]:
                    out.append(_diag(q_obj, f"/spec/hard/{escape_token(r)}",
                                     f"namespace {ns} needs {r}={admission.show(full, have)} once rolled out, over "
                                     f"this quota's {admission.show(full, q.hard[r])}",
                                     f"raise spec.hard[{r!r}], or lower the replicas or requests of namespace {ns}"))
    return out


def _check_volumes(world: _World, invalid: Set[ObjectKey]) -> list[Diagnostic]:
    """PersistentVolumes name a node of the repository; claims name a StorageClass (or a class
    some PersistentVolume has) and a volume that exist, and no volume is asked for by two claims."""
    valid = [o for o in world.ordered if o.key not in invalid]
    pvs = {o.key.name: o for o in valid if o.key.kind == "PersistentVolume"}
    classes = {o.key.name: o for o in valid if o.key.kind == "StorageClass"}
    claims = [o for o in valid if o.key.kind == "PersistentVolumeClaim"]
    if not pvs and not classes and not any("volumeName" in c.spec or "storageClassName" in c.spec for c in claims):
        return []
    out: list[Diagnostic] = []
    nodes = {n.key.name for n in world.nodes}
    for pv in pvs.values():
        node = volumes.volume_node(pv.body)
        if node is None:
            out.append(_diag(pv, "/spec/nodeAffinity/required", "a local volume needs the one node its directory is on",
                             "one term: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: "
                             "[NODE]}]}"))
        elif node not in nodes:
            out.append(_diag(pv, "/spec/nodeAffinity/required", f"node {node!r} is not a Node of this repository",
                             suggest(node, nodes) or "add the Node, or fix the name"))
    defaults = [n for n, c in classes.items()
                if str(_map(_map(c.body.get("metadata")).get("annotations")).get(volumes.DEFAULT_CLASS)) == "true"]
    for cls in classes.values():
        provisioner = str(cls.body.get("provisioner"))
        if provisioner not in volumes.LOCAL_PROVISIONERS and provisioner != volumes.NO_PROVISIONER:
            out.append(_diag(cls, "/provisioner", f"provisioner {provisioner!r} does not exist in gitorch: its claims "
                             "get a directory on the node of their first pod, as with gitorch.dev/local",
                             "say provisioner: gitorch.dev/local (or kubernetes.io/no-provisioner for "
                             "PersistentVolumes in Git)", warning=True))
    for extra in defaults[1:]:
        out.append(_diag(classes[extra], "/metadata/annotations",
                         f"a second default StorageClass (also {defaults[0]!r})", "keep one default class"))
    asked: dict[str, Object] = {}
    # A class that only PersistentVolumes name (Kubernetes' "manual") binds claims to them
    # statically, with no StorageClass object, as in Kubernetes.
    static = {str(o.spec.get("storageClassName")) for o in world.ordered if o.key.kind == "PersistentVolume"}
    for claim in claims:
        name = claim.spec.get("storageClassName")
        if isinstance(name, str) and name and name not in classes and name not in static:
            out.append(_diag(claim, "/spec/storageClassName", f"StorageClass {name!r} does not exist",
                             suggest(name, classes) or f"add a StorageClass named {name!r}, or remove the field"))
        volume = claim.spec.get("volumeName")
        if isinstance(volume, str):
            if volume not in pvs:
                out.append(_diag(claim, "/spec/volumeName", f"PersistentVolume {volume!r} does not exist",
                                 suggest(volume, pvs) or "add it, or remove volumeName"))
            elif volume in asked:
                out.append(_diag(claim, "/spec/volumeName", f"PersistentVolume {volume!r} is already claimed by "
                                 f"{asked[volume].key.namespace}/{asked[volume].key.name} ({asked[volume].path})",
                                 "a volume binds one claim"))
            else:
                asked[volume] = claim
    return out


def _claim_bounds(obj: Object, ptr: str, claim: Mapping[str, Any], items: tuple[admission.LimitItem, ...],
                  used: dict[str, Any]) -> list[Diagnostic]:
    """A claim's size against the LimitRange items for claims, and its count and size in the quota."""
    size = admission.amount(_map(_map(claim.get("resources")).get("requests")).get("storage"))
    admission.add(used, {"persistentvolumeclaims": Fraction(1),
                         "count/persistentvolumeclaims": Fraction(1)})
    if size is None:
        return []
    admission.add(used, {"requests.storage": size})
    out = []
    for item in items:
        if item.type != "PersistentVolumeClaim":
            continue
        low, high = admission.amount(item.min.get("storage")), admission.amount(item.max.get("storage"))
        if low is not None and size < low:
            out.append(_diag(obj, f"{ptr}/resources/requests/storage", f"minimum storage usage per "
                             f"PersistentVolumeClaim is {admission.show('storage', low)}, but request is "
                             f"{admission.show('storage', size)}", f"keep within LimitRange {item.range_name}"))
        if high is not None and size > high:
            out.append(_diag(obj, f"{ptr}/resources/requests/storage", f"maximum storage usage per "
                             f"PersistentVolumeClaim is {admission.show('storage', high)}, but request is "
                             f"{admission.show('storage', size)}", f"keep within LimitRange {item.range_name}"))
    return out


_KUBE_DNS = frozenset(("kube-dns", "coredns"))  # the k8s-app label of Kubernetes' cluster DNS pods


def _dns_address(world: _World) -> str:
    """The cluster DNS address pods' resolv.conf names, if the Cluster gives one."""
    for name in world.names("Cluster", ""):
        cluster = world.objects.get(ObjectKey("Cluster", "", name))
        address = str(_map(_map(cluster.spec if cluster else None).get("dns")).get("address") or "")
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        try:
            if not ipaddress.ip_address(host.strip("[]")).is_unspecified:
                return host.strip("[]")
        except ValueError:
            continue
    return ""


def _selects_kube_dns(selector: Any) -> bool:
    sel = _map(selector)
    if str(_map(sel.get("matchLabels")).get("k8s-app")) in _KUBE_DNS:
        return True
    return any(_map(e).get("key") == "k8s-app" and _map(e).get("operator") == "In"
               and _KUBE_DNS & {str(v) for v in _seq(_map(e).get("values"))} for e in _seq(sel.get("matchExpressions")))


def _policy_reach(np: Object, world: _World) -> list[Diagnostic]:
    """What a policy cannot do here: select host-network pods only (they have no pod address
    and are not policed), or name Kubernetes' DNS pods (gitorch's cluster DNS is no pod)."""
    out: list[Diagnostic] = []
    selector = np.spec.get("podSelector")
    if isinstance(selector, dict):
        picked = [(obj, host) for obj, labels, host in world.templates(np.key.namespace)
                  if selectors.matches(selector, labels)]
        if picked and all(host for _, host in picked):
            names = ", ".join(f"{o.key.kind}/{o.key.name}" for o, _ in picked[:3])
            names += ", ..." if len(picked) > 3 else ""
            out.append(_diag(np, "/spec/podSelector", f"no effect: every pod this policy selects ({names}) uses "
                             "hostNetwork, and host-network pods have no pod address of their own: gitorch does "
                             "not police them", "protect host-network pods with the node's own firewall, or "
                             "run them on the pod network", warning=True))
    peers = [(f"/spec/{direction}/{r}/{field}/{i}/podSelector", _map(peer).get("podSelector"))
             for direction, field in (("ingress", "from"), ("egress", "to"))
             for r, rule in enumerate(_seq(np.spec.get(direction)))
             for i, peer in enumerate(_seq(_map(rule).get(field)))]
    aimed = [ptr for ptr, sel in peers if _selects_kube_dns(sel)]
    if not aimed or any(labels.get("k8s-app") in _KUBE_DNS for ns in {o.key.namespace for o in world.ordered}
                        for _, labels, _ in world.templates(ns)):
        return out  # none, or the repository runs a DNS of its own with that label: the selector means it
    address = _dns_address(world)
    where = f"at {address}" if address else "at the Cluster's spec.dns.address"
    for ptr in aimed:
        out.append(_diag(np, ptr, "no effect: no pod is kube-dns in gitorch; pods ask the cluster DNS gitorch "
                         f"serves {where}, which is not a pod",
                         "to let pods resolve names under egress isolation, allow egress to ipBlock "
                         f"{address or '<that address>'}/32 on UDP and TCP port 53", warning=True))
    return out


def _check_network_policy(np: Object, world: _World) -> list[Diagnostic]:
    """What the schema cannot say: port ranges, CIDRs and their exceptions, rules a policyTypes
    hides, and what a policy cannot reach here (see _policy_reach)."""
    out: list[Diagnostic] = _policy_reach(np, world)
    types = _seq(np.spec.get("policyTypes"))
    for direction, peers_field, kind in (("ingress", "from", "Ingress"), ("egress", "to", "Egress")):
        rules = _seq(np.spec.get(direction))
        if rules and types and kind not in types:
            out.append(_diag(np, f"/spec/{direction}",
                             f"{direction} rules have no effect: policyTypes does not list {kind}",
                             f"add {kind} to policyTypes, or remove the {direction} rules", warning=True))
        for r, rule in enumerate(rules):
            for i, port in enumerate(_seq(_map(rule).get("ports"))):
                port = _map(port)
                end, start = port.get("endPort"), port.get("port")
                ptr = f"/spec/{direction}/{r}/ports/{i}/endPort"
                if end is not None and not isinstance(start, int):
                    out.append(_diag(np, ptr, "endPort needs a numeric port", "give port as a number, or drop endPort"))
                elif isinstance(end, int) and isinstance(start, int) and end < start:
                    out.append(_diag(np, ptr, f"endPort {end} is below port {start}", f"make endPort at least {start}"))
            for i, peer in enumerate(_seq(_map(rule).get(peers_field))):
                if "ipBlock" not in _map(peer):
                    continue
                block = _map(_map(peer).get("ipBlock"))
                ptr = f"/spec/{direction}/{r}/{peers_field}/{i}/ipBlock"
                try:
                    net = ipaddress.ip_network(str(block.get("cidr")), strict=False)
                except ValueError as exc:
                    out.append(_diag(np, ptr + "/cidr", f"not an IPv4 or IPv6 CIDR: {exc}",
                                     "an IPv4 CIDR such as 10.0.0.0/8"))
                    continue
                if net.version == 6:
                    # Kubernetes takes IPv6 blocks (dual-stack manifests list ::/0 beside 0.0.0.0/0);
                    # refusing them would refuse those manifests for a block that changes nothing here.
                    out.append(_diag(np, ptr + "/cidr", f"no effect: {net} is IPv6 and gitorch pods have no IPv6 "
                                     "(their eth0 has it turned off), so this block matches no pod traffic",
                                     "nothing to do if the manifest is also for dual-stack clusters; "
                                     "else remove the block", warning=True))
                for j, ex in enumerate(_seq(block.get("except"))):
                    try:
                        sub = ipaddress.ip_network(str(ex), strict=False)
                    except ValueError as exc:
                        out.append(_diag(np, f"{ptr}/except/{j}", f"not an IPv4 or IPv6 CIDR: {exc}",
                                         "an IPv4 CIDR such as 10.1.0.0/16"))
                        continue
                    if sub.version != net.version or not sub.subnet_of(net) or sub.prefixlen <= net.prefixlen:  # type: ignore[arg-type]
                        out.append(_diag(np, f"{ptr}/except/{j}", f"{ex} is not inside {block.get('cidr')}",
                                         "each except must be a smaller CIDR inside cidr, as Kubernetes requires"))
    return out


def _check_cluster(c: Object) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    nets = {}
    for field in ("podCIDR", "serviceCIDR"):
        value = c.spec.get(field)
        if isinstance(value, str):
            try:
                nets[field] = ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                out.append(
                    _diag(
                        c,
                        f"/spec/{field}",
                        f"{value!r} is not a valid CIDR: {exc}",
                        "a network such as 10.244.0.0/16 (host bits zero)",
                    )
                )
    if len(nets) == 2 and nets["podCIDR"].overlaps(nets["serviceCIDR"]):
        out.append(
            _diag(
                c,
                "/spec/serviceCIDR",
                "serviceCIDR overlaps podCIDR",
                "pick networks that do not overlap, e.g. 10.244.0.0/16 and 10.96.0.0/12",
            )
        )
    return out


_POOL_ANNOTATIONS = ("gitorch.dev/address-pool", "metallb.universe.tf/address-pool")


def _check_load_balancers(services: list[Object], cluster: Object | None) -> list[Diagnostic]:
    """LoadBalancer Services against the Cluster's address pools: a pool to take from, a
    requested address inside it, no address asked for twice; pools well formed."""
    out: list[Diagnostic] = []
    pools: dict[str, list[tuple[int, int]]] = {}
    raw = _seq(_map(cluster.spec.get("loadBalancer")).get("pools")) if cluster is not None else []
    for i, pool in enumerate(raw):
        if not isinstance(pool, dict):
            continue
        name = str(pool.get("name"))
        if name in pools and cluster is not None:
            out.append(_diag(cluster, f"/spec/loadBalancer/pools/{i}/name", f"pool {name!r} is declared twice"))
        ranges = []
        for j, text in enumerate(_seq(pool.get("addresses"))):
            first, _, last = str(text).partition("-")
            try:
                if last:
                    lo, hi = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
                    if lo > hi:
                        raise ValueError("the first address is after the last")
                else:
                    net = ipaddress.IPv4Network(first, strict=True)
                    lo, hi = int(net.network_address), int(net.broadcast_address)
                ranges.append((lo, hi))
            except ValueError as exc:
                assert cluster is not None
                out.append(_diag(cluster, f"/spec/loadBalancer/pools/{i}/addresses/{j}", f"{text!r}: {exc}",
                                 "a CIDR such as 10.0.0.200/29 (host bits zero) or a range like 10.0.0.200-10.0.0.210"))
        pools[name] = ranges
    held: dict[int, Object] = {}
    for svc in services:
        named = next((svc.annotations[a] for a in _POOL_ANNOTATIONS if svc.annotations.get(a)), None)
        if not pools:
            out.append(_diag(svc, "/spec/type", "no LoadBalancer address pool: this Service would never get an address",
                             "add spec.loadBalancer.pools to the Cluster, e.g. "
                             "[{name: default, addresses: [10.0.0.200-10.0.0.220]}]"))
            continue
        if named is not None and named not in pools:
            out.append(_diag(svc, "/metadata/annotations", f"address pool {named!r} does not exist",
                             suggest(named, pools) or f"pools: {', '.join(pools)}"))
            continue
        raw_ip = svc.spec.get("loadBalancerIP")
        if not raw_ip:
            continue
        try:
            address = int(ipaddress.IPv4Address(str(raw_ip)))
        except ValueError:
            continue  # the schema said so
        allowed = [r for name, rs in pools.items() if named in (None, name) for r in rs]
        if not any(lo <= address <= hi for lo, hi in allowed):
            out.append(_diag(svc, "/spec/loadBalancerIP", f"{raw_ip} is in no address pool"
                             + (f" {named!r}" if named else ""), "pick an address of a Cluster loadBalancer pool"))
        elif address in held:
            other = held[address]
            where = other.document.position("/spec/loadBalancerIP")
            out.append(_diag(svc, "/spec/loadBalancerIP", f"{raw_ip} is also asked for by {other.key}",
                             f"see {other.path}:{where.line}:{where.column}; give each Service its own address"))
        else:
            held[address] = svc
    return out


TLS_SECRET = "kubernetes.io/tls"
SYSTEM_NAMESPACE = "gitorch-system"  # the agent's own pods (nodes/agent.py): the ingress proxy


def secret_value(secret: Object, key: str) -> bytes | None:
    """A Secret's value (from data, base64, or stringData), or None when it has none."""
    raw = _map(secret.body.get("stringData")).get(key)
    if raw is not None:
        return str(raw).encode()
    raw = _map(secret.body.get("data")).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _check_rollout_budget(obj: Object) -> list[Diagnostic]:
    """A rolling update that may neither add a pod nor take one away could never progress:
    Kubernetes refuses maxSurge and maxUnavailable both 0, in these words."""
    field = "strategy" if obj.key.kind == "Deployment" else "updateStrategy"
    ru = _map(_map(obj.spec.get(field)).get("rollingUpdate"))
    defaults = ("25%", "25%") if obj.key.kind == "Deployment" else (0, 1)
    surge, unavailable = ru.get("maxSurge", defaults[0]), ru.get("maxUnavailable", defaults[1])

    def zero(v: Any) -> bool:
        return v == 0 or (isinstance(v, str) and v.rstrip("%") in ("0", ""))

    if not (zero(surge) and zero(unavailable)):
        return []
    return [_diag(obj, f"/spec/{field}/rollingUpdate/maxUnavailable", "may not be 0 when `maxSurge` is 0",
                  "allow one pod more (maxSurge: 1) or one unavailable (maxUnavailable: 1)")]


def _check_tls_secret(secret: Object) -> list[Diagnostic]:
    """A kubernetes.io/tls Secret holds a certificate chain and its private key; the message
    never holds the key (certificates.tls_pair_problem quotes none of it)."""
    cert, key = secret_value(secret, "tls.crt"), secret_value(secret, "tls.key")
    where = "/stringData" if "stringData" in secret.body else "/data"
    if cert is None or key is None:
        missing = " and ".join(k for k, v in (("tls.crt", cert), ("tls.key", key)) if v is None)
        return [_diag(secret, where if where[1:] in secret.body else "/type", f"a {TLS_SECRET} Secret needs {missing}",
                      "add tls.crt (PEM certificates) and tls.key (its PEM private key)")]
    if getattr(secret.document, "encrypted", False) and b"-----BEGIN" not in cert:
        return []  # SOPS-encrypted and not opened here (no key): checked where it is decrypted
    from gitorch.source.certificates import tls_pair_problem  # cryptography's x509: only for TLS Secrets

    problem = tls_pair_problem(cert, key)
    if problem is None:
        return []
    return [_diag(secret, where, f"Secret {secret.key.namespace}/{secret.key.name}: {problem}",
                  "put a PEM certificate chain in tls.crt and its unencrypted private key in tls.key "
                  "(e.g. kubectl create secret tls NAME --cert=FILE --key=FILE --dry-run=client -o yaml)")]


def _check_ingresses(
    ingresses: list[Object], objects: Mapping[ObjectKey, Object], invalid: Set[ObjectKey], cluster: Object | None
) -> list[Diagnostic]:
    """Ingresses: served by gitorch's proxy (a class, ingress nodes), backends that exist, TLS
    Secrets of the right type, and no host and path claimed by two Ingresses."""
    out: list[Diagnostic] = []
    classes = ingress_classes(
        (k.name, o.body) for k, o in objects.items() if k.kind == "IngressClass" and k not in invalid
    )
    services = {(k.namespace, k.name): _seq(o.spec.get("ports")) for k, o in objects.items() if k.kind == "Service"}
    served: list[Object] = []
    for ing in ingresses:
        ns, name = ing.key.namespace, ing.key.name
        problem = serving_problem(ing.spec, ing.annotations, classes)
        if problem is not None:
            ptr = "/spec/ingressClassName" if ing.spec.get("ingressClassName") else "/metadata/name"
            out.append(_diag(ing, ptr, f"gitorch's proxy does not serve this Ingress: {problem}",
                             f"name an IngressClass whose controller is {CONTROLLER!r}", warning=True))
            continue
        served.append(ing)
        if cluster is None or not isinstance(cluster.spec.get("ingress"), dict):
            out.append(_diag(ing, "/metadata/name", "no ingress nodes: this Ingress would never be served",
                             "add spec.ingress.nodeSelector to the Cluster (e.g. {gitorch.dev/ingress: \"true\"}) "
                             "and that label to the Nodes that should run the proxy"))
        mine = routes(ns, name, ing.spec)
        for r, why in missing_backends(services, mine):
            out.append(_diag(ing, f"{r.where}/backend/service", why, "name an existing Service of this namespace "
                             "and one of its ports (by name or by number)"))
        fallback = default_backend(ns, ing.spec)
        if fallback is not None:
            probe = Route("", "/", "Prefix", fallback, f"{ns}/{name}", "/spec/defaultBackend")
            for _, why in missing_backends(services, [probe]):
                out.append(_diag(ing, "/spec/defaultBackend/service", why, "name an existing Service of this "
                                 "namespace and one of its ports (by name or by number)"))
        for i, tls in enumerate(_seq(ing.spec.get("tls"))):
            secret_name = _map(tls).get("secretName")
            if not isinstance(secret_name, str):
                continue
            secret = objects.get(ObjectKey("Secret", ns, secret_name))
            ptr = f"/spec/tls/{i}/secretName"
            if secret is None:
                out.append(_diag(ing, ptr, f"Secret {ns}/{secret_name} does not exist",
                                 f"add a {TLS_SECRET} Secret with tls.crt and tls.key"))
            elif secret.body.get("type") != TLS_SECRET:
                out.append(_diag(ing, ptr, f"Secret {ns}/{secret_name} is of type "
                                 f"{secret.body.get('type') or 'Opaque'!r}, not {TLS_SECRET!r}",
                                 f"give it type: {TLS_SECRET} with tls.crt and tls.key"))
    by_name = {f"{o.key.namespace}/{o.key.name}": o for o in served}
    for ingress, why in defaults((o.key.namespace, o.key.name, o.spec) for o in served).unused:
        out.append(_diag(by_name[ingress], "/spec/defaultBackend", f"this defaultBackend has no effect: {why}",
                         "remove it, or give this Ingress a host of its own in its rules (it then answers that "
                         "host's unmatched paths)", warning=True))
    every = [r for o in served for r in routes(o.key.namespace, o.key.name, o.spec)]
    for first, later in conflicts(every):
        a, b = by_name[first.ingress], by_name[later.ingress]
        pos = a.document.position(first.where)
        out.append(_diag(b, later.where, f"host {later.host or '*'} path {later.path} ({later.path_type}) is also "
                         f"claimed by Ingress {first.ingress} ({a.path}:{pos.line}:{pos.column})",
                         "give each host and path one Ingress: remove or change one of the two"))
    return out


def _check_nodes(nodes: list[Object]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: dict[tuple[str, int], Object] = {}
    for n in nodes:
        addr = n.spec.get("address")
        port = n.spec.get("port", 22)
        if not isinstance(addr, str) or not isinstance(port, int):
            continue
        first = seen.get((addr, port))
        if first is not None:
            out.append(
                _diag(
                    n,
                    "/spec/address",
                    f"address {addr}:{port} is already used by Node {first.key.name}",
                    "each Node needs its own address (or port)",
                )
            )
        else:
            seen[(addr, port)] = n
    return out


def _check_selector(obj: Object, selector: dict[str, Any], labels: dict[str, str], ptr: str) -> list[Diagnostic]:
    if selectors.matches(selector, labels):
        return []
    return [
        _diag(
            obj,
            ptr,
            f"selector {selectors.describe(selector)} does not match the template labels "
            f"{', '.join(f'{k}={v}' for k, v in sorted(labels.items())) or '(none)'}",
            "make spec.template.metadata.labels include every label the selector asks for",
        )
    ]


def _check_workload(obj: Object, reads: _Reads) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    found = pod_template(obj)
    if found is None:
        return out
    tptr, tmpl = found
    labels = _map(tmpl.get("metadata")).get("labels") or {}
    selector = obj.spec.get("selector")
    if isinstance(selector, dict) and isinstance(labels, dict):
        out.extend(_check_selector(obj, selector, labels, "/spec/selector"))
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            out.append(
                _diag(
                    obj,
                    "/spec/selector",
                    "an empty selector would select every pod in the namespace",
                    "select on the template's labels, e.g. matchLabels: {app: NAME}",
                )
            )
    pod = _map(tmpl.get("spec"))
    ns = obj.key.namespace
    # Volumes: every mount names a volume; every referenced object exists.
    volume_names: set[str] = set()
    for i, vol in enumerate(_seq(pod.get("volumes"))):
        if not isinstance(vol, dict):
            continue
        vptr = f"{tptr}/spec/volumes/{i}"
        if vol.get("name") in volume_names:
            out.append(_diag(obj, f"{vptr}/name", f"duplicate volume name {vol.get('name')!r}"))
        volume_names.add(str(vol.get("name")))
        if isinstance(vol.get("configMap"), dict):
            out.extend(
                _ref(
                    obj,
                    reads,
                    "ConfigMap",
                    ns,
                    vol["configMap"].get("name"),
                    f"{vptr}/configMap/name",
                    optional=bool(vol["configMap"].get("optional")),
                )
            )
        if isinstance(vol.get("secret"), dict):
            out.extend(
                _ref(
                    obj,
                    reads,
                    "Secret",
                    ns,
                    vol["secret"].get("secretName"),
                    f"{vptr}/secret/secretName",
                    optional=bool(vol["secret"].get("optional")),
                )
            )
        if isinstance(vol.get("persistentVolumeClaim"), dict):
            out.extend(
                _ref(
                    obj,
                    reads,
                    "PersistentVolumeClaim",
                    ns,
                    vol["persistentVolumeClaim"].get("claimName"),
                    f"{vptr}/persistentVolumeClaim/claimName",
                )
            )
    if obj.key.kind == "StatefulSet":
        for t in _seq(obj.spec.get("volumeClaimTemplates")):
            if isinstance(t, dict):
                volume_names.add(str(_map(t.get("metadata")).get("name")))
        service = obj.spec.get("serviceName")
        if isinstance(service, str) and reads.get(ObjectKey("Service", ns, service)) is None:
            out.append(
                _diag(
                    obj,
                    "/spec/serviceName",
                    f"Service {ns}/{service} does not exist",
                    "add a headless Service (clusterIP: None) with that name so pods get DNS names",
                    warning=True,
                )
            )
    container_names: set[str] = set()
    for cptr, c in _containers(tptr, tmpl):
        cname = c.get("name")
        if cname in container_names:
            out.append(_diag(obj, f"{cptr}/name", f"duplicate container name {cname!r}"))
        container_names.add(str(cname))
        for j, m in enumerate(_seq(c.get("volumeMounts"))):
            if isinstance(m, dict) and m.get("name") not in volume_names:
                out.append(
                    _diag(
                        obj,
                        f"{cptr}/volumeMounts/{j}/name",
                        f"volume {m.get('name')!r} is not defined",
                        suggest(str(m.get("name")), volume_names) or "add it under spec.volumes",
                    )
                )
        for j, env in enumerate(_seq(c.get("env"))):
            source = _map(_map(env).get("valueFrom"))
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = source.get(field)
                if isinstance(ref, dict):
                    out.extend(
                        _ref(
                            obj,
                            reads,
                            kind,
                            ns,
                            ref.get("name"),
                            f"{cptr}/env/{j}/valueFrom/{field}/name",
                            optional=bool(ref.get("optional")),
                            key=ref.get("key"),
                            key_ptr=f"{cptr}/env/{j}/valueFrom/{field}/key",
                        )
                    )
        for j, src in enumerate(_seq(c.get("envFrom"))):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = _map(src).get(field)
                if isinstance(ref, dict):
                    out.extend(
                        _ref(
                            obj,
                            reads,
                            kind,
                            ns,
                            ref.get("name"),
                            f"{cptr}/envFrom/{j}/{field}/name",
                            optional=bool(ref.get("optional")),
                        )
                    )
        out.extend(_check_resources(obj, cptr, c))
        ports = [str(p["name"]) for p in _seq(c.get("ports")) if isinstance(p, dict) and p.get("name")]
        for dup in sorted({p for p in ports if ports.count(p) > 1}):
            out.append(_diag(obj, f"{cptr}/ports", f"duplicate port name {dup!r} in container {cname!r}"))
    out.extend(_check_security(obj, reads, tptr, pod))
    node_selector = pod.get("nodeSelector")
    if (
        isinstance(node_selector, dict)
        and node_selector
        and (nodes := reads.nodes())
        and not any(selectors.map_matches(node_selector, _node_labels(n, node_selector)) for n in nodes)
    ):
        out.append(
            _diag(
                obj,
                f"{tptr}/spec/nodeSelector",
                f"no Node has the labels {', '.join(f'{k}={v}' for k, v in sorted(node_selector.items()))}",
                "its pods will stay Pending until a Node has them",
                warning=True,
            )
        )
    return out


def _check_security(obj: Object, reads: _Reads, tptr: str, pod: dict[str, Any]) -> list[Diagnostic]:
    """The pod's ServiceAccount exists, its securityContext is coherent (the API server's own
    rules), and it passes its Namespace's Pod Security Standard (podsecurity.py)."""
    out: list[Diagnostic] = []
    ns = obj.key.namespace
    account = pod.get("serviceAccountName")
    if isinstance(account, str) and account != "default":
        out.extend(_ref(obj, reads, "ServiceAccount", ns, account, f"{tptr}/spec/serviceAccountName"))
    for cptr, c in _containers(tptr, {"spec": pod}):
        sc = _map(c.get("securityContext"))
        for which in ("add", "drop"):
            for i, name in enumerate(_seq(_map(sc.get("capabilities")).get(which))):
                if isinstance(name, str) and not podsecurity.known_capability(name):
                    out.append(_diag(obj, f"{cptr}/securityContext/capabilities/{which}/{i}",
                                     f"unknown capability {name!r}", _capability_hint(name)))
        if sc.get("allowPrivilegeEscalation") is not False:
            continue
        if sc.get("privileged") is True:
            out.append(_diag(obj, f"{cptr}/securityContext",
                             "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                             "a privileged container can always escalate: drop one of the two"))
        if "SYS_ADMIN" in (_map(sc.get("capabilities")).get("add") or []):
            out.append(_diag(obj, f"{cptr}/securityContext",
                             "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
                             "CAP_SYS_ADMIN allows escalation: drop one of the two"))
    namespace = reads.get(ObjectKey("Namespace", "", ns))
    labels = namespace.labels if namespace is not None else {}
    level = podsecurity.namespace_level(labels)
    enforced = podsecurity.check_pod(level, pod)
    for v in enforced:
        out.append(_diag(obj, f"{tptr}/spec", v.message(level),
                         f"check {v.check} of the {level} Pod Security Standard, which namespace {ns!r} enforces "
                         f"({podsecurity.ENFORCE_LABEL}={level})"))
    warn = podsecurity.namespace_level(labels, podsecurity.WARN_LABEL)
    seen = {v.check for v in enforced}
    for v in podsecurity.check_pod(warn, pod):
        if v.check not in seen:  # as Kubernetes: what is enforced is not warned about too
            out.append(_diag(obj, f"{tptr}/spec", v.message(warn, warning=True),
                             f"check {v.check} of the {warn} Pod Security Standard, which namespace {ns!r} warns about "
                             f"({podsecurity.WARN_LABEL}={warn})", warning=True))
    return out


_WELL_KNOWN_OS = "kubernetes.io/os"
_WELL_KNOWN_ARCH = "kubernetes.io/arch"
_GOARCHES = frozenset({"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "mips64le", "loong64"})


def _node_labels(node: Object, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A Node's labels as its agent will complete them: every Node carries kubernetes.io/hostname,
    kubernetes.io/os (always linux) and kubernetes.io/arch, which only the agent's facts know, so
    any real architecture asked for is taken as present."""
    labels: dict[str, Any] = {"kubernetes.io/hostname": node.key.name, _WELL_KNOWN_OS: "linux"}
    arch = wanted.get(_WELL_KNOWN_ARCH)
    if isinstance(arch, str) and arch in _GOARCHES:
        labels[_WELL_KNOWN_ARCH] = arch
    return {**labels, **node.labels}


def _check_resources(obj: Object, cptr: str, c: dict[str, Any]) -> list[Diagnostic]:
    res = _map(c.get("resources"))
    requests, limits = _map(res.get("requests")), _map(res.get("limits"))
    out: list[Diagnostic] = []
    for name, limit in limits.items():
        if name not in requests:
            continue
        try:
            if parse_quantity(requests[name]) > parse_quantity(limit):
                out.append(
                    _diag(
                        obj,
                        f"{cptr}/resources/requests/{escape_token(name)}",
                        f"request {requests[name]} is above the limit {limit}",
                        "a request must be less than or equal to its limit",
                    )
                )
        except QuantityError:
            pass  # the schema already reported it
    return out


def _ref(
    obj: Object,
    reads: _Reads,
    kind: str,
    ns: str,
    name: Any,
    ptr: str,
    *,
    optional: bool = False,
    key: Any = None,
    key_ptr: str = "",
) -> list[Diagnostic]:
    if not isinstance(name, str) or optional:
        return []
    target = reads.get(ObjectKey(kind, ns, name))
    if target is None:
        fix = suggest(name, reads.names(kind, ns)) or f"add a {kind} named {name!r} in namespace {ns!r}"
        return [_diag(obj, ptr, f"{kind} {ns}/{name} does not exist", fix)]
    if isinstance(key, str):
        keys: set[str] = set()
        for field in ("data", "stringData", "binaryData"):
            value = target.body.get(field)
            if isinstance(value, dict):
                keys.update(value)
        if key not in keys:
            fix = suggest(key, keys) or f"keys in {kind} {name}: {', '.join(sorted(keys)) or '(none)'}"
            return [_diag(obj, key_ptr, f"{kind} {ns}/{name} has no key {key!r}", fix)]
    return []


def _check_service(svc: Object, reads: _Reads) -> list[Diagnostic]:
    spec = svc.spec
    if spec.get("type") == "ExternalName":
        return []
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not selector:
        for name in reads.names("Cluster", ""):
            cluster = reads.get(ObjectKey("Cluster", "", name))
            named = _map(_map(cluster.spec.get("ingress") if cluster else None).get("service"))
            if (named.get("namespace"), named.get("name")) == (svc.key.namespace, svc.key.name):
                return []  # the Cluster's ingress Service: its endpoints are the ingress nodes
        return [
            _diag(
                svc,
                "/spec",
                "this Service has no selector, so it selects no pods",
                "add spec.selector matching a workload's pod labels",
                warning=True,
                key=True,
            )
        ]
    first_key, first_value = next(iter(selector.items()))
    candidates = reads.pod_labels(svc.key.namespace, first_key, str(first_value))
    if any(selectors.map_matches(selector, labels) for labels in candidates):
        return []
    return [
        _diag(
            svc,
            "/spec/selector",
            f"selector {', '.join(f'{k}={v}' for k, v in sorted(selector.items()))} matches no workload's pods "
            f"in namespace {svc.key.namespace!r}",
            "check the labels in the workload's spec.template.metadata.labels",
            warning=True,
        )
    ]
