"""The cluster DNS zone built from the desired state and what the store records.

Purely computational, no side effects: `zone_data(state, pods, cluster_ips)` takes the
store's rows as arguments, so the caller decides when to read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

from gitorch.dns.zone import EndpointRecord, PortRecord, ServiceRecord, ZoneData
from gitorch.model.objects import DesiredState, Object
from gitorch.store.database import ClusterIPAllocation


class PodRow(Protocol):
    """What the zone and the service table read of a pod: a store row (PodRecord), or the
    controller's plain copy of one."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def owner_kind(self) -> str: ...
    @property
    def owner_name(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def phase(self) -> str: ...
    @property
    def ready(self) -> bool: ...


P = TypeVar("P", bound=PodRow)


def pod_template(state: DesiredState, pod: PodRow) -> Mapping[str, Any]:
    """The pod template (metadata + spec) the pod was made from, `{}` when its owner is gone."""
    return _template(state.get(pod.owner_kind, pod.namespace, pod.owner_name))


def _template(owner: Object | None) -> Mapping[str, Any]:
    if owner is None:
        return {}
    if owner.key.kind == "Pod":
        return owner.pod_as_template
    spec = owner.spec
    if owner.key.kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return spec.get("template") or {}


def pod_labels(state: DesiredState, pod: PodRow) -> dict[str, str]:
    """A pod's labels: its owner's pod template labels (pods are not stored with them)."""
    labels = (pod_template(state, pod).get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(str(k)) == str(v) for k, v in selector.items())


def running_pods(pods: Iterable[P]) -> list[P]:
    """Pods that can be endpoints: running on a node, with an IP."""
    return [p for p in pods if p.ip and p.node and p.phase == "Running"]


def selected_pods(state: DesiredState, service: Object, pods: Iterable[PodRow]) -> list[PodRow]:
    """The running pods with IPs a Service's selector picks in its namespace (ready or not:
    `PodRecord.ready` and `publishNotReadyAddresses` say which of them serve)."""
    return PodIndex(state, pods).selected(service)


class PodIndex:
    """Running pods by namespace and label: built once, asked per Service, so a table of S
    Services over P pods costs about O(P + the pods each selector picks), not O(S x P)."""

    def __init__(self, state: DesiredState, pods: Iterable[PodRow]) -> None:
        self._labels: dict[int, dict[str, str]] = {}
        self._by_label: dict[tuple[str, str, str], list[PodRow]] = {}
        for p in running_pods(pods):
            labels = pod_labels(state, p)
            self._labels[id(p)] = labels
            for k, v in labels.items():
                self._by_label.setdefault((p.namespace, k, v), []).append(p)

    def selected(self, service: Object) -> list[PodRow]:
        selector = service.spec.get("selector") or {}
        if not selector:
            return []
        ns = service.key.namespace
        candidates = [self._by_label.get((ns, str(k), str(v)), []) for k, v in selector.items()]
        smallest = min(candidates, key=len)
        return [p for p in smallest if _selects(selector, self._labels[id(p)])]


def zone_data(
    state: DesiredState, pods: Iterable[PodRow], cluster_ips: Iterable[ClusterIPAllocation]
) -> ZoneData:
    """Services (cluster IPs, ExternalName CNAMEs, headless endpoints with StatefulSet
    hostnames), pod A records and namespaces of one desired state."""
    clusters = state.of_kind("Cluster")
    cluster = clusters[0].spec if clusters else {}
    dns = cluster.get("dns") or {}
    ips = {(c.namespace, c.service): c.ip for c in cluster_ips}
    running = running_pods(pods)
    index = PodIndex(state, running)
    services: list[ServiceRecord] = []
    for svc in state.of_kind("Service"):
        ns, name, spec = svc.key.namespace, svc.key.name, svc.spec
        ports = tuple(
            PortRecord(str(p.get("name") or ""), int(p.get("port") or 0), str(p.get("protocol") or "TCP"))
            for p in spec.get("ports") or []
        )
        if spec.get("type") == "ExternalName":
            services.append(ServiceRecord(name, ns, None, ports, external_name=str(spec.get("externalName"))))
            continue
        headless = spec.get("clusterIP") == "None"
        cluster_ip = None if headless else ips.get((ns, name))
        if not headless and cluster_ip is None:
            continue  # not allocated yet: answering it as headless would be wrong
        endpoints = []
        for p in index.selected(svc):
            hostname = None
            if headless and p.owner_kind == "StatefulSet":
                owner = state.get("StatefulSet", ns, p.owner_name)
                if owner is not None and owner.spec.get("serviceName") == name:
                    hostname = p.name
            endpoints.append(EndpointRecord(str(p.ip), p.ready, hostname, p.name))
        services.append(
            ServiceRecord(
                name,
                ns,
                cluster_ip,
                ports,
                endpoints=tuple(sorted(endpoints, key=lambda e: (e.ip, e.pod))),
                publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
            )
        )
    namespaces = {"default"} | {o.key.name for o in state.of_kind("Namespace")}
    namespaces |= {s.namespace for s in services}
    return ZoneData(
        domain=str(cluster.get("domain") or "cluster.local"),
        services=tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
        pod_ips=tuple(sorted((str(p.ip), p.namespace) for p in running)),
        namespaces=frozenset(namespaces),
        ttl=int(dns.get("ttlSeconds", 5)),
    )
