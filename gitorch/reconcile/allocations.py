"""Allocations a pass plans: Service cluster IPs, node ports, node pod CIDRs and ServiceAccount uids.

Purely computational, no side effects: from the desired state and what is allocated now
(the store's rows) it returns what every Service and Node holds after this pass. The pass
writes the result in its one transaction, so a reviewed plan holds the same addresses that
`apply --plan` uses, and a new Service has its address on its first pass. A value, once
given, stays while its owner wants it; allocation problems are that object's status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitorch.model.objects import DesiredState, Object, ObjectKey
from gitorch.model.ranges import NODE_PORT_RANGE, RangeError, probe, service_range
from gitorch.reconcile import networking, services

ServiceKey = tuple[str, str]  # namespace, name
PortKey = tuple[str, str, str]  # namespace, service, port name
AccountKey = tuple[str, str]  # namespace, ServiceAccount name

# ServiceAccount uids (and gids): above the ranges Debian gives system and login users (below
# 60000) and rootless podman's subordinate ids (100000 + 65536 per user), below 2^31.
ACCOUNT_IDS = range(200_000, 2_000_000_000)
ACCOUNT_MARK = "account_ids"  # the store's name for the account uids' high-water mark


@dataclass(frozen=True)
class Allocations:
    """What each owner holds after the pass; anything not listed is released."""

    cluster_ips: Mapping[ServiceKey, str] = field(default_factory=dict)
    node_ports: Mapping[PortKey, int] = field(default_factory=dict)
    pod_cidrs: Mapping[str, str] = field(default_factory=dict)
    problems: Mapping[ObjectKey, str] = field(default_factory=dict)
    """Per Service or Node: why it got no address (range full, requested value taken)."""
    lb_ips: Mapping[ServiceKey, str] = field(default_factory=dict)
    """Per Service of type LoadBalancer: its address from the Cluster's pools."""
    account_ids: Mapping[AccountKey, int] = field(default_factory=dict)
    """Per ServiceAccount (and each namespace's implicit `default`): its uid, also its gid."""
    next_account_id: int = ACCOUNT_IDS.start
    """The account uids' high-water mark: the uid the next new account gets (none is reused)."""


def allocate(
    state: DesiredState,
    cluster_ips: Mapping[ServiceKey, str],
    node_ports: Mapping[PortKey, int],
    pod_cidrs: Mapping[str, str],
    lb_ips: Mapping[ServiceKey, str] | None = None,
    account_ids: Mapping[AccountKey, int] | None = None,
    accounts_in_use: Collection[AccountKey] = (),
    next_account_id: int | None = None,
) -> Allocations:
    """The allocations after this pass, deterministic for the same inputs. `accounts_in_use`:
    the accounts recorded pods run as (a uid stays while such a pod may still run);
    `next_account_id`: the stored high-water mark of account uids (None: none stored yet)."""
    problems: dict[ObjectKey, str] = {}
    ips = _cluster_ips(state, cluster_ips, problems)
    ports = _node_ports(state, node_ports, problems)
    cidrs = _pod_cidrs(state, pod_cidrs, problems)
    balanced = _lb_ips(state, lb_ips or {}, problems)
    accounts, next_id = _account_ids(state, account_ids or {}, accounts_in_use, next_account_id)
    return Allocations(ips, ports, cidrs, problems, balanced, accounts, next_id)


def _account_ids(
    state: DesiredState, have: Mapping[AccountKey, int], in_use: Collection[AccountKey], next_id: int | None
) -> tuple[dict[AccountKey, int], int]:
    """Every ServiceAccount in Git and the `default` account of every namespace holds a uid: the
    one it has, else the next above every uid ever given (the high-water mark). A uid is released
    once its account is gone from Git and no recorded pod runs as it, and is never given again:
    files a deleted account left on the nodes (a claim's folder, say) never belong to a new one."""
    wanted = {(k.namespace, k.name) for k in state.objects if k.kind == "ServiceAccount"}
    namespaces = {k.name for k in state.objects if k.kind == "Namespace"} | {"default"}
    wanted |= {(ns, "default") for ns in namespaces}
    out = {k: uid for k, uid in have.items() if (k in wanted or k in in_use) and uid in ACCOUNT_IDS}
    # Without a stored mark (a store from before it), the highest uid held is the best known.
    candidate = max([ACCOUNT_IDS.start, next_id or 0, *(uid + 1 for uid in have.values() if uid in ACCOUNT_IDS)])
    for key in sorted(wanted - out.keys()):
        out[key] = candidate
        candidate += 1
    return out, candidate


