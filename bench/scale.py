"""Scale: what a pass costs with pods by the thousand, on real labs and on 500 simulated nodes.

Real labs (`--real NODES:PODS,...`, default one small lab of 5 nodes and 100 pods so the
run ends in a few minutes on 2 cores; issue 17 asks for `--real 20:1000,50:2000`): `sleep`
pods in Deployments of 20, one Service each, plus one pod whose readiness probe a file
flips. Per size: commit -> all Ready (the controller's passes in a loop, as `apply --wait`)
and pods/s, pod start p99 (scheduled -> Ready, Kubernetes' pod-startup SLI), the pass with
nothing changed (p50, p99), the pass after one pod's readiness flips, and `gitorch serve`
left alone with nothing to do: its CPU share (from /proc/<pid>/stat) and RSS.

Simulated (`--sim NODES:PODS`, default 100:2000; issue 17 asks for 500:10000): one process,
fake agents below the node client (bench/fakeagents.py) answering as agents whose pods all
start at once, so the figures are the controller's own cost: the same passes, and a cProfile
of a pass with nothing changed (`--profile FILE`). Memory per pod (`--memory SMALL,LARGE`,
default 1000,4000 pods on the simulated nodes): the same run in two fresh processes, and the
RSS after convergence and the no-op passes of the larger less that of the smaller (less what
the fake agents keep), over the pods between them: the marginal cost of a pod, without the
interpreter, the modules and the nodes that a one-size RSS / pods figure counts in.

Targets (issue 17): no-op pass <= 50 ms at 1,000 pods on 20 nodes, <= 200 ms at 10,000
pods on 500 simulated nodes; idle CPU <= 5% of a core at 1,000 pods; <= 10 KiB per pod;
commit -> Ready >= 100 pods/s on 20 nodes, pod start p99 <= 2 s. Needs root for the real
labs. Last line: the no-op pass p50 in ms at the largest real size (the simulated one with
--real none).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fakeagents import FakeAgent, fake_fleet
from bench.shared import GIT_ENV, free_port, git
from gitorch.nodes import lab as labmod
from gitorch.nodes.client import Fleet
from gitorch.reconcile.controller import Controller, PassResult
from gitorch.reconcile.leadership import LEASE
from gitorch.source import desired as desired_mod
from gitorch.source.git import open_repository
from gitorch.store.database import Store

REPLICAS = 20  # pods per Deployment
NAMESPACE = "bench"
FLIP = "flip"  # the one-pod Deployment whose readiness the bench flips
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the repository ------------------------------------------------------------------------


def deployment(name: str, replicas: int, probe: list[str] | None = None) -> str:
    readiness = ""
    if probe:
        readiness = f"\n          readinessProbe: {{exec: {{command: {json.dumps(probe)}}}, periodSeconds: 1}}"
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
        - name: main
          command: [sleep, "1000000"]
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}{readiness}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
"""


def apps(pods: int, flip_probe: list[str] | None) -> dict[str, str]:
    """`pods` pods in Deployments of REPLICAS (the last one smaller if need be), each with a
    Service, 50 Deployments to a file (a file holds at most 1,000 YAML documents); plus the
    one-pod flip Deployment when `flip_probe` is given."""
    docs, i = [], 0
    while pods > 0:
        docs.append(deployment(f"app-{i}", min(REPLICAS, pods)))
        pods -= REPLICAS
        i += 1
    if flip_probe is not None:
        docs.append(deployment(FLIP, 1, flip_probe))
    return {f"apps/apps-{n // 50:03}.yaml": "".join(docs[n : n + 50]) for n in range(0, len(docs), 50)}


def make_repo(root: Path, files: dict[str, str]) -> Path:
    repo = root / "repo"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=GIT_ENV)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "nodes", cwd=repo)
    return repo


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", message, cwd=repo)


