"""NetworkPolicy compiled to per-pod rule sets, per node: what Calico's Felix or kube-router
compute before programming a node.

Purely computational, no side effects. Kubernetes' semantics: a pod selected by any policy
with a direction in its policyTypes is isolated in that direction; the rules of every policy
selecting it add up (union); a pod no policy selects is unrestricted (it gets no entry).
Replies of allowed connections pass: that is the enforcement's job (conntrack), not listed.

A pod's entry: `{pod, ip, ingress, egress}` (ip None while the pod has none yet) where a
direction is None (not isolated) or a list of rules, each `{peers, ports}`: `peers` None for
any peer, else sorted IPv4 CIDRs (pods as /32, an ipBlock less its `except` as the CIDRs
left); `ports` None for any port, else sorted `[protocol, first, last]`. Named ports are
resolved per target pod: for ingress against the pod itself, for egress against each peer
pod (a rule then splits per number).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from gitorch.dns.records import PodRow, pod_labels, pod_template
from gitorch.model.objects import DEFAULT_NAMESPACE, DesiredState, Object
from gitorch.model.selectors import matches

NAMESPACE_NAME = "kubernetes.io/metadata.name"  # the label every namespace carries

Rule = dict[str, Any]


class _Pod:
    __slots__ = ("labels", "ports", "row")

    def __init__(self, state: DesiredState, row: PodRow) -> None:
        self.row = row
        self.labels = pod_labels(state, row)
        self.ports = _named_ports(pod_template(state, row))


def _named_ports(template: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    spec = template.get("spec") or {}
    out: dict[tuple[str, str], int] = {}
    for ctr in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for p in ctr.get("ports") or []:
            if p.get("name") and p.get("containerPort") is not None:
                out.setdefault((str(p["name"]), str(p.get("protocol") or "TCP")), int(p["containerPort"]))
    return out


def namespace_labels(state: DesiredState) -> dict[str, dict[str, str]]:
    """Every namespace's labels, with `kubernetes.io/metadata.name` as Kubernetes sets it."""
    out = {DEFAULT_NAMESPACE: {NAMESPACE_NAME: DEFAULT_NAMESPACE}}
    for ns in state.of_kind("Namespace"):
        out[ns.key.name] = {**{str(k): str(v) for k, v in ns.labels.items()}, NAMESPACE_NAME: ns.key.name}
    return out


def policy_types(policy: Object) -> tuple[bool, bool]:
    """(isolates ingress, isolates egress), defaulted as Kubernetes does."""
    types = policy.spec.get("policyTypes")
    if types:
        return "Ingress" in types, "Egress" in types
    return True, bool(policy.spec.get("egress"))


def ip_block(block: Mapping[str, Any]) -> list[str]:
    """An ipBlock as the CIDRs it covers: `cidr` less every `except`; none for an IPv6 block
    (pods are IPv4 only: it matches no pod traffic, and validation says so)."""
    if ipaddress.ip_network(str(block["cidr"]), strict=False).version == 6:
        return []
    nets = [ipaddress.IPv4Network(str(block["cidr"]), strict=False)]
    for ex in block.get("except") or []:
        cut = ipaddress.IPv4Network(str(ex), strict=False)
        nets = [piece for n in nets for piece in ((n,) if not n.overlaps(cut) else
                                                   () if n.subnet_of(cut) else n.address_exclude(cut))]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