POOL_ANNOTATIONS = ("gitorch.dev/address-pool", "metallb.universe.tf/address-pool")


@dataclass(frozen=True)
class Pool:
    """A LoadBalancer address pool of the Cluster: its addresses as (first, last) integers."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    node_selector: Mapping[str, str]

    def holds(self, address: int) -> bool:
        return any(first <= address <= last for first, last in self.ranges)


def pools(state: DesiredState) -> list[Pool]:
    """The Cluster's `spec.loadBalancer.pools` (a malformed entry is skipped: validation said so)."""
    clusters = state.of_kind("Cluster")
    raw = ((clusters[0].spec.get("loadBalancer") or {}).get("pools") or []) if clusters else []
    out = []
    for p in raw:
        if not isinstance(p, dict):
            continue
        ranges = []
        for text in p.get("addresses") or []:
            try:
                ranges.append(address_range(str(text)))
            except ValueError:
                continue
        out.append(Pool(str(p.get("name")), tuple(ranges), dict(p.get("nodeSelector") or {})))
    return out


def address_range(text: str) -> tuple[int, int]:
    """`a.b.c.d/n` (without its network and broadcast addresses when it has them) or
    `first-last`, as integers; ValueError when it is neither."""
    if "-" in text:
        first, last = (int(ipaddress.IPv4Address(t.strip())) for t in text.split("-", 1))
        if first > last:
            raise ValueError(f"{text}: the first address is after the last")
        return first, last
    net = ipaddress.IPv4Network(text, strict=False)
    if net.prefixlen >= 31:
        return int(net.network_address), int(net.broadcast_address)
    return int(net.network_address) + 1, int(net.broadcast_address) - 1


EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
"""Kubernetes' well-known label: a node carrying it never announces a LoadBalancer address."""


def announcers(
    state: DesiredState,
    lb_ips: Mapping[ServiceKey, str],
    nodes: Mapping[str, Mapping[str, str]],
    previous: Mapping[str, str | None],
    local_ready: Mapping[ServiceKey, set[str]],
    unhealthy: Collection[str] = (),
) -> dict[str, str | None]:
    """Which node announces each LoadBalancer address (None: no node can), as MetalLB's layer-2
    speakers elect one: among `nodes` (those that answer, with their labels, less those labelled
    EXCLUDE_LABEL) that the address's pool selects (and, with externalTrafficPolicy Local, that
    run a ready pod of the Service), the one announcing it now keeps it; otherwise the first by a
    hash of address and node name, so addresses spread over nodes and each moves only when its
    node cannot keep it. A node in `unhealthy` (it said it could not announce or program its
    rules) is passed over while a healthy candidate exists."""
    import hashlib

    all_pools = pools(state)
    out: dict[str, str | None] = {}
    for svc in state.of_kind("Service"):
        key = (svc.key.namespace, svc.key.name)
        ip = lb_ips.get(key)
        if ip is None:
            continue
        address = int(ipaddress.IPv4Address(ip))
        pool = next((p for p in all_pools if p.holds(address)), None)
        selector = pool.node_selector if pool is not None else {}
        candidates = [n for n, labels in nodes.items() if EXCLUDE_LABEL not in labels
                      and all(labels.get(k) == v for k, v in selector.items())]
        if svc.spec.get("externalTrafficPolicy") == "Local":
            candidates = [n for n in candidates if n in local_ready.get(key, set())]
        # With no healthy candidate left, a degraded one beats no announcement at all.
        candidates = [n for n in candidates if n not in unhealthy] or candidates
        if previous.get(ip) in candidates:
            out[ip] = previous[ip]
        elif candidates:
            out[ip] = min(candidates, key=lambda n: hashlib.sha256(f"{ip}/{n}".encode()).digest())
        else:
            out[ip] = None
    return out


def unhealthy_announcers(previous: Collection[str], replies: Mapping[str, Mapping[str, Any] | None]) -> set[str]:
    """The nodes that report themselves unfit to announce, from this pass's sync `replies` (None:
    no answer, which says nothing new): an address they could not add, or service rules they could
    not program (a delta on a table they do not hold is not that: the whole table follows). A node
    not synced this pass keeps what it said last."""
    out = set(previous)
    for node, reply in replies.items():
        if reply is None:
            continue
        said = reply.get("announce")
        proxy = reply.get("services")
        failed = isinstance(said, dict) and bool(said.get("failed"))
        broken = (isinstance(proxy, dict) and proxy.get("ok") is False
                  and proxy.get("reason") != "ServicesBaseMismatch")
        if failed or broken:
            out.add(node)
        elif isinstance(said, dict) or isinstance(proxy, dict):
            out.discard(node)
    return out


