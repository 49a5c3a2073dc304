"""The dashboard: read-only HTML pages of `gitorch serve` under `/`, on the same listener as the
webhooks and /metrics. Pages are rendered on the server (Jinja2) from what the store knows
(gitorch/store/summaries.py, the same data the CLI prints); htmx, vendored in static/, swaps a
page's live part when the Server-Sent Events stream at /live says what changed in the store.

Access: with a token (`serve --ui-token-env NAME`) a login page sets a signed, HttpOnly,
Secure, SameSite=Strict cookie; without one only loopback clients are answered. Every stream
is bounded in number and lifetime. Nothing shown reads a Secret's data or a pod's spec.

The only module that imports jinja2 and markdown_it."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import posixpath
import re
import shlex
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import jinja2
from markdown_it import MarkdownIt

from gitorch.model.errors import GitorchError
from gitorch.nodes.client import NodeClient
from gitorch.nodes.ssh import Stream
from gitorch.reconcile import drift
from gitorch.server.http import Endpoint, Incoming, Reply
from gitorch.source import desired
from gitorch.source.diffs import diff_states
from gitorch.source.git import Repository
from gitorch.source.rendering import PlanReport, plan_markdown
from gitorch.store import summaries
from gitorch.store.database import ObjectRecord, Store

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "gitorch_ui"
HTML = "text/html; charset=utf-8"
HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    # Scripts and styles come only from /static: text that reached a page from Git or a node
    # (an object's name, a log line, a plan) can never run, whatever escaping missed.
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
)
TOPICS = ("pods", "objects", "nodes", "events", "revisions", "drift")
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class Limits:
    """Bounds on the dashboard's streams and logins."""

    live_clients: int = 32
    """Server-Sent Events streams of live updates open at once (503 beyond)."""
    live_lifetime: float = 600.0
    """Seconds a live stream lasts; the browser's EventSource then reconnects by itself."""
    poll: float = 1.0
    """Seconds between looks at the store's change marks (one query shared by every stream)."""
    log_streams: int = 8
    """Pod logs followed at once (each holds an SSH channel to a node)."""
    log_lifetime: float = 900.0
    """Seconds a followed log lasts."""
    log_bytes: int = 4 * 1024 * 1024
    """Bytes of log one page receives before its stream ends with a note."""
    log_tail: int = 200
    """Lines of log shown before following."""
    login_failures: int = 5
    """Failed logins per client address a minute (429 beyond)."""
    session_seconds: int = 12 * 3600
    """How long a login lasts."""
    plans_cached: int = 16
    """Rendered plans kept in memory (each costs two loads of the desired state)."""
    live_parts_cached: int = 32
    """Rendered live parts kept in memory, one per page, query and state of the store: every
    viewer a change sends to the same page shares one render."""
    live_parts_chars: int = 8 * 1024 * 1024
    """Characters of rendered live parts kept in memory (the oldest go first beyond it)."""
    live_part_seconds: float = 5.0
    """Seconds a rendered live part is served again (its ages and times are this fresh)."""


class _Slot:
    """A place among a bounded number of streams, given back once (when the stream ends, or
    when its generator is dropped without having started)."""

    def __init__(self, counter: _Counter) -> None:
        self._counter = counter
        self._held = True

    def release(self) -> None:
        with self._counter.lock:
            if self._held:
                self._held = False
                self._counter.value -= 1


