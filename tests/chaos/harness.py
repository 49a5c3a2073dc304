"""The chaos suite's cluster: `gitorch serve` processes on one PostgreSQL store driving real lab
nodes, a workload whose pods can be found by identity on the nodes, and the invariants checked
after each fault. Nothing here fails a test by itself: checks return violations, which the
runner counts (tests/chaos/faults.py) and the tests assert on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gitorch.nodes.lab import Lab, ssh_command
from gitorch.reconcile.leadership import LEASE
from gitorch.store.database import Store, StoreError
from tests.gitrepo import GitRepo

NAMESPACE = "chaos"
MARK = "gitorch-chaos"
"""The last argument of every workload process: how the node scan finds them."""
AGENT_DIR = "/var/lib/gitorch/agent"
"""Where the controller ships the agent file (gitorch.nodes.client.AGENT_DIR)."""
AGENT_ROOT = "/var/lib/gitorch"
"""The agent's state folder on a node (its default --root): supervisor.pid, fence.json, ..."""
PROBE_TIMEOUT = 20.0
SERVE_INTERVAL = 1.0
LEASE_TTL = 15.0  # serve's lease with --interval 1 (Server.lease_ttl)
RENEW_EVERY = LEASE_TTL / 3  # serve's `lease` timer

SLEEPER = "import time\nwhile True:\n    time.sleep(3600)"
# A Job's pod records each start in a file every node sees (/var/tmp is not private to lab
# nodes), in one O_APPEND write, so "started exactly once" is read from the file.
STARTER = (
    "import os,socket,time\n"
    "line = '%s/%s %s %.3f\\n' % (os.environ['CHAOS_NS'], os.environ['CHAOS_POD'], socket.gethostname(), time.time())\n"
    "fd = os.open(os.environ['CHAOS_STARTS'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)\n"
    "os.write(fd, line.encode()); os.close(fd)\n"
    "time.sleep(float(os.environ['CHAOS_SECONDS']))"
)


def _block(text: str, indent: int) -> str:
    return "\n".join(" " * indent + line for line in text.splitlines())


def _identity_env(extra: dict[str, str]) -> str:
    lines = [f"            - {{name: {k}, value: {json.dumps(v)}}}" for k, v in extra.items()]
    lines += [
        "            - {name: CHAOS_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}",
        "            - {name: CHAOS_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}",
    ]
    return "\n".join(lines)