# -- figures -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Figures:
    label: str
    nodes: int
    pods: int
    converge_s: float = 0.0
    passes_to_converge: int = 0
    start_p50: float | None = None
    start_p99: float | None = None
    noop: list[float] = field(default_factory=list)
    noop_cpu: list[float] = field(default_factory=list)  # of which CPU time of this process
    noop_agents: list[float] = field(default_factory=list)  # of which fake agents (simulated)
    flip_pass: float | None = None
    flip_back_pass: float | None = None
    idle_cpu: float | None = None
    idle_passes: float | None = None
    idle_pass_mean: float | None = None
    rss_kib: int | None = None
    per_pod_kib: float | None = None
    fakes_kib: int = 0  # what the fake agents keep, of rss_kib (simulated)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.label}: {self.nodes} nodes, {self.pods} pods"]
        if self.converge_s:
            out.append(f"  commit -> all Ready: {self.converge_s:.1f} s ({self.pods / self.converge_s:.1f} pods/s, "
                       f"{self.passes_to_converge} passes)")
        if self.start_p99 is not None:
            out.append(f"  pod start (scheduled -> Ready): p50 {self.start_p50:.2f} s, p99 {self.start_p99:.2f} s")
        if self.noop:
            line = (f"  no-op pass ({len(self.noop)}): p50 {1000 * statistics.median(self.noop):.0f} ms, "
                    f"p99 {1000 * pct(self.noop, 0.99):.0f} ms")
            if self.noop_cpu:
                line += f"; CPU p50 {1000 * statistics.median(self.noop_cpu):.0f} ms"
            if self.noop_agents:
                line += f" (fake agents {1000 * statistics.median(self.noop_agents):.1f} ms of it)"
            out.append(line)
        if self.flip_pass is not None:
            back = f", flipped back {1000 * self.flip_back_pass:.0f} ms" if self.flip_back_pass is not None else ""
            out.append(f"  pass after one pod's readiness flip: {1000 * self.flip_pass:.0f} ms{back}")
        if self.idle_cpu is not None:
            out.append(f"  serve at idle: {100 * self.idle_cpu:.1f}% of a core, {self.idle_passes:.2f} passes/s, "
                       f"pass mean {1000 * (self.idle_pass_mean or 0):.0f} ms")
        if self.rss_kib is not None:
            out.append(f"  controller RSS {self.rss_kib / 1024:.0f} MiB"
                       + (f", {self.per_pod_kib:.1f} KiB per pod" if self.per_pod_kib is not None else ""))
        out.extend(f"  {n}" for n in self.notes)
        return out


def timed(fn: Callable[[], PassResult]) -> tuple[float, PassResult]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def converge(controller: Controller, store: Store, pods: int, limit: float, fig: Figures) -> None:
    """Passes in a loop from a new commit until every pod is Ready and the pass converged."""
    t0 = time.monotonic()
    scheduled: dict[tuple[str, str], float] = {}
    ready: dict[tuple[str, str], float] = {}
    while True:
        result = controller.reconcile()
        fig.passes_to_converge += 1
        now = time.monotonic()
        if result.plan is None or not result.valid:
            raise SystemExit(f"{fig.label}: the commit is invalid: {result.diagnostics[:3]}")
        for p in result.plan.pods:
            if p.node:
                scheduled.setdefault((p.owner.namespace, p.name), now)
        for rec in store.pods():
            if rec.ready:
                ready.setdefault((rec.namespace, rec.name), now)
        print(f"  [{fig.label}] pass {fig.passes_to_converge}: {now - t0:.1f} s, {len(ready)}/{pods} Ready",
              file=sys.stderr, flush=True)
        if result.converged and len(ready) >= pods:
            break
        if now - t0 > limit:
            raise SystemExit(f"{fig.label}: not converged after {limit:g} s: {len(ready)}/{pods} Ready, "
                             f"node errors {list(result.node_errors.items())[:3]}")
    fig.converge_s = time.monotonic() - t0
    latencies = [ready[k] - scheduled[k] for k in ready if k in scheduled]
    if latencies:
        fig.start_p50 = statistics.median(latencies)
        fig.start_p99 = pct(latencies, 0.99)


def noop_passes(controller: Controller, count: int, fig: Figures) -> None:
    for _ in range(count):
        before, cpu = FakeAgent.seconds, time.process_time()
        took, result = timed(controller.reconcile)
        fig.noop_cpu.append(time.process_time() - cpu)
        if not result.converged:
            fig.notes.append(f"a no-op pass did not converge: node errors {list(result.node_errors.items())[:2]}")
        fig.noop.append(took)
        if before != FakeAgent.seconds:
            fig.noop_agents.append(FakeAgent.seconds - before)