def balanced(svc: Object) -> bool:
    """A Service that gets a LoadBalancer address."""
    return svc.spec.get("type") == "LoadBalancer" and services.proxied(svc)


def _lb_ips(
    state: DesiredState, have: Mapping[ServiceKey, str], problems: dict[ObjectKey, str]
) -> dict[ServiceKey, str]:
    wanted = sorted((svc for svc in state.of_kind("Service") if balanced(svc)), key=lambda s: s.key)
    if not wanted:
        return {}
    all_pools = pools(state)
    out: dict[ServiceKey, str] = {}
    used: dict[int, ServiceKey] = {}
    todo: list[tuple[Object, list[Pool], int | None]] = []
    for svc in wanted:
        key = (svc.key.namespace, svc.key.name)
        named = next((svc.annotations[a] for a in POOL_ANNOTATIONS if svc.annotations.get(a)), None)
        allowed = [p for p in all_pools if named is None or p.name == named]
        if not allowed:
            problems[svc.key] = (f"address pool {named!r} does not exist" if named else
                                 "no LoadBalancer address pool: add spec.loadBalancer.pools to the Cluster")
            continue
        requested: int | None = None
        raw = svc.spec.get("loadBalancerIP")
        if raw:
            try:
                requested = int(ipaddress.IPv4Address(str(raw)))
            except ValueError:
                problems[svc.key] = f"loadBalancerIP {raw!r} is invalid"
                continue
            if not any(p.holds(requested) for p in allowed):
                problems[svc.key] = f"loadBalancerIP {raw} is in no address pool{' ' + repr(named) if named else ''}"
                continue
        current = have.get(key)
        held = int(ipaddress.IPv4Address(current)) if current else None
        if held is not None and held not in used and any(p.holds(held) for p in allowed) and requested in (None, held):
            out[key] = str(ipaddress.IPv4Address(held))
            used[held] = key
        else:
            todo.append((svc, allowed, requested))
    for svc, allowed, requested in todo:
        key = (svc.key.namespace, svc.key.name)
        if requested is not None:
            if requested in used:
                holder = used[requested]
                address = ipaddress.IPv4Address(requested)
                problems[svc.key] = f"loadBalancerIP {address} is already held by {holder[0]}/{holder[1]}"
                continue
            chosen: int | None = requested
        else:
            chosen = next((a for p in allowed for first, last in p.ranges for a in range(first, last + 1)
                           if a not in used), None)
            if chosen is None:
                problems[svc.key] = f"no free address left in pool(s) {', '.join(p.name for p in allowed)}"
                continue
        assert chosen is not None
        out[key] = str(ipaddress.IPv4Address(chosen))
        used[chosen] = key
    return out


def _cluster_ips(
    state: DesiredState, have: Mapping[ServiceKey, str], problems: dict[ObjectKey, str]
) -> dict[ServiceKey, str]:
    cidr = services.service_cidr(state)
    try:
        network, first, last = service_range(cidr)
    except RangeError as exc:
        for svc in state.of_kind("Service"):
            if services.proxied(svc):
                problems[svc.key] = str(exc)
        return {}
    wanted = sorted((svc for svc in state.of_kind("Service") if services.proxied(svc)), key=lambda s: s.key)
    out: dict[ServiceKey, str] = {}
    used: dict[int, ServiceKey] = {}
    todo: list[tuple[Object, int | None]] = []
    # Pass 1: keep what Services already hold (and still want); pass 2 hands out the rest.
    for svc in wanted:
        key = (svc.key.namespace, svc.key.name)
        requested: int | None = None
        raw = svc.spec.get("clusterIP")
        if raw:
            try:
                requested = int(ipaddress.ip_address(str(raw)))
            except ValueError:
                problems[svc.key] = f"requested cluster IP {raw!r} is invalid"
                continue
            if not first <= requested <= last or ipaddress.ip_address(str(raw)) not in network:
                problems[svc.key] = (
                    f"requested cluster IP {raw} is outside the allocatable range of {cidr} "
                    "(its network, first and last addresses are reserved)"
                )
                continue
        current = have.get(key)
        held = int(ipaddress.ip_address(current)) if current else None
        if held is not None and (requested == held or (requested is None and first <= held <= last)):
            out[key] = current or ""
            used[held] = key
        else:
            todo.append((svc, requested))
    for svc, requested in todo:
        key = (svc.key.namespace, svc.key.name)
        if requested is not None:
            if requested in used:
                holder = used[requested]
                problems[svc.key] = (
                    f"cluster IP {svc.spec.get('clusterIP')} is already allocated to {holder[0]}/{holder[1]}"
                )
                continue
            chosen = requested
        else:
            try:
                chosen = probe(first, last, set(used), f"{key[0]}/{key[1]}", f"cluster IP in {cidr}")
            except RangeError as exc:
                problems[svc.key] = str(exc)
                continue
        out[key] = str(ipaddress.ip_address(chosen))
        used[chosen] = key
    return out