@dataclass
class Workload:
    """The desired state the chaos run changes commit by commit (one field per kind of rollout)."""

    web_version: int = 1
    web_replicas: int = 3
    db_version: int = 1
    job: int = 0
    """The current Job's number (each commit that bumps it adds a new Job and drops the old one)."""
    job_seconds: float = 4.0
    silent: tuple[str, int] | None = None
    """A Node manifest at this address and port that accepts TCP and never answers."""

    def files(self, nodes_yaml: str, starts: Path) -> dict[str, str]:
        container = f"""\
          command:
            - python3
            - -c
            - |
{_block(SLEEPER, 14)}
            - {MARK}
"""
        apps = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  replicas: {self.web_replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
{container}          env:
{_identity_env({"VERSION": str(self.web_version)})}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: {NAMESPACE}}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: db, port: 5000}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {NAMESPACE}}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: db
{container}          env:
{_identity_env({"VERSION": str(self.db_version)})}
"""
        if self.job:
            apps += f"""\
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once-{self.job}, namespace: {NAMESPACE}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: once
          command:
            - python3
            - -c
            - |
{_block(STARTER, 14)}
            - {MARK}
          env:
{_identity_env({"CHAOS_STARTS": str(starts), "CHAOS_SECONDS": str(self.job_seconds)})}
"""
        nodes = nodes_yaml
        if self.silent is not None:
            host, port = self.silent
            nodes += f"""\
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {{name: silent}}
spec: {{address: {host}, port: {port}}}
"""
        return {"nodes.yaml": nodes, "apps.yaml": apps}


# ---------------------------------------------------------------------------- serve processes


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class LogRecord:
    at: float
    event: str
    message: str


class ServeProcess:
    """A `gitorch serve` with JSON logs, read as it runs; `records` keeps the parsed ones."""

    LEADING = re.compile(r"leading \((\S+), term (\d+)\)")

    def __init__(self, repo: Path, env: dict[str, str], state_dir: Path) -> None:
        cmd = [sys.executable, "-m", "gitorch", "serve", "--interval", str(SERVE_INTERVAL), "--listen",
               "127.0.0.1:0"]
        env = {**env, "GITORCH_STATE_DIR": str(state_dir), "GITORCH_LOG_FORMAT": "json"}
        self.state_dir = state_dir
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.pid = self.proc.pid
        self.lines: deque[str] = deque(maxlen=2000)
        self.records: list[LogRecord] = []
        self.file = state_dir.with_suffix(".log")  # kept with the test's tmp_path for a post-mortem
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.file, "a") as copy:
            for line in self.proc.stdout:
                copy.write(line)
                copy.flush()
                self._take(line)

    def _take(self, line: str) -> None:
        record = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = json.loads(line)
            record = LogRecord(_parse_time(doc["time"]), str(doc.get("event", "")), str(doc["message"]))
        with self._lock:
            self.lines.append(line)
            if record is not None:
                self.records.append(record)

    def log(self) -> list[LogRecord]:
        with self._lock:
            return list(self.records)

    def output(self, tail: int = 40) -> str:
        with self._lock:
            return "".join(list(self.lines)[-tail:])

    def terms(self) -> list[tuple[float, str, int]]:
        """Each `leading` record: when, the holder it names, its term."""
        out = []
        for r in self.log():
            found = self.LEADING.search(r.message) if r.event == "leading" else None
            if found:
                out.append((r.at, found.group(1), int(found.group(2))))
        return out

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL (no lease release); returns when it died."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return time.time()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


class SilentNode:
    """A TCP listener that accepts connections and never says a word (no SSH banner)."""

    MAX_HELD = 64

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.5)
        self.address = (host, int(self.sock.getsockname()[1]))
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.held.append(conn)
            while len(self.held) > self.MAX_HELD:  # bounded: the oldest goes
                self.held.pop(0).close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for conn in self.held:
            conn.close()


# ---------------------------------------------------------------------------- leases


@dataclass
class LeaseWatch:
    """Polls the lease row from the test: every term seen, with its holder and its span on the
    database's clock. Two leaders overlap when a term starts before the previous one ran out."""

    store: Store
    every: float = 0.2
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                lease = self.store.lease(LEASE)
            except StoreError:
                continue
            if lease is not None:
                self.observe(lease.term, lease.holder, lease.acquired_at, lease.expires_at)

    def observe(self, term: int, holder: str, acquired: datetime, expires: datetime) -> None:
        with self._lock:
            known = self.seen.get(term)
            if known is None:
                if self.order and term < self.order[-1]:
                    self.violations.append(f"lease term went back from {self.order[-1]} to {term}")
                previous = self.seen.get(self.order[-1]) if self.order else None
                if previous is not None and acquired < previous["expires"]:
                    self.violations.append(
                        f"term {term} ({holder}) began at {acquired:%H:%M:%S.%f} before term "
                        f"{self.order[-1]} ({previous['holder']}) ran out at {previous['expires']:%H:%M:%S.%f}"
                    )
                self.seen[term] = {"holder": holder, "acquired": acquired, "expires": expires}
                self.order.append(term)
            elif known["holder"] != holder:
                self.violations.append(f"term {term} held by both {known['holder']} and {holder}")
            else:
                known["expires"] = expires  # renewed (or released: then earlier)

    def current(self) -> tuple[int, str] | None:
        with self._lock:
            if not self.order:
                return None
            term = self.order[-1]
            return term, self.seen[term]["holder"]

    def take_violations(self) -> list[str]:
        with self._lock:
            out, self.violations = self.violations, []
            return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- nodes


