"""Ingress routing: which backend of which Ingress answers a request, with Kubernetes' semantics.

Purely computational, no side effects. This is the truth the HAProxy rendering (issue 11, part 2)
must reproduce: exact hosts beat wildcard hosts (`*.example.com` covers one DNS label only), the
longest matching path wins and an Exact path beats a Prefix path of the same length, Prefix
matches by path element (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`; a trailing slash
on either side is ignored), ImplementationSpecific is treated as Prefix, and a request no path
answers goes to the Ingress's defaultBackend (or none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

EXACT = "Exact"
PREFIX = "Prefix"
IMPLEMENTATION_SPECIFIC = "ImplementationSpecific"


@dataclass(frozen=True, order=True)
class Backend:
    """A Service and its port (a name or a number) in the Ingress's namespace."""

    namespace: str
    service: str
    port: str | int


@dataclass(frozen=True)
class Route:
    """One path of one rule: `host` is "" for every host."""

    host: str
    path: str
    path_type: str
    backend: Backend
    ingress: str  # namespace/name, for errors and tie-breaks
    where: str = field(default="", compare=False)  # the path's JSON pointer in its Ingress, for errors


def path_elements(path: str) -> list[str]:
    return [e for e in path.split("/") if e]


def path_matches(path_type: str, path: str, request: str) -> bool:
    """Whether a request path matches a rule's path (Kubernetes' table of examples)."""
    if path_type == EXACT:
        return request == path
    want = path_elements(path)
    return path_elements(request)[: len(want)] == want


def host_matches(rule: str, request: str) -> bool:
    """An empty rule host matches every host; `*.b.c` matches `a.b.c` but not `b.c` nor `x.a.b.c`."""
    request = request.lower().rstrip(".")
    if not rule:
        return True
    if rule.startswith("*."):
        label, _, rest = request.partition(".")
        return bool(label) and rest == rule[2:].lower()
    return request == rule.lower()


def host_rank(rule: str) -> int:
    """Higher is more specific: an exact host, then a wildcard, then no host."""
    return 2 if rule and not rule.startswith("*.") else 1 if rule else 0


def _backend(namespace: str, raw: Any) -> Backend | None:
    service = raw.get("service") if isinstance(raw, Mapping) else None
    if not isinstance(service, Mapping):
        return None
    raw_port = service.get("port")
    port: Mapping[str, Any] = raw_port if isinstance(raw_port, Mapping) else {}
    number = port.get("number")
    return Backend(
        namespace, str(service.get("name", "")), number if isinstance(number, int) else str(port.get("name", ""))
    )


def routes(namespace: str, name: str, spec: Mapping[str, Any]) -> list[Route]:
    """Every path of an Ingress's rules (`spec.rules[].http.paths[]`) as routes."""
    out = []
    for i, rule in enumerate(spec.get("rules") or ()):
        host = str(rule.get("host") or "")
        for j, p in enumerate((rule.get("http") or {}).get("paths") or ()):
            backend = _backend(namespace, p.get("backend"))
            if backend is not None:
                path_type = str(p.get("pathType") or IMPLEMENTATION_SPECIFIC)
                out.append(Route(host, str(p.get("path") or "/"), path_type, backend, f"{namespace}/{name}",
                                 f"/spec/rules/{i}/http/paths/{j}"))
    return out


def default_backend(namespace: str, spec: Mapping[str, Any]) -> Backend | None:
    """The Ingress's `spec.defaultBackend`, if any."""
    return _backend(namespace, spec.get("defaultBackend"))


@dataclass(frozen=True)
class Defaults:
    """Where requests no path answers go, as ingress-nginx does it: on a host that has rules, to
    the defaultBackend of the (first, by namespace/name) Ingress with rules for that host and a
    defaultBackend; elsewhere to the catch-all, the first Ingress without rules that has one (else
    the first Ingress with one). `unused`: (Ingress, why) for each defaultBackend with no effect."""

    catch_all: Backend | None = None
    catch_all_ingress: str = ""
    by_host: Mapping[str, Backend] = field(default_factory=dict)
    unused: tuple[tuple[str, str], ...] = ()


def defaults(ingresses: Iterable[tuple[str, str, Mapping[str, Any]]]) -> Defaults:
    """The defaults of these Ingresses ((namespace, name, spec), any order)."""
    ordered = sorted(ingresses, key=lambda i: (i[0], i[1]))
    having = [(f"{ns}/{name}", b, {r.host for r in routes(ns, name, spec)})
              for ns, name, spec in ordered if (b := default_backend(ns, spec)) is not None]
    if not having:
        return Defaults()
    catch_all = next((h for h in having if not h[2]), having[0])
    by_host: dict[str, Backend] = {}
    owner: dict[str, str] = {}
    unused = []
    for ingress, backend, hosts in having:
        won = False
        for host in sorted(h for h in hosts if h):
            if host not in by_host:
                by_host[host], owner[host] = backend, ingress
                won = True
        if ingress == catch_all[0] or won:
            continue
        named = sorted(h for h in hosts if h)
        if named:
            why = (f"its hosts ({', '.join(named)}) take their default from Ingress "
                   f"{', '.join(sorted({owner[h] for h in named}))}, and the catch-all is Ingress {catch_all[0]}'s")
        else:
            why = f"the catch-all default (for requests no rule answers) is Ingress {catch_all[0]}'s"
        unused.append((ingress, why))
    return Defaults(catch_all[1], catch_all[0], by_host, tuple(unused))