def _node_ports(
    state: DesiredState, have: Mapping[PortKey, int], problems: dict[ObjectKey, str]
) -> dict[PortKey, int]:
    first, last = NODE_PORT_RANGE
    out: dict[PortKey, int] = {}
    used: dict[int, PortKey] = {}
    todo: list[tuple[Object, PortKey, int | None]] = []
    for svc in sorted(state.of_kind("Service"), key=lambda s: s.key):
        if svc.spec.get("type") not in ("NodePort", "LoadBalancer") or not services.proxied(svc):
            continue
        for port in svc.spec.get("ports") or []:
            key = (svc.key.namespace, svc.key.name, str(port.get("name") or ""))
            raw = port.get("nodePort")
            requested = int(raw) if isinstance(raw, int) and not isinstance(raw, bool) else None
            if requested is not None and not first <= requested <= last:
                problems[svc.key] = f"requested node port {requested} is outside the range {first}-{last}"
                continue
            current = have.get(key)
            if current is not None and (requested == current or (requested is None and first <= current <= last)):
                out[key] = current
                used[current] = key
            else:
                todo.append((svc, key, requested))
    for svc, key, requested in todo:
        if requested is not None:
            if requested in used:
                holder = used[requested]
                problems[svc.key] = (
                    f"node port {requested} is already allocated to {holder[0]}/{holder[1]} port {holder[2]!r}"
                )
                continue
            chosen = requested
        else:
            try:
                chosen = probe(first, last, set(used), "/".join(key), f"node port in {first}-{last}")
            except RangeError as exc:
                problems[svc.key] = str(exc)
                continue
        out[key] = chosen
        used[chosen] = key
    return out


def _pod_cidrs(state: DesiredState, have: Mapping[str, str], problems: dict[ObjectKey, str]) -> dict[str, str]:
    """Each Node's pod CIDR: its manifest's `spec.podCIDR`, else the one it holds, else the
    lowest free /24 of the Cluster's pod CIDR."""
    cluster_cidr = networking.cluster_pod_cidr(state)
    prefix = networking.NODE_PREFIX
    try:
        cluster = ipaddress.ip_network(cluster_cidr)
    except ValueError as exc:
        for node in state.of_kind("Node"):
            problems[node.key] = f"pod CIDR {cluster_cidr!r} is invalid: {exc}"
        return {}
    out: dict[str, str] = {}
    todo: list[Object] = []
    for node in sorted(state.of_kind("Node"), key=lambda n: n.key):
        name = node.key.name
        pinned = node.spec.get("podCIDR")
        if pinned:
            out[name] = str(pinned)
            continue
        current = have.get(name)
        if current and _fits(current, cluster, prefix):
            out[name] = current
        else:
            todo.append(node)
    if todo:
        if not cluster.prefixlen <= prefix <= cluster.max_prefixlen:
            for node in todo:
                problems[node.key] = f"pod CIDR {cluster_cidr} has no /{prefix} subnets"
            return out
        taken = [ipaddress.ip_network(c) for c in out.values() if _valid_network(c)]
        subnets = cluster.subnets(new_prefix=prefix)
        for node in todo:
            free = next((s for s in subnets if not any(s.overlaps(u) for u in taken)), None)
            if free is None:
                problems[node.key] = f"no free /{prefix} left in pod CIDR {cluster_cidr}"
                continue
            out[node.key.name] = str(free)
            taken.append(free)
    return out


def _valid_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text)
    except ValueError:
        return False
    return True


def _fits(cidr: str, cluster: ipaddress.IPv4Network | ipaddress.IPv6Network, prefix: int) -> bool:
    if not _valid_network(cidr):
        return False
    net = ipaddress.ip_network(cidr)
    return net.version == cluster.version and net.prefixlen == prefix and net.subnet_of(cluster)  # type: ignore[arg-type]
