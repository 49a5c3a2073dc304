"""`gitorch serve`: the controller process. Reconcile passes on a timer and on every push
(webhook or post-receive hook), leader election through the store, metrics and
notifications, clean shutdown on SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from gitorch.dns.cluster import ClusterDNS, settings_for
from gitorch.model.backoff import Backoff
from gitorch.model.errors import GitorchError, SourceError
from gitorch.model.timers import Timers
from gitorch.nodes.client import NodeClient, StaleTerm, Watch
from gitorch.nodes.ssh import NodeError
from gitorch.reconcile import drift
from gitorch.reconcile.controller import Controller, ControllerSettings, PassResult
from gitorch.reconcile.leadership import Leadership, holder_name
from gitorch.server import systemd
from gitorch.server.control import ControlSocket, socket_path
from gitorch.server.dashboard import Dashboard, RollbackSettings
from gitorch.server.http import Endpoint, HttpServer, Limits, Reply, Site
from gitorch.server.kubeapi import KubeApiServer, KubeApiSettings
from gitorch.server.metrics import Metrics
from gitorch.server.notifications import Notifier
from gitorch.server.webhooks import Handlers, endpoints
from gitorch.source import desired
from gitorch.source.git import Repository
from gitorch.source.hooks import wake_token as load_wake_token
from gitorch.store.database import Fence, StaleLeader, Store

TOP_ROWS = 20_000  # rows of `gitorch top` one answer carries (about 300 bytes each: within MAX_ANSWER)
DIRTY_CHECK = 1.0  # seconds: how soon a wake that apscheduler skipped, or a requeue, is picked up
REQUEUE_BACKOFF = Backoff(base=2.0, cap=30.0)  # between passes while nodes fail (never past the interval)
WATCH_SILENCE = 35.0  # seconds without a line (agents send a heartbeat every 10 s) before a pod watch is re-opened
WATCH_BACKOFF = Backoff(base=1.0, cap=30.0, jitter=0.5)  # before re-opening a dropped pod watch
WATCH_STABLE = 30.0  # seconds a pod watch must last for its next drop to count as a first one

log = logging.getLogger(__name__)
_jitter = random.Random()


def _reachable_from_pods(listen: str) -> bool:
    """A loopback or wildcard address means nothing inside a pod's own network namespace."""
    import ipaddress

    from gitorch.model.addresses import parse_hostport

    try:
        ip = ipaddress.ip_address(parse_hostport(listen)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


class PodWatchers:
    """One thread per reachable node following its agent's `watch` stream, as kubelets push
    status to the API server: a change that endpoints depend on (a pod's readiness, phase or
    IP, a pod added or gone) wakes a pass at once; the interval pass stays the fallback."""

    def __init__(self, wake: Callable[[str], None], leading: Callable[[], bool]) -> None:
        self._wake = wake
        self._leading = leading
        self._lock = threading.Lock()
        self._watching: dict[str, tuple[NodeClient, threading.Event, threading.Thread]] = {}
        self._live: set[str] = set()  # nodes whose stream is open now
        self._closed = False

    def follow(self, clients: dict[str, NodeClient]) -> None:
        """Watch exactly these nodes (a node whose client changed with the fleet is re-watched)."""
        with self._lock:
            for name, (client, stop, _) in list(self._watching.items()):
                if self._closed or clients.get(name) is not client:
                    stop.set()
                    del self._watching[name]
            if self._closed:
                return
            for name, client in clients.items():
                if name not in self._watching:
                    stop = threading.Event()
                    thread = threading.Thread(
                        target=self._run, args=(client, stop), name=f"gitorch-watch-{name}", daemon=True
                    )
                    self._watching[name] = (client, stop, thread)
                    thread.start()

    def all_live(self) -> bool:
        """Every node followed has its stream open: a change anywhere wakes a pass at once."""
        with self._lock:
            return bool(self._watching) and set(self._watching) <= self._live

    def stop(self, timeout: float = 3.0) -> None:
        with self._lock:
            self._closed = True
            threads = [t for _, _, t in self._watching.values()]
        self.follow({})
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self, client: NodeClient, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            if not self._leading():
                stop.wait(1.0)  # a standby leaves the nodes to the leader
                continue
            try:
                watch = client.watch()
            except Exception as exc:  # unreachable, or no agent yet: retried with back-off
                failures += 1
                log.debug("%s: pod watch not opened: %s", client.name, exc)
                stop.wait(WATCH_BACKOFF.delay(failures, _jitter))
                continue
            opened = time.monotonic()
            with self._lock:
                self._live.add(client.name)
            try:
                self._read(client.name, watch, stop)
            except Exception as exc:  # a dropped or silent stream: re-opened after a pause
                # Each opening wakes a pass: a stream that keeps dropping at once backs off
                # like one that cannot open, instead of costing a pass a second.
                failures = failures + 1 if time.monotonic() - opened < WATCH_STABLE else 1
                log.debug("%s: pod watch dropped: %s", client.name, exc)
                stop.wait(WATCH_BACKOFF.delay(failures, _jitter))
            finally:
                with self._lock:
                    self._live.discard(client.name)
                watch.close()

    def _read(self, node: str, watch: Watch, stop: threading.Event) -> None:
        digest: str | None = None
        heard = time.monotonic()
        while not stop.is_set() and self._leading():
            event = watch.next(1.0)
            now = time.monotonic()
            if event is None:
                if now - heard > WATCH_SILENCE:
                    raise NodeError(node, f"pod watch silent for {WATCH_SILENCE:g} s")
                continue
            heard = now
            if event.get("event") != "status" or event.get("digest") == digest:
                continue  # heartbeats only say the stream is alive
            # The first event of a stream wakes quietly: a change may have slipped in between
            # the last pass reading this node and the stream opening.
            self._wake(f"pod status on {node}" if digest is not None else "")
            digest = str(event.get("digest"))


class Server:
    """Runs reconcile passes every `interval` seconds, and at once when woken, while it holds
    the controller lease."""

    def __init__(
        self,
        repo: Repository,
        store: Store,
        state_dir: Path,
        *,
        branch: str | None,
        interval: float,
        settings: ControllerSettings | None = None,
        listen: tuple[str, int] | None = None,
        webhook_secret: str | None = None,
        wake_token: str | None = None,
        http_limits: Limits | None = None,
        dns_listen: str | None = None,
        fetcher: Callable[[], None] | None = None,
        poll: float = 30.0,
        pod_watch: bool | None = None,
        idle_interval: float | None = None,
        kube_api: tuple[str, int] | None = None,
        kube_api_settings: KubeApiSettings | None = None,
        ui_token: str | None = None,
        repo_url: str | None = None,
        wake_token_env: str | None = None,
    ) -> None:
        self.repo = repo
        self.repo_url = repo_url
        """The remote `repo` mirrors (None: a local repository); the dashboard's rollback command
        commits there."""
        self.wake_token_env = wake_token_env
        self.store = store
        self.state_dir = state_dir
        self.branch = branch
        self.interval = interval
        # While every node's pod watch is open and the last pass left nothing to do, a change
        # anywhere wakes a pass at once: the timer pass is then only a safety net, every
        # `idle_interval` seconds (GITORCH_IDLE_INTERVAL, default 10; never below `interval`).
        if idle_interval is None:
            try:
                idle_interval = float(os.environ.get("GITORCH_IDLE_INTERVAL", "10"))
            except ValueError:
                idle_interval = 10.0
        self.idle_interval = max(interval, idle_interval)
        self._settled_at: float | None = None  # when a pass last left everything converged
        settings = settings or ControllerSettings.from_env()
        if dns_listen and settings.cluster_dns is None and _reachable_from_pods(dns_listen):
            # The DNS this controller serves is the one pods should use (it must listen on port 53 for them).
            settings = dataclasses.replace(settings, cluster_dns=dns_listen)
        self.controller = Controller(repo, store, state_dir, settings)
        self.holder = holder_name()
        self.leadership = Leadership(store, self.holder, self.lease_ttl)
        self._role_lock = threading.Lock()
        self.timers = Timers()
        self.stopping = threading.Event()
        self._last: tuple[str, ...] = ()
        self._leader: bool | None = None
        self.passes = 0
        # A wake during a pass must cause one more pass after it: apscheduler (max_instances=1,
        # coalesce) would drop it, so the pass loops while this flag is set.
        self._dirty = threading.Event()
        self._pass_lock = threading.Lock()
        # Like controller-runtime's RequeueAfter: a rollout needs passes until it converges,
        # whatever the interval; unreachable nodes are retried with exponential back-off.
        self._requeue_at: float | None = None
        self._failures = 0
        self.listen = listen
        self.webhook_secret = webhook_secret
        self.wake_token = wake_token
        """What /hooks/wake asks for; None: the state dir's token (`hooks.wake_token`)."""
        self.http_limits = http_limits
        self.ui_token = ui_token
        """What the dashboard's login asks for; None: the dashboard answers loopback clients only."""
        self.dashboard: Dashboard | None = None
        self.listener: HttpServer | None = None
        # The read-only Kubernetes API: served by every instance, leader or standby.
        self.kube_api = kube_api
        self.kube_api_settings = kube_api_settings or KubeApiSettings(
            tls_dir=state_dir / "kubeapi", token_file=state_dir / "kubeapi" / "tokens", repo=str(repo.path))
        self.kube_server: KubeApiServer | None = None
        self._kube_warned = False
        self._listen_warned = False
        self._listen_lock = threading.Lock()
        self.metrics = Metrics()
        self.metrics.dns_source(lambda: self.dns.server.stats() if self.dns is not None else None)
        self.metrics.usage_source(lambda: self.controller.usage)
        self.notifier = Notifier(repo, store)
        self.dns_listen = dns_listen
        self.dns: ClusterDNS | None = None
        # A remote repository: fetched every `poll` seconds, and at once when woken (webhook).
        self.fetcher = fetcher
        self.poll = poll
        self._fetched_at = float("-inf")
        self._fetch_now = False
        self.drift_schedule: str | None = None
        self._waiting_for_branch = False
        # Agents push pod status changes, so a readiness change reaches every node's service
        # rules without waiting for the interval; GITORCH_NO_WATCH=1 turns that off.
        self.pod_watch = os.environ.get("GITORCH_NO_WATCH", "") in ("", "0") if pod_watch is None else pod_watch
        self.watchers = PodWatchers(
            lambda why: self.wake(why, fetch=False), lambda: self._leader is True and not self.stopping.is_set()
        )
        # systemd (Type=notify): READY=1 once serving, STATUS= leading or standing by, STOPPING=1.
        self.systemd = systemd.Notifier()
        self._reload_requested = threading.Event()
        self._node_errors: dict[str, str] = {}
        self._troubled: set[str] = set()  # objects last seen Degraded or Missing
        self._applied = ""

    def _describe(self, result: PassResult) -> tuple[str, ...]:
        lines = [f"{result.revision.short} {'valid' if result.valid else 'INVALID'}"]
        if result.plan is not None:
            lines += [f"{s.health} {k}: {s.message}" for k, s in sorted(result.plan.statuses.items())]
        lines += [f"node error: {e}" for _, e in sorted(result.node_errors.items())]
        return tuple(lines)

    def wake(self, why: str = "", *, fetch: bool = True) -> None:
        """Run a pass now (after a push); during a pass, run another one right after it.
        `fetch=False` (a pod status change) leaves a remote repository to its poll."""
        if why:
            log.info(f"{time.strftime('%H:%M:%S')} woken by {why}", extra={"event": "woken"})
        if fetch:
            self._fetch_now = True
        self._dirty.set()
        if not self._pass_lock.locked():  # a running pass sees the flag and loops
            self.timers.wake("reconcile")

    def reconcile(self) -> None:
        """The timer job: passes until no wake is pending; concurrent callers return at once.
        Skipped while the cluster is quiet (see idle_interval)."""
        if self._quiet():
            return
        self._dirty.set()
        self._drain()

    def _quiet(self) -> bool:
        settled = self._settled_at
        return (
            self.pod_watch
            and settled is not None
            and time.monotonic() - settled < self.idle_interval
            # A requeue not yet due (an autoscaler's next sync) leaves the cluster quiet: _if_dirty runs it.
            and (self._requeue_at is None or time.monotonic() < self._requeue_at)
            and self.watchers.all_live()
        )

    def _if_dirty(self) -> None:
        due = self._requeue_at is not None and time.monotonic() >= self._requeue_at
        if due:
            self._requeue_at = None
            self._dirty.set()
        if self._dirty.is_set():
            self._drain()

    def _schedule_requeue(self, result: PassResult | None) -> None:
        self._schedule_requeue_for(result)
        due = result.plan.requeue_after if result is not None and result.plan is not None else None
        if due is not None:  # an autoscaler's next sync: a pass then, even in a quiet cluster
            at = time.monotonic() + max(due, DIRTY_CHECK)
            self._requeue_at = at if self._requeue_at is None else min(self._requeue_at, at)

    def _schedule_requeue_for(self, result: PassResult | None) -> None:
        if result is not None and result.converged:
            self._failures = 0
            self._requeue_at = None
            return
        if result is not None and result.plan is not None and not result.plan.converged and not result.node_errors:
            self._failures = 0
            delay = DIRTY_CHECK
        elif result is not None and result.plan is None:
            self._requeue_at = None  # an invalid commit and nothing applied yet: wait for the next push
            return
        else:
            self._failures += 1
            delay = REQUEUE_BACKOFF.delay(self._failures)
        self._requeue_at = time.monotonic() + min(delay, self.interval)

    def _drain(self) -> None:
        while not self.stopping.is_set():
            if not self._pass_lock.acquire(blocking=False):
                return  # the running pass sees the flag and loops
            try:
                while self._dirty.is_set() and not self.stopping.is_set():
                    self._dirty.clear()
                    self._pass()
            finally:
                self._pass_lock.release()
            if not self._dirty.is_set():
                return

    @property
    def lease_ttl(self) -> float:
        return max(15.0, min(self.interval, 20.0) * 3)

    def _lead(self) -> bool:
        """Whether this process leads now: the term the `lease` job keeps renewing, or a renewal
        now when it has none. A pass acts only within its term (see reconcile/leadership.py)."""
        fence = self.leadership.fence or self.leadership.renew()
        self._note_role(fence)
        return fence is not None

    def _note_role(self, fence: Fence | None) -> None:
        with self._role_lock:  # the lease timer and the pass both call this: say a change once
            self._note_role_locked(fence)

    def _note_role_locked(self, fence: Fence | None) -> None:
        leader = fence is not None
        if leader != self._leader:
            term = f", term {fence.term}" if fence is not None else ""
            log.info(f"{time.strftime('%H:%M:%S')} {'leading' if leader else 'standing by'} ({self.holder}{term})",
                     extra={"event": "leading" if leader else "standing-by"})
            if leader and self._leader is not None:
                self._dirty.set()  # a new leader reconciles at once
            self._leader = leader
            self.systemd.status(self._status())

    def _status(self) -> str:
        """systemd's STATUS= line (`systemctl status`): the role and the last revision seen."""
        role = {True: "leading", False: "standing by", None: "starting"}[self._leader]
        seen = f", at {self._applied}" if self._applied and self._leader else ""
        return f"{role} ({self.holder}){seen}"

    def _renew(self) -> None:
        """The `lease` job: renews the term on its own timer, whatever a pass takes."""
        self._start_listener()
        self._note_role(self.leadership.renew())

    def _pass(self) -> None:
        self._fetch()
        self._start_listener()
        if not self._lead():
            return
        try:
            self.repo.resolve(self.branch)
        except SourceError:  # an empty repository before its first push: nothing to do yet
            if not self._waiting_for_branch:
                log.info(f"waiting for a commit on {self.branch or 'HEAD'} in {self.repo.path}")
                self._waiting_for_branch = True
            return
        self._waiting_for_branch = False
        started = time.monotonic()
        fence = self.leadership.fence
        if fence is None:
            self._note_role(None)
            return
        try:
            result = self.controller.reconcile(self.branch, fence=fence)
        except (StaleLeader, StaleTerm) as exc:  # another controller leads now: stop at once
            self.leadership.lost(str(exc))
            self._note_role(None)
            self.metrics.observe_failure(time.monotonic() - started)
            return
        except Exception as exc:  # a failed pass is retried on the next tick, never fatal
            # Not a user error: one object's failure is that object's status, so whatever escapes
            # is a bug, logged with its traceback and counted (gitorch_passes_total{outcome="error"}).
            log.error(f"reconcile pass failed: {exc}", extra={"event": "pass-failed"},
                      exc_info=not isinstance(exc, GitorchError))
            self.metrics.observe_failure(time.monotonic() - started)
            self._settled_at = None
            self._schedule_requeue(None)
            return
        self.passes += 1
        settled = result.converged and result.valid and not result.node_errors
        self._settled_at = time.monotonic() if settled else None
        self._schedule_requeue(result)
        self._refresh_dns(result)
        self._schedule_drift(result)
        self._follow_pods(result)
        try:
            self.metrics.observe_pass(result, time.monotonic() - started, self.store)
            self.notifier.observe(result)
        except Exception as exc:  # reporting must never stop reconciling
            log.error(f"metrics or notifications failed after the pass: {exc}")
        lines = self._describe(result)
        if lines != self._last:
            log.info(f"{time.strftime('%H:%M:%S')} pass {self.passes}: " + "\n  ".join(lines),
                     extra={"event": "pass", "revision": result.revision.oid})
            self._last = lines
            self._report(result)

    def _report(self, result: PassResult) -> None:
        """A record per node that became unreachable or reachable again, and per object that
        became Degraded or Missing or recovered (for log shippers); the systemd status line."""
        statuses = result.plan.statuses if result.plan is not None else {}
        troubled = {str(k) for k, s in statuses.items() if s.health in ("Degraded", "Missing")}
        for key, status in sorted(statuses.items()):
            name = str(key)
            if name in troubled and name not in self._troubled:
                log.warning(f"{name} is {status.health}: {status.message}",
                            extra={"event": "object-degraded", "object": name, "revision": result.revision.oid})
            elif name in self._troubled and name not in troubled:
                log.info(f"{name} is {status.health} again", extra={"event": "object-recovered", "object": name,
                                                                   "revision": result.revision.oid})
        self._troubled = troubled if result.plan is not None else self._troubled
        for node, error in sorted(result.node_errors.items()):
            if self._node_errors.get(node) != str(error):
                log.warning(f"node error: {error}", extra={"event": "node-error", "node": node,
                                                           "revision": result.revision.oid})
        for node in sorted(set(self._node_errors) - set(result.node_errors)):
            log.info(f"{node}: reachable again", extra={"event": "node-recovered", "node": node,
                                                        "revision": result.revision.oid})
        self._node_errors = {n: str(e) for n, e in result.node_errors.items()}
        self._applied = f"{result.revision.short}" + (" (INVALID)" if not result.valid else "")
        self.systemd.status(self._status())

    def _follow_pods(self, result: PassResult) -> None:
        """Follow the pod status of every node this pass reached, so the next change wakes a pass."""
        if not self.pod_watch or result.state is None or self.stopping.is_set():
            return
        clients = self.controller.fleet(result.state).clients
        self.watchers.follow({n: c for n, c in clients.items() if n not in result.node_errors})

    def _fetch(self) -> None:
        """Bring the mirror of a remote repository up to date when due; a failed fetch is
        reported and the pass goes on with the commits already fetched."""
        if self.fetcher is None:
            return
        if not self._fetch_now and time.monotonic() - self._fetched_at < self.poll:
            return
        self._fetch_now = False
        try:
            self.fetcher()
            self._fetched_at = time.monotonic()
        except GitorchError as exc:
            self._fetched_at = time.monotonic()  # retried at the next poll, not every pass
            log.error(str(exc))

    def _refresh_dns(self, result: PassResult) -> None:
        """Serve the cluster DNS (once asked to) from what this pass recorded."""
        if self.dns_listen is None or result.state is None:
            return
        try:
            if self.dns is None:
                self.dns = ClusterDNS(settings_for(result.state, self.dns_listen)).start()
                log.info(f"cluster DNS on {self.dns_listen} (port {self.dns.port})")
            self.dns.refresh(result.state, self.store)
        except (OSError, ValueError) as exc:
            log.error(f"cluster DNS on {self.dns_listen}: {exc}")
            self.dns_listen = None  # a bad address will not get better; keep reconciling

    def _schedule_drift(self, result: PassResult) -> None:
        """Keep the drift job on the Cluster's `spec.drift.schedule` (checked after every pass)."""
        if result.state is None:
            return
        schedule = drift.cluster_schedule(result.state)
        if schedule == self.drift_schedule:
            return
        self.drift_schedule = schedule
        if schedule is not None:
            self.timers.cron(schedule, self.drift, "drift")
            log.info(f"drift reports on schedule {schedule!r}")

    def drift(self) -> None:
        """The cron job: one drift check (only the leader), then driftFound when it found any."""
        if self.drift_schedule is None or self.stopping.is_set():
            return  # the schedule was removed from the Cluster manifest
        with self._pass_lock:  # one user of the nodes' connections at a time
            if not self._lead():
                return
            try:
                report = drift.run(self.controller, rev=self.branch, dns=self._dns_address(),
                                   fence=self.leadership.fence)
            except Exception as exc:  # a failed check is retried on schedule, never fatal
                log.error(f"drift check failed: {exc}")
                return
        log.info(f"{time.strftime('%H:%M:%S')} drift report #{report.id}: {len(report.findings)} finding(s)")
        if report.findings:
            try:
                state = desired.load(self.repo, report.revision)
                self.notifier.drift_found(state, drift.found_text(report), report.revision or "")
            except Exception as exc:  # reporting must never stop the controller
                log.error(f"driftFound notification failed: {exc}")

    def _dns_address(self) -> str | None:
        """Where this controller's own cluster DNS answers (drift checks ask it)."""
        if self.dns is None or self.dns_listen is None:
            return None
        from gitorch.model.addresses import format_hostport, parse_hostport

        host, _ = parse_hostport(self.dns_listen)
        host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
        return format_hostport(host, self.dns.port)

    def _start_listener(self) -> None:
        """Listen if asked to; a port in use (say, another controller on this machine) is a
        warning, and the bind is retried on each pass so a standby takes the port over."""
        with self._listen_lock:
            if self.listen is not None and self.listener is None and not self.stopping.is_set():
                self._bind(*self.listen)
            if self.kube_api is not None and self.kube_server is None and not self.stopping.is_set():
                self._bind_kube_api(*self.kube_api)

    def _bind_kube_api(self, host: str, port: int) -> None:
        try:
            server = KubeApiServer(self.store, self.repo, host, port, self.kube_api_settings).start()
        except (OSError, GitorchError) as exc:
            if not self._kube_warned:
                log.warning(f"cannot serve the Kubernetes API on {host}:{port} ({exc}); retrying on each pass")
                self._kube_warned = True
            return
        self.kube_server = server
        (self.kube_api_settings.tls_dir / "server").write_text(server.url + "\n")
        log.info(f"Kubernetes API (read-only) on {server.url}; `gitorch kubeconfig` prints a kubeconfig for it")

    def site(self) -> Site:
        """What the listener serves, feature by feature."""
        if self.wake_token is None:
            self.wake_token = load_wake_token(self.state_dir)
        site = Site()
        handlers = Handlers(wake=self.wake, webhook_result=self.metrics.webhook)
        site.add("webhooks", endpoints(handlers, secret=self.webhook_secret, branch=self.branch,
                                       wake_token=self.wake_token))
        site.add("metrics", [Endpoint("/metrics", lambda _: Reply(200, *self.metrics.render()))])
        self.dashboard = Dashboard(self.store, token=self.ui_token, repo=self.repo, client=self.controller.client,
                                   rollback=self._rollback_settings(None))
        site.add("dashboard", self.dashboard.endpoints())
        return site

    def _rollback_settings(self, bound: tuple[str, int] | None) -> RollbackSettings:
        """What the dashboard's rollback command repeats of this serve's settings."""
        wake = None
        if bound is not None:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound[0], bound[0])
            wake = f"http://{f'[{host}]' if ':' in host else host}:{bound[1]}/hooks/wake"
        state_dir = os.environ.get("GITORCH_STATE_DIR") and str(self.state_dir)
        token_env = self.wake_token_env if self.wake_token_env not in (None, "GITORCH_WAKE_TOKEN") else None
        return RollbackSettings(self.repo_url or str(self.repo.path), remote=self.repo_url is not None,
                                branch=self.branch, wake_url=wake, state_dir=state_dir or None,
                                wake_token_env=token_env)

    def _bind(self, host: str, port: int) -> None:
        try:
            listener = HttpServer(host, port, self.site(), self.http_limits)
            listener.start()
        except OSError as exc:
            if not self._listen_warned:
                log.warning(f"cannot listen on {host}:{port} ({exc.strerror or exc}); retrying on each pass")
                self._listen_warned = True
            return
        self.listener = listener
        bound = listener.address
        if self.dashboard is not None:
            self.dashboard.rollback = self._rollback_settings(bound)
        log.info(f"listening on http://{bound[0]}:{bound[1]} ({', '.join(listener.site.paths)})")
        if not self.webhook_secret:
            log.warning("no webhook secret set: /hooks/git refuses every request (only /hooks/wake works)")
        if self.ui_token is None:
            log.info(f"dashboard at http://{bound[0]}:{bound[1]}/ for loopback clients only (no --ui-token-env)")
        else:
            log.info(f"dashboard at http://{bound[0]}:{bound[1]}/ (log in with the --ui-token-env token)")

    def _reload(self, reload: Callable[[], str] | None) -> None:
        """SIGHUP: re-read what can change without a restart (`reload`: the CLI's log settings),
        then a pass that fetches a remote repository at once."""
        self.systemd.notify(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000),
                            STATUS="reloading")
        try:
            what = reload() if reload is not None else "no settings file"
            log.info(f"reloaded ({what}); reconciling now", extra={"event": "reloaded"})
        except Exception as exc:  # a bad settings file keeps the running settings
            log.error(f"reload failed, keeping the running settings: {exc}", extra={"event": "reload-failed"})
        self.systemd.ready(self._status())
        self.wake("SIGHUP")

    def _start_control(self) -> ControlSocket | None:
        """The control socket other commands on this machine ask (see server/control.py)."""
        try:
            return ControlSocket(socket_path(self.state_dir),
                                 {"facts": self._control_facts, "top": self._control_top}).start()
        except OSError as exc:
            log.warning(f"control socket not opened ({exc}); commands such as `gitorch nodes` connect themselves")
            return None

    def _control_facts(self, request: dict[str, Any]) -> dict[str, Any]:
        """`gitorch nodes` through the control socket: facts of the nodes it names, from those
        this controller reaches the same way; the command asks the rest itself."""
        from gitorch.nodes.inspection import facts_of

        wanted = request.get("endpoints")
        if not isinstance(wanted, dict) or len(wanted) > 100_000:
            return {"ok": False, "error": "endpoints: a map of node name to user@host:port"}
        timeout = request.get("timeout", 15.0)
        timeout = float(timeout) if isinstance(timeout, (int, float)) and 0 < timeout <= 300 else 15.0
        results = self.controller.ask_nodes({str(k): str(v) for k, v in wanted.items()}, facts_of, timeout)
        return {"ok": True, "nodes": {n: {"value": o.value, "error": o.error, "seconds": o.seconds}
                                      for n, o in results.items()}}

    def _control_top(self, request: dict[str, Any]) -> dict[str, Any]:
        """`gitorch top` through the control socket: the newest resource sample of every pod and
        node this controller keeps (only serve keeps them: they live in its memory)."""
        from gitorch.model.usage import node_row, pod_row

        usage = self.controller.usage
        capacity: dict[str, dict[str, Any]] = {}
        for n in self.store.nodes():
            facts = n.facts or {}
            memory: dict[str, Any] = facts["memory"] if isinstance(facts.get("memory"), dict) else {}
            capacity[n.name] = {"cpuMillis": facts.get("cpuMillis"),
                                "memoryBytes": memory.get("limitBytes") or memory.get("totalBytes")}
        namespace = request.get("namespace")
        pods = sorted((u for u in usage.latest().values()
                       if not isinstance(namespace, str) or u.namespace == namespace),
                      key=lambda u: (u.namespace, u.name))
        nodes = sorted(usage.nodes().values(), key=lambda u: u.node)
        # Bounded like the socket's answer (MAX_ANSWER): the first rows, and how many were left out.
        return {"ok": True, "leading": self._leader is True,
                "intervalSeconds": self.controller.settings.metrics_interval,
                "pods": [pod_row(u) for u in pods[:TOP_ROWS]], "nodes": [node_row(u, capacity.get(u.node))
                                                                        for u in nodes[:TOP_ROWS]],
                "leftOut": max(0, len(pods) - TOP_ROWS) + max(0, len(nodes) - TOP_ROWS)}

    def run(self, reload: Callable[[], str] | None = None) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP calls `reload` and runs a pass."""

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        def hup(signum: int, frame: FrameType | None) -> None:
            self._reload_requested.set()  # handled in the loop below, not inside the handler

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        self._start_listener()
        control = self._start_control()
        self.notifier.start()
        self.timers.every(self.interval, self.reconcile, "reconcile")
        self.timers.every(DIRTY_CHECK, self._if_dirty, "reconcile-pending")
        self.timers.every(self.lease_ttl / 3, self._renew, "lease")
        if self.systemd.watchdog_interval is not None:  # WatchdogSec=: pinged from the timer thread
            self.timers.every(self.systemd.watchdog_interval, self.systemd.watchdog, "watchdog")
        self.timers.start()
        log.info(
            f"gitorch serve: watching {self.repo.path} ({self.branch or 'HEAD'}), a pass every {self.interval:g} s"
            " and on every push",
            extra={"event": "serving"},
        )
        self.systemd.ready(self._status())
        try:
            while not self.stopping.wait(0.5):
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._reload(reload)
        finally:
            self.systemd.stopping("stopping: finishing the current pass")
            log.info("stopping: finishing the current pass", extra={"event": "stopping"})
            with self._listen_lock:
                if self.dashboard is not None:
                    self.dashboard.close()
                if self.listener is not None:
                    self.listener.close()
                if self.kube_server is not None:
                    self.kube_server.close()
            self.timers.stop()
            if control is not None:
                control.close()
            self.watchers.stop()
            self.notifier.stop()
            self.leadership.release()
            self.controller.close()
            if self.dns is not None:
                self.dns.stop()
            log.info("stopped", extra={"event": "stopped"})
