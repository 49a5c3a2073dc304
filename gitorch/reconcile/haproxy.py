"""HAProxy configuration for an ingress node, rendered from the routes of every Ingress of its class.

Purely computational, no side effects. The `use_backend` lines are ordered so HAProxy's first
match is the answer `gitorch.model.routes.choose` gives: hosts from most to least
specific, each closed by its default backend so a request for a host with rules never falls to
a wildcard; inside a host, paths by element count (longest first), Exact before Prefix. Backends
list the ready pod endpoints themselves (as ingress-nginx does), in a fixed number of server
slots so an endpoint change is a runtime API command, not a reload. TLS certificates are chosen
by SNI from a crt-list; HTTP to a host that has TLS is redirected to HTTPS.

The files returned hold private keys: write them mode 0600 and never print them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gitorch.model.routes import EXACT, Backend, Route, host_rank, path_elements

MIN_SLOTS = 8  # server slots per backend: room for endpoint changes without a reload
MAX_CONNECTIONS = 4096
RUNTIME_SOCKET = "admin.sock"  # in the proxy's directory on the node
DIRECTORY = "."  # the proxy runs in its folder on the node (the agent's root/ingress)
CRT_LIST = "crt-list.txt"


@dataclass(frozen=True)
class Certificate:
    """A TLS Secret's certificate and key (PEM), for these hosts (every host when empty)."""

    namespace: str
    secret: str
    pem: str = field(repr=False)  # certificate chain then key: a secret
    hosts: tuple[str, ...] = ()

    @property
    def file(self) -> str:
        return f"certs/{self.namespace}_{self.secret}.pem"


@dataclass(frozen=True)
class Rendered:
    """The config text (no secrets in it) and the files it names (certificates: secrets)."""

    config: str
    files: dict[str, str] = field(repr=False)


def backend_name(b: Backend) -> str:
    return f"be_{b.namespace}_{b.service}_{b.port}"


def slots(count: int) -> int:
    """Server slots for `count` endpoints: a power of two, at least MIN_SLOTS."""
    n = MIN_SLOTS
    while n < count:
        n *= 2
    return n


def _host_acl(host: str) -> str:
    if not host:
        return ""
    if host.startswith("*."):
        return "{ var(txn.host) -m reg ^[^.]+\\." + re.escape(host[2:].lower()).replace("\\-", "-") + "$ }"
    return "{ var(txn.host) -m str " + host.lower() + " }"


def _path_acls(route: Route) -> list[str]:
    """One condition per alternative (HAProxy ANDs terms on a line, so alternatives are lines)."""
    if route.path_type == EXACT:
        return ["{ path -m str " + route.path + " }"]
    elements = path_elements(route.path)
    if not elements:
        return [""]
    base = "/" + "/".join(elements)
    return ["{ path -m str " + base + " }", "{ path -m beg " + base + "/ }"]


def _ordered_hosts(routes: Sequence[Route]) -> list[str]:
    return sorted({r.host for r in routes}, key=lambda h: (-host_rank(h), h))


