"""Pod Security Standards: the checks of Kubernetes' pod-security-admission, per Namespace label
`pod-security.kubernetes.io/enforce` (privileged, baseline or restricted), run at validation.

Purely computational, no side effects. Check IDs, reasons and details are Kubernetes' own
(staging/src/k8s.io/pod-security-admission/policy), for the fields gitorch accepts; a check on
a field gitorch refuses anyway (hostPID, sysctls, AppArmor, SELinux, procMount, Windows) has
nothing to find. One addition: `runAsUser` (explicit root) is part of baseline too, because a
process-runtime pod's root is the node's root (see README, Security).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
WARN_LABEL = "pod-security.kubernetes.io/warn"  # the same checks, as warnings
AUDIT_LABEL = "pod-security.kubernetes.io/audit"  # no effect: gitorch keeps no audit log
LEVEL_LABELS = (ENFORCE_LABEL, WARN_LABEL, AUDIT_LABEL)
LEVELS = ("privileged", "baseline", "restricted")
LATEST = "latest"
_VERSION = re.compile(r"v1\.([0-9]|[1-9][0-9]*)")  # Kubernetes' api.ParseVersion


def version_label(level_label: str) -> str:
    """The label that pins a level label's version (`...enforce` -> `...enforce-version`)."""
    return f"{level_label}-version"


def version_problem(value: Any) -> str | None:
    """Why a `*-version` label's value is refused (Kubernetes' words), None when it is valid."""
    return None if value == LATEST or (isinstance(value, str) and _VERSION.fullmatch(value)) \
        else 'must be "latest" or "v1.x"'


# Linux's capabilities, by the names a securityContext uses (CAP_ less; `ALL` besides): the
# node agent's own list (nodes/agent.py CAPABILITIES, which refuses others at a container's start).
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)


def known_capability(name: str) -> bool:
    """A name capabilities.add or drop may hold: ALL or a capability, in any case and with or
    without CAP_, as podman, containerd and the agent read them (sock-shop's `drop: [all]`)."""
    name = name.upper().removeprefix("CAP_")
    return name == "ALL" or name in CAPABILITIES


# The capabilities baseline allows a container to add (Kubernetes' capabilities_allowed_1_0).
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})


@dataclass(frozen=True)
class Violation:
    """One failed check: Kubernetes' check ID, its forbidden reason and detail."""

    check: str
    reason: str
    detail: str

    def message(self, level: str, *, warning: bool = False) -> str:
        verb = "would violate" if warning else "violates"  # Kubernetes' words for a warning and a denial
        return f'{verb} PodSecurity "{level}:latest": {self.reason} ({self.detail})'


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for field in ("initContainers", "containers"):
        for c in pod.get(field) or []:
            if isinstance(c, dict):
                yield c


def _sc(c: dict[str, Any]) -> dict[str, Any]:
    return _map(c.get("securityContext"))


def _plural(one: str, many: str, n: int) -> str:
    return one if n == 1 else many


