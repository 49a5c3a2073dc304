"""Pod specs: a workload's pod template resolved into what the node agent runs.

Purely computational, no side effects. ConfigMap and Secret values are resolved here (env,
envFrom, files); the result carries secret values, so it goes only to the node agent,
and `masked()` gives the copy that may be stored or shown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from gitorch.model import volumes
from gitorch.model.objects import HIDDEN, DesiredState, Object, ObjectKey
from gitorch.model.quantities import QuantityError, cpu_millis, to_bytes

VOLUME_ROOT = volumes.VOLUME_ROOT


def short_hash(value: Any, n: int = 10) -> str:
    """A stable hex digest of a JSON value."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:n]


def _config_values(obj: Object | None) -> dict[str, str]:
    """A ConfigMap's or Secret's keys and decoded values."""
    if obj is None:
        return {}
    out: dict[str, str] = {}
    for k, v in (obj.body.get("data") or {}).items():
        if obj.key.kind == "Secret":
            try:
                out[k] = base64.b64decode(str(v), validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                out[k] = ""
        else:
            out[k] = str(v)
    for k, v in (obj.body.get("binaryData") or {}).items():
        try:
            out[k] = base64.b64decode(str(v)).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            out[k] = ""
    for k, v in (obj.body.get("stringData") or {}).items():
        out[k] = str(v)
    return out


def static_bindings(state: DesiredState) -> Mapping[ObjectKey, volumes.Binding]:
    """Claims bound to the repository's PersistentVolumes (model/volumes.py), once per state."""
    found = state.memo.get("static_bindings")
    if found is None:
        kinds = ("PersistentVolume", "PersistentVolumeClaim", "StorageClass")
        found = state.memo["static_bindings"] = volumes.static_bindings(
            o for k in kinds for o in state.of_kind(k))
    return found


class _Resolver:
    def __init__(self, state: DesiredState, namespace: str) -> None:
        self.state = state
        self.namespace = namespace

    def get(self, kind: str, name: str) -> Object | None:
        return self.state.objects.get(ObjectKey(kind, self.namespace, name))


def _port_number(port: Any, container_ports: Mapping[str, int]) -> Any:
    if isinstance(port, str) and not port.isdigit():
        return container_ports.get(port, port)
    return int(port) if isinstance(port, str) else port


def _probe(probe: Any, container_ports: Mapping[str, int]) -> dict[str, Any] | None:
    if not isinstance(probe, dict):
        return None
    out = copy.deepcopy(probe)
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if isinstance(out.get(handler), dict) and "port" in out[handler]:
            out[handler]["port"] = _port_number(out[handler]["port"], container_ports)
    return out


def _lifecycle(container: Mapping[str, Any], ports: Mapping[str, int]) -> dict[str, Any]:
    """The postStart and preStop hooks, only when set (containers without keep their hash)."""
    hooks = container.get("lifecycle") or {}
    return {k: _probe(hooks[k], ports) for k in ("postStart", "preStop") if isinstance(hooks.get(k), dict)}


def _resources(container: Mapping[str, Any]) -> dict[str, int]:
    limits = (container.get("resources") or {}).get("limits") or {}
    out: dict[str, int] = {}
    try:
        if "cpu" in limits:
            out["cpuMillis"] = cpu_millis(limits["cpu"])
        if "memory" in limits:
            out["memoryBytes"] = to_bytes(limits["memory"])
    except QuantityError:
        pass  # validation reported it; the pod runs without that limit
    return out


def _env(container: Mapping[str, Any], r: _Resolver, field_refs: Mapping[str, str]) -> list[dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {}
    for src in container.get("envFrom") or []:
        prefix = str(src.get("prefix") or "")
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = src.get(field)
            if isinstance(ref, dict):
                for k, v in _config_values(r.get(kind, str(ref.get("name")))).items():
                    env[prefix + k] = {"name": prefix + k, "value": v, "secret": kind == "Secret"}
    for e in container.get("env") or []:
        name = str(e.get("name"))
        if "value" in e:
            env[name] = {"name": name, "value": str(e["value"])}
            continue
        source = e.get("valueFrom") or {}
        for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            ref = source.get(field)
            if isinstance(ref, dict):
                values = _config_values(r.get(kind, str(ref.get("name"))))
                if ref.get("key") in values:
                    env[name] = {"name": name, "value": values[ref["key"]], "secret": kind == "Secret"}
        ref = source.get("fieldRef")
        if isinstance(ref, dict) and ref.get("fieldPath") in field_refs:
            env[name] = {"name": name, "value": field_refs[ref["fieldPath"]]}
    return list(env.values())


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable's value, `$$` a literal `$`, and an
    undefined reference left as written."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else values.get(m.group(1), m.group(0)), text)


def _mount(m: Mapping[str, Any], env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {"name": m.get("name"), "mountPath": m.get("mountPath"), "readOnly": bool(m.get("readOnly"))}
    if m.get("subPath"):  # only when set: pods without one keep their hash
        out["subPath"] = str(m["subPath"])
    elif m.get("subPathExpr"):  # expanded here; the node checks the result like any subPath
        values = {str(e["name"]): str(e["value"]) for e in env or () if not e.get("secret")}
        out["subPath"] = expand(str(m["subPathExpr"]), values)
    return out


def _container(c: Mapping[str, Any], r: _Resolver, field_refs: Mapping[str, str]) -> dict[str, Any]:
    ports = {str(p["name"]): int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name")}
    env = _env(c, r, field_refs)
    return {
        "name": c.get("name"),
        "image": c.get("image"),
        "command": list(c.get("command") or []),
        "args": list(c.get("args") or []),
        "env": env,
        "workingDir": c.get("workingDir"),
        "resources": _resources(c),
        "livenessProbe": _probe(c.get("livenessProbe"), ports),
        "readinessProbe": _probe(c.get("readinessProbe"), ports),
        "startupProbe": _probe(c.get("startupProbe"), ports),
        "volumeMounts": [_mount(m, env) for m in c.get("volumeMounts") or []],
        **_lifecycle(c, ports),
        # Only when set: pods without one keep their hash.
        **({"imagePullPolicy": c["imagePullPolicy"]} if c.get("imagePullPolicy") else {}),
        **({"restartPolicy": c["restartPolicy"]} if c.get("restartPolicy") else {}),  # a sidecar
        "ports": [
            {"name": p.get("name"), "containerPort": p.get("containerPort"), "protocol": p.get("protocol", "TCP")}
            for p in c.get("ports") or []
        ],
    }


DEFAULT_ACCOUNT = "default"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _security(pod: Mapping[str, Any], c: Mapping[str, Any], account: str) -> dict[str, Any] | None:
    """One container's effective securityContext (its own over the pod's). `account` names the
    ServiceAccount whose uid and gid the agent uses when no runAsUser is given: for a process
    container always (the `default` account too: root only when asked for, runAsUser 0), for an
    image container when the account is not `default` or runAsNonRoot asks (otherwise the
    image's USER, as Kubernetes runs it). None: an image container with neither securityContext
    on the `default` account runs as the runtime's defaults."""
    psc = _dict(pod.get("securityContext"))
    csc = _dict(c.get("securityContext"))
    image = bool(c.get("image"))
    if not psc and not csc and account == DEFAULT_ACCOUNT and image:
        return None
    out: dict[str, Any] = {}
    for field in ("runAsUser", "runAsGroup", "runAsNonRoot"):
        value = csc.get(field, psc.get(field))
        if value is not None:
            out[field] = value
    if "runAsUser" not in out and (account != DEFAULT_ACCOUNT or out.get("runAsNonRoot") or not image):
        out["account"] = account
    groups = {int(g) for g in psc.get("supplementalGroups") or []}
    if psc.get("fsGroup") is not None:
        groups.add(int(psc["fsGroup"]))
    out["groups"] = sorted(groups)
    out["readOnlyRootFilesystem"] = bool(csc.get("readOnlyRootFilesystem"))
    out["privileged"] = bool(csc.get("privileged"))
    # allowPrivilegeEscalation false is the kernel's no_new_privs (as runc sets it).
    out["noNewPrivs"] = csc.get("allowPrivilegeEscalation") is False
    caps = _dict(csc.get("capabilities"))
    out["capabilities"] = {"add": [str(a) for a in caps.get("add") or []],
                           "drop": [str(d) for d in caps.get("drop") or []]}
    profile = csc.get("seccompProfile", psc.get("seccompProfile"))
    if isinstance(profile, dict) and profile.get("type"):
        out["seccomp"] = str(profile["type"])
    return out


def _volume_owner(pod: Mapping[str, Any], account: str, containers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Who owns the pod's emptyDir, ConfigMap, Secret and claim volumes: the pod's fsGroup (with
    setgid folders, as the kubelet does), else the identity of its first container that has
    one; None when every container runs as its image's user (the volumes stay root's)."""
    psc = _dict(pod.get("securityContext"))
    first = next((c["security"] for c in containers if c.get("security")), None)
    if first is None:
        return None
    owner = {k: first[k] for k in ("runAsUser", "runAsGroup", "account") if k in first}
    if psc.get("fsGroup") is not None:
        owner["fsGroup"] = int(psc["fsGroup"])
    return owner


def _volumes(spec: Mapping[str, Any], r: _Resolver, claims: Mapping[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in spec.get("volumes") or []:
        name = v.get("name")
        if isinstance(v.get("configMap"), dict) or isinstance(v.get("secret"), dict):
            is_secret = isinstance(v.get("secret"), dict)
            src = v["secret"] if is_secret else v["configMap"]
            obj = r.get("Secret" if is_secret else "ConfigMap", str(src.get("secretName" if is_secret else "name")))
            values = _config_values(obj)
            items = src.get("items")
            files = {str(i.get("path")): values.get(str(i.get("key")), "") for i in items} if items else dict(values)
            volume: dict[str, Any] = {"name": name, "files": files, "secret": is_secret}
            # Permission bits, only when set (pods without them keep their hash): defaultMode, and
            # an item's own mode.
            if isinstance(src.get("defaultMode"), int):
                volume["defaultMode"] = src["defaultMode"]
            modes = {str(i.get("path")): i["mode"] for i in items or [] if isinstance(i.get("mode"), int)}
            if modes:
                volume["modes"] = modes
            out.append(volume)
        elif isinstance(v.get("persistentVolumeClaim"), dict):
            claim = str(v["persistentVolumeClaim"].get("claimName"))
            bound = static_bindings(r.state).get(ObjectKey("PersistentVolumeClaim", r.namespace, claim))
            path = bound.path if bound else volumes.provisioned_path(r.namespace, claim)
            claimed: dict[str, Any] = {"name": name, "hostPath": path}
            pv = r.state.objects.get(ObjectKey("PersistentVolume", "", bound.volume)) if bound else None
            kind = str(_dict(pv.spec.get("hostPath")).get("type") or "") if pv is not None else ""
            if kind:  # a PersistentVolume's hostPath.type, checked on the node as a pod's own
                claimed["hostPathType"] = kind
            out.append(claimed)
        elif isinstance(v.get("hostPath"), dict):
            host: dict[str, Any] = {"name": name, "hostPath": v["hostPath"].get("path")}
            if v["hostPath"].get("type"):  # only when set: other pods keep their hash
                host["hostPathType"] = str(v["hostPath"]["type"])
            out.append(host)
        else:
            empty: dict[str, Any] = {"name": name, "emptyDir": True}
            source = v.get("emptyDir") if isinstance(v.get("emptyDir"), dict) else {}
            # Only when set: other pods keep their hash. In memory, sizeLimit is the tmpfs's size;
            # on disk the node measures the folder and evicts the pod past it, as the kubelet does.
            if source.get("medium") == "Memory":
                empty["medium"] = "Memory"
            if source.get("sizeLimit") is not None:
                with contextlib.suppress(QuantityError):  # validation reported it
                    empty["sizeLimit"] = to_bytes(source["sizeLimit"])
                    if source.get("medium") != "Memory":
                        empty["sizeLimitText"] = str(source["sizeLimit"])
            out.append(empty)
    for name, path in claims.items():
        out.append({"name": name, "hostPath": path})
    return out


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def pod_spec(
    state: DesiredState,
    owner: Object,
    template: Mapping[str, Any],
    name: str,
    *,
    node: str = "",
    claims: Mapping[str, str] | None = None,
    hostname: str | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """The agent's PodSpec for one pod; `hash` covers the template and every resolved
    value, so a changed ConfigMap or Secret restarts the pods that use it. `index` is an
    Indexed Job pod's completion index, given to its containers as Kubernetes does."""
    ns = owner.key.namespace
    spec = template.get("spec") or {}
    r = _Resolver(state, ns)
    field_refs = {
        "metadata.name": name,
        "metadata.namespace": ns,
        "spec.nodeName": node,
        "spec.serviceAccountName": str(spec.get("serviceAccountName") or DEFAULT_ACCOUNT),
    }
    account = field_refs["spec.serviceAccountName"]
    if index is not None:
        for where in ("annotations", "labels"):
            field_refs[f"metadata.{where}['{COMPLETION_INDEX}']"] = str(index)
    pod: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "restartPolicy": spec.get("restartPolicy", "Always"),
        "terminationGracePeriodSeconds": spec.get("terminationGracePeriodSeconds", 30),
        "hostNetwork": bool(spec.get("hostNetwork")),
        "hostname": hostname or spec.get("hostname") or name,
        "containers": [_container(c, r, field_refs) for c in spec.get("containers") or []],
        "initContainers": [_container(c, r, field_refs) for c in spec.get("initContainers") or []],
        "volumes": _volumes(spec, r, claims or {}),
    }
    # A claim mounted readOnly (persistentVolumeClaim.readOnly) is read-only in every container.
    read_only = {v.get("name") for v in spec.get("volumes") or []
                 if isinstance(v.get("persistentVolumeClaim"), dict) and v["persistentVolumeClaim"].get("readOnly")}
    for c in pod["containers"] + pod["initContainers"]:
        for m in c["volumeMounts"]:
            if m["name"] in read_only:
                m["readOnly"] = True
    if index is not None:
        # First, so a container's own env of the same name wins, as the API server's defaulting.
        for c in pod["containers"] + pod["initContainers"]:
            if not any(e["name"] == "JOB_COMPLETION_INDEX" for e in c["env"]):
                c["env"] = [{"name": "JOB_COMPLETION_INDEX", "value": str(index)}, *c["env"]]
    # Only when set, so pods that leave them out keep their hash (and are not restarted).
    if spec.get("dnsPolicy"):
        pod["dnsPolicy"] = str(spec["dnsPolicy"])
    if spec.get("dnsConfig"):
        pod["dnsConfig"] = copy.deepcopy(spec["dnsConfig"])
    for group, raw in (("containers", spec.get("containers")), ("initContainers", spec.get("initContainers"))):
        for c, source in zip(pod[group], raw or [], strict=False):
            security = _security(spec, source, account)
            if security is not None:
                c["security"] = security
    volume_owner = _volume_owner(spec, account, pod["initContainers"] + pod["containers"])
    if volume_owner is not None:
        pod["volumeOwner"] = volume_owner
    pod["hash"] = short_hash({k: v for k, v in pod.items() if k not in ("name", "hostname")})
    _share_parts(state, pod)
    return pod


_SHARED = ("containers", "initContainers", "volumes", "volumeOwner", "dnsConfig")


def _share_parts(state: DesiredState, pod: dict[str, Any]) -> None:
    """The parts of `pod` that another pod of this state has equal (its replicas' containers
    and volumes, unless they name the pod) become that pod's very objects: specs are never
    changed once built, and thousands of replicas then keep one copy, not one each. Kept
    with the state, like the specs."""
    parts = state.memo.get("pod-spec-parts")
    if parts is None:
        parts = state.memo["pod-spec-parts"] = {}
    for k in _SHARED:
        value = pod.get(k)
        if value:
            try:
                text = json.dumps(value, sort_keys=True, separators=(",", ":"))
            except (TypeError, ValueError):
                continue
            pod[k] = parts.setdefault((k, text), value)


def cluster_dns(state: DesiredState, configured: str | None) -> dict[str, Any] | None:
    """The `dns` block of `sync`: the nameserver pods' resolv.conf names (`configured`,
    e.g. GITORCH_CLUSTER_DNS, else the Cluster's `spec.dns.address` when it is a concrete
    IP) and the cluster domain; None when no address is known. resolv.conf has no port:
    the cluster DNS must listen on port 53 for pods to use it."""
    import ipaddress

    from gitorch.model.addresses import parse_hostport

    clusters = state.of_kind("Cluster")
    cluster = clusters[0].spec if clusters else {}
    dns = cluster.get("dns") or {}
    for candidate in (configured, dns.get("address") if isinstance(dns, dict) else None):
        if not candidate:
            continue
        try:
            host, _ = parse_hostport(str(candidate))
        except ValueError:
            continue
        if ipaddress.ip_address(host).is_unspecified:
            continue
        return {
            "nameservers": [host],
            "domain": str(cluster.get("domain") or "cluster.local"),
            "options": ["ndots:5"],
        }
    return None


def revision(state: DesiredState, owner: Object, template: Mapping[str, Any]) -> str:
    """What every pod of one template shares: the template with its ConfigMap and Secret
    values resolved; a new revision is a rollout."""
    return str(pod_spec(state, owner, template, "_")["hash"])


def template_hash(template: Mapping[str, Any]) -> str:
    """Kubernetes' pod-template-hash: names a Deployment's pods, changes with the template."""
    return short_hash(template, 10)


def masked(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """A PodSpec without secret values, safe to store and print: a copy when it has some, the
    spec itself (read-only, as every built spec) when it has none (a pass that starts thousands
    of pods would otherwise copy every spec at its peak)."""
    if not _has_secret(pod):
        return pod
    out = copy.deepcopy(dict(pod))
    for group in ("containers", "initContainers"):
        for c in out.get(group) or []:
            for e in c.get("env") or []:
                if e.get("secret"):
                    e["value"] = HIDDEN
    for v in out.get("volumes") or []:
        if v.get("secret") and isinstance(v.get("files"), dict):
            v["files"] = dict.fromkeys(v["files"], HIDDEN)
    return out


def _has_secret(pod: Mapping[str, Any]) -> bool:
    """Whether masked() would hide anything in `pod`."""
    for group in ("containers", "initContainers"):
        for c in pod.get(group) or []:
            if any(e.get("secret") for e in c.get("env") or []):
                return True
    return any(v.get("secret") and isinstance(v.get("files"), dict) for v in pod.get("volumes") or [])
