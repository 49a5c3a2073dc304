"""The cluster DNS as gitorch runs it: a DNSServer kept in step with the store.

`gitorch serve --dns ADDR:PORT` refreshes it after every pass; `gitorch dns` runs it alone,
refreshing from the store twice a second. Answers change as soon as the store does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from gitorch.dns.records import zone_data
from gitorch.dns.server import DNSServer, DNSSettings, parse_hostport
from gitorch.dns.zone import ZoneData
from gitorch.model.objects import DesiredState
from gitorch.store.database import Store

DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
"""The Cluster schema's defaults (schemas/cluster.json)."""
LOOPBACK = ("127.0.0.0/8", "::1/128")

Resolve = Callable[[str], list[str]]


def _resolve(name: str) -> list[str]:
    """The addresses of a node given by host name; none when it does not resolve now."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def recursion_networks(state: DesiredState | None, listen_host: str, resolve: Resolve = _resolve) -> tuple[str, ...]:
    """Who may have outside names forwarded: loopback, the address the server listens on,
    every Node's address (pods reach the DNS through their node's masquerade), and the
    pod and service networks."""
    nets: list[str] = list(LOOPBACK)
    if not ipaddress.ip_address(listen_host).is_unspecified:
        nets.append(listen_host)
    if state is None:
        return tuple(nets)
    clusters = state.of_kind("Cluster")
    spec = clusters[0].spec if clusters else {}
    nets.append(str(spec.get("podCIDR") or DEFAULT_POD_CIDR))
    nets.append(str(spec.get("serviceCIDR") or DEFAULT_SERVICE_CIDR))
    for node in state.of_kind("Node"):
        address = str(node.spec.get("address") or "")
        if not address:
            continue
        try:
            nets.append(str(ipaddress.ip_address(address)))
        except ValueError:
            nets.extend(resolve(address))
    return tuple(dict.fromkeys(nets))


def settings_for(state: DesiredState | None, listen: str, resolve: Resolve = _resolve) -> DNSSettings:
    """Listen where asked; forward outside names to the Cluster's `dns.upstreams`, for the
    clients `recursion_networks` lists."""
    host, port = parse_hostport(listen)
    clusters = state.of_kind("Cluster") if state is not None else []
    dns = (clusters[0].spec.get("dns") or {}) if clusters else {}
    upstreams = tuple(str(u) for u in dns.get("upstreams") or ())
    return DNSSettings(
        host=host, port=port, upstreams=upstreams,
        allow_recursion=recursion_networks(state, host, resolve),
    )


class ClusterDNS:
    def __init__(self, settings: DNSSettings) -> None:
        self.server = DNSServer(None, settings)
        self._zone: ZoneData | None = None
        self._networks = settings.allow_recursion
        self._resolved: dict[str, list[str]] = {}

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ClusterDNS:
        self.server.start()
        return self

    def refresh(self, state: DesiredState, store: Store) -> bool:
        """Rebuild the zone from the store; swap it in only when it changed (keeps caches warm).
        Nodes and networks added to the desired state may use recursion from now on."""
        networks = recursion_networks(state, self.server.settings.host, self._resolve)
        if networks != self._networks:
            self.server.allow_recursion(networks)
            self._networks = networks
        zone = zone_data(state, store.pods(), store.cluster_ips())
        if zone == self._zone:
            return False
        self.server.update(zone)
        self._zone = zone
        return True

    def _resolve(self, name: str) -> list[str]:
        """Node host names, resolved once each (refresh runs twice a second)."""
        if name not in self._resolved:
            if len(self._resolved) >= 4096:
                self._resolved.clear()
            self._resolved[name] = _resolve(name)
        return self._resolved[name]

    def stop(self) -> None:
        self.server.stop()