NODE_PROBE = f"""\
f=$(ls -t {AGENT_DIR}/agent-*.py 2>/dev/null | head -1)
if [ -n "$f" ]; then python3 "$f" status </dev/null; else echo '{{"ok": true, "pods": []}}'; fi
echo '--- processes'
python3 - <<'EOF'
import json, os
out = []
for pid in os.listdir('/proc'):
    if not pid.isdigit():
        continue
    try:
        argv = open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\\0')[:-1]
        if not argv or argv[-1] != b'{MARK}' or not os.path.basename(argv[0]).startswith(b'python3'):
            continue
        env = dict(x.split(b'=', 1) for x in open('/proc/%s/environ' % pid, 'rb').read().split(b'\\0') if b'=' in x)
        state = open('/proc/%s/stat' % pid).read().rsplit(')', 1)[1].split()[0]
    except OSError:
        continue
    if state == 'Z':
        continue
    out.append([int(pid), env.get(b'CHAOS_NS', b'').decode(), env.get(b'CHAOS_POD', b'').decode()])
print(json.dumps(out))
EOF
"""


@dataclass
class NodeView:
    """One node as its agent reports it and as its process table shows it."""

    name: str
    pods: dict[tuple[str, str], dict[str, Any]]
    processes: list[tuple[int, str, str]]
    supervisor: dict[str, Any]