def pod_ready(store: Store, namespace: str, name: str) -> bool | None:
    for rec in store.pods(namespace=namespace):
        if rec.name == name:
            return bool(rec.ready)
    return None


# -- simulated -----------------------------------------------------------------------------


def sim_files(nodes: int, pods: int) -> dict[str, str]:
    node_docs = []
    for i in range(nodes):
        node_docs.append(f"apiVersion: gitorch.dev/v1\nkind: Node\nmetadata: {{name: sim-{i + 1}}}\n"
                         f"spec: {{address: 198.18.{i // 250}.{i % 250 + 1}}}\n---\n")
    return {
        # Room for a /24 per node: Kubernetes' default /16 holds only 256 of them.
        "cluster.yaml": "apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata: {name: sim}\n"
                        "spec: {podCIDR: 10.64.0.0/12}\n",
        "nodes.yaml": "".join(node_docs),
        "ns.yaml": f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n",
    }


def simulated(nodes: int, pods: int, passes: int, profile: Path | None, profile_passes: int) -> Figures:
    fig = Figures("simulated", nodes, pods)
    gc.collect()
    rss0 = rss_kib()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), sim_files(nodes, pods))
        store = Store.open(f"sqlite:///{tmp}/store.db")
        agents: dict[str, FakeAgent] = {}
        # The seam: a real Fleet of real NodeClients over fake connections (Controller.fleet_factory).
        controller = Controller(open_repository(repo), store, Path(tmp) / "state",
                                fleet_factory=lambda eps, state: fake_fleet(eps, agents))
        # Passes as `serve` runs them: within a fenced leadership term.
        term = store.acquire_lease(LEASE, "bench", 86400)
        controller.reconcile = functools.partial(controller.reconcile, fence=term)  # type: ignore[method-assign]
        controller.reconcile()  # learn the nodes (facts), as the first pass on a real lab does
        commit(repo, apps(pods, None), f"{pods} pods")
        converge(controller, store, pods, 3600, fig)
        fig.start_p50 = fig.start_p99 = None  # fake pods start at once: no figure to give
        noop_passes(controller, passes, fig)
        # The pass after one pod's readiness flips, then flips back.
        target = next(iter(sorted(agents)))
        namespace, name = agents[target].pods()[0]
        agents[target].set_ready(namespace, name, False)
        before, cpu = FakeAgent.seconds, time.process_time()
        fig.flip_pass, _ = timed(controller.reconcile)
        fig.notes.append(f"flip pass: CPU {1000 * (time.process_time() - cpu):.0f} ms, fake agents "
                         f"{1000 * (FakeAgent.seconds - before):.0f} ms of it; sync calls so far "
                         f"{sum(a.calls.get('sync', 0) for a in agents.values())}")
        if pod_ready(store, namespace, name) is not False:
            fig.notes.append("the flip pass did not record the pod unready")
        agents[target].set_ready(namespace, name, True)
        fig.flip_back_pass, _ = timed(controller.reconcile)
        if profile is not None:
            fleet = controller.fleet(controller.load(None)[1])
            prof, took = profiled(fleet, lambda: [controller.reconcile() for _ in range(profile_passes)])
            text = profile_text(prof, f"cProfile of {profile_passes} no-op pass(es), {nodes} simulated nodes, "
                                f"{pods} pods (fake agents: bench/fakeagents.py); {1000 * took / profile_passes:.0f}"
                                f" ms per pass under the profiler, {1000 * statistics.median(fig.noop):.0f} ms "
                                "without. Node calls ran inline (one thread) so that cProfile sees them.")
            agents[target].set_ready(namespace, name, False)
            prof, took = profiled(fleet, controller.reconcile)
            agents[target].set_ready(namespace, name, True)
            controller.reconcile()
            text += "\n\n" + profile_text(prof, f"cProfile of the pass after one pod's readiness flip: "
                                          f"{1000 * took:.0f} ms under the profiler, {1000 * fig.flip_pass:.0f} ms "
                                          "without.")
            profile.write_text(text)
            fig.notes.append(f"profiles of a no-op pass and of a flip pass written to {profile}")
        gc.collect()
        rss = rss_kib()
        fakes = fake_bytes(agents) // 1024
        fig.rss_kib = rss
        fig.fakes_kib = fakes
        fig.notes.append(f"RSS grew {(rss - rss0) / 1024:.0f} MiB in the run; fake agents hold about "
                         f"{fakes / 1024:.0f} MiB of it")
        controller.close()
        store.close()
    return fig