def choose(all_routes: Iterable[Route], host: str, path: str, default: Backend | None = None,
           by_host: Mapping[str, Backend] | None = None) -> Backend | None:
    """The backend answering `host` and `path`: the most specific host that has rules decides,
    then the longest matching path (Exact before Prefix at equal length), else that host's
    default in `by_host`, else `default`."""
    candidates = [r for r in all_routes if host_matches(r.host, host)]
    if not candidates:
        return default
    best_rank = max(host_rank(r.host) for r in candidates)
    matching = [r for r in candidates if host_rank(r.host) == best_rank and path_matches(r.path_type, r.path, path)]
    if not matching:
        best_host = next(r.host for r in candidates if host_rank(r.host) == best_rank)
        return (by_host or {}).get(best_host, default)
    # Deterministic among equals: the first Ingress by namespace/name (the older one in Kubernetes).
    winner = min(
        matching,
        key=lambda r: (-len(path_elements(r.path)), r.path_type != EXACT, -len(r.path), r.ingress),
    )
    return winner.backend


def route_key(route: Route) -> tuple[str, str, str]:
    """What two routes must not share: the host (case-folded), the path type (ImplementationSpecific
    is Prefix) and the path as matched (Prefix by elements, so `/foo` and `/foo/` are the same)."""
    path_type = EXACT if route.path_type == EXACT else PREFIX
    path = route.path if path_type == EXACT else "/" + "/".join(path_elements(route.path))
    return route.host.lower(), path_type, path


def conflicts(all_routes: Iterable[Route]) -> list[tuple[Route, Route]]:
    """Pairs (first claimant, later one) of routes of different Ingresses that claim the same host
    and path: the later one could never answer, so validation names both."""
    first: dict[tuple[str, str, str], Route] = {}
    out = []
    for r in sorted(all_routes, key=lambda r: r.ingress):
        claimed = first.setdefault(route_key(r), r)
        if claimed is not r and claimed.ingress != r.ingress:
            out.append((claimed, r))
    return out


def backend_endpoints(
    service_table: Iterable[Mapping[str, Any]], backends: Iterable[Backend]
) -> dict[Backend, list[tuple[str, int]]]:
    """Each backend's ready pod endpoints, from the service table sync already sends
    (`gitorch.reconcile.services.service_table`): a port number is the Service's `port`, a port
    name the Service port's name. A backend with no such Service port gets none (validation
    says so; the proxy answers 503 for it)."""
    by_port: dict[tuple[str, str, str | int], list[tuple[str, int]]] = {}
    for entry in service_table:
        if str(entry.get("protocol") or "TCP") != "TCP":
            continue
        ref, _, port_name = str(entry["name"]).rpartition(":")
        namespace, _, service = ref.partition("/")
        eps = sorted((str(e["ip"]), int(e["port"])) for e in entry.get("endpoints") or ())
        by_port[(namespace, service, int(entry["port"]))] = eps
        if port_name and not port_name.isdigit():
            by_port[(namespace, service, port_name)] = eps
    return {b: by_port.get((b.namespace, b.service, b.port), []) for b in backends}


def missing_backends(
    services: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    all_routes: Iterable[Route],
) -> list[tuple[Route, str]]:
    """Routes whose backend Service or port does not exist, with what is missing; `services`
    maps (namespace, name) to the Service's `spec.ports`."""
    out = []
    for r in all_routes:
        b = r.backend
        ports = services.get((b.namespace, b.service))
        if ports is None:
            out.append((r, f"Service {b.namespace}/{b.service} does not exist"))
        elif not any(p.get("port") == b.port or (p.get("name") and p.get("name") == b.port) for p in ports):
            known = ", ".join(str(p.get("name") or p.get("port")) for p in ports) or "none"
            out.append((r, f"Service {b.namespace}/{b.service} has no port {b.port} (it has: {known})"))
    return out


CONTROLLER = "gitorch.dev/ingress-haproxy"
"""The `spec.controller` of the IngressClasses gitorch's proxy serves."""
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS = "kubernetes.io/ingress.class"


def serving_problem(
    spec: Mapping[str, Any], annotations: Mapping[str, Any], classes: Mapping[str, tuple[str, bool]]
) -> str | None:
    """None when gitorch's proxy serves an Ingress, else why not. `classes` maps each
    IngressClass's name to (its controller, whether it is marked default). As in Kubernetes, an
    Ingress names its class (or the older annotation does) or takes the default class; with no
    IngressClass at all, gitorch's proxy serves every Ingress."""
    name = spec.get("ingressClassName") or annotations.get(LEGACY_CLASS)
    if name:
        if name not in classes:
            return f"IngressClass {name!r} does not exist"
        controller = classes[name][0]
        return None if controller == CONTROLLER else f"IngressClass {name!r} is for controller {controller!r}"
    if not classes:
        return None
    defaults = sorted(n for n, (_, default) in classes.items() if default)
    if not defaults:
        return "it names no IngressClass and none is marked default"
    if len(defaults) > 1:
        return f"it names no IngressClass and several are marked default ({', '.join(defaults)})"
    controller = classes[defaults[0]][0]
    return None if controller == CONTROLLER else f"the default IngressClass is for controller {controller!r}"


def ingress_classes(bodies: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, tuple[str, bool]]:
    """(name, IngressClass body) pairs as `serving_problem` reads them."""
    out = {}
    for name, body in bodies:
        meta = body.get("metadata") or {}
        default = str((meta.get("annotations") or {}).get(DEFAULT_CLASS, "")).lower() == "true"
        out[name] = (str((body.get("spec") or {}).get("controller") or ""), default)
    return out