def _quote(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _containers_named(names: list[str]) -> str:
    return f"{_plural('container', 'containers', len(names))} {_quote(names)}"


def _privileged(pod: dict[str, Any]) -> Violation | None:
    bad = [str(c.get("name")) for c in _containers(pod) if _sc(c).get("privileged") is True]
    if bad:
        return Violation("privileged", "privileged",
                         f"{_containers_named(bad)} must not set securityContext.privileged=true")
    return None


def _host_namespaces(pod: dict[str, Any]) -> Violation | None:
    found = [f"{f}=true" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.get(f) is True]
    if found:
        return Violation("hostNamespaces", "host namespaces", ", ".join(found))
    return None


def _host_path_volumes(pod: dict[str, Any]) -> Violation | None:
    bad = [str(v.get("name")) for v in pod.get("volumes") or [] if isinstance(v, dict) and "hostPath" in v]
    if bad:
        return Violation("hostPathVolumes", "hostPath volumes",
                         f"{_plural('volume', 'volumes', len(bad))} {_quote(bad)}")
    return None


def _host_ports(pod: dict[str, Any]) -> Violation | None:
    bad: list[str] = []
    ports: set[int] = set()
    for c in _containers(pod):
        used = [p["hostPort"] for p in c.get("ports") or [] if isinstance(p, dict) and p.get("hostPort")]
        if used:
            bad.append(str(c.get("name")))
            ports.update(int(p) for p in used)
    if bad:
        listed = ", ".join(str(p) for p in sorted(ports, key=str))
        return Violation("hostPorts", "hostPort", f"{_containers_named(bad)} {_plural('uses', 'use', len(bad))} "
                         f"{_plural('hostPort', 'hostPorts', len(ports))} {listed}")
    return None


def _capabilities_baseline(pod: dict[str, Any]) -> Violation | None:
    bad: list[str] = []
    extra: set[str] = set()
    for c in _containers(pod):
        added = [str(a) for a in _map(_sc(c).get("capabilities")).get("add") or []]
        beyond = [a for a in added if a not in BASELINE_CAPABILITIES]
        if beyond:
            bad.append(str(c.get("name")))
            extra.update(beyond)
    if bad:
        return Violation("capabilities_baseline", "non-default capabilities",
                         f"{_containers_named(bad)} must not include {_quote(sorted(extra))} in "
                         "securityContext.capabilities.add")
    return None


def _seccomp_type(sc: dict[str, Any]) -> str | None:
    profile = sc.get("seccompProfile")
    return str(_map(profile).get("type")) if isinstance(profile, dict) else None


def _seccomp(pod: dict[str, Any], restricted: bool) -> Violation | None:
    setters: list[str] = []
    values: set[str] = set()
    pod_type = _seccomp_type(_map(pod.get("securityContext")))
    pod_set = False
    if pod_type is not None:
        if pod_type != "RuntimeDefault":
            setters.append("pod")
            values.add(pod_type)
        else:
            pod_set = True
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(pod):
        own = _seccomp_type(_sc(c))
        if own is not None:
            if own != "RuntimeDefault":
                explicit.append(str(c.get("name")))
                values.add(own)
        elif not pod_set:
            implicit.append(str(c.get("name")))
    if explicit:
        setters.append(_containers_named(explicit))
    check = "seccompProfile_restricted" if restricted else "seccompProfile_baseline"
    if setters:
        return Violation(check, "seccompProfile", f"{' and '.join(setters)} must not set "
                         f"securityContext.seccompProfile.type to {_quote(sorted(values))}")
    if restricted and implicit:
        return Violation(check, "seccompProfile", f"pod or {_containers_named(implicit)} must set securityContext."
                         'seccompProfile.type to "RuntimeDefault" or "Localhost"')
    return None


def _run_as_user(pod: dict[str, Any]) -> Violation | None:
    setters = ["pod"] if _map(pod.get("securityContext")).get("runAsUser") == 0 else []
    bad = [str(c.get("name")) for c in _containers(pod) if _sc(c).get("runAsUser") == 0]
    if bad:
        setters.append(_containers_named(bad))
    if setters:
        return Violation("runAsUser", "runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0")
    return None


# The volume types restricted allows, and the names of those it refuses (in upstream's order of
# matching; a type not listed is "unknown").
_ALLOWED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                    "projected", "secret")
_RESTRICTED_VOLUMES = (
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi", "glusterfs", "rbd",
    "flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk",
    "photonPersistentDisk", "portworxVolume", "scaleIO", "storageos",
)