class _Compiler:
    def __init__(self, state: DesiredState, pods: Iterable[PodRow]) -> None:
        self.state = state
        self.pods = [_Pod(state, p) for p in pods if p.ip and p.node]
        self.namespaces = namespace_labels(state)

    def peer_pods(self, policy: Object, peer: Mapping[str, Any]) -> list[_Pod]:
        pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
        if ns_sel is None:
            spaces = {policy.key.namespace}
        else:
            spaces = {n for n, labels in self.namespaces.items() if matches(ns_sel, labels)}
        return [p for p in self.pods if p.row.namespace in spaces and matches(pod_sel, p.labels)]

    def rules(self, policy: Object, target: _Pod, direction: str) -> list[Rule]:
        out: list[Rule] = []
        field = "from" if direction == "ingress" else "to"
        for rule in policy.spec.get(direction) or []:
            peers: list[str] | None = None
            peer_pods: list[_Pod] | None = None
            if rule.get(field):
                peers, peer_pods = [], []
                for peer in rule[field]:
                    if "ipBlock" in peer:
                        peers.extend(ip_block(peer["ipBlock"]))
                    else:
                        peer_pods.extend(self.peer_pods(policy, peer))
            ports = rule.get("ports") or []
            numeric = [p for p in ports if not isinstance(p.get("port"), str)]
            named = [p for p in ports if isinstance(p.get("port"), str)]
            if not ports or numeric:
                out.append({
                    "peers": None if peers is None else _cidrs(peers + [f"{p.row.ip}/32" for p in peer_pods or ()]),
                    "ports": None if not ports else sorted(_port_range(p) for p in numeric),
                })
            for p in named:
                proto = str(p.get("protocol") or "TCP")
                if direction == "ingress":
                    number = target.ports.get((str(p["port"]), proto))
                    if number is not None:
                        out.append({"peers": None if peers is None else _cidrs(
                            peers + [f"{q.row.ip}/32" for q in peer_pods or ()]), "ports": [[proto, number, number]]})
                    continue
                # egress: the number is the destination pod's; ipBlock peers name no pod
                by_number: dict[int, list[str]] = {}
                for q in (self.pods if peer_pods is None else peer_pods):
                    number = q.ports.get((str(p["port"]), proto))
                    if number is not None:
                        by_number.setdefault(number, []).append(f"{q.row.ip}/32")
                for number, ips in sorted(by_number.items()):
                    out.append({"peers": _cidrs(ips), "ports": [[proto, number, number]]})
        return out


def _port_range(p: Mapping[str, Any]) -> list[Any]:
    proto = str(p.get("protocol") or "TCP")
    if p.get("port") is None:
        return [proto, 1, 65535]
    first = int(p["port"])
    return [proto, first, int(p.get("endPort") or first)]


def _cidrs(items: Iterable[str]) -> list[str]:
    return sorted(set(items), key=lambda c: (ipaddress.IPv4Network(c).network_address, c))


class Target(NamedTuple):
    """A pod placed on a node, its address known or not yet (what the plan sends a node)."""

    namespace: str
    name: str
    owner_kind: str
    owner_name: str
    node: str | None
    ip: str | None = None
    phase: str = "Pending"
    ready: bool = False


def policy_table(state: DesiredState, pods: Iterable[PodRow],
                 targets: Iterable[PodRow] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per node, the entries of the pods on it that some policy isolates, sorted by pod.
    `pods` with addresses are the peers; `targets` (default: the same pods) the pods to give
    entries, those without an address yet too (`ip` None): the node binds them to the
    address it gives the pod, so a new pod is isolated from its first packet."""
    policies = state.of_kind("NetworkPolicy")
    out: dict[str, list[dict[str, Any]]] = {}
    if not policies:
        return out
    c = _Compiler(state, pods)
    chosen = c.pods if targets is None else [_Pod(state, t) for t in targets if t.node]
    for target in sorted(chosen, key=lambda p: (p.row.namespace, p.row.name)):
        entry: dict[str, Any] = {"pod": f"{target.row.namespace}/{target.row.name}", "ip": target.row.ip,
                                 "ingress": None, "egress": None}
        for policy in policies:
            if policy.key.namespace != target.row.namespace or not matches(
                    policy.spec.get("podSelector") or {}, target.labels):
                continue
            ingress, egress = policy_types(policy)
            for direction, isolated in (("ingress", ingress), ("egress", egress)):
                if isolated:
                    have = entry[direction] if entry[direction] is not None else []
                    entry[direction] = have + c.rules(policy, target, direction)
        if entry["ingress"] is None and entry["egress"] is None:
            continue
        for direction in ("ingress", "egress"):
            if entry[direction] is not None:
                entry[direction] = _dedup(entry[direction])
        out.setdefault(str(target.row.node), []).append(entry)
    return out


def _dedup(rules: list[Rule]) -> list[Rule]:
    seen: dict[str, Rule] = {}
    for r in rules:
        seen.setdefault(repr(r), r)
    return [seen[k] for k in sorted(seen)]
