"""Ingress (issue 11, part 2): which nodes run the proxy, the HAProxy config each is sent with
the sync (rendered from every Ingress gitorch serves, backends at their ready endpoints from the
service table), and the addresses each Ingress answers on.

Purely computational, no side effects. The payload holds TLS private keys: it goes to the
ingress nodes only, and is never logged or stored (the node digest is a hash of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gitorch.model.objects import DesiredState, Object
from gitorch.model.routes import (
    Backend,
    Route,
    backend_endpoints,
    defaults,
    ingress_classes,
    routes,
    serving_problem,
)
from gitorch.reconcile import haproxy
from gitorch.source.certificates import certificate_hosts
from gitorch.source.crosschecks import TLS_SECRET, secret_value


def settings(state: DesiredState) -> Mapping[str, Any] | None:
    """The Cluster's `spec.ingress`, or None when the cluster has no ingress nodes."""
    clusters = state.of_kind("Cluster")
    block = clusters[0].spec.get("ingress") if clusters else None
    return block if isinstance(block, dict) else None


def ingress_nodes(state: DesiredState) -> list[str]:
    """The Nodes that run the proxy: those carrying every label of `spec.ingress.nodeSelector`."""
    block = settings(state)
    if block is None:
        return []
    wanted = block.get("nodeSelector") or {}
    return sorted(
        n.key.name for n in state.of_kind("Node") if all(n.labels.get(k) == str(v) for k, v in wanted.items())
    )


def node_addresses(state: DesiredState, nodes: Iterable[str]) -> list[str]:
    chosen = set(nodes)
    return sorted(str(n.spec.get("address")) for n in state.of_kind("Node") if n.key.name in chosen)


def proxy_service(state: DesiredState) -> tuple[str, str] | None:
    """(namespace, name) of the Service whose endpoints are the proxies, if the Cluster names one."""
    svc = (settings(state) or {}).get("service")
    if not isinstance(svc, dict):
        return None
    return str(svc.get("namespace")), str(svc.get("name"))


def proxy_endpoints(
    state: DesiredState, port: Mapping[str, Any], up: Iterable[str] | None = None
) -> list[tuple[str, int]]:
    """The proxy Service's endpoints for one of its ports: the address of every ingress node (of
    those in `up`, the nodes whose proxy is running and ready, when given) at the port's targetPort (a number; the
    port itself when it has none)."""
    target = port.get("targetPort")
    number = target if isinstance(target, int) else int(port.get("port") or 0)
    nodes = ingress_nodes(state)
    if up is not None:
        answering = set(up)
        nodes = [n for n in nodes if n in answering] or nodes  # none answering: keep them all, not none
    return [(ip, number) for ip in node_addresses(state, nodes) if ip]


def served(state: DesiredState) -> list[Object]:
    """The Ingresses gitorch's proxy serves (their class is gitorch's), by namespace/name."""
    classes = ingress_classes((o.key.name, o.body) for o in state.of_kind("IngressClass"))
    return [o for o in state.of_kind("Ingress") if serving_problem(o.spec, o.annotations, classes) is None]


def _certificates(state: DesiredState, ingresses: list[Object]) -> list[haproxy.Certificate]:
    by_secret: dict[tuple[str, str], tuple[str, set[str]]] = {}
    for ing in ingresses:
        ns = ing.key.namespace
        for tls in ing.spec.get("tls") or ():
            secret = state.get("Secret", ns, str(tls.get("secretName") or ""))
            if secret is None or secret.body.get("type") != TLS_SECRET:
                continue  # validation said so
            cert, key = secret_value(secret, "tls.crt"), secret_value(secret, "tls.key")
            if not cert or not key:
                continue
            pem = cert.decode(errors="replace").rstrip("\n") + "\n" + key.decode(errors="replace").rstrip("\n") + "\n"
            hosts = set(tls.get("hosts") or ())
            if not hosts:
                try:
                    hosts = set(certificate_hosts(cert))
                except ValueError:
                    continue
            entry = by_secret.setdefault((ns, secret.key.name), (pem, set()))
            entry[1].update(h.lower() for h in hosts)
    return [haproxy.Certificate(ns, name, pem, tuple(sorted(hosts))) for (ns, name), (pem, hosts) in
            sorted(by_secret.items())]


def payload(state: DesiredState, table: list[dict[str, Any]]) -> dict[str, Any]:
    """What every ingress node is sent (`sync`'s `ingress`): {config, files}, the same for all;
    {} when no Ingress is served (the proxy still runs and answers 404, so the address does)."""
    ingresses = served(state)
    all_routes: list[Route] = [r for o in ingresses for r in routes(o.key.namespace, o.key.name, o.spec)]
    chosen = defaults((o.key.namespace, o.key.name, o.spec) for o in ingresses)
    fallback = chosen.catch_all
    backends: set[Backend] = ({r.backend for r in all_routes} | ({fallback} if fallback else set())
                              | set(chosen.by_host.values()))
    endpoints = backend_endpoints(table, backends)
    rendered = haproxy.render(all_routes, endpoints, fallback, _certificates(state, ingresses),
                              host_defaults=chosen.by_host)
    return {"config": rendered.config, "files": rendered.files}


def addresses(state: DesiredState, lb_ips: Mapping[tuple[str, str], str]) -> list[str]:
    """What every served Ingress answers on (its status.loadBalancer.ingress): the proxy
    Service's LoadBalancer address when it has one, else the ingress nodes' addresses."""
    svc = proxy_service(state)
    if svc is not None and lb_ips.get(svc):
        return [lb_ips[svc]]
    return node_addresses(state, ingress_nodes(state))