def probe_node(lab: Lab, node: str) -> NodeView | str:
    """What `node` runs now, or why it could not be asked."""
    try:
        proc = subprocess.run(ssh_command(lab, node, ["sh", "-c", NODE_PROBE]), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return f"{node}: probe timed out"
    if proc.returncode != 0 or "--- processes" not in proc.stdout:
        return f"{node}: probe exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    status_text, procs_text = proc.stdout.split("--- processes", 1)
    try:
        status = json.loads(status_text)
        procs = json.loads(procs_text)
    except ValueError as exc:
        return f"{node}: probe output unreadable ({exc})"
    pods = {(str(p.get("namespace") or "default"), str(p["name"])): p for p in status.get("pods", [])}
    return NodeView(node, pods, [(int(p), str(ns), str(n)) for p, ns, n in procs], status.get("supervisor") or {})


def node_run(lab: Lab, node: str, script: str, timeout: float = PROBE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ssh_command(lab, node, ["sh", "-c", script]), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def veths(lab: Lab) -> dict[str, str]:
    """Each lab node's host-side veth (recorded in lab.json by gitorch.nodes.lab)."""
    record = json.loads((lab.state_dir / "lab.json").read_text())
    return {n["name"]: n["veth"] for n in record["nodes"]}


def host_address(lab: Lab) -> str:
    return str(json.loads((lab.state_dir / "lab.json").read_text())["host_address"])


# ---------------------------------------------------------------------------- the cluster


@dataclass
class Snapshot:
    """The store and every node at one moment, and what disagrees between them and the head."""

    head: str
    problems: list[str]
    """Why this is not (yet) the converged head: empty once it is."""
    duplicates: list[str]
    """Identities (namespace/name) running more than once across the nodes."""
    pods: int = 0
    processes: int = 0


class ChaosCluster:
    """A repository, a PostgreSQL store, serve processes and the lab nodes they drive."""

    def __init__(self, lab: Lab, database_url: str, workdir: Path) -> None:
        self.lab = lab
        self.url = database_url
        self.workdir = workdir
        self.repo = GitRepo(workdir / "repo")
        self.starts = Path(f"/var/tmp/gitorch-chaos-{os.getpid()}-{int(time.time() * 1000)}.starts")
        self.starts.touch(mode=0o666)
        os.chmod(self.starts, 0o666)
        self.nodes_yaml = (lab.state_dir / "nodes.yaml").read_text()
        self.workload = Workload()
        self.store = Store.open(database_url)  # creates the schema before any serve starts
        self.leases = LeaseWatch(self.store)
        self.serves: list[ServeProcess] = []
        self.all_serves: list[ServeProcess] = []
        self.silent: SilentNode | None = None
        self.env = {**os.environ, "GITORCH_DATABASE_URL": database_url}
        self.env.pop("GITORCH_NO_WATCH", None)
        self._serial = 0

    # -- Git ----------------------------------------------------------------------------

    def commit(self, message: str) -> str:
        silent = self.silent.address if self.silent is not None else None
        self.workload.silent = silent
        return self.repo.commit(message, self.workload.files(self.nodes_yaml, self.starts))

    def head(self) -> str:
        from tests.gitrepo import git

        return git("rev-parse", "HEAD", cwd=self.repo.path).stdout.strip()

    # -- serve ----------------------------------------------------------------------------

    def start_serve(self) -> ServeProcess:
        self._serial += 1
        serve = ServeProcess(self.repo.path, self.env, self.workdir / f"serve-{self._serial}")
        self.serves.append(serve)
        self.all_serves.append(serve)
        return serve

    def leader(self) -> ServeProcess | None:
        """The live serve holding an unexpired lease, by the store."""
        lease = self.store.lease(LEASE)
        if lease is None or lease.expires_at <= self.store.db_now():
            return None
        for s in self.serves:
            if s.alive and lease.holder.endswith(f":{s.pid}"):
                return s
        return None

    def wait_leader(self, timeout: float = 3 * LEASE_TTL) -> ServeProcess | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None:
                return found
            time.sleep(0.2)
        return None

    def kill(self, serve: ServeProcess) -> float:
        died = serve.kill()
        self.serves.remove(serve)
        return died

    def term_claims(self) -> list[str]:
        """Violations in what the serves' logs claim: one holder per term, and each holder's
        claimed term is the store's."""
        holders: dict[int, set[str]] = {}
        for s in self.all_serves:
            for _, holder, term in s.terms():
                holders.setdefault(term, set()).add(holder)
        out = [f"term {t} claimed by {sorted(h)} in the serve logs" for t, h in sorted(holders.items()) if len(h) > 1]
        with self.leases._lock:
            seen = {t: v["holder"] for t, v in self.leases.seen.items()}
        for term, names in sorted(holders.items()):
            stored = seen.get(term)
            if stored is not None and stored not in names:
                out.append(f"term {term}: the store says {stored}, the logs {sorted(names)}")
        return out

    # -- the silent node -------------------------------------------------------------------

    def add_silent(self) -> None:
        if self.silent is None:
            self.silent = SilentNode(host_address(self.lab))

    def remove_silent(self) -> None:
        if self.silent is not None:
            self.silent.close()
            self.silent = None

    # -- observing ----------------------------------------------------------------------------

    def views(self) -> tuple[dict[str, NodeView], list[str]]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.lab.nodes)) as pool:
            results = list(pool.map(lambda n: probe_node(self.lab, n.name), self.lab.nodes))
        views = {r.name: r for r in results if isinstance(r, NodeView)}
        return views, [r for r in results if isinstance(r, str)]

    def snapshot(self) -> Snapshot:
        head = self.head()
        views, errors = self.views()
        problems = list(errors)
        duplicates = duplicate_identities(views)
        try:
            problems += store_problems(self.store, head, views)
        except StoreError as exc:
            problems.append(f"store: {exc}")
        return Snapshot(head, problems, duplicates, sum(len(v.pods) for v in views.values()),
                        sum(len(v.processes) for v in views.values()))

    def converge(self, timeout: float) -> tuple[Snapshot, float]:
        """Snapshots until one shows the head converged everywhere, or `timeout`; the last one
        and how long it took. Duplicates seen on the way are kept in the returned snapshot."""
        started = time.monotonic()
        seen_duplicates: list[str] = []
        while True:
            snap = self.snapshot()
            for d in snap.duplicates:
                if d not in seen_duplicates:
                    seen_duplicates.append(d)
            if not snap.problems or time.monotonic() - started > timeout:
                snap.duplicates = seen_duplicates
                return snap, time.monotonic() - started
            time.sleep(1.0)

    def job_starts(self) -> dict[str, list[str]]:
        """Each Job pod's starts as its processes wrote them: identity -> [node, ...]."""
        out: dict[str, list[str]] = {}
        for line in self.starts.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out.setdefault(parts[0], []).append(parts[1])
        return out

    # -- the end ------------------------------------------------------------------------------

    def teardown(self, timeout: float = 120.0) -> None:
        """Links up, the workload out of Git, the nodes emptied by a leader, then close."""
        for veth in veths(self.lab).values():
            subprocess.run(["ip", "link", "set", veth, "up"], check=False, timeout=10)
        try:
            self.remove_silent()
            self.workload.silent = None
            self.repo.commit("chaos: done", {"nodes.yaml": self.nodes_yaml, "apps.yaml": ""})
            if not any(s.alive for s in self.serves):
                self.start_serve()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                views, errors = self.views()
                if not errors and not any(v.pods or v.processes for v in views.values()):
                    break
                time.sleep(1.0)
        finally:
            self.close()

    def close(self) -> None:
        for s in self.serves:
            s.stop()
        self.serves = []
        self.leases.stop()
        self.remove_silent()
        self.store.close()
        with contextlib.suppress(OSError):
            self.starts.unlink()