@dataclass(frozen=True)
class RollbackSettings:
    """What `serve` was started with that the rollback command on a revision's page repeats, so
    that it is right when copied and pasted on serve's machine."""

    repo: str
    """serve's --repo: a local repository (the command commits there), or a remote's URL (the
    command clones it, commits and pushes)."""
    remote: bool = False
    branch: str | None = None
    """serve's --branch (None: the branch the repository's HEAD names)."""
    wake_url: str | None = None
    """serve's /hooks/wake, for --notify (None: serve has no listener)."""
    state_dir: str | None = None
    """serve's GITORCH_STATE_DIR when it set one (where --notify finds the wake token)."""
    wake_token_env: str | None = None
    """serve's --wake-token-env, when it names another variable than GITORCH_WAKE_TOKEN."""

    def command(self, commit: str, branch: str | None) -> str:
        """The shell command that rolls back to `commit` on `branch` (None: unknown, a placeholder)."""
        q = shlex.quote
        name = q(branch) if branch else "BRANCH"
        if self.remote:
            # A commit in serve's mirror would be fetched over: it goes to the remote.
            url = _without_credentials(self.repo)
            return (f"git clone --branch {name} {q(url)} gitorch-rollback && gitorch rollback {commit[:12]} "
                    f'--reason "..." --repo gitorch-rollback --branch {name} && '
                    f"git -C gitorch-rollback push origin {name}")
        env = []
        if self.wake_url and self.state_dir:
            env.append(f"GITORCH_STATE_DIR={q(self.state_dir)}")
        if self.wake_url and self.wake_token_env and re.fullmatch(r"[A-Za-z_]\w*", self.wake_token_env):
            env.append(f'GITORCH_WAKE_TOKEN="${self.wake_token_env}"')
        notify = f" --notify {q(self.wake_url)}" if self.wake_url else ""
        return " ".join([*env, f'gitorch rollback {commit[:12]} --reason "..." --repo {q(self.repo)} '
                               f"--branch {name}{notify}"])


class _Flight:
    """One render under way, which the requests for the same key wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.text: str | None = None


class _SharedRenders:
    """Rendered live parts by (page, query, the store's change marks read before the render):
    the viewers one change sends to the same page share one render, made by the first of them
    while the others wait. Bounded in count, characters and age."""

    def __init__(self, count: int, chars: int, seconds: float) -> None:
        self.count, self.chars, self.seconds = count, chars, seconds
        self.renders = 0
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[Any, ...], tuple[float, str]] = OrderedDict()
        self._size = 0
        self._flights: dict[tuple[Any, ...], _Flight] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: tuple[Any, ...], render: Callable[[], str]) -> str:
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and time.monotonic() - kept[0] < self.seconds:
                self._kept.move_to_end(key)
                return kept[1]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if flight.done.wait(30) and flight.text is not None:
                return flight.text
            return render()  # the first render failed (its error is this one's too) or hangs
        started = time.monotonic()
        try:
            text = render()
            flight.text = text
            with self._lock:
                self.renders += 1
                old = self._kept.pop(key, None)
                self._size -= len(old[1]) if old is not None else 0
                if len(text) <= self.chars:
                    self._kept[key] = (started, text)
                    self._size += len(text)
                while len(self._kept) > self.count or self._size > self.chars:
                    self._size -= len(self._kept.popitem(last=False)[1][1])
            return text
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()


class _Counter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.value = 0
        self.lock = threading.Lock()

    def take(self) -> _Slot | None:
        with self.lock:
            if self.value >= self.limit:
                return None
            self.value += 1
        return _Slot(self)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


_PLAN_TAGS = re.compile(r"</?(?:details|summary|code|b)>|<!--[^<>]*-->")


def _allowed_html(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    """Raw HTML in a plan's markdown keeps only the tags plan_markdown writes (details, summary,
    code and b, without attributes) and comments: any other tag is shown as text."""
    return re.sub(r"<!--.*?-->|<[^<>]*>?", lambda m: m.group(0) if _PLAN_TAGS.fullmatch(m.group(0))
                  else html.escape(m.group(0)), tokens[idx].content, flags=re.S)


def _without_credentials(url: str) -> str:
    """A remote's URL without a password or an HTTPS token in it (an SSH user name stays)."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    if parts.scheme in ("http", "https"):
        return urlunsplit(parts._replace(netloc=host))
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}@{host}"))


