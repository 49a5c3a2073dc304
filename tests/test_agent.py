"""The node agent run for real on this machine: a temp --root, real processes, no SSH."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until

AGENT = Path(__file__).resolve().parents[1] / "gitorch" / "nodes" / "agent.py"
PY = sys.executable  # what containers run
# The agent's interpreter: nodes may have an older python3 (e.g. GITORCH_AGENT_PYTHON=3.9).
AGENT_PY = os.environ.get("GITORCH_AGENT_PYTHON", sys.executable)
Json = dict[str, Any]


# ---- helpers ----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Running and not a zombie (orphans may wait a moment for init to reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ctr(name: str, command: list[str], **extra: Any) -> Json:
    return {"name": name, "image": None, "command": command, "args": [], "env": [],
            "workingDir": None, "resources": {}, "livenessProbe": None,
            "readinessProbe": None, "startupProbe": None, "volumeMounts": [], "ports": [],
            **extra}


def pod(name: str, *containers: Json, **extra: Any) -> Json:
    spec: Json = {"name": name, "namespace": "test", "hash": "h1", "restartPolicy": "Always",
                  "terminationGracePeriodSeconds": 2, "hostNetwork": False,
                  "containers": list(containers), "initContainers": [], "volumes": []}
    spec.update(extra)
    return spec


def sleeper(name: str = "main", **extra: Any) -> Json:
    return ctr(name, ["sleep", "300"], **extra)


def tcp_probe(port: int, **extra: Any) -> Json:
    return {"tcpSocket": {"port": port}, "periodSeconds": 0.1, "timeoutSeconds": 0.5,
            "failureThreshold": 1, **extra}


class Node:
    """Runs the agent file as the controller would, against one temp root."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.env = {**os.environ, "GITORCH_BACKOFF_BASE": "0.2",
                    "GITORCH_CONTAINER_RUNTIMES": "", **env}
        self.outputs: list[str] = []  # everything the agent printed, for the secrets test

    def call(self, verb: str, request: Json | None = None) -> tuple[int, Json]:
        proc = subprocess.run([AGENT_PY, str(AGENT), verb, "--root", str(self.root)],
                              input=json.dumps(request or {}), capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)
        self.outputs.append(proc.stdout + proc.stderr)
        assert proc.stdout.count("\n") == 1, f"not one JSON document: {proc.stdout!r}"
        return proc.returncode, json.loads(proc.stdout)

    def run(self, verb: str, request: Json | None = None) -> Json:
        code, doc = self.call(verb, request)
        assert code == 0 and doc["ok"], doc
        return doc

    def sync(self, *pods: Json) -> Json:
        doc = self.run("sync", {"pods": list(pods)})
        assert doc["acked"], doc
        return doc

    def pods(self) -> dict[str, Json]:
        return {p["name"]: p for p in self.run("status")["pods"]}

    def describe(self) -> str:
        log = (self.root / "supervisor.log")
        tail = log.read_text()[-3000:] if log.exists() else ""
        return f"status: {json.dumps(self.pods(), indent=1)[-4000:]}\nsupervisor.log:\n{tail}"

    def wait_pod(self, name: str, check: Callable[[Json], Any], what: str,
                 timeout: float = 15.0) -> Json:
        def probe() -> Json | None:
            p = self.pods().get(name)
            return p if p is not None and check(p) else None
        return wait_until(f"pod {name}: {what}", probe, timeout=timeout, interval=0.05, describe=self.describe)

    def main(self, name: str, container: int = 0) -> Json:
        return self.pods()[name]["containers"][container]

    def teardown(self) -> None:
        """Stop every pod and the supervisor; then kill anything left, by recorded pid."""
        with contextlib.suppress(Exception):
            status = self.run("status")
            if status["pods"] or status["supervisor"]["running"]:
                self.run("sync", {"pods": []})
                wait_until("all pods stopped", lambda: not self.pods(), timeout=20, interval=0.05)
        with contextlib.suppress(Exception):
            self.run("stop-supervisor")
        state = self.root / "state.json"
        with contextlib.suppress(OSError, ValueError):
            for p in json.loads(state.read_text()).get("pods", []):
                for c in p.get("containers", []) + p.get("initContainers", []):
                    if c.get("pid"):
                        with contextlib.suppress(OSError):
                            os.killpg(int(c["pid"]), signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError):
            pid = int(json.loads((self.root / "supervisor.pid").read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            if "supervise" in cmdline and str(self.root) in cmdline:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "root")
    try:
        yield n
    finally:
        n.teardown()


def running(p: Json) -> bool:
    return p["phase"] == "Running" and all(c["state"] == "running" for c in p["containers"])


# ---- facts and protocol -----------------------------------------------------------------


def test_facts_are_sane(node: Node) -> None:
    facts = node.run("facts")
    assert facts["hostname"] == socket.gethostname()
    assert facts["cpusOnline"] == os.cpu_count()
    assert facts["cpus"] > 0 and facts["cpuMillis"] >= 1
    assert 0 < facts["memory"]["availableBytes"] <= facts["memory"]["totalBytes"]
    assert 0 < facts["disk"]["freeBytes"] <= facts["disk"]["totalBytes"]
    assert facts["runtimes"][0] == "process"
    assert "podman" not in facts["runtimes"]  # disabled for tests
    assert facts["cgroup"]["version"] in ("v1", "v2", "none")
    assert facts["limits"] in ("supported", "unsupported")
    assert facts["volumeMounts"] in ("bind", "unsupported")
    assert facts["agentVersion"] and facts["python"].startswith("3.")
    assert facts["supervisor"] == {"running": False, "pid": None, "version": None, "sha": None}
    assert facts["os"]


@pytest.mark.parametrize("argv,stdin", [
    (["facts"], "{not json"),
    (["reboot"], "{}"),
    (["sync"], "{}"),
    (["sync"], '{"pods": [{"name": "../escape"}]}'),
    (["sync"], '{"pods": [{"name": "a"}, {"name": "a", "namespace": "default"}]}'),
    (["sync"], '{"pods": [{"name": "a", "namespace": "../up"}]}'),
    (["sync"], '{"pods": [], "fence": {"term": "7", "holder": "a"}}'),
    (["sync"], '{"pods": [], "fence": {"term": 7, "holder": "a\\nb"}}'),
], ids=["bad-json", "unknown-verb", "sync-without-pods", "unsafe-name", "duplicate-pod",
        "unsafe-namespace", "fence-term-not-a-number", "fence-holder-control-char"])
def test_broken_requests_exit_1_with_one_json_line(tmp_path: Path, argv: list[str],
                                                   stdin: str) -> None:
    proc = subprocess.run([AGENT_PY, str(AGENT), *argv, "--root", str(tmp_path)], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and "\n" not in doc["error"]


def test_unknown_pod_logs_is_an_error_but_not_a_broken_request(node: Node) -> None:
    code, doc = node.call("logs", {"pod": "nope"})
    assert code == 0 and doc == {"ok": False, "error": "pod nope not found on this node"}


# ---- running pods -----------------------------------------------------------------------


def test_http_pod_runs_ready_and_answers(node: Node) -> None:
    port = free_port()
    web = ctr("web", [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
              readinessProbe={"httpGet": {"path": "/", "port": port, "scheme": "HTTP"},
                              "periodSeconds": 0.1},
              livenessProbe={"httpGet": {"path": "/", "port": port}, "periodSeconds": 0.2,
                             "initialDelaySeconds": 1, "failureThreshold": 3})
    first = node.sync(pod("web-1", web))
    assert first["changed"] and first["generation"] == 1
    p = node.wait_pod("web-1", lambda p: p["ready"], "ready")
    assert running(p) and p["containers"][0]["ready"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        assert resp.status == 200
    # The unchanged set again: same generation, nothing restarted.
    again = node.sync(pod("web-1", web))
    assert not again["changed"] and again["generation"] == 1
    assert again["pods"][0]["containers"][0]["pid"] == p["containers"][0]["pid"]
    assert again["pods"][0]["restarts"] == 0
    facts = node.run("facts")
    assert facts["pods"] == {"test/web-1": {"phase": "Running", "ready": True, "restarts": 0}}
    assert facts["supervisor"]["running"]


def test_killed_process_is_restarted_with_backoff(node: Node) -> None:
    node.sync(pod("s-1", sleeper()))
    pid1 = node.wait_pod("s-1", running, "running")["containers"][0]["pid"]
    os.kill(pid1, signal.SIGKILL)
    p = node.wait_pod("s-1", lambda p: running(p) and p["restarts"] == 1, "restart 1")
    c = p["containers"][0]
    assert c["pid"] != pid1
    assert c["lastState"]["exitCode"] == 137 and c["lastState"]["signal"] == 9
    os.kill(c["pid"], signal.SIGKILL)
    node.wait_pod("s-1", lambda p: running(p) and p["restarts"] == 2, "restart 2")


def test_container_exiting_at_once_is_in_crashloopbackoff(node: Node) -> None:
    node.sync(pod("crash-1", ctr("main", ["sh", "-c", "echo boom; exit 3"])))
    p = node.wait_pod("crash-1", lambda p: p["containers"][0]["reason"] == "CrashLoopBackOff"
                      and p["restarts"] >= 2, "CrashLoopBackOff")
    c = p["containers"][0]
    assert c["state"] == "waiting" and c["lastExitCode"] == 3
    assert "back-off" in c["message"]
    assert not p["ready"]
    prev = node.run("logs", {"pod": "crash-1", "container": "main", "previous": True})
    assert prev["log"] == "boom\n"


def test_failing_liveness_probe_restarts_the_container(node: Node) -> None:
    closed = free_port()
    node.sync(pod("live-1", sleeper(livenessProbe=tcp_probe(closed))))
    p = node.wait_pod("live-1", lambda p: p["restarts"] >= 1, "restart after liveness")
    last = p["containers"][0]["lastState"]
    assert "liveness" in last["message"] and last["exitCode"] == 143  # SIGTERM first
    assert "Liveness probe failed" in (node.root / "supervisor.log").read_text()


def test_failing_readiness_probe_only_marks_not_ready(node: Node, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    probe = {"exec": {"command": ["test", "-f", str(flag)]}, "periodSeconds": 0.1,
             "failureThreshold": 1}
    node.sync(pod("ready-1", sleeper(readinessProbe=probe)))
    p = node.wait_pod("ready-1", lambda p: "Readiness probe failed" in
                      p["containers"][0]["message"], "readiness failure reported")
    pid = p["containers"][0]["pid"]
    assert running(p) and not p["ready"] and p["restarts"] == 0
    flag.touch()
    p = node.wait_pod("ready-1", lambda p: p["ready"], "ready once the probe passes")
    assert p["containers"][0]["pid"] == pid and p["restarts"] == 0
    flag.unlink()
    p = node.wait_pod("ready-1", lambda p: not p["ready"], "not ready again")
    assert running(p) and p["containers"][0]["pid"] == pid


def test_startup_probe_gates_liveness(node: Node, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    startup = {"exec": {"command": ["test", "-f", str(flag)]}, "periodSeconds": 0.1,
               "failureThreshold": 1000}
    node.sync(pod("start-1", sleeper(startupProbe=startup, livenessProbe=tcp_probe(
        free_port(), failureThreshold=1))))
    p = node.wait_pod("start-1", running, "running")
    assert not p["containers"][0]["started"] and not p["ready"]
    assert p["restarts"] == 0  # the failing liveness probe does not run yet
    flag.touch()
    node.wait_pod("start-1", lambda p: p["restarts"] >= 1, "liveness active after startup")


@pytest.mark.parametrize("policy,code,phase,restarts", [
    ("Never", 1, "Failed", False),
    ("Never", 0, "Succeeded", False),
    ("OnFailure", 0, "Succeeded", False),
    ("OnFailure", 1, None, True),
    ("Always", 0, None, True),
], ids=["never-fails", "never-succeeds", "onfailure-succeeds", "onfailure-restarts",
        "always-restarts-success"])
def test_restart_policy(node: Node, policy: str, code: int, phase: str | None,
                        restarts: bool) -> None:
    node.sync(pod("job-1", ctr("main", ["sh", "-c", f"exit {code}"]), restartPolicy=policy))
    if restarts:
        p = node.wait_pod("job-1", lambda p: p["restarts"] >= 2, "restarts")
        assert p["containers"][0]["lastExitCode"] == code
        return
    p = node.wait_pod("job-1", lambda p: p["phase"] == phase, phase or "")
    c = p["containers"][0]
    assert c["state"] == "terminated" and c["exitCode"] == code and p["restarts"] == 0
    assert c["reason"] == ("Completed" if code == 0 else "Error")


# ---- supervisor restarts, updates and removal -------------------------------------------


def test_restarted_supervisor_adopts_running_pods(node: Node) -> None:
    port = free_port()
    web = ctr("web", [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
              readinessProbe=tcp_probe(port, failureThreshold=3))
    node.sync(pod("adopt-1", web))
    before = node.wait_pod("adopt-1", lambda p: p["ready"], "ready")
    pid = before["containers"][0]["pid"]
    stopped = node.run("stop-supervisor")
    assert stopped["stopped"]
    assert alive(pid)  # pods outlive the supervisor
    assert node.run("status")["stale"]
    again = node.sync(pod("adopt-1", web))
    assert not again["changed"]
    assert again["supervisor"]["pid"] != stopped["pid"]
    after = node.wait_pod("adopt-1", lambda p: p["ready"], "ready after adoption")
    assert after["containers"][0]["pid"] == pid and after["restarts"] == 0
    # Exactly one server process, under the container's exit recorder (the tracked pid):
    # bind would fail for a duplicate, and it would show here.
    servers = [int(d) for d in os.listdir("/proc") if d.isdigit()
               and _cmdline(int(d)).startswith(PY.encode() + b"\0-m\0http.server\0")]
    assert len(servers) == 1 and os.getpgid(servers[0]) == pid, servers
    # The new supervisor watches the adopted process too, and learns how it ended although
    # it is not its child.
    os.kill(servers[0], signal.SIGKILL)
    p = node.wait_pod("adopt-1", lambda p: running(p) and p["restarts"] == 1, "restarted")
    last = p["containers"][0]["lastState"]
    assert (last["reason"], last["exitCode"], last["signal"]) == ("Error", 137, 9), last


@pytest.mark.parametrize(("code", "phase"), [(0, "Succeeded"), (3, "Failed")])
def test_a_run_once_pod_adopted_by_a_new_supervisor_ends_by_its_exit_code(
        node: Node, tmp_path: Path, code: int, phase: str) -> None:
    """A Job's pod whose supervisor is replaced mid-run (killed, or an agent upgrade) still
    ends by its own exit code: the new supervisor is not its parent (issue 19)."""
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; exit {code}"
    spec = pod("once-1", ctr("main", ["sh", "-c", script]), restartPolicy="Never")
    node.sync(spec)
    pid = node.wait_pod("once-1", running, "running")["containers"][0]["pid"]
    sup = node.run("status")["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)  # as the chaos suite does: no handover at all
    wait_until("supervisor gone", lambda: not node.run("status")["supervisor"]["running"], timeout=15,
               interval=0.05)
    go.touch()
    wait_until("the container exited", lambda: not alive(pid), timeout=15, interval=0.05)
    node.sync(spec)  # a new supervisor adopts the pod after it ended
    p = node.wait_pod("once-1", lambda p: p["phase"] == phase, phase)
    c = p["containers"][0]
    assert (c["state"], c["exitCode"], c["reason"]) == (
        "terminated", code, "Completed" if code == 0 else "Error"), c
    assert p["restarts"] == 0


def test_readiness_survives_a_supervisor_handover(node: Node, tmp_path: Path) -> None:
    """An agent upgrade restarts the supervisor: pods stay ready meanwhile (until the new
    supervisor's own probes say otherwise), or every Service would lose its endpoints."""
    flag = tmp_path / "ready"
    flag.touch()
    slow = {"exec": {"command": ["test", "-f", str(flag)]}, "periodSeconds": 1, "successThreshold": 3,
            "failureThreshold": 1}
    spec = pod("hand-1", sleeper(readinessProbe=slow))
    node.sync(spec)
    node.wait_pod("hand-1", lambda p: p["ready"], "ready")
    node.run("stop-supervisor")
    assert node.pods()["hand-1"]["ready"]  # the status left behind still says ready
    again = node.sync(spec)  # a new supervisor, whose probe needs 3 s to decide
    assert again["pods"][0]["ready"], again["pods"]
    assert node.pods()["hand-1"]["ready"]
    # Its own probes still rule.
    flag.unlink()
    node.wait_pod("hand-1", lambda p: not p["ready"], "not ready once its probe fails")


# The last agent that named a pod's folder, network namespace and cgroup by its bare name.
LEGACY_AGENT_COMMIT = "501ac24162ac407817b6ba970fa2a8b73f7f899b"


def legacy_agent(tmp_path: Path) -> Path:
    proc = subprocess.run(["git", "-C", str(AGENT.parents[2]), "show",
                           f"{LEGACY_AGENT_COMMIT}:gitorch/nodes/agent.py"],
                          capture_output=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.skip(f"the legacy agent is not in this checkout's history: {proc.stderr!r}")
    path = tmp_path / "agent-legacy.py"
    path.write_bytes(proc.stdout)
    return path


def test_pods_of_the_bare_name_layout_are_adopted_without_a_restart(node: Node, tmp_path: Path) -> None:
    """An upgrade from an agent that named pods on disk by their bare name: the running pod
    keeps its process, readiness, folder and logs; a pod of the same name in another
    namespace then runs beside it; its next replacement moves it to the new layout."""
    old = legacy_agent(tmp_path)
    flag = tmp_path / "ready"
    flag.touch()
    slow = {"exec": {"command": ["test", "-f", str(flag)]}, "periodSeconds": 1,
            "successThreshold": 3, "failureThreshold": 1}
    token = f"legacy-{uuid.uuid4().hex}"
    web = pod("web", ctr("main", ["sh", "-c", "echo started; exec sleep 300"], readinessProbe=slow,
                         env=[{"name": "TOKEN", "value": token, "secret": True}]),
              volumes=[{"name": "conf", "files": {"a.conf": "x=1"}}])
    proc = subprocess.run([AGENT_PY, str(old), "sync", "--root", str(node.root)],
                          input=json.dumps({"pods": [web]}), capture_output=True, text=True,
                          env=node.env, timeout=60, check=True)
    assert json.loads(proc.stdout)["ok"]
    before = node.wait_pod("web", lambda p: p["ready"], "ready under the legacy agent")
    assert (node.root / "pods" / "web" / "logs" / "main.log").exists()  # the bare-name layout
    pid = before["containers"][0]["pid"]
    assert token in (node.root / "desired.json").read_text()  # the old agent's shared file

    doc = node.sync(web)  # the new agent: the old supervisor is replaced
    assert doc["supervisor"]["sha"] != json.loads(proc.stdout)["supervisor"]["sha"]
    assert doc["pods"][0]["ready"], doc["pods"]  # still ready through the handover
    after = node.wait_pod("web", lambda p: p["ready"], "ready")
    assert after["containers"][0]["pid"] == pid and after["restarts"] == 0
    assert node.run("logs", {"pod": "web", "namespace": "test"})["log"] == "started\n"
    assert node.run("logs", {"pod": "web"})["log"] == "started\n"
    # Its secret moved out of the shared desired.json into its own file.
    assert token not in (node.root / "desired.json").read_text()
    secrets = node.root / "pods" / "test_web" / "secrets.json"
    assert token in secrets.read_text() and secrets.stat().st_mode & 0o777 == 0o600

    twin = pod("web", sleeper(), namespace="other")
    node.sync(web, twin)
    wait_until("both namespaces running", lambda: len([q for q in node.run("status")["pods"] if running(q)]),
               timeout=15, interval=0.05, accept=lambda got: got == 2, describe=node.describe)
    mine = next(q for q in node.run("status")["pods"] if q["namespace"] == "test")
    assert mine["containers"][0]["pid"] == pid and mine["ready"]  # the adopted one, untouched
    assert sorted(os.listdir(node.root / "pods")) == ["other_web", "test_web", "web"]
    assert (node.root / "pods" / "web" / "volumes" / "conf" / "a.conf").read_text() == "x=1"

    node.sync(pod("web", sleeper(), hash="h2"), twin)  # replaced: now in the new layout
    wait_until("the bare-name folder removed", lambda: not (node.root / "pods" / "web").exists(), timeout=15,
               interval=0.05, describe=node.describe)
    p = node.wait_pod("web", lambda p: p["hash"] == "h2" and running(p), "replaced")
    assert p["containers"][0]["pid"] != pid
    assert not alive(pid)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_changed_hash_replaces_the_pod(node: Node) -> None:
    node.sync(pod("upd-1", sleeper()))
    pid1 = node.wait_pod("upd-1", running, "running")["containers"][0]["pid"]
    node.sync(pod("upd-1", sleeper(), hash="h2"))
    p = node.wait_pod("upd-1", lambda p: p["hash"] == "h2" and running(p), "new hash running")
    assert p["containers"][0]["pid"] != pid1 and p["restarts"] == 0
    wait_until("old instance gone", lambda: not alive(pid1), timeout=15, interval=0.05)


GROUP_SCRIPT = r"""
import os, signal, subprocess, sys, time
out = sys.argv[1]
CHILD = '''
import signal, sys, time
out = sys.argv[1]
signal.signal(signal.SIGTERM, lambda *a: open(out, "a").write("child TERM\\n"))
open(out, "a").write("child up\\n")
while True:
    time.sleep(0.05)
'''
child = subprocess.Popen([sys.executable, "-c", CHILD, out])
def on_term(*_):
    open(out, "a").write("main TERM\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(out, "a").write(f"child {child.pid}\n")
while True:
    time.sleep(0.05)
"""


def test_removed_pod_group_gets_sigterm_then_sigkill(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "signals.txt"
    node.sync(pod("grp-1", ctr("main", [PY, "-c", GROUP_SCRIPT, str(out)]),
                  terminationGracePeriodSeconds=1))
    p = node.wait_pod("grp-1", running, "running")
    leader = p["containers"][0]["pid"]
    wait_until("child started", lambda: out.exists() and "child up" in out.read_text(), timeout=15, interval=0.05)
    child = int(next(line.split()[1] for line in out.read_text().splitlines()
                     if line.startswith("child ") and line.split()[1].isdigit()))
    assert os.getpgid(child) == leader  # one process group per container
    node.sync()
    wait_until("pod removed", lambda: not node.pods(), timeout=15, interval=0.05, describe=node.describe)
    text = out.read_text()
    assert "main TERM" in text and "child TERM" in text  # graceful first, whole group
    # It ignores TERM: only KILL ends it.
    wait_until("child killed", lambda: not alive(child), timeout=15, interval=0.05)
    assert not alive(leader)
    assert not (node.root / "pods" / "test_grp-1").exists()


def test_env_and_volumes_reach_the_process(node: Node, tmp_path: Path) -> None:
    data = tmp_path / "hostdata"
    mount = tmp_path / "mnt" / "config"
    script = (
        "import json, os, sys\n"
        "vol = os.environ['GITORCH_VOLUME_CONFIG']\n"
        "seen = {k: os.environ.get(k) for k in ('GREETING', 'POD_NAME', 'POD_NAMESPACE',"
        " 'HOSTNAME', 'PATH')}\n"
        "seen['file'] = open(os.path.join(vol, 'app.conf')).read()\n"
        "seen['nested'] = open(os.path.join(vol, 'sub/more.conf')).read()\n"
        f"mp = {str(mount)!r}\n"
        "seen['mounted'] = open(os.path.join(mp, 'app.conf')).read() "
        "if os.path.exists(os.path.join(mp, 'app.conf')) else None\n"
        "seen['scratch'] = os.path.isdir(os.environ['GITORCH_VOLUME_SCRATCH'])\n"
        "json.dump(seen, open(os.path.join(os.environ['GITORCH_VOLUME_DATA'], 'out.json'),"
        " 'w'))\n"
    )
    main = ctr("main", [PY, "-c", script],
               env=[{"name": "GREETING", "value": "hi"}],
               volumeMounts=[{"name": "config", "mountPath": str(mount), "readOnly": True}])
    spec = pod("vol-1", main, restartPolicy="Never", volumes=[
        {"name": "config", "files": {"app.conf": "x=1", "sub/more.conf": "y=2"},
         "secret": False},
        {"name": "creds", "files": {"token": "t0ken"}, "secret": True},
        {"name": "scratch", "emptyDir": True},
        {"name": "data", "hostPath": str(data)},
    ])
    node.sync(spec)
    node.wait_pod("vol-1", lambda p: p["phase"] == "Succeeded", "Succeeded")
    seen = json.loads((data / "out.json").read_text())
    assert seen["GREETING"] == "hi" and seen["POD_NAME"] == "vol-1"
    assert seen["POD_NAMESPACE"] == "test" and seen["HOSTNAME"] == "vol-1"
    assert seen["file"] == "x=1" and seen["nested"] == "y=2" and seen["scratch"]
    assert "/usr/bin" in seen["PATH"]
    if node.run("facts")["volumeMounts"] == "bind":
        assert seen["mounted"] == "x=1"  # bind-mounted at mountPath inside its namespace
        assert not (mount / "app.conf").exists()  # ... and only there
    token = node.root / "pods" / "test_vol-1" / "volumes" / "creds" / "token"
    assert token.stat().st_mode & 0o777 == 0o600
    node.sync()
    wait_until("pod removed", lambda: not node.pods(), timeout=15, interval=0.05)
    assert not (node.root / "pods" / "test_vol-1").exists()  # emptyDir and files gone
    assert (data / "out.json").exists()  # hostPath kept


def test_subpaths_and_file_modes(node: Node, tmp_path: Path) -> None:
    """A volumeMount's subPath binds one file or folder of a volume (a folder made in an
    emptyDir when missing, as the kubelet does); defaultMode and an item's mode set the
    projected files' permission bits (issue 10: both were accepted and ignored)."""
    if node.run("facts")["volumeMounts"] != "bind":
        pytest.skip("no mount namespaces here")
    data = tmp_path / "data"
    data.mkdir()
    conf, logs = tmp_path / "etc" / "app.conf", tmp_path / "logs"
    script = (
        "import json, os, sys\n"
        f"out = {{'conf': open({str(conf)!r}).read(), 'logs': os.listdir({str(logs)!r})}}\n"
        f"open(os.path.join({str(logs)!r}, 'written'), 'w').write('x')\n"
        "json.dump(out, open(sys.argv[1], 'w'))\n"
    )
    main = ctr("main", [PY, "-c", script, str(data / "out.json")], volumeMounts=[
        {"name": "config", "mountPath": str(conf), "subPath": "app.conf", "readOnly": True},
        {"name": "scratch", "mountPath": str(logs), "subPath": "logs/main"},
    ])
    spec = pod("sub-1", main, restartPolicy="Never", volumes=[
        {"name": "config", "files": {"app.conf": "x=1", "run.sh": "echo hi"}, "secret": False,
         "defaultMode": 0o440, "modes": {"run.sh": 0o750}},
        {"name": "scratch", "emptyDir": True},
    ])
    node.sync(spec)
    p = node.wait_pod("sub-1", lambda p: p["phase"] in ("Succeeded", "Failed"), "finished")
    assert p["phase"] == "Succeeded", node.describe()
    seen = json.loads((data / "out.json").read_text())
    assert seen == {"conf": "x=1", "logs": []}
    volumes = node.root / "pods" / "test_sub-1" / "volumes"
    assert (volumes / "scratch" / "logs" / "main" / "written").read_text() == "x"  # inside the emptyDir
    # Bound only in the pod's namespace: on the node, only the empty mount points are left (a file
    # subPath needs a file to bind over, made empty when missing, as mkdir -p makes a folder's).
    assert conf.read_text() == "" and not (logs / "written").exists()
    assert (volumes / "config" / "app.conf").stat().st_mode & 0o777 == 0o440
    assert (volumes / "config" / "run.sh").stat().st_mode & 0o777 == 0o750
    # A subPath that is not in a ConfigMap volume is the container's StartError, with the reason.
    bad = ctr("main", ["true"], volumeMounts=[{"name": "config", "mountPath": str(conf), "subPath": "nope.conf"}])
    node.sync(pod("sub-2", bad, restartPolicy="Never", volumes=[{"name": "config", "files": {"a": "b"}}]))
    p = node.wait_pod("sub-2", lambda p: p["containers"][0]["lastState"] or p["phase"] == "Failed", "start error")
    assert "subPath nope.conf is not in volume config" in json.dumps(p), p


def test_a_memory_emptydir_is_a_tmpfs_of_its_size_and_goes_with_the_pod(node: Node, tmp_path: Path) -> None:
    """emptyDir medium Memory with sizeLimit (issue 10: accepted and ignored until now): a tmpfs
    that refuses a write beyond its size, unmounted when the pod goes."""
    out = tmp_path / "out.json"
    script = (
        "import json, os, sys\n"
        "d = os.environ['GITORCH_VOLUME_CACHE']\n"
        "res = {'fs': [l.split()[2] for l in open('/proc/mounts') if l.split()[1] == d]}\n"
        "open(os.path.join(d, 'small'), 'wb').write(b'x' * 1000)\n"
        "try:\n"
        "    open(os.path.join(d, 'big'), 'wb').write(b'x' * 3 * 1024 * 1024)\n"
        "    res['big'] = 'written'\n"
        "except OSError as e:\n"
        "    res['big'] = e.errno\n"
        "json.dump(res, open(sys.argv[1], 'w'))\n"
    )
    spec = pod("mem-1", ctr("main", [PY, "-c", script, str(out)]), restartPolicy="Never",
               volumes=[{"name": "cache", "emptyDir": True, "medium": "Memory", "sizeLimit": 2 * 1024 * 1024}])
    node.sync(spec)
    p = node.wait_pod("mem-1", lambda p: p["phase"] in ("Succeeded", "Failed"), "finished")
    assert p["phase"] == "Succeeded", node.describe()
    import errno

    assert json.loads(out.read_text()) == {"fs": ["tmpfs"], "big": errno.ENOSPC}
    folder = node.root / "pods" / "test_mem-1" / "volumes" / "cache"
    assert os.path.ismount(folder)
    node.sync()
    wait_until("pod removed", lambda: not node.pods(), timeout=15, interval=0.05)
    assert not os.path.ismount(folder) and not folder.exists()


GRPC_SERVER = """\
import sys, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
checker = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(checker, server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
checker.set("shop.Cart", health_pb2.HealthCheckResponse.SERVING)
checker.set("", health_pb2.HealthCheckResponse.SERVING)
flag = sys.argv[2]
R = health_pb2.HealthCheckResponse
while True:  # NOT_SERVING while the flag file exists
    import os
    checker.set("shop.Cart", R.NOT_SERVING if os.path.exists(flag) else R.SERVING)
    time.sleep(0.05)
"""


def test_grpc_probes_speak_the_grpc_health_checking_protocol(node: Node, tmp_path: Path) -> None:
    """readiness with `grpc` (issue 10): the agent's stdlib client calls grpc.health.v1 Check on a
    real grpcio server, for one service and for the server as a whole."""
    pytest.importorskip("grpc_health.v1.health", reason="grpcio-health-checking is a test dependency")
    port, flag = free_port(), tmp_path / "not-serving"
    probe = {"grpc": {"port": port, "service": "shop.Cart"}, "periodSeconds": 0.1, "failureThreshold": 1}
    # Generous: a loaded CI machine may answer a check late; a restart here would be the load's.
    whole = {"grpc": {"port": port}, "periodSeconds": 0.2, "timeoutSeconds": 5, "failureThreshold": 25}
    server = ctr("main", [PY, "-c", GRPC_SERVER, str(port), str(flag)], readinessProbe=probe, livenessProbe=whole)
    node.sync(pod("grpc-1", server))
    node.wait_pod("grpc-1", lambda p: p["ready"], "ready: SERVING", timeout=30)
    flag.touch()
    p = node.wait_pod("grpc-1", lambda p: not p["ready"] and "NOT_SERVING" in p["containers"][0]["message"],
                      "not ready: NOT_SERVING")
    assert p["restarts"] == 0  # the liveness probe (the whole server) still passes
    assert p["containers"][0]["message"] == 'Readiness probe failed: service unhealthy (responded with "NOT_SERVING")'
    flag.unlink()
    node.wait_pod("grpc-1", lambda p: p["ready"], "ready again")


def test_exec_probes_run_in_the_containers_mount_namespace(node: Node, tmp_path: Path) -> None:
    if node.run("facts")["volumeMounts"] != "bind":
        pytest.skip("no mount namespaces here")
    mount = tmp_path / "mnt"
    probe = {"exec": {"command": ["cat", "app.conf"]}, "periodSeconds": 0.1}
    node.sync(pod("ns-1", sleeper(workingDir=str(mount), readinessProbe=probe,
                                  volumeMounts=[{"name": "cfg", "mountPath": str(mount)}]),
                  volumes=[{"name": "cfg", "files": {"app.conf": "x=1"}}]))
    node.wait_pod("ns-1", lambda p: p["ready"], "ready: the probe saw the mounted file")


def test_init_containers_run_in_order_before_the_app(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    inits = [ctr(f"init-{i}", ["sh", "-c", f"echo init-{i} >> {out}"]) for i in (1, 2)]
    app = ctr("app", ["sh", "-c", f"echo app >> {out}; exec sleep 300"])
    node.sync(pod("init-1", app, initContainers=inits))
    p = node.wait_pod("init-1", running, "running")
    assert [c["reason"] for c in p["initContainers"]] == ["Completed", "Completed"]
    # Running means the app's process started, not that its first line is written yet.
    wait_until("the app to write its line after the init containers'", lambda: out.read_text().split(),
               accept=lambda lines: len(lines) >= 3, timeout=15, interval=0.05)
    assert out.read_text().split() == ["init-1", "init-2", "app"]
    bad = pod("init-2", sleeper(), restartPolicy="Never",
              initContainers=[ctr("fail", ["sh", "-c", "exit 7"])])
    node.sync(pod("init-1", app, initContainers=inits), bad)
    p = node.wait_pod("init-2", lambda p: p["phase"] == "Failed", "Failed")
    assert p["reason"] == "InitContainerFailed"
    assert p["containers"][0]["state"] == "waiting"  # the app never started


def test_a_sidecar_init_container_starts_first_keeps_running_and_restarts(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    ready_file = tmp_path / "sidecar-ready"
    # The sidecar is started once its startup probe passes: only then may init-2 run.
    sidecar = ctr("proxy", ["sh", "-c", f"echo proxy >> {out}; sleep 0.5; touch {ready_file}; exec sleep 300"],
                  restartPolicy="Always",
                  startupProbe={"exec": {"command": ["test", "-e", str(ready_file)]}, "periodSeconds": 0.1,
                                "failureThreshold": 100})
    inits = [sidecar, ctr("init-2", ["sh", "-c", f"echo init-2 >> {out}"])]
    app = ctr("app", ["sh", "-c", f"echo app >> {out}; exec sleep 300"])
    node.sync(pod("side", app, initContainers=inits))
    p = node.wait_pod("side", lambda p: p["ready"], "ready")
    wait_until("the app's line", lambda: out.read_text().split(), accept=lambda lines: len(lines) >= 3,
               timeout=15, interval=0.05)
    assert out.read_text().split() == ["proxy", "init-2", "app"]
    proxy = p["initContainers"][0]
    assert (proxy["state"], proxy["ready"]) == ("running", True)
    # Killed, it is restarted (a sidecar restarts whatever the pod's restartPolicy); the app is left alone.
    app_pid = p["containers"][0]["pid"]
    os.kill(proxy["pid"], signal.SIGKILL)
    p = node.wait_pod("side", lambda p: p["initContainers"][0]["restartCount"] == 1
                      and p["initContainers"][0]["state"] == "running", "the sidecar restarted")
    assert p["containers"][0]["pid"] == app_pid and p["containers"][0]["restartCount"] == 0
    # Removed: the app is stopped first, the sidecar after it.
    node.sync()
    wait_until("the pod gone", lambda: node.pods(), accept=lambda pods: "side" not in pods, timeout=15,
               interval=0.05)
    log = (node.root / "supervisor.log").read_text()
    app_exit = log.rindex("container app: exited")
    proxy_exit = log.rindex("container proxy: exited")
    assert app_exit < proxy_exit, log[-2000:]


def test_a_jobs_pod_with_a_sidecar_succeeds_when_its_containers_end(node: Node) -> None:
    sidecar = ctr("logger", ["sleep", "300"], restartPolicy="Always")
    work = ctr("work", ["sh", "-c", "sleep 0.3; exit 0"])
    node.sync(pod("job", work, restartPolicy="Never", initContainers=[sidecar]))
    p = node.wait_pod("job", lambda p: p["phase"] == "Succeeded", "Succeeded")
    logger = p["initContainers"][0]
    # The sidecar was stopped once the work ended, and not started again.
    p = node.wait_pod("job", lambda p: p["initContainers"][0]["state"] == "terminated", "the sidecar stopped")
    assert p["phase"] == "Succeeded" and p["initContainers"][0]["restartCount"] == logger["restartCount"]


def test_a_bad_pod_does_not_disturb_the_others(node: Node) -> None:
    broken = pod("bad-1", {"name": "main", "command": None})
    missing = pod("bad-2", ctr("main", ["/nonexistent/binary"]), restartPolicy="Never")
    unmakeable = pod("bad-3", sleeper(), volumes=[
        {"name": "data", "hostPath": "/proc/gitorch-cannot-create-this"}])
    node.sync(broken, missing, unmakeable, pod("good-1", sleeper()))
    p = node.wait_pod("bad-3", lambda p: "volume setup failed" in p["message"], "volume error")
    assert p["phase"] == "Pending"
    assert p["containers"][0]["reason"] == "VolumeSetupFailed"
    p = node.wait_pod("bad-1", lambda p: p["phase"] == "Failed", "Failed")
    assert p["reason"] == "InvalidPodSpec" and "command" in p["message"]
    p = node.wait_pod("bad-2", lambda p: p["phase"] == "Failed", "Failed")
    c = p["containers"][0]
    assert c["reason"] == "StartError" and "/nonexistent/binary" in c["message"]
    node.wait_pod("good-1", running, "running")


@pytest.mark.parametrize("container,field", [
    (ctr("main", [], image="--privileged"), "image"),
    (ctr("main", [], image="localhost/x:1 --rm"), "image"),
    (ctr("main", ["sleep", "300"], env=[{"name": "TOKEN", "value": "a\0b", "secret": True}]), "env[0] (TOKEN)"),
    (ctr("main", ["sleep", "300"], env=[{"name": "A=B", "value": "x"}]), "env[0].name"),
    (ctr("main", ["sleep", "3\0"]), "command[1]"),
    (ctr("main", ["sleep"], args=["300\0"]), "args[0]"),
    (ctr("main", ["sleep", "300"], workingDir="/tmp\n/etc"), "workingDir"),
    (ctr("main", [], image="localhost/x:1", volumeMounts=[{"name": "data", "mountPath": "/data:/etc"}]),
     "mountPath"),
    (ctr("main", [], image="localhost/x:1", volumeMounts=[{"name": "data", "mountPath": "/data,ro"}]),
     "mountPath"),
    (ctr("main", [], image="localhost/x:1", volumeMounts=[{"name": "odd", "mountPath": "/odd"}]),
     "hostPath"),
    (ctr("main", ["sleep", "300"], readinessProbe={"httpGet": {"port": 80, "path": "/\r\nX: y"}}), "httpGet"),
], ids=["image-is-an-option", "image-with-a-space", "nul-in-env-value", "equals-in-env-name",
        "nul-in-command", "nul-in-args", "newline-in-workingdir", "colon-in-image-mountpath",
        "comma-in-image-mountpath", "comma-in-image-hostpath", "crlf-in-probe-path"])
def test_values_that_would_become_options_fail_the_pod_once(node: Node, container: Json, field: str) -> None:
    volumes = [{"name": "data", "emptyDir": True}, {"name": "odd", "hostPath": "/tmp/a,b"}]
    node.sync(pod("bad-1", container, volumes=volumes), pod("good-1", sleeper()))
    p = node.wait_pod("bad-1", lambda p: p["phase"] == "Failed", "Failed")
    assert p["reason"] == "InvalidPodSpec" and field in p["message"], p["message"]
    assert "a\0b" not in p["message"] and p["restarts"] == 0
    assert all(c["state"] == "waiting" and c["pid"] is None for c in p["containers"])
    node.wait_pod("good-1", running, "running")
    # Refused once, when the spec arrived: not retried (nor logged) on every tick.
    time.sleep(1.5)
    log = (node.root / "supervisor.log").read_text()
    assert log.count("test/bad-1: invalid spec") == 1, log
    folder = node.root / "pods" / "test_bad-1"  # never started: no logs, no volumes
    assert not folder.exists() or os.listdir(folder) == ["secrets.json"]


def test_odd_paths_are_fine_for_processes(node: Node, tmp_path: Path) -> None:
    """A process container mounts through a quoted shell line: ':' and ',' are just characters."""
    if node.run("facts")["volumeMounts"] != "bind":
        pytest.skip("no mount namespaces here")
    odd = tmp_path / "a:b,c -x"
    main = ctr("main", ["cat", "conf/app.conf"], workingDir=str(odd),
               volumeMounts=[{"name": "cfg", "mountPath": str(odd / "conf"), "readOnly": True}])
    node.sync(pod("odd-1", main, restartPolicy="Never",
                  volumes=[{"name": "cfg", "files": {"app.conf": "x=1"}}]))
    node.wait_pod("odd-1", lambda p: p["phase"] == "Succeeded", "Succeeded")
    assert node.run("logs", {"pod": "odd-1"})["log"] == "x=1"


def test_image_without_a_runtime_is_failed_with_a_reason(node: Node) -> None:
    node.sync(pod("img-1", ctr("main", [], image="localhost/busybox:1")))
    p = node.wait_pod("img-1", lambda p: p["phase"] == "Failed", "Failed")
    assert p["reason"] == "NoContainerRuntime"
    assert "localhost/busybox:1" in p["message"]
    assert p["containers"][0]["reason"] == "NoContainerRuntime"


def test_one_name_in_two_namespaces_runs_twice_with_own_folders_and_logs(node: Node) -> None:
    say = ["sh", "-c", 'echo "I am $POD_NAMESPACE/$POD_NAME"; exec sleep 300']
    a = pod("agent", ctr("main", say), namespace="team-a")
    b = pod("agent", ctr("main", say), namespace="team-b")
    doc = node.sync(a, b)
    assert [(p["namespace"], p["name"]) for p in doc["pods"]] == [("team-a", "agent"), ("team-b", "agent")]
    wait_until("both running", lambda: len([p for p in node.run("status")["pods"] if running(p)]), timeout=15,
               interval=0.05, accept=lambda got: got == 2, describe=node.describe)
    pids = {p["namespace"]: p["containers"][0]["pid"] for p in node.run("status")["pods"]}
    assert pids["team-a"] != pids["team-b"] and all(alive(pid) for pid in pids.values())
    assert sorted(os.listdir(node.root / "pods")) == ["team-a_agent", "team-b_agent"]
    for ns in ("team-a", "team-b"):
        wait_until(f"log of {ns}/agent", lambda ns=ns: node.run("logs", {"pod": "agent", "namespace": ns})["log"],
                   timeout=15, interval=0.05)
        assert node.run("logs", {"pod": "agent", "namespace": ns})["log"] == f"I am {ns}/agent\n"
    code, doc = node.call("logs", {"pod": "agent"})
    assert code == 0 and not doc["ok"] and "team-a, team-b" in doc["error"]
    facts = node.run("facts")["pods"]
    assert set(facts) == {"team-a/agent", "team-b/agent"}
    # Removing one leaves the other alone.
    node.sync(b)
    wait_until("team-a/agent removed", lambda: len(node.run("status")["pods"]), timeout=15, interval=0.05,
               accept=lambda got: got == 1)
    assert alive(pids["team-b"]) and not (node.root / "pods" / "team-a_agent").exists()


def test_long_names_get_short_stable_keys(node: Node) -> None:
    name = "x" * 200
    node.sync(pod(name, sleeper(), namespace="n" * 63))
    p = node.wait_pod(name, running, "running")
    (key,) = os.listdir(node.root / "pods")
    assert len(key) == 101 and key.startswith("n" * 63 + "_x")
    assert p["namespace"] == "n" * 63


# ---- logs -------------------------------------------------------------------------------


def test_logs_tail_and_follow(node: Node) -> None:
    script = ("import sys, time\n"
              "for i in range(1, 21): print(f'line {i}')\n"
              "sys.stdout.flush()\n"
              "n = 0\n"
              "while True:\n"
              "    n += 1; print(f'tick {n}', flush=True); time.sleep(0.05)\n")
    node.sync(pod("log-1", ctr("main", [PY, "-u", "-c", script])))
    node.wait_pod("log-1", running, "running")
    wait_until("ticks", lambda: node.run("logs", {"pod": "log-1"})["log"], timeout=15, interval=0.05,
               accept=lambda got: "tick" in got)
    everything = node.run("logs", {"pod": "log-1", "container": "main"})["log"]
    assert everything.startswith("line 1\nline 2\n")
    tail = node.run("logs", {"pod": "log-1", "tail": 3})["log"].splitlines()
    assert len(tail) == 3 and tail[-1].startswith("tick")
    assert node.run("logs", {"pod": "log-1", "tail": 0})["log"] == ""
    # follow: raw text until stdin closes
    proc = subprocess.Popen([AGENT_PY, str(AGENT), "logs", "--root", str(node.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=node.env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"pod": "log-1", "tail": 1, "follow": true}\n')
    proc.stdin.flush()
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(
        proc.stdout.readline() for _ in range(5)), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(15)
    proc.stdin.close()
    assert proc.wait(15) == 0
    assert len(lines) == 5 and all(line.startswith(b"tick") for line in lines)
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5  # new lines streamed


# Lines a container prints, each with the time it printed it (ns): "<word> <ns>".
# A stamp is the supervisor's upper bound of when the line was written: never before the
# process printed it (less a coarse-clock tick: file times come from the kernel's coarse clock).
COARSE_NS = 50_000_000


def stamped(text: str) -> list[tuple[int, str]]:
    """(stamp in ns, rest) of each line of `kubectl logs --timestamps`-style text."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp), line
        when = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        out.append((int(when.timestamp()) * 10**9 + int(stamp[20:29]), rest))
    return out


def check_stamps(lines: list[tuple[int, str]], after: int, before: int) -> None:
    stamps = [ns for ns, _ in lines]
    assert stamps == sorted(stamps), lines
    for ns, rest in lines:
        printed = int(rest.split()[1])
        assert after <= printed - COARSE_NS <= ns <= before, (ns, rest, after, before)


def printer(script: str) -> Json:
    return ctr("main", [PY, "-u", "-c", "import os, sys, time\n"
                        "def say(word): print(word, time.time_ns(), flush=True)\n" + script])


def test_log_timestamps_are_when_lines_were_written(node: Node) -> None:
    began = time.time_ns()
    node.sync(pod("stamp-1", printer("say('one'); say('two'); time.sleep(2.5); say('three')\n"
                                     "time.sleep(2.5); say('four'); time.sleep(300)\n")))
    node.wait_pod("stamp-1", running, "running")
    text = wait_until("four lines", lambda: node.run("logs", {"pod": "stamp-1"})["log"], timeout=30,
                      accept=lambda got: "four" in got)
    # once the supervisor's next pass has indexed the last line, nothing changes any more
    time.sleep(2.5)
    doc = node.run("logs", {"pod": "stamp-1", "timestamps": True})
    ended = time.time_ns()
    assert doc["timestamps"] is True and doc["leftOut"] == 0
    lines = stamped(doc["log"])
    assert [rest for _, rest in lines] == text.splitlines()
    check_stamps(lines, began, ended)
    one, two, three, four = (ns for ns, _ in lines)
    assert one <= two < three < four  # printed 2.5 s apart: different passes
    assert node.run("logs", {"pod": "stamp-1", "timestamps": True, "tail": 2})["log"] == \
        "".join(line + "\n" for line in doc["log"].splitlines()[-2:])
    # followed: the lines there from the index, new ones stamped as they are read
    proc = subprocess.Popen([AGENT_PY, str(AGENT), "logs", "--root", str(node.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=node.env)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"pod": "stamp-1", "tail": 4, "follow": true, "timestamps": true}\n')
    proc.stdin.flush()
    got = [proc.stdout.readline().decode() for _ in range(4)]
    proc.stdin.close()
    assert proc.wait(15) == 0
    assert "".join(got) == doc["log"]
    # `since` (kubectl logs --since/--since-time): the lines stamped at or after it, by those stamps.
    for i, (ns, _) in enumerate(lines):
        # (a microsecond earlier: a float of seconds carries nanoseconds to ~0.2 us)
        since = node.run("logs", {"pod": "stamp-1", "timestamps": True, "since": (ns - 1000) / 1e9})
        assert since["since"] is True
        assert stamped(since["log"]) == [line for line in lines if line[0] >= lines[i][0]], i
    assert node.run("logs", {"pod": "stamp-1", "since": time.time() + 60})["log"] == ""
    last = node.run("logs", {"pod": "stamp-1", "since": (three - 2000) / 1e9, "tail": 1})["log"]
    assert last == text.splitlines(keepends=True)[-1] and "four" in last
    followed = subprocess.run([AGENT_PY, str(AGENT), "logs", "--root", str(node.root)], env=node.env,
                              input=b'{"pod": "stamp-1", "follow": true, "since": %f}\n' % ((three - 2000) / 1e9),
                              capture_output=True, timeout=15)
    assert followed.stdout.decode().splitlines()[:2] == [rest for ns, rest in lines if ns >= three]
    with pytest.raises(AssertionError, match="since must be a number"):
        node.run("logs", {"pod": "stamp-1", "since": "yesterday"})


def test_log_timestamps_streamed_and_kept_by_previous_and_rotation(node: Node, tmp_path: Path) -> None:
    """A followed log stamps lines as they come; a restart's .log.1 and a size rotation's keep
    their lines' times, and the new log's index starts over (its offsets from 0)."""
    marker = tmp_path / "second-run"
    script = (f"if os.path.exists({str(marker)!r}):\n"
              "    say('first'); time.sleep(2.5); say('second')\n"
              "    filler = ('x' * 1023 + '\\n') * 1024\n"
              "    for _ in range(11): sys.stdout.write(filler)\n"
              "    sys.stdout.flush()\n"
              "    while os.fstat(1).st_size > 1 << 20: time.sleep(0.1)  # the supervisor rotated it\n"
              "    say('after'); time.sleep(300)\n"
              f"open({str(marker)!r}, 'w').close()\n"
              "say('early')\n"
              "for _ in range(3): time.sleep(0.7); say('tick')\n"
              "time.sleep(2.5); say('late'); sys.exit(3)\n")
    began = time.time_ns()
    proc = None
    node.sync(pod("stamp-2", printer(script)))
    try:
        proc = subprocess.Popen([AGENT_PY, str(AGENT), "logs", "--root", str(node.root)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=node.env)
        assert proc.stdin is not None and proc.stdout is not None
        wait_until("the first log", lambda: (node.root / "pods" / "test_stamp-2" / "logs" / "main.log").exists(),
                   timeout=15, interval=0.05)
        proc.stdin.write(b'{"pod": "stamp-2", "tail": -1, "follow": true, "timestamps": true}\n')
        proc.stdin.flush()
        followed = [(proc.stdout.readline().decode(), time.time_ns()) for _ in range(5)]
        for line, read in followed:
            ((ns, rest),) = stamped(line)
            assert rest.split()[0] in ("early", "tick", "late") and ns <= read
            check_stamps([(ns, rest)], began, read)
    finally:
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
            proc.wait(15)
    node.wait_pod("stamp-2", lambda p: p["containers"][0]["restartCount"] >= 1, "restarted")
    text = wait_until("the rotation", lambda: node.run("logs", {"pod": "stamp-2"})["log"], timeout=60,
                      accept=lambda got: "after" in got)
    time.sleep(2.5)  # the pass after the last line
    ended = time.time_ns()
    (rotated_ns, after_line), = stamped(node.run("logs", {"pod": "stamp-2", "timestamps": True})["log"])
    assert text == after_line + "\n"
    check_stamps([(rotated_ns, after_line)], began, ended)
    rotated = node.run("logs", {"pod": "stamp-2", "previous": True, "timestamps": True})
    assert rotated["leftOut"] == 0
    lines = stamped(rotated["log"])
    first, second = lines[:2]
    assert [first[1].split()[0], second[1].split()[0]] == ["first", "second"]
    check_stamps([first, second], began, rotated_ns)
    assert first[0] < second[0]  # 2.5 s apart: the index went to .log.1 with the log
    assert all(ns <= rotated_ns for ns, _ in lines)
    assert all(os.path.getsize(p) % 16 == 0 and os.path.getsize(p) <= 4096 * 16
               for p in (node.root / "pods" / "test_stamp-2" / "logs").glob("*.times"))


def test_log_timestamps_of_the_previous_instance(node: Node, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = (f"if os.path.exists({str(marker)!r}): time.sleep(300)\n"
              f"open({str(marker)!r}, 'w').close()\n"
              "say('early'); time.sleep(2.5); say('late'); time.sleep(1.5); sys.exit(3)\n")
    began = time.time_ns()
    node.sync(pod("stamp-3", printer(script)))
    node.wait_pod("stamp-3", lambda p: p["containers"][0]["restartCount"] >= 1 and running(p), "restarted",
                  timeout=30)
    doc = node.run("logs", {"pod": "stamp-3", "previous": True, "timestamps": True})
    lines = stamped(doc["log"])
    check_stamps(lines, began, time.time_ns())
    assert [rest.split()[0] for _, rest in lines] == ["early", "late"]
    assert lines[0][0] < lines[1][0]  # each kept its own time, not the file's
    assert node.run("logs", {"pod": "stamp-3", "timestamps": True})["log"] == ""


def test_log_timestamps_go_on_across_a_supervisor_restart(node: Node, tmp_path: Path) -> None:
    """Lines written while no supervisor runs get the first note of the next one (an upper
    bound); the lines noted before keep their times (the new supervisor appends to the index)."""
    go = tmp_path / "go"
    script = (f"say('a')\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
              "say('b'); time.sleep(1.5); say('c'); time.sleep(300)\n")
    began = time.time_ns()
    node.sync(pod("stamp-4", printer(script)))
    index = node.root / "pods" / "test_stamp-4" / "logs" / "main.log.times"
    wait_until("a's note", lambda: index.exists() and index.stat().st_size == 16, timeout=15, interval=0.05)
    assert node.run("stop-supervisor")["stopped"]
    go.touch()
    wait_until("c written", lambda: node.run("logs", {"pod": "stamp-4"})["log"], timeout=15, interval=0.05,
               accept=lambda text: "c " in text)
    node.sync(pod("stamp-4", printer(script)))
    wait_until("the new supervisor's note", lambda: index.stat().st_size, timeout=15, interval=0.05,
               accept=lambda size: size == 32)
    lines = stamped(node.run("logs", {"pod": "stamp-4", "timestamps": True})["log"])
    check_stamps(lines, began, time.time_ns())
    (a, _), (b, _), (c, _) = lines
    assert a < b == c


def test_log_index_stays_bounded_and_an_upper_bound(tmp_path: Path) -> None:
    """A full index thins its older half: entries stay ordered, every line still gets a time at
    or after the one it was written at, and the newest keep their own."""
    from gitorch.nodes import agent

    log = str(tmp_path / "main.log")
    indexer = agent.LogIndexer()
    written: list[int] = []
    with open(log, "ab") as fh:
        for i in range(agent.LOG_INDEX_ENTRIES + 10):
            fh.write(b"line %d\n" % i)
            fh.flush()
            os.utime(log, ns=(10**18 + i, 10**18 + i))  # mtimes we know
            written.append(10**18 + i)
            indexer.note(log)
    entries = agent.read_log_index(log)
    assert len(entries) <= agent.LOG_INDEX_ENTRIES
    assert entries == sorted(entries) and entries[-1][1] == written[-1]
    data = Path(log).read_bytes()
    text, left_out = agent.stamp_lines(data, 0, entries, written[-1])
    assert left_out == 0
    stamps = [int(datetime.strptime(t[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()) * 10**9
              + int(t[20:29]) for t in (line.split()[0] for line in text.decode().splitlines())]
    assert all(s >= w for s, w in zip(stamps, written, strict=True))
    assert stamps[-10:] == written[-10:]
    # a bounded answer: the newest lines that fit, and how many were left out
    text, left_out = agent.stamp_lines(data, 0, entries, written[-1], budget=1000)
    assert 0 < len(text) <= 1000 and left_out + len(text.splitlines()) == len(written)
    assert text.endswith(b" line %d\n" % (len(written) - 1))


# ---- secrets ----------------------------------------------------------------------------


def test_secrets_never_appear_in_logs_status_or_errors(node: Node) -> None:
    env_secret, file_secret = f"pw-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    liveness = {"exec": {"command": ["sh", "-c", 'echo "pw=$PASSWORD"; exit 1']},
                "periodSeconds": 0.1, "failureThreshold": 1}
    readiness = {"exec": {"command": ["sh", "-c", 'cat "$GITORCH_VOLUME_CREDS/token"; exit 1']},
                 "periodSeconds": 0.1, "failureThreshold": 1}
    leaky = ctr("main", ["sleep", "300"], livenessProbe=liveness,
                env=[{"name": "PASSWORD", "value": env_secret, "secret": True},
                     # A short secret equal to the namespace must not mangle identifiers.
                     {"name": "SHORT", "value": "test", "secret": True}])
    shy = ctr("main", ["sleep", "300"], readinessProbe=readiness)
    creds = [{"name": "creds", "files": {"token": file_secret}, "secret": True}]
    node.sync(pod("sec-1", leaky), pod("sec-2", shy, volumes=creds))
    p = node.wait_pod("sec-1", lambda p: p["restarts"] >= 1, "liveness restart")
    assert p["namespace"] == "test" and p["name"] == "sec-1"
    p = node.wait_pod("sec-2", lambda p: "Readiness" in p["containers"][0]["message"],
                      "readiness failure")
    assert p["containers"][0]["message"] == "Readiness probe failed: ******"
    node.run("facts")
    node.run("logs", {"pod": "sec-1"})
    node.run("stop-supervisor")
    node.sync(pod("sec-1", leaky), pod("sec-2", shy, volumes=creds))
    sup_log = (node.root / "supervisor.log").read_text()
    assert "pw=******" in sup_log  # the probe output was logged, masked
    files = [sup_log] + [(node.root / f).read_text() for f in
                         ("status.json", "state.json", "ack.json", "desired.json")]
    for text in files + node.outputs:
        assert env_secret not in text and file_secret not in text


# ---- cgroups ----------------------------------------------------------------------------


def _limits_supported(node: Node) -> bool:
    facts = node.run("facts")
    return bool(os.geteuid() == 0 and facts["cgroup"]["memory"] and facts["cgroup"]["cpu"])


class CoveredMountNode(Node):
    """The agent in a mount namespace of its own whose mount table lists a mount that a later
    one covers, as a lab node's own /var/lib/containers covers the host's podman storage."""

    def __init__(self, root: Path, covered: Path) -> None:
        super().__init__(root)
        self.covered = covered

    def call(self, verb: str, request: Json | None = None) -> tuple[int, Json]:
        inner = self.covered / "storage"
        setup = (f"mkdir -p {shlex.quote(str(inner))} && mount -t tmpfs under {shlex.quote(str(inner))} && "
                 f"mount -t tmpfs over {shlex.quote(str(self.covered))} && mkdir -p {shlex.quote(str(inner))} && "
                 "exec \"$@\"")  # the path is there again, in the mount over it: no mount point now
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh",
                               AGENT_PY, str(AGENT), verb, "--root", str(self.root)],
                              input=json.dumps(request or {}), capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)
        self.outputs.append(proc.stdout + proc.stderr)
        assert proc.stdout.count("\n") == 1, f"not one JSON document: {proc.stdout!r} {proc.stderr!r}"
        return proc.returncode, json.loads(proc.stdout)


def test_a_read_only_root_passes_over_mounts_that_another_covers(tmp_path: Path) -> None:
    """readOnlyRootFilesystem remounts every mount of the node read-only; one that a later mount
    covers cannot be remounted (nothing reaches it either) and must not stop the container."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make the mounts")
    n = CoveredMountNode(tmp_path / "root", tmp_path / "containers")
    try:
        script = "(echo x > /tmp/gitorch-ro-probe) 2>/dev/null || echo root-read-only; echo ran; exec sleep 300"
        n.sync(pod("ro-1", ctr("main", ["sh", "-c", script], security={"readOnlyRootFilesystem": True})))
        n.wait_pod("ro-1", running, "running")
        log = wait_until("the container's output", lambda: n.run("logs", {"pod": "ro-1"})["log"], timeout=20,
                         accept=lambda text: "ran" in text)
        assert "root-read-only" in log and not Path("/tmp/gitorch-ro-probe").exists()
        assert n.pods()["ro-1"]["containers"][0].get("restartCount", 0) == 0
    finally:
        n.teardown()


def test_cgroup_limits_and_oom_kill(node: Node) -> None:
    if not _limits_supported(node):
        pytest.skip("no writable memory+cpu cgroups here")
    limited = sleeper(resources={"cpuMillis": 250, "memoryBytes": 64 * 1024 * 1024})
    hog = ctr("main", [PY, "-c", "x = b'x' * (512 * 1024 * 1024)"],
              resources={"memoryBytes": 64 * 1024 * 1024})
    node.sync(pod("lim-1", limited), pod("oom-1", hog, restartPolicy="Never"))
    p = node.wait_pod("lim-1", running, "running")
    c = p["containers"][0]
    assert c["limits"] == "applied"
    groups = dict(line.split(":", 2)[1:] for line in
                  Path(f"/proc/{c['pid']}/cgroup").read_text().splitlines())
    mem = groups.get("memory") or groups.get("") or ""
    assert mem.endswith("/test_lim-1/main")
    p = node.wait_pod("oom-1", lambda p: p["phase"] == "Failed", "OOM-killed")
    assert p["containers"][0]["reason"] == "OOMKilled"
    assert p["containers"][0]["exitCode"] == 137


def test_metrics_say_when_the_previous_instance_was_oom_killed(node: Node, tmp_path: Path) -> None:
    """The VPA recommender bumps memory after an OOM kill (VPA's RecordOOM): the samples of a
    restarted container carry when its previous instance was OOM-killed."""
    if not _limits_supported(node):
        pytest.skip("no writable memory+cpu cgroups here")
    marker = tmp_path / "ran-once"
    script = (f"import os, time\nif not os.path.exists({str(marker)!r}):\n"
              f"    open({str(marker)!r}, 'w').close()\n    x = b'x' * (512 * 1024 * 1024)\n"
              "time.sleep(300)\n")
    hog = ctr("main", [PY, "-c", script], resources={"memoryBytes": 64 * 1024 * 1024})
    assert node.run("sync", {"pods": [pod("oom-2", hog)], "metrics": {"intervalSeconds": 1}})["acked"]
    p = node.wait_pod("oom-2", lambda p: p["containers"][0].get("restartCount", 0) >= 1
                      and p["containers"][0]["state"] == "running", "restarted after its OOM kill")
    assert p["containers"][0]["lastState"]["reason"] == "OOMKilled", p

    def sampled() -> list[Json]:
        doc = node.run("status").get("metrics") or {}
        return [c for q in doc.get("pods") or [] if q.get("name") == "oom-2" for c in q.get("containers") or []]

    (usage,) = wait_until("a sample of the restarted container", sampled, timeout=30, interval=0.5,
                          accept=lambda got: len(got) == 1 and "lastOOMKilledAt" in got[0])
    assert usage["lastOOMKilledAt"] == p["containers"][0]["lastState"]["finishedAt"], usage


# ---- image containers and upgrades ------------------------------------------------------

FAKE_PODMAN = """#!/bin/sh
# Records how the agent drives podman, then behaves like a long-running container.
log="$(dirname "$0")/calls"
case "$1" in
  info) exit 0 ;;
  run)
    printf 'run %s\\n' "$*" >> "$log"
    printf 'env PASSWORD=%s GREETING=%s\\n' "$PASSWORD" "$GREETING" >> "$log"
    exec sleep 300 ;;
  *) printf '%s\\n' "$*" >> "$log" ;;
esac
"""


def test_image_containers_run_through_podman(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "podman"
    fake.write_text(FAKE_PODMAN)
    fake.chmod(0o755)
    node = Node(tmp_path / "root", GITORCH_CONTAINER_RUNTIMES="podman",
                PATH=f"{bin_dir}:{os.environ['PATH']}")
    try:
        assert "podman" in node.run("facts")["runtimes"]
        web = ctr("web", ["/bin/server"], args=["--port", "8080"], image="localhost/web:1",
                  env=[{"name": "GREETING", "value": "hi"},
                       {"name": "PASSWORD", "value": "s3cret-podman", "secret": True}],
                  resources={"memoryBytes": 64 * 1024 * 1024},
                  volumeMounts=[{"name": "config", "mountPath": "/etc/web", "readOnly": True}])
        node.sync(pod("img-2", web, terminationGracePeriodSeconds=1,
                      volumes=[{"name": "config", "files": {"a": "b"}}]))
        p = node.wait_pod("img-2", running, "running")
        assert p["containers"][0]["runtime"] == "podman"
        calls = bin_dir / "calls"
        wait_until("podman run", lambda: calls.exists() and "env " in calls.read_text(), timeout=15, interval=0.05)
        run_line, env_line = calls.read_text().splitlines()[:2]
        argv = run_line.split()
        name = next(argv[i + 1] for i, a in enumerate(argv) if a == "--name")
        assert name.startswith("gitorch-test_img-2-web")
        for flag in ("--rm", "--network host", "--ulimit nofile=1024:1024",
                     "--ulimit nproc=4096:4096", "--env PASSWORD", "--env GREETING",
                     "--memory 67108864", '--entrypoint ["/bin/server"] -- localhost/web:1 '
                     "--port 8080", ":/etc/web:ro"):
            assert flag in run_line
        assert "s3cret-podman" not in run_line  # values travel in the environment
        assert env_line == "env PASSWORD=s3cret-podman GREETING=hi"
        node.sync()
        wait_until("pod removed", lambda: not node.pods(), timeout=15, interval=0.05)
        assert f"stop -t 1 -- {name}" in calls.read_text()
    finally:
        node.teardown()


def test_sync_from_a_new_agent_file_upgrades_the_supervisor(node: Node, tmp_path: Path) -> None:
    node.sync(pod("up-1", sleeper()))
    before = node.wait_pod("up-1", running, "running")
    old_sup = node.run("status")["supervisor"]
    newer = tmp_path / "agent-newer.py"
    newer.write_text(AGENT.read_text() + "\n# a newer build\n")
    proc = subprocess.run([AGENT_PY, str(newer), "sync", "--root", str(node.root)],
                          input=json.dumps({"pods": [pod("up-1", sleeper())]}),
                          capture_output=True, text=True, env=node.env, timeout=60, check=True)
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["acked"] and not doc["changed"]
    assert doc["supervisor"]["pid"] != old_sup["pid"]
    assert doc["supervisor"]["sha"] != old_sup["sha"]
    after = doc["pods"][0]["containers"][0]
    assert after["pid"] == before["containers"][0]["pid"] and after["restartCount"] == 0


def test_a_pre_stop_hook_runs_before_sigterm_and_within_the_grace_period(node: Node, tmp_path: Path) -> None:
    """lifecycle.preStop (issue 10): on stop, the exec hook runs to its end, then the container
    gets SIGTERM; a hook that outlasts the grace period is cut short by SIGTERM and SIGKILL."""
    data = tmp_path / "data"
    data.mkdir()
    log = data / "order"
    # The container records SIGTERM; the hook writes, waits a little, writes again.
    script = (f"import signal, sys, time\nlog = {str(log)!r}\n"
              "def term(*_):\n    open(log, 'a').write('term\\n'); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, term)\nopen(log, 'a').write('up\\n')\ntime.sleep(300)\n")
    hook = ["sh", "-c", f"echo hook-start >> {log}; sleep 0.5; echo hook-end >> {log}"]
    main = ctr("main", [PY, "-c", script], preStop={"exec": {"command": hook}})
    node.sync(pod("hook-1", main, terminationGracePeriodSeconds=10))
    wait_until("the container up", lambda: log.exists() and log.read_text(), timeout=15, interval=0.05)
    node.sync()
    wait_until("pod removed", lambda: not node.pods(), timeout=20, interval=0.05)
    assert log.read_text().split() == ["up", "hook-start", "hook-end", "term"]

    # A hook longer than the grace period: SIGTERM and SIGKILL still come in time.
    log.unlink()
    slow = ctr("main", [PY, "-c", script], preStop={"sleep": {"seconds": 300}})
    node.sync(pod("hook-2", slow, terminationGracePeriodSeconds=1))
    wait_until("the container up", lambda: log.exists() and log.read_text(), timeout=15, interval=0.05)
    node.sync()
    wait_until("pod removed", lambda: not node.pods(), timeout=20, interval=0.05)
    assert log.read_text().split() == ["up", "term"]


def test_a_post_start_hook_holds_readiness_and_a_failed_one_restarts_the_container(
    node: Node, tmp_path: Path
) -> None:
    """lifecycle.postStart (issue 10): the container is not ready until its hook ended; a hook
    that fails restarts the container, as the kubelet does, saying FailedPostStartHook."""
    flag = tmp_path / "hook-may-end"
    hook = ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done"]
    node.sync(pod("post-1", sleeper(postStart={"exec": {"command": hook}})))
    p = node.wait_pod("post-1", running, "running")
    time.sleep(0.5)  # the hook is still waiting: not ready (an absence, so a short look)
    assert not node.pods()["post-1"]["ready"]
    flag.touch()
    node.wait_pod("post-1", lambda p: p["ready"], "ready once the hook ended")

    failing = sleeper(postStart={"exec": {"command": ["sh", "-c", "echo no database; exit 3"]}})
    node.sync(pod("post-2", failing))
    p = node.wait_pod("post-2", lambda p: p["restarts"] >= 1, "restarted", timeout=20)
    assert not p["ready"]
    assert "FailedPostStartHook: no database" in (node.root / "supervisor.log").read_text()
