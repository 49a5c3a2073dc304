"""A read-only Kubernetes API on `gitorch serve`: kubectl, client libraries and cluster viewers
read what the store knows as Kubernetes objects; writes are refused with the file and line in
Git to change instead.

Served over HTTPS (a CA and server certificate made in the state folder on first start) on
its own listener (server/http.py), with bearer tokens from a token file. Every serve instance
answers, leader or standby, from the shared store: a `Feed` polls the store's change marks
every `poll` seconds (and at once after a write this process commits), rebuilds what moved
(after a pod change only what that pod feeds into: the pod, its owner, its Services' Endpoints),
and keeps the changes in a bounded ring for watches.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import builtins
import collections
import contextlib
import dataclasses
import functools
import hmac
import itertools
import json
import logging
import os
import secrets
import socket
import threading
import time
import types
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gitorch import __version__
from gitorch.model.errors import GitorchError
from gitorch.model.objects import DesiredState
from gitorch.model.selectors import SelectorSyntaxError
from gitorch.model.selectors import parse as parse_labels
from gitorch.server import kubeobjects as ko
from gitorch.server.http import Endpoint, HttpServer, Incoming, Limits, Reply, Site
from gitorch.source import certificates, desired
from gitorch.source.git import Repository
from gitorch.store.database import PodRecord, Store

log = logging.getLogger(__name__)

KUBE_VERSION = (1, 31)  # the API version the objects follow (kubectl warns past one minor of skew)
JSON = "application/json"
EVENTS_SERVED = 1000  # the newest events only: the store keeps more, a list need not
MAX_LIMIT = 100_000
# Pods written this long before the latest one read are read again: a pass stamps its pods
# with its start time, and may commit after a reader saw a later stamp (passes take < 10 s).
PODS_REREAD = timedelta(seconds=10)
WAKE_COALESCE = 0.005
"""Seconds a feed woken by a write waits for the rest of a burst before it looks."""
POD_FIELDS = tuple(f for f in PodRecord.model_fields if f != "spec")


@dataclass(frozen=True)
class KubeApiSettings:
    """What `serve --kube-api-listen` serves and its bounds."""

    tls_dir: Path
    """Where ca.crt, server.crt and server.key are (made on first start when absent)."""
    token_file: Path
    """One bearer token per line (`TOKEN[,USER]`, `#` comments); made with one token when absent."""
    repo: str = ""
    """How messages name the repository (`edit FILE:LINE in REPO and push`)."""
    hosts: tuple[str, ...] = ()
    """Extra names and addresses for the server certificate (besides the listen address and this host's)."""
    poll: float = 0.1
    """Seconds between looks at the store's change marks: the longest delay of a watch event."""
    first_build_wait: float = 30.0
    """The longest a request waits for the first build of the objects after start (then 503)."""
    ring: int = 50_000
    """Changes kept for watches to resume from; an older resourceVersion gets 410 Gone."""
    max_watches: int = 64
    """Watches and followed logs open at once (429 beyond)."""
    max_watch_seconds: float = 1800.0
    """The longest a watch or a followed log lasts (clients re-open it, as with kube-apiserver)."""
    bookmark_every: float = 10.0
    """Seconds between BOOKMARK events of a watch that asked for them."""
    aggregated_discovery: bool = True
    """Answer `as=APIGroupDiscoveryList` (one request for all discovery); off: plain lists only."""
    limits: Limits = field(default_factory=lambda: Limits(max_connections=256, body_timeout=10.0))


# ---- TLS and tokens -----------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_tls(tls_dir: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) in `tls_dir`, made on first use: a CA of its own and a
    server certificate it signs for `hosts`. Existing files (given by the operator) are kept."""
    ca, cert, key = tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key"
    if not (cert.exists() and key.exists()):
        names = list(dict.fromkeys(h for h in hosts if h and h not in ("0.0.0.0", "::")))
        given = (ca.read_bytes(), (tls_dir / "ca.key").read_bytes()) if ca.exists() and (
            tls_dir / "ca.key").exists() else None
        ca_pem, ca_key, cert_pem, key_pem = certificates.new_serving_pair(names, ca=given)
        _write_private(tls_dir / "ca.key", ca_key)
        _write_private(ca, ca_pem)
        _write_private(key, key_pem)
        _write_private(cert, cert_pem)
        log.info(f"Kubernetes API: made a CA and a server certificate for {', '.join(names)} in {tls_dir}")
    return ca, cert, key


def local_hosts(listen_host: str) -> list[str]:
    """Names a client may use for this machine: the listen address, localhost, the host name
    and its addresses."""
    names = [listen_host, "localhost", "127.0.0.1", "::1", socket.gethostname()]
    with contextlib.suppress(OSError):
        names += [str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)]
    return names


def ensure_token_file(path: Path) -> None:
    if not path.exists():
        _write_private(path, f"{secrets.token_urlsafe(32)},admin\n".encode())
        log.info(f"Kubernetes API: made a token in {path} (`gitorch kubeconfig` prints a kubeconfig with it)")


def read_tokens(path: Path) -> dict[str, str]:
    """token -> user, from a token file (`TOKEN[,USER[,...]]` lines, as kube-apiserver's)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()[:1_000_000]
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, _, rest = line.partition(",")
        if len(token) >= 16:  # a short token is a guessable one: ignored
            out[token.strip()] = rest.split(",")[0].strip().strip('"') or "user"
    return out


def kubeconfig(server: str, ca_pem: bytes, token: str, name: str = "gitorch") -> str:
    """A kubeconfig for the API at `server` (https://HOST:PORT) trusting `ca_pem`."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server,
                                                "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
    }
    return json.dumps(config, indent=2) + "\n"


# ---- the change feed ----------------------------------------------------------------------------


@dataclass
class Change:
    rv: int
    resource: ko.Resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


class Gone(Exception):
    """A resourceVersion older than the changes kept."""


class Feed:
    """What the store holds as Kubernetes objects, rebuilt when the store's change marks move,
    and the changes between builds in a bounded ring. Resource versions are the microsecond of
    the latest store write a build saw (`_next_rv`): shared by every instance."""

    def __init__(self, store: Store, repo: Repository | None, settings: KubeApiSettings) -> None:
        self.store = store
        self.repo = repo
        self.settings = settings
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[Any, ...]] | None = None
        self._checked = 0.0
        self.rv = 0
        self.objects: ko.Built = {r: {} for r in ko.RESOURCES}
        self.ordered: dict[ko.Resource, list[tuple[str, str]]] = {r: [] for r in ko.RESOURCES}
        self.ring: collections.deque[Change] = collections.deque()
        self.floor = 0  # every change after this resourceVersion is in the ring
        self._state: tuple[str, DesiredState | None] = ("", None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.ready = threading.Event()
        """Set once the first build is done."""
        self._thread: threading.Thread | None = None
        self.error: str = ""
        self.commit = ""
        """The applied commit the objects were last built from."""
        self._pod_cache: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        self._pod_rows: dict[tuple[str, str], Any] = {}
        # Indexes of _pod_rows, kept as pods change (a build reads them instead of indexing 10,000 pods).
        self._by_owner: dict[tuple[str, str, str], dict[tuple[str, str], Any]] = {}
        self._by_namespace: dict[str, dict[tuple[str, str], Any]] = {}
        self._touched: set[tuple[str, str]] = set()
        self._touched_owners: set[tuple[str, str, str]] = set()
        self._touched_namespaces: set[str] = set()
        self._sources: ko.Sources | None = None  # what the last build read
        self.listeners: set[Callable[[], None]] = set()
        """Called after each change (the open watches)."""
        self._encoded: dict[tuple[int, str], tuple[dict[str, Any], bytes]] = {}
        self._pods_read: datetime | None = None  # the latest `updated_at` read

    def start(self) -> Feed:
        """Build in the feed's own thread: serve goes on at once, and a request waits for the
        first build (10,000 pods take seconds) up to `first_build_wait`, then gets a 503."""
        self.store.written.append(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="gitorch-kubeapi-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(ValueError):
            self.store.written.remove(self._wake.set)
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        # A write this process commits wakes the feed at once (the leader's own writes: watches
        # see them within a build's time); another instance's writes are seen at the next poll.
        while not self.ready.is_set() and not self._stop.is_set():
            try:
                self.refresh(force=True)
                self.ready.set()
            except Exception as exc:  # a store not reachable yet: tried again after a poll
                if str(exc) != self.error:
                    log.warning(f"Kubernetes API: cannot read the store: {exc}")
                self.error = str(exc)
                self._stop.wait(max(self.settings.poll, 1.0))
        took = 0.0
        while not self._stop.is_set():
            if self._wake.wait(self.settings.poll):
                # The rest of a burst of transactions joins this look; and under a stream of writes
                # (thousands of pods starting) the feed rests as long as its last build took, so it
                # never takes more than half a core from the controller beside it.
                self._stop.wait(max(WAKE_COALESCE, took))
                self._wake.clear()
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                self.refresh()
            except Exception as exc:  # a store hiccup: the next look retries
                if str(exc) != self.error:
                    log.warning(f"Kubernetes API: cannot read the store: {exc}")
                self.error = str(exc)
            took = time.monotonic() - started

    def _next_rv(self, marks: Mapping[str, tuple[Any, ...]]) -> int:
        """The microsecond of the latest write the store's marks show: every instance that sees
        the same store gives the same change the same version, so a client may list on one and
        watch on another behind a load balancer. A change no timestamp shows (a deletion) takes
        the next number."""
        latest = 0
        for values in marks.values():
            for v in values:
                if isinstance(v, datetime):
                    when = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
                    latest = max(latest, int(when.timestamp() * 1_000_000))
        # An empty store: now, so a made-up old version (resourceVersion=1) is still too old.
        return max(self.rv + 1, latest or time.time_ns() // 1000)

    def state(self, commit: str) -> DesiredState | None:
        """The desired state of the applied commit (kept while it stays the applied one)."""
        if self.repo is None or not commit:
            return None
        if self._state[0] != commit:
            try:
                self._state = (commit, desired.load(self.repo, commit))
            except GitorchError as exc:
                log.warning(f"Kubernetes API: cannot read commit {commit[:7]}: {exc}")
                self._state = (commit, None)
        return self._state[1]

    def sources(self) -> ko.Sources:
        store = self.store
        pods, self._touched = self._pods()
        last = store.last_applied_revision()
        commit = self.commit = last.commit if last else ""
        origins: dict[tuple[str, str, str], ko.Origin] = {}
        state = self.state(commit)
        if state is not None:
            for key, obj in state.objects.items():
                origins[(key.kind, key.namespace, key.name)] = ko.Origin(obj.path, _line(obj))
        return ko.Sources(
            objects=store.objects(), pods=pods, nodes=store.nodes(), pod_rows=self._pod_rows,
            pods_by_owner=self._by_owner, pods_by_namespace=self._by_namespace,
            events=store.events(limit=EVENTS_SERVED),
            cluster_ips={(c.namespace, c.service): c.ip for c in store.cluster_ips()},
            node_ports={(p.namespace, p.service, p.port_name): p.port for p in store.node_ports()},
            load_balancers={(b.namespace, b.service): b.ip for b in store.load_balancer_ips()},
            commit=commit, origins=origins, pod_cache=self._pod_cache,
        )

    def _pods(self, count: int | None = None) -> tuple[list[Any], set[tuple[str, str]]]:
        """Every pod, reading again only those written lately, and the keys of the pods that
        changed or went. `count`: how many pods the store holds now; when it is what was read
        and no pod is new, none went either, and the keys are not read."""
        rows = self._pod_rows
        if self._pods_read is None:
            changed = self.store.pods(spec=False)
        else:
            changed = self.store.pods_updated_since(self._pods_read - PODS_REREAD)
        touched: set[tuple[str, str]] = set()
        self._touched_owners, self._touched_namespaces = set(), set()
        for p in changed:  # plain values: a row's attributes are read many times per build
            values = vars(p)  # model_construct rows: their fields, without the ORM's descriptors
            new = types.SimpleNamespace(**{k: values.get(k) for k in POD_FIELDS})
            key = (new.namespace, new.name)
            old = rows.get(key)
            if old != new:
                if old is not None:
                    self._unindex(key, old)
                rows[key] = new
                self._index(key, new)
                touched.add(key)
        if count is None or count != len(rows):
            keys = self.store.pod_keys()
            for gone in set(rows) - keys:
                self._unindex(gone, rows.pop(gone))
                touched.add(gone)
        if changed:
            latest = max(vars(p)["updated_at"] for p in changed)
            self._pods_read = latest if self._pods_read is None else max(self._pods_read, latest)
        return list(rows.values()), touched

    def _index(self, key: tuple[str, str], row: Any) -> None:
        owner = (row.owner_kind, row.namespace, row.owner_name)
        self._by_owner.setdefault(owner, {})[key] = row
        self._by_namespace.setdefault(row.namespace, {})[key] = row
        self._touched_owners.add(owner)
        self._touched_namespaces.add(row.namespace)

    def _unindex(self, key: tuple[str, str], row: Any) -> None:
        owner = (row.owner_kind, row.namespace, row.owner_name)
        mine = self._by_owner.get(owner)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._by_owner[owner]
        here = self._by_namespace.get(row.namespace)
        if here is not None:
            here.pop(key, None)
            if not here:
                del self._by_namespace[row.namespace]
        self._touched_owners.add(owner)
        self._touched_namespaces.add(row.namespace)

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild if the store moved since the last look; True when it did."""
        with self._lock:
            marks = self.store.marks()
            self._checked = time.monotonic()
            if not force and marks == self._marks:
                return False
            first = self._marks is None
            # Only pods moved (a status change: the common case): the rest of the store is not
            # read again, and the other pods and the events stay as built.
            only_pods = not force and self._marks is not None and all(
                marks[k] == self._marks.get(k) for k in marks if k not in ("pods", "drift"))
            pods_res = ko.BY_PATH[("", "v1", "pods")]
            events_res = ko.BY_PATH[("", "v1", "events")]
            if only_pods and self._sources is not None:
                pods, self._touched = self._pods(int(marks["pods"][0]))
                sources = dataclasses.replace(self._sources, pods=pods, touched_pods=self._touched,
                                              previous_pods=self.objects[pods_res], previous=self.objects,
                                              touched_owners=self._touched_owners,
                                              touched_namespaces=self._touched_namespaces)
                sources.reset()
            else:
                only_pods = False
                sources = self.sources()
            built = ko.build(sources)
            if only_pods:
                built[events_res] = self.objects[events_res]
            self._sources = dataclasses.replace(sources, touched_pods=None, previous_pods={}, previous=None,
                                                touched_owners=set(), touched_namespaces=set())
            rv = self._next_rv(marks)
            self._marks = marks
            changes: list[Change] = []
            for resource, objects in built.items():
                before = self.objects.get(resource, {})
                keys = objects.keys() if not (only_pods and resource is pods_res) else [
                    k for k in self._touched if k in objects]
                for key in keys:
                    obj = objects[key]
                    old = before.get(key)
                    if old is obj:  # reused as it was (a pod whose inputs did not change)
                        continue
                    if old is not None:
                        version = old["metadata"].pop("resourceVersion")
                        same = old == obj
                        old["metadata"]["resourceVersion"] = version
                        if same:
                            objects[key] = old
                            continue
                    obj["metadata"]["resourceVersion"] = str(rv)
                    changes.append(Change(rv, resource, "ADDED" if old is None else "MODIFIED", obj, old))
                gone = [k for k in self._touched if k not in objects and k in before] if (
                    only_pods and resource is pods_res) else [k for k in before if k not in objects]
                for key in gone:
                    changes.append(Change(rv, resource, "DELETED", before[key]))
                if len(objects) != len(before) or gone:
                    self.ordered[resource] = sorted(objects)
            self.objects = built
            for c in changes:  # forget the encodings of objects no longer served (they hold the objects)
                dropped = c.old if c.type == "MODIFIED" else c.obj if c.type == "DELETED" else None
                if dropped is not None:
                    for form in ("", "meta", "cells"):
                        self._encoded.pop((id(dropped), form), None)
            if not changes and not first:
                return False
            self.rv = rv
            if first:
                self.floor = rv
                return True
            self.ring.extend(changes)
            while len(self.ring) > self.settings.ring:
                self.floor = self.ring.popleft().rv
        for listener in list(self.listeners):  # the watches: outside the lock, they only schedule
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                listener()
        return True

    def encoded(self, obj: dict[str, Any], form: str, resource: ko.Resource | None = None) -> bytes:
        """An object as JSON (`form` ""), as PartialObjectMetadata ("meta") or its table cells
        ("cells", ages marked), encoded once per version of it: a list of 10,000 pods joins
        bytes instead of encoding them."""
        key = (id(obj), form)
        kept = self._encoded.get(key)
        if kept is not None and kept[0] is obj:
            return kept[1]
        shown: Any = obj
        if form == "meta":
            shown = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                     "metadata": obj.get("metadata", {})}
        elif form == "cells":
            assert resource is not None
            shown = ko.table_cells(resource, obj, None)
        data = json.dumps(shown, separators=(",", ":")).encode()
        self._encoded[key] = (obj, data)
        return data

    def fresh(self) -> None:
        """Look at the store now if the feed has not in the last poll interval (a list right
        after a change sees it, whatever the poll thread is doing)."""
        if (not self.ready.is_set() and self._thread is not None
                and not self.ready.wait(self.settings.first_build_wait)):
            raise Starting("gitorch: the Kubernetes API is still reading the store; try again shortly")
        if time.monotonic() - self._checked > self.settings.poll:
            self.refresh()

    def since(self, rv: int, limit: int | None = None) -> list[Change]:
        """The changes after `rv` (oldest first); raises Gone when they are no longer kept."""
        with self._lock:
            if rv < self.floor:
                raise Gone(f"too old resource version: {rv} ({self.floor})")
            if not self.ring or self.ring[-1].rv <= rv:
                return []
            out = [c for c in reversed(self.ring) if c.rv > rv]
            out.reverse()
            return out[:limit]


def _line(obj: Any) -> int:
    try:
        return int(obj.document.position("").line)
    except Exception:  # a document without positions (generated): its first line
        return 1


# ---- requests -----------------------------------------------------------------------------------


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None,
           headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A Kubernetes Status object as the reply: what every client library reads for errors."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return Reply(code, json.dumps(body), JSON, headers)


def _json(data: Any, content_type: str = JSON) -> Reply:
    return Reply(200, json.dumps(data, separators=(",", ":")), content_type)


@dataclass(frozen=True)
class Target:
    """What a request path names."""

    resource: ko.Resource
    namespace: str | None
    name: str | None
    sub: str | None = None


def parse_path(path: str) -> Target | str | None:
    """A resource path to a Target; a discovery path stays a string; None: no such path."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return path
    if not rest:
        return path
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = ko.BY_PATH.get((group, version, rest[0]))
    if resource is None or len(rest) > 3:
        return None
    if namespace is not None and not resource.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return Target(resource, namespace, name, sub)


class KubeApi:
    """The endpoints of the read-only API, answered from a Feed."""

    def __init__(self, feed: Feed, settings: KubeApiSettings, *, address: str = "",
                 stopping: threading.Event | None = None) -> None:
        self.feed = feed
        self.settings = settings
        self.address = address
        self.stopping = stopping or threading.Event()
        self._streams = threading.BoundedSemaphore(settings.max_watches)
        self._tokens: tuple[float, dict[str, str]] = (-1.0, {})

    def endpoints(self) -> list[Endpoint]:
        methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
        handler = self.handle
        review = Endpoint("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", self.review, ("POST",),
                          max_body=64 * 1024)
        return [review] + [Endpoint(p, handler, methods, max_body=3 * 1024 * 1024) for p in (
            "/version", "/api", "/apis", "/api/{rest:path}", "/apis/{rest:path}", "/openapi/{rest:path}",
            "/livez", "/readyz")]

    def site(self) -> Site:
        site = Site()
        site.add("kubeapi", self.endpoints())
        return site

    # ---- authentication ----

    def _user(self, request: Incoming) -> str | None:
        path = self.settings.token_file
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        if mtime != self._tokens[0]:
            self._tokens = (mtime, read_tokens(path))
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        token = token.strip()
        for known, user in self._tokens[1].items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        return None

    # ---- dispatch ----

    def handle(self, request: Incoming) -> Reply:
        path = request.path.rstrip("/") or "/"
        if path in ("/livez", "/readyz"):
            return Reply(200, "ok")
        if path == "/version":
            return _json(self.version())
        if self._user(request) is None:
            return status(401, "Unauthorized", "Unauthorized: a bearer token from the token file is needed "
                                               "(`gitorch kubeconfig` prints a kubeconfig with one)")
        if path.startswith("/openapi/v3"):
            # Schemas that accept any object: kubectl's client-side validation passes, so a write
            # reaches refuse_write and its message names the Git file.
            found = ko.openapi_v3(path.removeprefix("/openapi/v3").strip("/"), _schemas())
            if found is not None:
                return _json(found)
        if path.startswith("/openapi"):
            return status(404, "NotFound", "gitorch serves no OpenAPI schemas (`kubectl explain` needs them)")
        try:
            target = parse_path(path)
            if isinstance(target, str):
                if request.method != "GET":
                    return status(405, "MethodNotAllowed", "gitorch: the API is read-only")
                return self.discovery(path, request)
            if target is None:
                return status(404, "NotFound", f"the server could not find the requested resource ({path})")
            if target.resource.plural == "pods" and target.sub in ("exec", "attach", "portforward", "proxy"):
                return status(403, "Forbidden", f"gitorch: pods/{target.sub} is not offered by the read-only API; "
                                                "reach the node over SSH (`gitorch nodes` names them)")
            if request.method != "GET":
                return self.refuse_write(target, request.method)
            if target.sub is not None:
                return self.subresource(target, request)
            if request.query.get("watch") in ("1", "true", "True"):
                return self.watch(target, request)
            if target.name is not None:
                return self.get(target, request)
            return self.list(target, request)
        except _BadRequest as exc:
            return status(400, "BadRequest", str(exc))
        except Gone as exc:
            return status(410, "Expired", str(exc))
        except Starting as exc:
            return status(503, "ServiceUnavailable", str(exc), headers=(("Retry-After", "5"),))
        except Exception as exc:  # a bug or the store gone: a Status clients understand, the trace in the log
            log.error(f"Kubernetes API: {request.method} {path} failed: {exc}", exc_info=True)
            return status(500, "InternalError", f"gitorch: {type(exc).__name__} while answering {path}")

    async def review(self, request: Incoming) -> Reply:
        """`kubectl auth can-i` and cluster viewers ask what they may do: read, never write."""
        if self._user(request) is None:
            return status(401, "Unauthorized", "Unauthorized: a bearer token from the token file is needed")
        try:
            asked = json.loads(await request.body())
            attrs = asked.get("spec", {}).get("resourceAttributes") or asked.get("spec", {}).get(
                "nonResourceAttributes") or {}
            verb = str(attrs.get("verb", ""))
        except (ValueError, AttributeError):
            return status(400, "BadRequest", "expected a SelfSubjectAccessReview")
        sub = str(attrs.get("subresource", ""))
        allowed = verb in ("get", "list", "watch") and sub in ("", "log", "status", "scale")
        reason = "gitorch's API is read-only" if not allowed else "every token reads everything"
        return _json({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                      "metadata": {}, "spec": asked.get("spec", {}),
                      "status": {"allowed": allowed, "denied": not allowed, "reason": reason}})

    # ---- discovery ----

    def version(self) -> dict[str, Any]:
        major, minor = KUBE_VERSION
        return {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.0+gitorch-{__version__}",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "python",
                "compiler": "gitorch", "platform": "linux/amd64"}

    def discovery(self, path: str, request: Incoming) -> Reply:
        accept = request.headers.get("accept", "")
        aggregated = self.settings.aggregated_discovery and "as=APIGroupDiscoveryList" in accept
        if path in ("/api", "/apis") and aggregated:
            version = "v2" if "v=v2;" in accept.replace(" ", "") + ";" or "v=v2," in accept else "v2beta1"
            body = ko.aggregated_discovery(core=path == "/api")
            body["apiVersion"] = f"apidiscovery.k8s.io/{version}"
            return _json(body, f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
        if path == "/api":
            return _json({"kind": "APIVersions", "versions": ["v1"],
                          "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}]})
        if path == "/apis":
            return _json(ko.api_group_list())
        parts = [p for p in path.split("/") if p]
        if parts == ["api", "v1"]:
            return _json(ko.api_resource_list("", "v1"))
        if len(parts) == 2 and parts[0] == "apis":
            group = next((g for g in ko.api_group_list()["groups"] if g["name"] == parts[1]), None)
            if group is not None:
                return _json({"kind": "APIGroup", "apiVersion": "v1", **group})
        if len(parts) == 3 and parts[0] == "apis":
            found = ko.api_resource_list(parts[1], parts[2])
            if found is not None:
                return _json(found)
        return status(404, "NotFound", f"the server could not find the requested resource ({path})")

    # ---- reads ----

    def _object(self, target: Target) -> dict[str, Any] | None:
        assert target.name is not None
        self.feed.fresh()
        ns = target.namespace or "" if target.resource.namespaced else ""
        return self.feed.objects.get(target.resource, {}).get((ns, target.name))

    def _not_found(self, target: Target) -> Reply:
        r = target.resource
        return status(404, "NotFound", f'{r.plural}{"." + r.group if r.group else ""} "{target.name}" not found',
                      {"name": target.name, "group": r.group, "kind": r.plural})

    def get(self, target: Target, request: Incoming) -> Reply:
        obj = self._object(target)
        if obj is None:
            return self._not_found(target)
        if _wants_table(request):
            return self._table(target.resource, [obj], request, {"resourceVersion": obj["metadata"]["resourceVersion"]})
        return _json(obj)

    def _selection(self, target: Target, request: Incoming) -> Callable[[dict[str, Any]], bool]:
        try:
            labels = parse_labels(request.query.get("labelSelector", ""))
            fields = ko.parse_field_selector(request.query.get("fieldSelector", ""))
        except (SelectorSyntaxError, ValueError) as exc:
            raise _BadRequest(str(exc)) from None
        if target.name is not None:
            fields.append(("metadata.name", True, target.name))
        if target.namespace is not None and target.resource.namespaced:
            fields.append(("metadata.namespace", True, target.namespace))
        labels_or_none = labels if labels["matchExpressions"] else None
        return lambda obj: ko.selected(obj, labels_or_none, fields)

    def list(self, target: Target, request: Incoming) -> Reply:
        self.feed.fresh()
        keep = self._selection(target, request)
        limit = _int(request.query.get("limit"), 0)
        start: tuple[str, str] | None = None
        token = request.query.get("continue", "")
        if token:
            try:
                ns, name = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
                start = (str(ns), str(name))
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise _BadRequest("continue: not a token this server gave") from None
        with self.feed._lock:
            rv = self.feed.rv
            objects = self.feed.objects.get(target.resource, {})
            order = self.feed.ordered.get(target.resource, [])
            items: list[dict[str, Any]] = []
            more = ""
            first = bisect.bisect_right(order, start) if start is not None else 0
            for key in itertools.islice(order, first, None):
                obj = objects.get(key)
                if obj is None or not keep(obj):
                    continue
                if limit and len(items) >= min(limit, MAX_LIMIT):
                    more = base64.urlsafe_b64encode(json.dumps({"after": _key(items[-1])}).encode()).decode()
                    break
                items.append(obj)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if more:
            meta["continue"] = more
        r = target.resource
        if _wants_table(request):
            return self._table(r, items, request, meta)
        head = json.dumps({"kind": f"{r.kind}List", "apiVersion": r.group_version, "metadata": meta},
                          separators=(",", ":")).encode()
        encoded = self.feed.encoded
        body = head[:-1] + b',"items":[' + b",".join(encoded(o, "") for o in items) + b"]}"
        return Reply(200, body, JSON)

    def _table(self, resource: ko.Resource, items: builtins.list[dict[str, Any]], request: Incoming,
               meta: dict[str, Any]) -> Reply:
        include = request.query.get("includeObject", "Metadata")
        data = ko.table(resource, [], include, datetime.now(UTC), meta)
        now = datetime.now(UTC)
        encoded = self.feed.encoded
        rows = []
        form = "" if include == "Object" else "meta"
        for obj in items:  # each object's row encoded once; the ages in it on every request
            shown = b"" if include == "None" else b',"object":' + encoded(obj, form)
            rows.append(b'{"cells":' + encoded(obj, "cells", resource) + shown + b"}")
        head = json.dumps(data, separators=(",", ":")).encode()
        assert head.endswith(b'"rows":[]}')
        body = head[: -len(b"]}")] + ko.ages(b",".join(rows), now) + b"]}"
        return Reply(200, body, "application/json;as=Table;v=v1;g=meta.k8s.io")

    # ---- watch ----

    def watch(self, target: Target, request: Incoming) -> Reply:
        keep = self._selection(target, request)
        wanted = request.query.get("resourceVersion", "")
        self.feed.fresh()
        initial: list[Change] = []
        if wanted in ("", "0"):
            with self.feed._lock:
                cursor = self.feed.rv
                initial = [Change(cursor, target.resource, "ADDED", o)
                           for o in self.feed.objects.get(target.resource, {}).values() if keep(o)]
        else:
            cursor = _int(wanted, -1)
            if cursor < 0:
                raise _BadRequest(f"resourceVersion {wanted!r}: not a number")
            self.feed.since(cursor, limit=1)  # 410 Gone now, before the stream starts
        if not self._streams.acquire(blocking=False):
            return status(429, "TooManyRequests", f"too many watches open (at most {self.settings.max_watches})",
                          headers=(("Retry-After", "1"),))
        seconds = min(float(_int(request.query.get("timeoutSeconds"), 0) or self.settings.max_watch_seconds),
                      self.settings.max_watch_seconds)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        as_table = _wants_table(request)
        include = request.query.get("includeObject", "Metadata")
        resource = target.resource

        def frame(kind: str, obj: dict[str, Any]) -> bytes:
            if as_table and kind != "BOOKMARK":
                obj = ko.table(resource, [obj], include, datetime.now(UTC), {"resourceVersion":
                                                                               obj["metadata"]["resourceVersion"]})
            return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"

        async def events() -> AsyncIterator[bytes]:
            nonlocal cursor
            loop = asyncio.get_running_loop()
            woken = asyncio.Event()

            def wake() -> None:  # from the feed's thread, after each change
                loop.call_soon_threadsafe(woken.set)

            self.feed.listeners.add(wake)
            try:
                for c in initial:
                    yield frame("ADDED", c.obj)
                deadline = time.monotonic() + seconds
                marked = time.monotonic()
                while time.monotonic() < deadline and not self.stopping.is_set():
                    try:
                        changes = self.feed.since(cursor)
                    except Gone as exc:
                        err = json.loads(str(status(410, "Expired", str(exc)).body))
                        yield json.dumps({"type": "ERROR", "object": err}).encode() + b"\n"
                        return
                    for c in changes:
                        cursor = c.rv
                        if c.resource is not resource:
                            continue
                        now_in = keep(c.obj)
                        was_in = c.old is not None and keep(c.old)
                        if c.type == "DELETED":
                            if now_in:
                                yield frame("DELETED", c.obj)
                        elif now_in:
                            yield frame("ADDED" if c.type == "ADDED" or not was_in else "MODIFIED", c.obj)
                        elif was_in and c.old is not None:
                            yield frame("DELETED", c.old)
                    if bookmarks and time.monotonic() - marked > self.settings.bookmark_every:
                        marked = time.monotonic()
                        cursor = max(cursor, self.feed.rv)
                        yield frame("BOOKMARK", {"kind": resource.kind, "apiVersion": resource.group_version,
                                                 "metadata": {"resourceVersion": str(cursor)}})
                    woken.clear()
                    if self.feed.rv <= cursor:  # nothing new since the loop looked: wait for the feed
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), 1.0)
            finally:
                self.feed.listeners.discard(wake)
                release()

        released = threading.Lock()

        def release() -> None:  # once: from the stream's end, or when a stream never started is collected
            if released.acquire(blocking=False):
                self._streams.release()

        stream = events()
        weakref.finalize(stream, release)
        content = "application/json;as=Table;v=v1;g=meta.k8s.io" if as_table else JSON
        return Reply(200, b"", content, stream=stream)

    # ---- subresources: logs, and what gitorch does not offer ----

    def subresource(self, target: Target, request: Incoming) -> Reply:
        if target.resource.plural == "pods" and target.sub == "log":
            return self.logs(target, request)
        obj = self._object(target)
        if obj is None:
            return self._not_found(target)
        if target.sub == "status":
            return _json(obj)
        if target.sub == "scale" and target.resource.kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            spec = obj.get("spec") or {}
            meta = {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                    if k in obj["metadata"]}
            return _json({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
                          "spec": {"replicas": spec.get("replicas", 1)},
                          "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                                     "selector": ko._selector_text(obj)}})
        return status(404, "NotFound", f"the server could not find the requested resource ({target.sub})")

    def logs(self, target: Target, request: Incoming) -> Reply:
        obj = self._object(target)
        if obj is None:
            return self._not_found(target)
        node = (obj.get("spec") or {}).get("nodeName")
        if not node:
            return status(400, "BadRequest", f'pod "{target.name}" is not running on any node')
        q = request.query
        payload: dict[str, Any] = {"pod": target.name, "namespace": target.namespace or "default",
                                   "tail": _int(q.get("tailLines"), -1), "previous": q.get("previous") == "true"}
        if q.get("container"):
            payload["container"] = q["container"]
        stamps = q.get("timestamps") == "true"
        if stamps:  # the agent stamps each line with when it was written (an older one ignores it)
            payload["timestamps"] = True
        since = _log_since(q.get("sinceSeconds"), q.get("sinceTime"))
        if since is not None:
            payload["since"] = since
        limit = _int(q.get("limitBytes"), 0)
        if q.get("limitBytes") is not None and limit <= 0:
            raise _BadRequest("limitBytes: a positive number of bytes")
        follow = q.get("follow") == "true"
        state = self.feed.state(self.feed.commit)
        if state is None:
            return status(503, "ServiceUnavailable", "gitorch: no applied revision to find the node in")
        if follow:
            if not self._streams.acquire(blocking=False):
                return status(429, "TooManyRequests", "too many watches and followed logs open",
                              headers=(("Retry-After", "1"),))
            try:
                stream = LogFollow(state, self.settings, node, payload, self._streams.release, limit)
            except Exception as exc:
                self._streams.release()
                return status(500, "InternalError", f"gitorch: logs from node {node}: {exc}")
            return Reply(200, b"", "text/plain", stream=stream)
        try:
            answer = node_logs(state, self.settings, node, payload)
        except Exception as exc:
            return status(500, "InternalError", f"gitorch: logs from node {node}: {exc}")
        text = str(answer.get("log", ""))
        if since is not None and not answer.get("since"):
            return status(400, "BadRequest", f"gitorch: the agent on node {node} is too old to select lines by "
                                             "time; its next sync updates it")
        if stamps and not answer.get("timestamps"):  # an agent from before line times: the time read
            when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")  # as the kubelet: 9 digits
            text = "".join(f"{when} {line}\n" for line in text.splitlines())
        data = text.encode()
        return Reply(200, data[:limit] if limit else data, "text/plain")

    # ---- writes ----

    def refuse_write(self, target: Target, method: str) -> Reply:
        repo = self.settings.repo or "the repository"
        where = self._origin(target)
        r = target.resource
        if where is not None:
            message = f"gitorch: the desired state lives in Git: edit {where} in {repo} and push"
        elif r.kind in ("Event", "Endpoints") or (r.kind == "Node" and not r.group):
            message = f"gitorch: {r.plural} are made by gitorch from the desired state in Git ({repo}); they " \
                      "cannot be written"
        elif target.name is None and method == "DELETE":
            folder = self._folder(target.namespace or "")
            message = (f"gitorch: the desired state lives in Git: remove the {r.plural} from the files under "
                       f"{folder} in {repo} and push")
        else:
            folder = self._folder(target.namespace or "")
            message = (f"gitorch: the desired state lives in Git: add the {r.kind} to a file under {folder} in "
                       f"{repo} and push")
        return status(405, "MethodNotAllowed", message, {"name": target.name or "", "group": r.group,
                                                         "kind": r.plural})

    def _origin(self, target: Target) -> str | None:
        if target.name is None:
            return None
        obj = self._object(target)
        if obj is None:
            return None
        notes = obj["metadata"].get("annotations") or {}
        path = notes.get(ko.ORIGIN + "path")
        if not path:
            return None
        line = notes.get(ko.ORIGIN + "line", "1")
        if target.sub == "scale":
            state = self.feed.state(self.feed.commit)
            found = state.get(target.resource.kind, target.namespace or "", target.name) if state else None
            if found is not None:
                with contextlib.suppress(Exception):  # no replicas written: the object's first line
                    line = str(found.document.position("/spec/replicas").line)
        return f"{path}:{line}"

    def _folder(self, namespace: str) -> str:
        state = self.feed.state(self.feed.commit)
        if state is not None:
            paths = sorted(o.path for k, o in state.objects.items() if k.namespace == namespace) or sorted(
                o.path for o in state.objects.values())
            if paths:
                return paths[0].rpartition("/")[0] + "/" if "/" in paths[0] else "./"
        return f"apps/{namespace or 'default'}/"


@functools.cache
def _schemas() -> dict[str, Any]:
    """Each kind's JSON Schema (the ones validation uses), and "defs" the shared definitions."""
    from gitorch.model.objects import KINDS
    from gitorch.source.validation import SCHEMA_DIR

    out: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        out["defs"] = json.loads((SCHEMA_DIR / "defs.json").read_text()).get("$defs", {})
        for kind, info in KINDS.items():
            out[kind] = json.loads((SCHEMA_DIR / info.schema).read_text())
    return out


class _BadRequest(Exception):
    pass


def _log_since(seconds: str | None, when: str | None) -> float | None:
    """sinceSeconds or sinceTime (RFC 3339) as unix seconds; raises _BadRequest."""
    if seconds is not None and when is not None:
        raise _BadRequest("at most one of sinceTime or sinceSeconds may be specified")
    if seconds is not None:
        n = _int(seconds, 0)
        if n <= 0:
            raise _BadRequest("sinceSeconds: a positive number of seconds")
        return time.time() - n
    if when is not None:
        try:
            parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise _BadRequest(f"sinceTime {when!r}: not an RFC 3339 time") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


class Starting(Exception):
    """The feed has not finished its first build yet."""


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _wants_table(request: Incoming) -> bool:
    accept = request.headers.get("accept", "")
    first = accept.split(",")[0].replace(" ", "")
    return "as=Table" in first


# ---- logs from the node -------------------------------------------------------------------------


def _client(state: DesiredState, settings: KubeApiSettings, node: str) -> Any:
    from gitorch.nodes.client import Fleet
    from gitorch.nodes.endpoints import endpoints, ssh_options
    from gitorch.nodes.ssh import Pool

    eps = [e for e in endpoints(state) if e.name == node]
    if not eps:
        raise GitorchError(f"node {node} is not in the applied revision's Node manifests")
    return Fleet(eps, Pool(ssh_options(state, settings.tls_dir.parent / "known_hosts")))


def node_logs(state: DesiredState, settings: KubeApiSettings, node: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The agent's `logs` answer: `log`, and `timestamps: true` when it stamped the lines."""
    with _client(state, settings, node) as fleet:
        return fleet.clients[node].run_once("logs", payload)


class LogFollow(Iterator[bytes]):
    """A followed log: lines as the node's agent writes them (stamped by it when the payload
    asks for `timestamps`), until the client goes, the deadline passes or the container's log ends."""

    def __init__(self, state: DesiredState, settings: KubeApiSettings, node: str, payload: dict[str, Any],
                 done: Callable[[], None], limit: int = 0) -> None:
        self._done: Callable[[], None] | None = None
        self._left = limit or -1  # limitBytes: the bytes still to send (-1: no limit)
        self._fleet = _client(state, settings, node)
        try:
            client = self._fleet.clients[node]
            self._stream = client.conn.open_stream(client._launcher("logs"))
            self._stream.write(json.dumps({**payload, "follow": True}).encode() + b"\n")
        except BaseException:
            self._fleet.close()
            raise
        self._deadline = time.monotonic() + settings.max_watch_seconds
        self._done = done
        self._closed = False

    def __next__(self) -> bytes:
        while not self._closed and time.monotonic() < self._deadline:
            try:
                line = self._stream.readline(1.0)
            except Exception:  # the log ended or the node went: the stream ends
                break
            if line is None:
                continue
            out = line + b"\n"
            if self._left >= 0:
                if self._left == 0:
                    break
                out = out[:self._left]
                self._left -= len(out)
            return out
        self.close()
        raise StopIteration

    def __del__(self) -> None:  # a stream never started: its slot and SSH connection are freed
        self.close()

    def close(self) -> None:
        self._closed = True
        done: Callable[[], None] | None = getattr(self, "_done", None)  # None: __init__ failed before
        if done is not None:
            self._done = None
            done()
            with contextlib.suppress(Exception):
                self._fleet.close()


# ---- serving ------------------------------------------------------------------------------------


class KubeApiServer:
    """The API's own HTTPS listener and its feed."""

    def __init__(self, store: Store, repo: Repository | None, host: str, port: int,
                 settings: KubeApiSettings) -> None:
        self.settings = settings
        ensure_token_file(settings.token_file)
        self.ca, cert, key = ensure_tls(settings.tls_dir, [*settings.hosts, *local_hosts(host)])
        self.feed = Feed(store, repo, settings)
        self.stopping = threading.Event()
        self.api = KubeApi(self.feed, settings, stopping=self.stopping)
        self.http = HttpServer(host, port, self.api.site(), settings.limits, tls=(cert, key))
        bound = self.http.address
        self.api.address = f"{bound[0]}:{bound[1]}"

    @property
    def url(self) -> str:
        host, port = self.http.address
        return f"https://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> KubeApiServer:
        self.feed.start()
        self.http.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        self.http.close()
        self.feed.stop()
