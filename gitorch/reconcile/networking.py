"""Pod network: each node's pod CIDR, gateway and routes to the other nodes' pods.

Purely computational, no side effects: the controller allocates the CIDRs (store) and
sends each node the block `network_blocks` builds with its `sync`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from gitorch.model.objects import DesiredState

DEFAULT_POD_CIDR = "10.244.0.0/16"
NODE_PREFIX = 24


def cluster_pod_cidr(state: DesiredState) -> str:
    """The Cluster's `spec.podCIDR`, or Kubernetes' usual default."""
    clusters = state.of_kind("Cluster")
    return str((clusters[0].spec.get("podCIDR") if clusters else None) or DEFAULT_POD_CIDR)


def gateway(cidr: str) -> str:
    """The node bridge's address: the CIDR's first host (.1)."""
    return str(next(ipaddress.ip_network(cidr).hosts()))


def network_blocks(cidrs: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Per node: its CIDR, gateway, and a route to every other node's CIDR via that node's
    address (nodes whose address is not an IP literal get no route to them)."""
    out: dict[str, dict[str, Any]] = {}
    # Every node's route to each other node, computed once: O(N) parsing, O(N^2) output.
    routable = [(other, {"cidr": other_cidr, "via": addresses[other]}) for other, other_cidr in sorted(cidrs.items())
                if _is_ip(addresses.get(other, ""))]
    for node, cidr in sorted(cidrs.items()):
        routes = [route for other, route in routable if other != node]
        out[node] = {"podCIDR": cidr, "gateway": gateway(cidr), "routes": routes}
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