def render(
    routes: Sequence[Route],
    endpoints: Mapping[Backend, Sequence[tuple[str, int]]],
    default: Backend | None = None,
    certificates: Sequence[Certificate] = (),
    http_port: int = 80,
    https_port: int = 443,
    directory: str = DIRECTORY,
    host_defaults: Mapping[str, Backend] | None = None,
) -> Rendered:
    """The haproxy.cfg for these routes, sending each backend to its (ready) endpoints; the
    returned files' names are relative to `directory`, where the config expects them."""
    lines = [
        "global",
        "    master-worker",
        f"    maxconn {MAX_CONNECTIONS}",
        f"    stats socket unix@{directory}/{RUNTIME_SOCKET} mode 600 level admin expose-fd listeners",
        "    log stdout format raw local0",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option redispatch",
        "    retries 3",
        # A pod that stops between two syncs (its node is told first) costs a retry, not an error;
        # only GET and HEAD are retried once sent, as a request of another method may have had effect.
        "    retry-on conn-failure empty-response response-timeout",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "",
        "frontend ingress",
        f"    bind :{http_port}",
    ]
    files: dict[str, str] = {}
    if certificates:
        lines.append(f"    bind :{https_port} ssl crt-list {directory}/{CRT_LIST} alpn http/1.1")
        files[CRT_LIST] = "".join(f"{directory}/{c.file} {' '.join(c.hosts)}".rstrip() + "\n" for c in certificates)
        for c in certificates:
            files[c.file] = c.pem
    lines.append("    http-request disable-l7-retry unless METH_GET")
    lines.append("    http-request set-var(txn.host) req.hdr(host),field(1,:),lower")
    tls_hosts = sorted({h for c in certificates for h in c.hosts})
    for host in tls_hosts:
        lines.append(f"    http-request redirect scheme https code 308 if !{{ ssl_fc }} {_host_acl(host)}")
    default_name = backend_name(default) if default else "be_default_404"
    for host in _ordered_hosts(routes):
        mine = [r for r in routes if r.host == host]
        mine.sort(key=lambda r: (-len(path_elements(r.path)), r.path_type != EXACT, -len(r.path), r.ingress))
        for r in mine:
            for cond in _path_acls(r):
                terms = " ".join(t for t in (_host_acl(host), cond) if t)
                lines.append(f"    use_backend {backend_name(r.backend)}" + (f" if {terms}" if terms else ""))
        if host:
            mine_default = (host_defaults or {}).get(host)
            fallback = backend_name(mine_default) if mine_default else default_name
            lines.append(f"    use_backend {fallback} if {_host_acl(host)}")
    lines.append(f"    default_backend {default_name}")
    # By name and port as text: a Service's port by name and by number are two backends.
    backends = sorted({r.backend for r in routes} | ({default} if default else set())
                      | set((host_defaults or {}).values()),
                      key=lambda b: (b.namespace, b.service, str(b.port)))
    for b in backends:
        eps = sorted(endpoints.get(b, ()))
        lines += ["", f"backend {backend_name(b)}", "    balance roundrobin"]
        for i in range(slots(len(eps))):
            if i < len(eps):
                ip, port = eps[i]
                lines.append(f"    server s{i + 1} {ip}:{port}")
            else:
                lines.append(f"    server s{i + 1} 127.0.0.1:1 disabled")
    if not default:
        lines += ["", "backend be_default_404", "    http-request return status 404"]
    return Rendered("\n".join(lines) + "\n", files)


Slots = tuple[tuple[str, int] | None, ...]


def initial_slots(endpoints: Sequence[tuple[str, int]]) -> Slots:
    """The slot table `render` writes for these endpoints: sorted, then free slots."""
    eps = sorted(endpoints)
    return tuple(eps) + (None,) * (slots(len(eps)) - len(eps))


def runtime_commands(
    backend: Backend, current: Slots, wanted: Sequence[tuple[str, int]]
) -> tuple[list[str], Slots] | None:
    """Runtime API commands turning a backend's slots into `wanted` without a reload, and the new
    slot table; None when the endpoints do not fit the slots (then render and reload hitlessly).
    New endpoints are made ready before old ones go to maintenance, so a backend never empties;
    an endpoint that stays keeps its slot and its connections."""
    want = set(wanted)
    added = sorted(want - {ep for ep in current if ep})
    # New endpoints take slots free now: a slot being emptied still serves until its endpoint is out.
    free = [i for i, ep in enumerate(current) if ep is None]
    if len(added) > len(free):
        return None
    table = [ep if ep in want else None for ep in current]
    name = backend_name(backend)
    commands = []
    for i, ep in zip(free, added, strict=False):
        table[i] = ep
        commands += [f"set server {name}/s{i + 1} addr {ep[0]} port {ep[1]}", f"set server {name}/s{i + 1} state ready"]
    for i, old in enumerate(current):
        if old is not None and old not in want:
            commands.append(f"set server {name}/s{i + 1} state maint")
    return commands, tuple(table)