def _restricted_volumes(pod: dict[str, Any]) -> Violation | None:
    bad: list[str] = []
    types: set[str] = set()
    for v in pod.get("volumes") or []:
        if not isinstance(v, dict) or any(v.get(k) is not None for k in _ALLOWED_VOLUMES):
            continue
        bad.append(str(v.get("name")))
        types.add(next((t for t in _RESTRICTED_VOLUMES if v.get(t) is not None), "unknown"))
    if bad:
        return Violation("restrictedVolumes", "restricted volume types",
                         f"{_plural('volume', 'volumes', len(bad))} {_quote(bad)} {_plural('uses', 'use', len(bad))} "
                         f"{_plural('restricted volume type', 'restricted volume types', len(types))} "
                         f"{_quote(sorted(types))}")
    return None


def _allow_privilege_escalation(pod: dict[str, Any]) -> Violation | None:
    bad = [str(c.get("name")) for c in _containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]
    if bad:
        return Violation("allowPrivilegeEscalation", "allowPrivilegeEscalation != false",
                         f"{_containers_named(bad)} must set securityContext.allowPrivilegeEscalation=false")
    return None


def _run_as_non_root(pod: dict[str, Any]) -> Violation | None:
    setters: list[str] = []
    pod_value = _map(pod.get("securityContext")).get("runAsNonRoot")
    if pod_value is False:
        setters.append("pod")
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(pod):
        own = _sc(c).get("runAsNonRoot")
        if own is not None:
            if own is not True:
                explicit.append(str(c.get("name")))
        elif pod_value is not True:
            implicit.append(str(c.get("name")))
    if explicit:
        setters.append(_containers_named(explicit))
    if setters:
        return Violation("runAsNonRoot", "runAsNonRoot != true",
                         f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false")
    if implicit:
        return Violation("runAsNonRoot", "runAsNonRoot != true",
                         f"pod or {_containers_named(implicit)} must set securityContext.runAsNonRoot=true")
    return None


def _capabilities_restricted(pod: dict[str, Any]) -> Violation | None:
    missing: list[str] = []
    adding: list[str] = []
    forbidden: set[str] = set()
    for c in _containers(pod):
        caps = _map(_sc(c).get("capabilities"))
        if "ALL" not in [str(d) for d in caps.get("drop") or []]:
            missing.append(str(c.get("name")))
        extra = [str(a) for a in caps.get("add") or [] if a != "NET_BIND_SERVICE"]
        if extra:
            adding.append(str(c.get("name")))
            forbidden.update(extra)
    details = []
    if missing:
        details.append(f'{_containers_named(missing)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_containers_named(adding)} must not include {_quote(sorted(forbidden))} in "
                       "securityContext.capabilities.add")
    if details:
        return Violation("capabilities_restricted", "unrestricted capabilities", "; ".join(details))
    return None


Check = Callable[[dict[str, Any]], "Violation | None"]

# In Kubernetes' order of evaluation: baseline's check IDs sorted, then restricted's sorted;
# restricted leaves out the baseline checks it overrides (capabilities_baseline, hostPathVolumes,
# seccompProfile_baseline). runAsUser, a restricted check upstream, is in baseline too (last).
BASELINE: tuple[Check, ...] = (
    _capabilities_baseline, _host_namespaces, _host_path_volumes, _host_ports, _privileged,
    lambda pod: _seccomp(pod, restricted=False), _run_as_user,
)
RESTRICTED: tuple[Check, ...] = (
    _host_namespaces, _host_ports, _privileged,
    _allow_privilege_escalation, _capabilities_restricted, _restricted_volumes, _run_as_non_root, _run_as_user,
    lambda pod: _seccomp(pod, restricted=True),
)


def check_pod(level: str, pod_spec: dict[str, Any]) -> list[Violation]:
    """The checks of `level` a pod spec fails (none for privileged or an unknown level)."""
    checks = RESTRICTED if level == "restricted" else BASELINE if level == "baseline" else ()
    return [v for v in (check(pod_spec) for check in checks) if v is not None]


def namespace_level(labels: dict[str, Any], label: str = ENFORCE_LABEL) -> str:
    """The level a Namespace's labels enforce (or warn about, with WARN_LABEL); privileged when unlabelled."""
    level = labels.get(label)
    return str(level) if level in LEVELS else "privileged"