def memory_per_pod(nodes: int, small: int, large: int, passes: int) -> tuple[float, list[str]]:
    """The marginal RSS of a pod, KiB: the simulated run at `small` and at `large` pods, each in a
    fresh process (the heap keeps its peak: runs in one process would measure the first one's),
    the fake agents' own bytes left out; and a line per run."""
    runs: list[tuple[int, int, int]] = []
    for pods in (small, large):
        out = subprocess.run([sys.executable, __file__, "--real", "none", "--sim", f"{nodes}:{pods}",
                              "--passes", str(passes), "--memory", "none"],
                             capture_output=True, text=True, check=True).stdout
        found = re.search(r"^controller RSS (\d+) KiB, fake agents (\d+) KiB$", out, re.M)
        if found is None:
            raise SystemExit(f"no RSS line in the {pods}-pod run: {out[-500:]}")
        runs.append((pods, int(found.group(1)), int(found.group(2))))
    (p0, r0, f0), (p1, r1, f1) = runs
    lines = [f"  {p} pods: RSS {r / 1024:.0f} MiB, of which fake agents about {f / 1024:.0f} MiB" for p, r, f in runs]
    return ((r1 - f1) - (r0 - f0)) / (p1 - p0), lines


def fake_bytes(agents: dict[str, FakeAgent]) -> int:
    """What the fake agents keep, roughly: the last sync's bytes, the cached answer, and the
    pod status dicts (deep sizes)."""
    seen: set[int] = set()

    def size(obj: Any) -> int:
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        n = sys.getsizeof(obj)
        if isinstance(obj, dict):
            n += sum(size(k) + size(v) for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set)):
            n += sum(size(v) for v in obj)
        return n

    return sum(size(a.__dict__) for a in agents.values())


