"""Notifications: Slack-compatible JSON (`{"text": ...}`) POSTed to the Cluster manifest's
`spec.notifications` targets when a revision is deployed, a sync fails or a workload
degrades. Sent from a background thread with retries; a pass never waits for them. What was
announced is kept in the state store, so each event is sent once across restarts and controllers."""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gitorch.model.backoff import Backoff, retry
from gitorch.model.objects import DesiredState, ObjectKey
from gitorch.reconcile.controller import PassResult
from gitorch.source import desired
from gitorch.source.git import Repository
from gitorch.store.database import Store, StoreError

log = logging.getLogger(__name__)

EVENTS = ("deployed", "syncFailed", "degraded", "driftFound")
SEND_BACKOFF = Backoff(base=0.5, cap=30.0)  # between attempts to deliver one notification


@dataclass(frozen=True)
class Notification:
    event: str
    text: str
    revision: str

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "event": self.event, "revision": self.revision}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    events: frozenset[str]
    headers: tuple[tuple[str, str], ...] = field(repr=False, default=())

    @property
    def where(self) -> str:
        """The target as it may be printed: a webhook URL's path often holds a token, and its
        user:password part credentials."""
        return f"{self.name} ({urlsplit(self.url).netloc.rpartition('@')[2]})"


@dataclass
class Memory:
    """What was already announced, so each event is sent once."""

    deployed: str = ""
    failed: tuple[str, ...] = ()
    health: dict[ObjectKey, str] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The memory as the store keeps it: JSON, one key per field."""
        return {
            "deployed": self.deployed,
            "failed": list(self.failed),
            "health": {f"{k.kind}/{k.namespace}/{k.name}": v for k, v in sorted(self.health.items())},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Memory:
        """The memory `to_state` gave; missing keys are empty (nothing announced yet)."""
        health: dict[ObjectKey, str] = {}
        for key, value in dict(state.get("health") or {}).items():
            kind, namespace, name = str(key).split("/", 2)
            health[ObjectKey(kind, namespace, name)] = str(value)
        return cls(
            deployed=str(state.get("deployed") or ""),
            failed=tuple(str(f) for f in state.get("failed") or ()),
            health=health,
        )


def notifications_for(result: PassResult, memory: Memory) -> list[Notification]:
    """The events a pass gives, given what was announced before; updates `memory`."""
    r = result.revision
    out: list[Notification] = []
    failure: tuple[str, ...] = ()
    text = ""
    if not result.valid:
        failure = ("invalid", r.oid)
        first = result.diagnostics[0] if result.diagnostics else "it does not validate"
        text = f"gitorch: sync failed: {r.short} ({r.subject}) is invalid and was not applied: {first}"
    elif set(result.node_errors) - result.lost_nodes:
        failing = sorted(set(result.node_errors) - result.lost_nodes)
        failure = ("nodes", r.oid, *failing)
        text = (
            f"gitorch: sync of {r.short} failed on {len(failing)} node(s): "
            + "; ".join(result.node_errors[n] for n in failing[:3])
        )
    if failure and failure != memory.failed:
        out.append(Notification("syncFailed", text, r.oid))
    memory.failed = failure
    if result.plan is not None:
        for key, status in sorted(result.plan.statuses.items()):
            if status.health == "Degraded" and memory.health.get(key) != "Degraded":
                out.append(Notification("degraded", f"gitorch: {key} is Degraded: {status.message}", r.oid))
            memory.health[key] = status.health
        # Workloads gone from the plan are forgotten: the stored memory stays as big as the cluster.
        for key in [k for k in memory.health if k not in result.plan.statuses]:
            del memory.health[key]
    if result.converged and r.oid != memory.deployed:
        memory.deployed = r.oid
        n = len(result.plan.statuses) if result.plan is not None else 0
        text = f"gitorch: deployed {r.short} ({r.subject}); {n} workload(s) healthy"
        out.append(Notification("deployed", text, r.oid))
    return out


def _secret_value(state: DesiredState, ref: dict[str, Any]) -> str | None:
    obj = state.get("Secret", str(ref.get("namespace") or "default"), str(ref.get("name")))
    if obj is None:
        return None
    key = str(ref.get("key"))
    string_data = obj.body.get("stringData") or {}
    if key in string_data:
        return str(string_data[key])
    data = obj.body.get("data") or {}
    if key in data:
        try:
            return base64.b64decode(str(data[key])).decode()
        except ValueError:
            return None
    return None


def targets(state: DesiredState) -> list[Target]:
    """The Cluster manifest's notification targets, with Secret header values resolved."""
    out: list[Target] = []
    for cluster in state.of_kind("Cluster"):
        for t in cluster.spec.get("notifications") or []:
            headers: list[tuple[str, str]] = []
            for h in t.get("headers") or []:
                value = h.get("value")
                if value is None and isinstance(h.get("valueFrom"), dict):
                    ref = h["valueFrom"].get("secretKeyRef") or {}
                    value = _secret_value(state, ref)
                    if value is None:
                        log.warning(
                            f"notification target {t.get('name')}: header {h.get('name')} refers to a missing "
                            f"Secret key {ref.get('namespace', 'default')}/{ref.get('name')}[{ref.get('key')}]"
                        )
                        continue
                headers.append((str(h.get("name")), str(value)))
            out.append(
                Target(
                    name=str(t.get("name")),
                    url=str(t.get("url")),
                    events=frozenset(t.get("events") or EVENTS),
                    headers=tuple(headers),
                )
            )
    return out


_CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows only 307 and 308, which keep the POST and its body (a 301, 302 or 303 would turn
    the notification into a GET without it). The target's headers, which may hold tokens, and
    any credentials go only to the scheme, host and port they were configured for: a redirect
    elsewhere is followed without them."""

    max_redirections = 3

    def __init__(self, secret_headers: frozenset[str]) -> None:
        super().__init__()
        self.secret = _CREDENTIALS | secret_headers

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request:
        scheme, host, port = _origin(newurl)
        where = f"{scheme}://{host}" + (f":{port}" if port not in (None, 80, 443) else "")  # never a path or userinfo
        if code not in (307, 308) or scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                req.full_url, code, f"{msg}, redirected to {where}: set the target's url to where it redirects",
                headers, fp,
            )
        same = _origin(req.full_url) == (scheme, host, port)
        kept = {k: v for k, v in req.headers.items()
                if k.lower() != "content-length" and (same or k.lower() not in self.secret)}
        return urllib.request.Request(newurl, data=req.data, headers=kept, method=req.get_method(),
                                      origin_req_host=req.origin_req_host, unverifiable=True)


def send(target: Target, note: Notification, *, timeout: float = 10.0) -> None:
    """POST one notification; raises on failure."""
    body = json.dumps(note.payload()).encode()
    req = urllib.request.Request(target.url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", "gitorch")
    for name, value in target.headers:
        req.add_header(name, value)
    opener = urllib.request.build_opener(_Redirects(frozenset(name.lower() for name, _ in target.headers)))
    with opener.open(req, timeout=timeout) as resp:
        resp.read()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return True


def _describe(exc: Exception) -> str:
    # Never the request (its headers may hold a token): only what went wrong.
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


class Notifier:
    """Turns passes into notifications and delivers them from one background thread."""

    def __init__(self, repo: Repository, store: Store, *, attempts: int = 5, backoff: Backoff = SEND_BACKOFF) -> None:
        self.repo = repo
        self.store = store
        self.attempts = attempts
        self.backoff = backoff
        self.memory = Memory()
        """What was announced, as of the last `observe` (the store holds the truth)."""
        self._queue: queue.Queue[tuple[Target, Notification] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._deliver, name="gitorch-notify", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def observe(self, result: PassResult) -> None:
        """Queue what this pass gives (called by the pass; never blocks on the network)."""
        # Read every pass, not once at start: after a restart or a leadership handover this
        # controller must see what the previous leader announced, not what it last saw itself.
        try:
            stored = self.store.notification_state()
        except StoreError as exc:  # the next pass tries again
            log.error(f"notifications: cannot read what was already announced: {exc}")
            return
        try:
            memory = Memory.from_state(stored)
        except (ValueError, TypeError) as exc:  # edited by hand; rewritten below
            log.warning(f"notifications: ignoring the unreadable record of what was announced: {exc}")
            memory = Memory()
        notes = notifications_for(result, memory)
        found: list[Target] = []
        if notes:
            try:
                found = targets(self._state(result))
            except Exception as exc:  # notification targets must never break a pass
                log.error(f"notifications: cannot read the targets: {exc}")
        # Announced means queued: the delivery thread retries a failing target, and a send
        # lost with the process is cheaper than a repeat on every restart. Saved before
        # queueing, so a store that cannot be written leaves the events for the next pass.
        current = memory.to_state()
        if any(stored.get(key) != value for key, value in current.items()):
            try:
                self.store.save_notification_state(current)
            except StoreError as exc:
                log.error(f"notifications: cannot record what was announced: {exc}")
                return
        self.memory = memory
        for target in found:
            for note in notes:
                if note.event in target.events:
                    self._queue.put((target, note))

    def drift_found(self, state: DesiredState, text: str, revision: str) -> None:
        """Queue a driftFound notification to every target that wants it (drift reports)."""
        note = Notification("driftFound", text, revision)
        for target in targets(state):
            if note.event in target.events:
                self._queue.put((target, note))

    def _state(self, result: PassResult) -> DesiredState:
        if result.valid:
            return desired.load(self.repo, result.revision.oid)
        last = self.store.last_applied_revision()
        if last is None:
            return desired.load(self.repo, "")
        return desired.load(self.repo, last.commit)

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            self._send(*item)

    def _send(self, target: Target, note: Notification) -> None:
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            send(target, note)

        try:
            retry(once, self.backoff, attempts=self.attempts, sleep=self._stopping.wait,
                  retry_on=lambda exc: _retryable(exc) and not self._stopping.is_set())
        except Exception as exc:
            log.error(f"notification {note.event} to {target.where} failed after {tries} attempt(s): {_describe(exc)}")
            return
        log.info(f"{time.strftime('%H:%M:%S')} notified {target.where}: {note.event}")