def duplicate_identities(views: dict[str, NodeView]) -> list[str]:
    """Identities with more than one process anywhere, or reported by two agents."""
    where: dict[str, list[str]] = {}
    for v in views.values():
        for pid, ns, name in v.processes:
            where.setdefault(f"{ns}/{name}", []).append(f"{v.name} pid {pid}")
    out = [f"{ident} runs {len(w)} times: {', '.join(w)}" for ident, w in sorted(where.items()) if len(w) > 1]
    reported: dict[str, list[str]] = {}
    for v in views.values():
        for (ns, name), pod in v.pods.items():
            if pod.get("phase") in ("Running", "Pending") and not pod.get("terminating"):
                reported.setdefault(f"{ns}/{name}", []).append(v.name)
    out += [f"{ident} reported running by {', '.join(n)}" for ident, n in sorted(reported.items()) if len(n) > 1]
    return out


def store_problems(store: Store, head: str, views: dict[str, NodeView]) -> list[str]:
    """How the store and the nodes differ from the head converged: the head applied, every
    object Healthy at the head, and every pod the store records run (or finished) exactly where
    it says, with the phase and readiness it says; no node runs a pod the store does not know."""
    out: list[str] = []
    applied = store.last_applied_revision()
    if applied is None or applied.commit != head:
        out.append(f"applied revision {applied.commit[:10] if applied else None}, head {head[:10]}")
    for o in store.objects():
        if o.health != "Healthy" or o.last_applied_revision != head:
            out.append(f"{o.kind}/{o.namespace}/{o.name}: {o.health} at {str(o.last_applied_revision)[:10]}")
    recorded: dict[tuple[str, str], Any] = {}
    for p in store.pods():
        recorded[(p.namespace, p.name)] = p
        key = f"{p.namespace}/{p.name}"
        if p.node is None:
            out.append(f"pod {key} not scheduled ({p.phase}: {p.message})")
            continue
        view = views.get(p.node)
        if view is None:
            out.append(f"pod {key} on {p.node}, which did not answer")
            continue
        report = view.pods.get((p.namespace, p.name))
        done = p.owner_kind == "Job" and p.phase == "Succeeded"
        if report is None:
            if not done:  # a finished Job pod may already be gone from its node
                out.append(f"pod {key}: the store has it on {p.node} ({p.phase}), the node does not run it")
            continue
        if report.get("phase") != p.phase or bool(report.get("ready")) != p.ready:
            out.append(f"pod {key} on {p.node}: store {p.phase}/ready={p.ready}, node "
                       f"{report.get('phase')}/ready={report.get('ready')}")
        if not done and (p.phase != "Running" or not p.ready):
            out.append(f"pod {key} on {p.node}: {p.phase}, ready={p.ready}")
        running = [pid for pid, ns, n in view.processes if (ns, n) == (p.namespace, p.name)]
        if not done and p.phase == "Running" and not running:
            out.append(f"pod {key} on {p.node}: Running by its agent, but no process")
    for node, view in views.items():
        for (ns, name), pod in view.pods.items():
            stored = recorded.get((ns, name))
            if stored is None or stored.node != node:
                out.append(f"{node} runs {ns}/{name} ({pod.get('phase')}), which the store "
                           + ("does not know" if stored is None else f"has on {stored.node}"))
        for pid, ns, name in view.processes:
            if (ns, name) not in view.pods:
                out.append(f"{node}: process {pid} of {ns}/{name}, which its agent does not report")
    return out