class InlineExecutor:
    """Runs what is submitted at once, in the caller's thread: cProfile follows one thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def profiled(fleet: Fleet, passes: Callable[[], object]) -> tuple[cProfile.Profile, float]:
    """cProfile of `passes`, the fan-out's node calls run inline so that the profile sees
    them (under the GIL they take the same CPU in threads); and the wall time it took."""
    threaded = fleet._executor
    fleet._executor = InlineExecutor()  # type: ignore[assignment]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        passes()
    finally:
        prof.disable()
        fleet._executor = threaded
    return prof, time.perf_counter() - t0


def profile_text(prof: cProfile.Profile, header: str, top: int = 45) -> str:
    out = io.StringIO()
    out.write(header + "\n\n")
    for key, title in (("cumulative", "by cumulative time"), ("tottime", "by own time")):
        out.write(f"==== top {top} {title} ====\n")
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return re.sub(r"\n{3,}", "\n\n", out.getvalue())


# -- real labs -----------------------------------------------------------------------------


def real(nodes: int, pods: int, subnet: str, passes: int, idle_seconds: float, limit: float) -> Figures:
    fig = Figures("lab", nodes, pods)
    labmod.preflight()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state_dir = root / "lab"
        flag = "/tmp/gitorch-scale-unready"  # on the flip pod's node (lab nodes have their own /tmp)
        nodes_file = root / "nodes.yaml"
        t0 = time.monotonic()
        labmod.up(nodes, state_dir=state_dir, subnet=subnet, nodes_file=nodes_file)
        fig.notes.append(f"lab up in {time.monotonic() - t0:.1f} s")
        serve: subprocess.Popen[bytes] | None = None
        try:
            repo = make_repo(root, {
                "nodes.yaml": nodes_file.read_text(),
                "ns.yaml": f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n",
            })
            store = Store.open(f"sqlite:///{tmp}/store.db")
            controller = Controller(open_repository(repo), store, root / "state")
            controller.reconcile()  # connect, ship the agent, learn the nodes: the cluster is up
            controller.close()
            # serve with the nodes and no pods: the baseline its per-pod memory is counted from.
            serve = start_serve(root, repo)
            empty = Figures("empty", nodes, 0)
            idle(serve, min(idle_seconds, 10.0), empty)
            stop(serve)
            serve = None
            commit(repo, apps(pods, ["test", "!", "-e", flag]), f"{pods} pods")
            converge(controller, store, pods + 1, limit, fig)
            noop_passes(controller, passes, fig)
            lab = labmod.load(state_dir)
            assert lab is not None
            fig.flip_pass, cpu = flip(controller, store, lab, flag, unready=True)
            fig.flip_back_pass, _ = flip(controller, store, lab, flag, unready=False)
            fig.notes.append(f"flip pass: controller CPU {1000 * cpu:.0f} ms (the rest: waiting on the nodes' syncs)")
            controller.close()
            store.close()
            serve = start_serve(root, repo)
            idle(serve, idle_seconds, fig)
            assert fig.rss_kib is not None and empty.rss_kib is not None
            fig.per_pod_kib = (fig.rss_kib - empty.rss_kib) / (pods + 1)
            fig.notes.append(f"serve with the nodes and no pods: RSS {empty.rss_kib / 1024:.0f} MiB (per-pod figure "
                             f"counted from it), {100 * (empty.idle_cpu or 0):.1f}% of a core at idle")
        finally:
            if serve is not None:
                stop(serve)
            labmod.down(state_dir)
    return fig


def stop(serve: subprocess.Popen[bytes]) -> None:
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(30)
    except subprocess.TimeoutExpired:
        serve.kill()
        serve.wait()


def flip(controller: Controller, store: Store, lab: labmod.Lab, flag: str, unready: bool,
         limit: float = 60.0) -> tuple[float, float]:
    """Flip the flip pod's readiness (its probe tests for `flag` on its node), wait until
    its agent reports it, then time the pass that sees it: (wall, CPU) seconds."""
    pod = next(p for p in store.pods(namespace=NAMESPACE) if p.owner_name == FLIP)
    subprocess.run(labmod.ssh_command(lab, str(pod.node), ["touch" if unready else "rm", "-f", flag]),
                   check=True, capture_output=True, timeout=30)
    state = desired_mod.load(controller.repo, None)
    client = controller.fleet(state).clients[str(pod.node)]
    deadline = time.monotonic() + limit
    while True:
        answer = client.call("status")
        report = next((p for p in answer.get("pods") or [] if p.get("name") == pod.name), None)
        if report is not None and bool(report.get("ready")) is not unready:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{pod.name}: readiness did not flip within {limit:g} s")
        time.sleep(0.1)
    cpu = time.process_time()
    took, _ = timed(controller.reconcile)
    cpu = time.process_time() - cpu
    if pod_ready(store, NAMESPACE, pod.name) is unready:
        raise SystemExit(f"{pod.name}: the pass after the flip did not record it")
    return took, cpu


def start_serve(root: Path, repo: Path) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {**os.environ, "GITORCH_STATE_DIR": str(root / "state"),
           "GITORCH_DATABASE_URL": f"sqlite:///{root}/store.db"}
    log = (root / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitorch", "serve", "--repo", str(repo), "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    proc.port = port  # type: ignore[attr-defined]
    return proc


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"(gitorch_reconcile_pass_duration_seconds_(?:sum|count)|gitorch_reconcile_passes_total)"
                     r"(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def idle(serve: subprocess.Popen[bytes], seconds: float, fig: Figures) -> None:
    """`serve` with nothing to do: wait for its first passes (it connects to every node),
    then its CPU share and passes over `seconds`."""
    port = serve.port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 300
    while True:
        if serve.poll() is not None:
            raise SystemExit(f"serve exited with {serve.returncode}")
        with contextlib.suppress(OSError):
            if metrics(port).get("gitorch_reconcile_pass_duration_seconds_count", 0) >= 3:
                break
        if time.monotonic() > deadline:
            raise SystemExit("serve did no pass within 300 s")
        time.sleep(0.5)
    m0, c0, t0 = metrics(port), cpu_ticks(serve.pid), time.monotonic()
    time.sleep(seconds)
    m1, c1, t1 = metrics(port), cpu_ticks(serve.pid), time.monotonic()
    fig.idle_cpu = (c1 - c0) / CLK_TCK / (t1 - t0)
    count = m1["gitorch_reconcile_pass_duration_seconds_count"] - m0["gitorch_reconcile_pass_duration_seconds_count"]
    fig.idle_passes = count / (t1 - t0)
    if count:
        total = m1["gitorch_reconcile_pass_duration_seconds_sum"] - m0["gitorch_reconcile_pass_duration_seconds_sum"]
        fig.idle_pass_mean = total / count
    fig.rss_kib = rss_kib(serve.pid)


# -- main ----------------------------------------------------------------------------------


def sizes(text: str) -> list[tuple[int, int]]:
    if text in ("", "none"):
        return []
    out = []
    for part in text.split(","):
        try:
            n, p = part.split(":")
            out.append((int(n), int(p)))
        except ValueError:
            raise SystemExit(f"bad size {part!r}: expected NODES:PODS, e.g. 20:1000") from None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", default="5:100", help="lab sizes NODES:PODS,... (none: no lab); issue 17: "
                        "20:1000,50:2000")
    parser.add_argument("--sim", default="100:2000", help="simulated NODES:PODS (none: skip); issue 17: 500:10000")
    parser.add_argument("--passes", type=int, default=20, help="no-op passes timed per size")
    parser.add_argument("--memory", default="1000,4000", help="SMALL,LARGE pods for the marginal RSS per pod, on "
                        "the simulated nodes (none: skip)")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="serve's idle CPU window")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of simulated no-op passes")
    parser.add_argument("--profile-passes", type=int, default=3)
    parser.add_argument("--subnets", default=os.environ.get("GITORCH_BENCH_SUBNETS", "10.231.35.0/24,10.231.36.0/24"),
                        help="lab subnets, one per real size (reused in turn)")
    parser.add_argument("--limit", type=float, default=1800.0, help="seconds a lab may take to converge")
    args = parser.parse_args()
    real_sizes = sizes(args.real)
    sim = sizes(args.sim)
    subnets = args.subnets.split(",")
    results: list[Figures] = []
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start "
          "(wall times include other processes' share; CPU times do not)", flush=True)
    if sim:
        fig = simulated(sim[0][0], sim[0][1], args.passes, args.profile, args.profile_passes)
        if args.memory != "none":
            small, large = (int(n) for n in args.memory.split(","))
            fig.per_pod_kib, runs = memory_per_pod(sim[0][0], small, large, min(args.passes, 5))
            fig.notes.append(f"KiB per pod: the marginal RSS between {small} and {large} pods on {sim[0][0]} simulated "
                             "nodes, each run in a fresh process, the fake agents' own bytes left out")
            fig.notes.extend(runs)
        print("\n".join(fig.lines()), flush=True)
        print(f"controller RSS {fig.rss_kib} KiB, fake agents {fig.fakes_kib} KiB", flush=True)
        results.append(fig)
    for i, (n, p) in enumerate(real_sizes):
        fig = real(n, p, subnets[i % len(subnets)], args.passes, args.idle_seconds, args.limit)
        print("\n".join(fig.lines()), flush=True)
        results.append(fig)
    print("targets (issue 17): no-op pass <= 50 ms at 1,000 pods on 20 nodes, <= 200 ms at 10,000 pods on 500 "
          "simulated nodes; idle CPU <= 5% of a core at 1,000 pods; <= 10 KiB per pod; commit -> Ready >= 100 "
          "pods/s on 20 nodes, pod start p99 <= 2 s")
    labs = [f for f in results if f.label == "lab"] or results
    last = max(labs, key=lambda f: (f.pods, f.nodes))
    print(f"no-op pass p50 at {last.nodes} {'simulated ' if last.label != 'lab' else ''}nodes, {last.pods} pods: "
          f"{1000 * statistics.median(last.noop):.0f} ms")


if __name__ == "__main__":
    main()