def _digests(marks: dict[str, tuple[Any, ...]]) -> dict[str, str]:
    """Each topic's change marks as 12 hex digits: what a page embeds and a stream compares."""
    return {t: hashlib.sha256(repr(marks.get(t)).encode()).hexdigest()[:12] for t in TOPICS}


def _since_text(digests: dict[str, str], topics: list[str] | tuple[str, ...]) -> str:
    return ",".join(f"{t}:{digests[t]}" for t in TOPICS if t in topics and t in digests)


def _parse_since(text: str) -> dict[str, str]:
    """A live stream's `since=topic:digest,...` (anything else in it is ignored)."""
    out = {}
    for item in text.split(",", len(TOPICS))[: len(TOPICS)]:
        topic, _, digest = item.partition(":")
        if topic in TOPICS and re.fullmatch(r"[0-9a-f]{12}", digest):
            out[topic] = digest
    return out


def _sse(event: str, data: str) -> bytes:
    lines = data.split("\n")
    return (f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _subject(message: str) -> str:
    return message.splitlines()[0] if message else ""


class Dashboard:
    """The dashboard's endpoints over one store. `repo` renders each revision's plan; `client`
    gives the open connection to a node, for pod logs (None: logs are not available);
    `rollback`, what the rollback command repeats of serve's settings."""

    def __init__(
        self,
        store: Store,
        *,
        token: str | None = None,
        repo: Repository | None = None,
        client: Callable[[str], NodeClient | None] | None = None,
        limits: Limits | None = None,
        rollback: RollbackSettings | None = None,
    ) -> None:
        self.store = store
        self.repo = repo
        self.rollback = rollback or (RollbackSettings(str(repo.path)) if repo is not None else None)
        """The rollback command's settings; serve sets its listener's address in once bound."""
        self.client = client
        self.limits = limits or Limits()
        self._key = hashlib.sha256(b"gitorch-ui-session\0" + token.encode()).digest() if token else None
        self._token = token
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(when=_when, age=summaries.age, percent=_percent, short=_short, subject=_subject)
        self._markdown = MarkdownIt("commonmark", {"html": True}).enable("table")
        for rule in ("html_block", "html_inline"):
            self._markdown.add_render_rule(rule, _allowed_html)
        self._static = {p.name: p.read_bytes() for p in (HERE / "static").iterdir() if p.suffix in STATIC_TYPES}
        self._live = _Counter(self.limits.live_clients)
        self._logs = _Counter(self.limits.log_streams)
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._failures_lock = threading.Lock()
        self._plans: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._plans_lock = threading.Lock()
        self._folder_map: tuple[str, dict[tuple[str, str, str], str]] | None = None
        self._marks: dict[str, str] = {}
        self._marks_at = float("-inf")
        self._marks_lock = threading.Lock()
        self._live_parts = _SharedRenders(self.limits.live_parts_cached, self.limits.live_parts_chars,
                                          self.limits.live_part_seconds)
        self._closed = threading.Event()

    def close(self) -> None:
        """End every stream at its next tick (before the listener stops)."""
        self._closed.set()

    # ---- endpoints ----

    def endpoints(self) -> list[Endpoint]:
        pages: list[tuple[str, Callable[[Incoming], dict[str, Any]], str, tuple[str, ...]]] = [
            ("/", self._overview, "overview.html", ("revisions", "objects", "pods", "nodes", "drift", "events")),
            ("/objects", self._objects, "objects.html", ("objects", "pods")),
            ("/revisions", self._revisions, "revisions.html", ("revisions",)),
            ("/revisions/{commit}", self._revision, "revision.html", ("revisions", "events")),
            ("/drift", self._drift, "drift.html", ("drift",)),
            ("/events", self._events, "events.html", ("events",)),
            ("/nodes", self._nodes, "nodes.html", ("nodes", "pods")),
            ("/nodes/{name}", self._node, "node.html", ("nodes", "pods")),
            ("/pods/{namespace}/{name}/logs", self._pod_logs, "logs.html", ("pods",)),
        ]
        out = [Endpoint(path, self._page(fn, template, topics)) for path, fn, template, topics in pages]
        out += [
            Endpoint("/login", self._login_page),
            Endpoint("/login/session", self._login, methods=("POST",), max_body=4096),
            Endpoint("/logout", self._logout, methods=("POST",)),
            Endpoint("/live", self._live_stream),
            Endpoint("/pods/{namespace}/{name}/logs/stream", self._log_stream),
            Endpoint("/static/{name}", self._static_file),
        ]
        return out

    def _page(
        self, fn: Callable[[Incoming], dict[str, Any]], template: str, topics: tuple[str, ...]
    ) -> Callable[[Incoming], Reply]:
        """A page: the whole of it, or (`?part=live`) only its live part, which htmx fetches
        again when the live stream names one of `topics`."""

        def handler(req: Incoming) -> Reply:
            refused = self._refused(req)
            if refused is not None:
                return refused
            # Read before the store is: the page (and its live stream) may announce a change it
            # already shows, never miss one.
            marks = self._marks_now()

            def render(part: bool) -> str:
                context = fn(req)
                context.update(topics=",".join(topics), path=req.path, token_set=self._token is not None,
                               now=datetime.now(UTC), since=_since_text(marks, topics))
                page = self._env.get_template(template)
                if part:
                    return "".join(page.blocks["live"](page.new_context(context)))
                return page.render(context)

            try:
                if req.query.get("part") == "live":
                    key = (template, req.path, tuple(sorted(req.query.items())), tuple(sorted(marks.items())))
                    return Reply(200, self._live_parts.get(key, lambda: render(True)), HTML, HEADERS)
                return Reply(200, render(False), HTML, HEADERS)
            except LookupError as exc:
                return self._error(404, str(exc.args[0]) if exc.args else "not found")

        return handler

    def render(self, path: str, query: dict[str, str] | None = None) -> str:
        """A page's HTML as a loopback GET of `path` would get it (for the bench and tests)."""
        for e in self.endpoints():
            pattern = "^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(e.path)) + "$"
            found = re.match(pattern, path)
            if found is not None and e.methods == ("GET",):
                reply = e.handler(_Probe(path, found.groupdict(), query or {}))  # type: ignore[arg-type]
                assert isinstance(reply, Reply)
                if reply.status != 200:
                    raise LookupError(f"{path}: {reply.status}")
                return reply.body if isinstance(reply.body, str) else reply.body.decode()
        raise LookupError(path)

    # ---- access ----

    def _signed(self, expires: int) -> str:
        assert self._key is not None
        return f"{expires}.{hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()}"

    def _session_ok(self, value: str) -> bool:
        expires, _, _ = value.partition(".")
        if not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signed(int(expires)), value)

    def _refused(self, req: Incoming) -> Reply | None:
        if self._key is None:
            if _is_loopback(req.client):
                return None
            return self._error(403, "The dashboard answers only loopback clients until `gitorch serve` is given a "
                                    "token with --ui-token-env NAME.")
        if self._session_ok(req.cookies.get(COOKIE, "")):
            return None
        if req.path.startswith(("/live", "/static")) or req.path.endswith("/stream") or req.query.get("part"):
            return Reply(401, "log in at /login\n")
        return Reply(303, "", headers=(("Location", "/login?next=" + quote(req.path, safe="/")), *HEADERS))

    def _login_page(self, req: Incoming) -> Reply:
        if self._key is None:
            return Reply(303, "", headers=(("Location", "/"),))
        return self._login_form(req, req.query.get("next", "/"), "", 200)

    def _login_form(self, req: Incoming, next_path: str, error: str, status: int) -> Reply:
        # Browsers keep a Secure cookie only over HTTPS or from loopback: say so before a login
        # that would seem to work and lead back here.
        plain = not _is_loopback(req.client) and req.headers.get("x-forwarded-proto", "") != "https"
        page = self._env.get_template("login.html")
        return Reply(status, page.render(next=_safe_next(next_path), error=error, path="/login", topics="",
                                         token_set=True, plain_http=plain, now=datetime.now(UTC)), HTML, HEADERS)

    async def _login(self, req: Incoming) -> Reply:
        if self._key is None or self._token is None:
            return Reply(303, "", headers=(("Location", "/"),))
        if self._too_many(req.client, count=False):
            return self._login_form(req, "/", "Too many failed logins from this address; wait a minute.", 429)
        form = parse_qs((await req.body()).decode("utf-8", "replace"), max_num_fields=4)
        given = (form.get("token") or [""])[0]
        next_path = _safe_next((form.get("next") or ["/"])[0])
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                                   hashlib.sha256(self._token.encode()).digest()):
            self._too_many(req.client, count=True)
            log.warning(f"dashboard: a failed login from {req.client or 'an unknown address'}",
                        extra={"event": "ui-login-failed"})
            return self._login_form(req, next_path, "That token is not the dashboard's token.", 401)
        expires = int(time.time()) + self.limits.session_seconds
        cookie = (f"{COOKIE}={self._signed(expires)}; Path=/; Max-Age={self.limits.session_seconds}; "
                  "HttpOnly; Secure; SameSite=Strict")
        return Reply(303, "", headers=(("Location", next_path), ("Set-Cookie", cookie), *HEADERS))

    def _logout(self, req: Incoming) -> Reply:
        cookie = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        return Reply(303, "", headers=(("Location", "/login" if self._key else "/"), ("Set-Cookie", cookie)))

    def _too_many(self, client: str, *, count: bool) -> bool:
        """Whether `client` failed `login_failures` times in the last minute (`count`: one more)."""
        now = time.monotonic()
        with self._failures_lock:
            seen = self._failures.get(client)
            if seen is None:
                if not count:
                    return False
                seen = self._failures[client] = deque(maxlen=self.limits.login_failures)
                while len(self._failures) > 1024:  # bounded: the oldest addresses are forgotten
                    self._failures.popitem(last=False)
            while seen and now - seen[0] > 60:
                seen.popleft()
            if count:
                seen.append(now)
                self._failures.move_to_end(client)
            return len(seen) >= self.limits.login_failures

    def _error(self, status: int, message: str) -> Reply:
        page = self._env.get_template("error.html")
        return Reply(status, page.render(message=message, status=status, path="", topics="",
                                         token_set=self._key is not None, now=datetime.now(UTC)), HTML, HEADERS)

    def _static_file(self, req: Incoming) -> Reply:
        name = req.params.get("name", "")
        data = self._static.get(name)
        if data is None:
            return Reply(404, "not found\n")
        kind = STATIC_TYPES[Path(name).suffix]
        return Reply(200, data, kind, (("Cache-Control", "public, max-age=3600"),
                                       ("X-Content-Type-Options", "nosniff")))

    # ---- pages ----

    def _overview(self, req: Incoming) -> dict[str, Any]:
        applied = self.store.last_applied_revision()
        latest = self.store.revisions(limit=1)
        reports = self.store.drift_reports(limit=2)
        report = drift.report_json(reports[0], reports[1] if len(reports) > 1 else None) if reports else None
        warnings = [e for e in self.store.events(limit=200) if e.type == "Warning"][-5:]
        return {
            "applied": applied,
            "latest": latest[0] if latest else None,
            "counts": summaries.counts(self.store),
            "nodes": self.store.nodes(),
            "report": report,
            "warnings": list(reversed(warnings)),
        }

    def _objects(self, req: Incoming) -> dict[str, Any]:
        namespace = req.query.get("namespace") or None
        folders = self._folders() if req.query.get("by") == "folder" else None
        group = None
        if folders is not None:
            def group(o: ObjectRecord) -> str:
                return folders.get((o.kind, o.namespace, o.name), "(not in the applied revision)")
        return {"spaces": summaries.tree(self.store, namespace, group), "namespace": namespace or "",
                "by": "folder" if folders is not None else "namespace", "can_fold": self.repo is not None}

    def _folders(self) -> dict[tuple[str, str, str], str] | None:
        """Each object's folder in the applied revision (None: no repository, or not readable);
        kept for the revision it was read from."""
        applied = self.store.last_applied_revision()
        if self.repo is None or applied is None:
            return None
        with self._plans_lock:
            if self._folder_map is not None and self._folder_map[0] == applied.commit:
                return self._folder_map[1]
        try:
            state = desired.load(self.repo, applied.commit)
        except GitorchError:
            return None
        folders = {(k.kind, k.namespace, k.name): posixpath.dirname(o.path) or "/" for k, o in state.objects.items()}
        with self._plans_lock:
            self._folder_map = (applied.commit, folders)
        return folders

    def _revisions(self, req: Incoming) -> dict[str, Any]:
        applied = self.store.last_applied_revision()
        return {"revisions": self.store.revisions(limit=100), "applied": applied.commit if applied else ""}

    def _revision(self, req: Incoming) -> dict[str, Any]:
        commit = req.params.get("commit", "")
        revs = self.store.revisions(limit=500)
        index = next((i for i, r in enumerate(revs) if r.commit == commit), None)
        if index is None:
            raise LookupError(f"revision {commit[:40]} is not in the store")
        rev = revs[index]
        base = next((r.commit for r in revs[index + 1 :] if r.outcome == "applied"), "")
        plan, error = self._plan(base, rev.commit)
        rollouts = []  # the workloads whose pod template this commit changed, and where they are now
        for o in self.store.objects():
            if o.kind not in summaries.WORKLOADS:
                continue
            current = str(((o.body or {}).get("rollout") or {}).get("revision") or "")
            for h in summaries.history(o):
                if h["commit"] == rev.commit:
                    rollouts.append({"object": o, "revision": h["revision"], "since": h["since"],
                                     "current": h["revision"] == current})
        if self.rollback is not None:
            branch = self.rollback.branch or (self.repo.head_branch() if self.repo is not None else None)
            command = self.rollback.command(rev.commit, branch)
        else:
            branch, command = None, f'gitorch rollback {rev.commit[:12]} --reason "..."'
        return {
            "rev": rev,
            "rollback": command,
            "rollback_branch": branch or "",
            "rollouts": rollouts,
            "base": base,
            "plan": plan,
            "plan_error": error,
            "events": list(reversed(self.store.events(revision=rev.commit, limit=200))),
        }

    def _drift(self, req: Incoming) -> dict[str, Any]:
        reports = self.store.drift_reports(limit=31)
        docs = [drift.report_json(r, reports[i + 1] if i + 1 < len(reports) else None)
                for i, r in enumerate(reports[:30])]
        return {"reports": docs, "fixed": {r.id: drift.healed_mask(r) for r in reports[:30]}}

    def _events(self, req: Incoming) -> dict[str, Any]:
        namespace = req.query.get("namespace") or None
        return {"events": list(reversed(self.store.events(limit=300, namespace=namespace))),
                "namespace": namespace or ""}

    def _nodes(self, req: Incoming) -> dict[str, Any]:
        pods = self.store.pods(spec=False)
        per_node: dict[str, int] = {}
        for p in pods:
            if p.node:
                per_node[p.node] = per_node.get(p.node, 0) + 1
        nodes = self.store.nodes()
        rows = {o.name: o for o in self.store.objects(kind="Node")}
        scaling = {n.name: summaries.node_autoscaling_text(rows.get(n.name), now=None) for n in nodes
                   if summaries.node_scaling(rows.get(n.name)) is not None}
        return {"nodes": nodes, "pods": per_node, "scaling": scaling,
                "pressure": {n.name: summaries.node_pressure(n.facts or {}) for n in nodes}}

    def _node(self, req: Incoming) -> dict[str, Any]:
        name = req.params.get("name", "")
        node = self.store.node(name)
        if node is None:
            raise LookupError(f"node {name[:253]} is not in the store")
        facts = {k: v for k, v in sorted((node.facts or {}).items()) if k != "pods"}
        row = self.store.object_status("Node", "", name)
        scaling = summaries.node_autoscaling_text(row) if summaries.node_scaling(row) is not None else ""
        return {"node": node, "facts": facts, "pressure": summaries.node_pressure(node.facts or {}), "scaling": scaling,
                "pods": self.store.pods(node=name, spec=False)}

    def _pod_logs(self, req: Incoming) -> dict[str, Any]:
        namespace, name = req.params.get("namespace", ""), req.params.get("name", "")
        pod = next((p for p in self.store.pods(namespace=namespace, spec=False) if p.name == name), None)
        if pod is None:
            raise LookupError(f"pod {namespace[:63]}/{name[:253]} is not in the store")
        return {"pod": pod, "logs_available": self.client is not None}

    # ---- plans ----

    def _plan(self, base: str, commit: str) -> tuple[str, str]:
        """The plan `commit` made from `base` (the revision applied before it) as HTML, or why not."""
        if self.repo is None:
            return "", "no repository to read the plan from"
        key = (base, commit)
        with self._plans_lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        try:
            # No keyring: encrypted Secrets are checked on structure and compared by digest, and
            # diffs mask every secret value, so the plan cannot carry one.
            head = desired.load(self.repo, commit)
            before = desired.load(self.repo, base)
            report = PlanReport(base=before.revision, head=head.revision, changes=diff_states(before, head),
                                diagnostics=head.diagnostics)
            result = (self._markdown.render(plan_markdown(report)), "")
        except GitorchError as exc:
            result = ("", str(exc))
        with self._plans_lock:
            self._plans[key] = result
            while len(self._plans) > self.limits.plans_cached:
                self._plans.popitem(last=False)
        return result

    # ---- live updates ----

    def _marks_now(self) -> dict[str, str]:
        """The store's change marks (as digests), read at most once per `poll / 2` for every
        stream and page together."""
        with self._marks_lock:
            if time.monotonic() - self._marks_at >= self.limits.poll / 2:
                started = time.monotonic()
                self._marks = _digests(self.store.marks())
                self._marks_at = started
            return self._marks

    async def _current_marks(self) -> dict[str, str]:
        if time.monotonic() - self._marks_at < self.limits.poll / 2:
            return self._marks  # fresh: no thread needed
        return await asyncio.to_thread(self._marks_now)

    def _live_stream(self, req: Incoming) -> Reply:
        refused = self._refused(req)
        if refused is not None:
            return refused
        topics = [t for t in TOPICS if t in req.query.get("topics", "").split(",")] or list(TOPICS)
        since = _parse_since(req.query.get("since", ""))
        slot = self._live.take()
        if slot is None:
            return Reply(503, "too many live streams open\n", headers=(("Retry-After", "30"),))
        stream = self._live_events(topics, since, slot)
        weakref.finalize(stream, slot.release)
        return Reply(200, "", "text/event-stream", (("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")),
                     stream=stream)

    async def _live_events(self, topics: list[str], since: dict[str, str], slot: _Slot) -> AsyncIterator[bytes]:
        """A change after the marks the stream starts from is announced: the page's own (`since`,
        the marks it was rendered at), else the store's before the stream's first line."""
        try:
            current = await self._current_marks()
            last = {t: since.get(t, current[t]) for t in topics}
            yield b"retry: 2000\n\n"
            deadline = time.monotonic() + self.limits.live_lifetime
            quiet = 0.0
            while time.monotonic() < deadline and not self._closed.is_set():
                marks = await self._current_marks()
                changed = [t for t in topics if marks[t] != last[t]]
                last = {t: marks[t] for t in topics}
                for t in changed:
                    yield _sse(t, t)
                quiet = 0.0 if changed else quiet + self.limits.poll
                if quiet >= 15:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(self.limits.poll)
            # The page opens a new stream at once from the marks this one announced last
            # (static/dashboard.js), without the error an EventSource reports for a stream that ends.
            yield _sse("renew", _since_text(last, topics))
        finally:
            slot.release()

    def _log_stream(self, req: Incoming) -> Reply:
        refused = self._refused(req)
        if refused is not None:
            return refused
        namespace, name = req.params.get("namespace", ""), req.params.get("name", "")
        pod = next((p for p in self.store.pods(namespace=namespace, spec=False) if p.name == name), None)
        if pod is None or not pod.node:
            why = "is not in the store" if pod is None else "is not on any node"
            return self._one_event("done", f"pod {namespace}/{name} {why}")
        client = self.client(pod.node) if self.client is not None else None
        if client is None:
            return self._one_event("done", f"no connection to node {pod.node} yet (it comes with a reconcile pass)")
        slot = self._logs.take()
        if slot is None:
            return Reply(503, "too many logs followed at once\n", headers=(("Retry-After", "30"),))
        stream = self._log_events(client, namespace, name, slot)
        weakref.finalize(stream, slot.release)
        return Reply(200, "", "text/event-stream", (("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")),
                     stream=stream)

    def _one_event(self, event: str, message: str) -> Reply:
        async def once() -> AsyncIterator[bytes]:
            # A long retry: EventSource reconnects after a stream ends, and this one has nothing more.
            yield b"retry: 3600000\n\n" + _sse(event, html.escape(message))

        return Reply(200, "", "text/event-stream", (("Cache-Control", "no-store"),), stream=once())

    async def _log_events(self, client: NodeClient, namespace: str, name: str, slot: _Slot) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        # The stream is opened in a worker thread: one the client left before it was open is
        # closed by whichever of the two sides comes last, so no agent is left following.
        ended = threading.Event()
        streams: list[Stream] = []

        def open_stream() -> Stream:
            opened = client.follow_logs({"pod": name, "namespace": namespace, "tail": self.limits.log_tail})
            streams.append(opened)
            if ended.is_set():
                opened.close()
            return opened

        try:
            yield b"retry: 3600000\n\n"  # a follow that ended is not restarted by the browser
            try:
                opened = await asyncio.to_thread(open_stream)
            except GitorchError as exc:
                yield _sse("done", html.escape(str(exc)))
                return

            def pump() -> None:
                try:
                    for chunk in opened.chunks():
                        asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result(30)
                except Exception as exc:  # a closed channel or a stopped loop ends the follow
                    log.debug(f"dashboard: log stream of {namespace}/{name} ended: {exc}")
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop is gone
                        loop.call_soon_threadsafe(queue.put_nowait, None)

            threading.Thread(target=pump, name=f"gitorch-ui-logs-{name}", daemon=True).start()
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            deadline = time.monotonic() + self.limits.log_lifetime
            sent = 0
            while not self._closed.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    yield _sse("done", "followed long enough: reload to follow again")
                    return
                try:
                    chunk = await asyncio.wait_for(queue.get(), min(15.0, left))
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if chunk is None:
                    yield _sse("done", "the log stream ended")
                    return
                sent += len(chunk)
                yield _sse("line", html.escape(decoder.decode(chunk)))
                if sent >= self.limits.log_bytes:
                    yield _sse("done", f"stopped after {self.limits.log_bytes} bytes: reload to follow again")
                    return
        finally:
            ended.set()
            for stream in streams:
                stream.close()  # the pump's read returns and its thread ends
            slot.release()


def _safe_next(path: str) -> str:
    """Only a path on this site (no scheme, no `//host`) is followed after login."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


class _Probe:
    """A loopback GET without a body, for `Dashboard.render`."""

    def __init__(self, path: str, params: dict[str, str], query: dict[str, str]) -> None:
        self.path = path
        self.method = "GET"
        self.headers: dict[str, str] = {}
        self.query = query
        self.params = params
        self.cookies: dict[str, str] = {}
        self.client = "127.0.0.1"
