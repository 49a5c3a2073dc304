"""The service table: what kube-proxy programs, computed for every node's agent.

`service_table` is pure: from the desired state and the store's rows (pods, cluster IPs,
node ports) it lists, per ClusterIP/NodePort Service port, the virtual IP and port, the
node port if any, and the ready endpoints (pod IP and target port, a named targetPort
resolved through the pod template's container ports). The controller sends it with every
`sync`; each agent turns it into one nftables table. The addresses come from the pass's
allocations (reconcile/allocations.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gitorch.dns.records import PodIndex, PodRow, pod_template
from gitorch.model.objects import DesiredState, Object
from gitorch.reconcile import ingress

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"


def service_cidr(state: DesiredState) -> str:
    """The Cluster's `spec.serviceCIDR`, or Kubernetes' usual default."""
    clusters = state.of_kind("Cluster")
    return str((clusters[0].spec.get("serviceCIDR") if clusters else None) or DEFAULT_SERVICE_CIDR)


def proxied(svc: Object) -> bool:
    """Services that get a virtual IP (ClusterIP and NodePort, not headless or ExternalName)."""
    spec = svc.spec
    kind = spec.get("type", "ClusterIP")
    return kind in ("ClusterIP", "NodePort", "LoadBalancer") and spec.get("clusterIP") != "None"


def target_port(template: Mapping[str, Any], port: Mapping[str, Any]) -> int | None:
    """The pod's port for a Service port: a number, a container port name looked up in the
    pod template (None when no container has it), or the Service port itself."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    text = str(target)
    if text.isdigit():
        return int(text)
    protocol = str(port.get("protocol") or "TCP")
    spec = template.get("spec") or {}
    for ctr in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for p in ctr.get("ports") or []:
            if p.get("name") == text and str(p.get("protocol") or "TCP") == protocol:
                return int(p["containerPort"])
    return None


def ready_nodes(state: DesiredState, pods: Iterable[PodRow], service: Object) -> set[str]:
    """The nodes running a ready pod the Service selects (externalTrafficPolicy Local)."""
    return {p.node for p in PodIndex(state, pods).selected(service) if p.ready and p.node}


def service_table(
    state: DesiredState,
    pods: Iterable[PodRow],
    cluster_ips: Mapping[tuple[str, str], str],
    node_ports: Mapping[tuple[str, str, str], int],
    lb_ips: Mapping[tuple[str, str], str] | None = None,
    up: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per port of every ClusterIP/NodePort Service with a cluster IP:
    `{name, protocol, clusterIP, port, nodePort, endpoints: [{ip, port}]}`, sorted; the
    endpoints are the selected running pods that are ready (or all of them with
    `publishNotReadyAddresses`)."""
    pods = list(pods)
    ips = cluster_ips
    allocated = node_ports
    table: list[dict[str, Any]] = []
    index = PodIndex(state, pods)
    proxy = ingress.proxy_service(state)
    for svc in state.of_kind("Service"):
        ns, name, spec = svc.key.namespace, svc.key.name, svc.spec
        vip = ips.get((ns, name))
        if not proxied(svc) or vip is None:
            continue
        serving = [p for p in index.selected(svc) if p.ready or spec.get("publishNotReadyAddresses")]
        templates = [(p, pod_template(state, p)) for p in serving]
        for port in spec.get("ports") or []:
            port_name = str(port.get("name") or "")
            endpoints = set()
            for p, template in templates:
                target = target_port(template, port)
                if target is not None and p.ip:
                    endpoints.add((str(p.ip), target))
            if (ns, name) == proxy:  # the Cluster's ingress Service: its endpoints are the proxies
                endpoints.update(ingress.proxy_endpoints(state, port, up))
            exposed = spec.get("type") in ("NodePort", "LoadBalancer")
            node_port = allocated.get((ns, name, port_name)) if exposed else None
            entry: dict[str, Any] = {
                "name": f"{ns}/{name}:{port_name or port.get('port')}",
                "protocol": str(port.get("protocol") or "TCP"),
                "clusterIP": vip,
                "port": int(port["port"]),
                "nodePort": node_port,
                "endpoints": [{"ip": ip, "port": tp} for ip, tp in sorted(endpoints)],
            }
            lb = (lb_ips or {}).get((ns, name)) if spec.get("type") == "LoadBalancer" else None
            if lb:  # only then: other tables stay as they were
                entry["loadBalancerIP"] = lb
                if spec.get("loadBalancerSourceRanges"):
                    entry["sourceRanges"] = [str(r) for r in spec["loadBalancerSourceRanges"]]
            if exposed and spec.get("externalTrafficPolicy") == "Local":
                entry["local"] = True
            if spec.get("sessionAffinity") == "ClientIP":
                config = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
                entry["affinitySeconds"] = int(config.get("timeoutSeconds") or 10800)
            table.append(entry)
    table.extend(host_ports(state, pods))
    return sorted(table, key=lambda e: str(e["name"]))


def host_ports(state: DesiredState, pods: Iterable[PodRow]) -> list[dict[str, Any]]:
    """A container port's hostPort, as the CNI portmap plugin gives it effect: the node's own
    addresses at hostPort go to the pod (DNAT). One entry per port of a pod that has an address
    and is not on the node's network (there the port is the node's already); every node gets
    them with the service table and programs its own pods' only."""
    out: list[dict[str, Any]] = []
    for p in pods:
        if not p.ip or not p.node or p.phase not in ("Pending", "Running"):
            continue
        spec = pod_template(state, p).get("spec") or {}
        if spec.get("hostNetwork"):
            continue
        for ctr in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            for port in ctr.get("ports") or []:
                host, target = port.get("hostPort"), port.get("containerPort")
                if not isinstance(host, int) or isinstance(host, bool) or not host or not isinstance(target, int):
                    continue
                protocol = str(port.get("protocol") or "TCP")
                out.append({
                    "name": f"{p.namespace}/{p.name}:hostPort/{host}/{protocol}",
                    "protocol": protocol,
                    "clusterIP": None,
                    "port": host,
                    "nodePort": None,
                    "hostPort": host,
                    "endpoints": [{"ip": str(p.ip), "port": target}],
                })
    return out
