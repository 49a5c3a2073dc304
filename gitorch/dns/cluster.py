"""The cluster DNS as gitorch runs it: a DNSServer kept in step with the store.

`gitorch serve --dns ADDR:PORT` refreshes it after every pass; `gitorch dns` runs it alone,
refreshing from the store twice a second. Answers change as soon as the store does.
"""

from __future__ import annotations

from gitorch.dns.records import zone_data
from gitorch.dns.server import DNSServer, DNSSettings, parse_hostport
from gitorch.dns.zone import ZoneData
from gitorch.model.objects import DesiredState
from gitorch.store.database import Store


def settings_for(state: DesiredState | None, listen: str) -> DNSSettings:
    """Listen where asked; forward outside names to the Cluster's `dns.upstreams`."""
    host, port = parse_hostport(listen)
    clusters = state.of_kind("Cluster") if state is not None else []
    dns = (clusters[0].spec.get("dns") or {}) if clusters else {}
    upstreams = tuple(str(u) for u in dns.get("upstreams") or ())
    return DNSSettings(host=host, port=port, upstreams=upstreams)


class ClusterDNS:
    def __init__(self, settings: DNSSettings) -> None:
        self.server = DNSServer(None, settings)
        self._zone: ZoneData | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ClusterDNS:
        self.server.start()
        return self

    def refresh(self, state: DesiredState, store: Store) -> bool:
        """Rebuild the zone from the store; swap it in only when it changed (keeps caches warm)."""
        zone = zone_data(state, store.pods(), store.cluster_ips())
        if zone == self._zone:
            return False
        self.server.update(zone)
        self._zone = zone
        return True

    def stop(self) -> None:
        self.server.stop()
