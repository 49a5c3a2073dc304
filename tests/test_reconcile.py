"""End to end on real lab nodes: apply, roll out, scale, prune, refuse invalid commits,
replace a lost node's pods, and survive a SIGKILLed controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, down, up
from gitorch.reconcile.controller import Controller, PassResult
from gitorch.store.database import PodRecord
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"


def web(replicas: int = 3, version: str = "v1", surge: int = 1, unavailable: int = 1) -> str:
    server = (
        "import http.server,os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(os.environ['VERSION'].encode())\n"
        "    def log_message(self, *a): pass\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    indented = "\n".join("              " + line for line in server.splitlines())
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          command:
            - python3
            - -c
            - |
{indented}
          env:
            - {{name: VERSION, value: "{version}"}}
            - {{name: PORT, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
          readinessProbe:
            exec: {{command: ["true"]}}
            periodSeconds: 1
"""


def _fix_port(text: str) -> str:
    # Pods of one node share its network until pod networking lands: give each a free port.
    return text.replace("int(os.environ['PORT'])", "0")


@pytest.fixture
def cluster(lab: Lab, repo: GitRepo, tmp_path: Path) -> Iterator[tuple[GitRepo, Controller]]:
    with controlled(lab, repo, tmp_path, "shop") as pair:
        yield pair


def node_pods(lab: Lab, name_prefix: str) -> dict[str, list[dict[str, object]]]:
    """What each node's agent runs (not what the store believes)."""
    out = {}
    for n in lab.nodes:
        script = (
            "f=$(ls -t /var/lib/gitorch/agent/agent-*.py 2>/dev/null | head -1); "
            'if [ -n "$f" ]; then python3 "$f" status; else echo \'{"pods": []}\'; fi'
        )
        status = json.loads(ssh_run(lab, n.name, script).stdout)
        out[n.name] = [p for p in status["pods"] if p["name"].startswith(name_prefix)]
    return out


def test_apply_rollout_scale_and_prune(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("web v1", {"apps.yaml": _fix_port(web())})
    converge(controller)
    running = [p for pods in node_pods(lab, "web-").values() for p in pods]
    assert len(running) == 3 and all(p["ready"] and p["phase"] == "Running" for p in running)
    assert len({p["name"] for p in running}) == 3
    assert sum(1 for pods in node_pods(lab, "web-").values() if pods) >= 2  # spread over nodes

    # Roll out v2: never fewer than replicas - maxUnavailable ready pods, checked on the nodes.
    repo.commit("web v2", {"apps.yaml": _fix_port(web(version="v2"))})
    low = []

    def check(_: PassResult) -> None:
        ready = [p for pods in node_pods(lab, "web-").values() for p in pods if p["ready"]]
        low.append(len(ready))

    result = converge(controller, each=check)
    assert min(low) >= 3 - 1, low
    revisions = {p.template_hash for p in controller.store.pods() if p.owner_name == "web"}
    assert len(revisions) == 1 and result.plan is not None
    record = controller.store.object_status("Deployment", "shop", "web")
    assert record is not None
    assert [h["subject"] for h in record.body["history"]] == ["web v1", "web v2"]
    assert len([p for pods in node_pods(lab, "web-").values() for p in pods]) == 3

    repo.commit("scale up", {"apps.yaml": _fix_port(web(replicas=5, version="v2"))})
    converge(controller)
    assert len([p for pods in node_pods(lab, "web-").values() for p in pods]) == 5
    repo.commit("scale down", {"apps.yaml": _fix_port(web(replicas=2, version="v2"))})
    converge(controller)
    assert len([p for pods in node_pods(lab, "web-").values() for p in pods]) == 2

    repo.commit("delete web", {"apps.yaml": ""})
    converge(controller)
    assert [p for pods in node_pods(lab, "web-").values() for p in pods] == []
    assert controller.store.object_status("Deployment", "shop", "web") is None
    assert any(e.reason == "Pruned" for e in controller.store.events())


def test_invalid_commit_leaves_the_cluster_untouched(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    good = repo.commit("web", {"apps.yaml": _fix_port(web(replicas=2))})
    converge(controller)
    before = {p["name"] for pods in node_pods(lab, "web-").values() for p in pods}
    bad = repo.commit("broken", {"apps.yaml": _fix_port(web(replicas=2)).replace("replicas: 2", "replicas: two")})
    result = controller.reconcile()
    assert not result.valid
    assert any("replicas" in d for d in result.diagnostics)
    assert {p["name"] for pods in node_pods(lab, "web-").values() for p in pods} == before
    revision = controller.store.revision(bad)
    assert revision is not None and revision.outcome == "invalid" and "replicas" in revision.error
    last = controller.store.last_applied_revision()
    assert last is not None and last.commit == good
    assert any(e.reason == "InvalidRevision" for e in controller.store.events())


def test_unschedulable_pod_stays_pending_with_the_reason(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    huge = _fix_port(web(replicas=1)).replace(
        "          readinessProbe:",
        "          resources:\n            requests: {memory: 900Gi}\n          readinessProbe:",
    )
    repo.commit("too big", {"apps.yaml": huge})
    result = controller.reconcile()
    assert result.plan is not None
    pod = next(p for p in controller.store.pods() if p.owner_name == "web")
    assert pod.node is None and pod.phase == "Pending"
    assert pod.message == "0/3 nodes are available: 3 Insufficient memory."


@pytest.fixture
def own_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from tests.lab import require_lab

    require_lab()
    state = tmp_path_factory.mktemp("lab2")
    try:
        yield up(3, state_dir=state, subnet="10.231.8.0/24", nodes_file=state / "nodes.yaml")
    finally:
        down(state)


def test_lost_node_pods_move_and_a_killed_controller_converges(own_lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    lab = own_lab
    repo.commit(
        "web",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": NAMESPACE,
            "apps.yaml": _fix_port(web(replicas=3)),
        },
    )
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state"), "GITORCH_NODE_TIMEOUT": "3"}
    cmd = [sys.executable, "-m", "gitorch", "apply", "--wait", "--timeout", "90"]
    first = subprocess.run(cmd, cwd=repo.path, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr

    # SIGKILL the controller in the middle of a rollout, then run it again.
    repo.commit("v2", {"apps.yaml": _fix_port(web(replicas=3, version="v2"))})
    proc = subprocess.Popen(cmd, cwd=repo.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd, cwd=repo.path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    pods = node_pods(lab, "web-")
    names = [p["name"] for ps in pods.values() for p in ps]
    assert len(names) == 3 == len(set(names)), pods

    # Kill one node outright: its pods come back on the others once it is NotReady.
    victim = next(n for n in lab.nodes if pods[n.name])
    os.kill(victim.pid, signal.SIGKILL)
    again = subprocess.run(cmd, cwd=repo.path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    alive = {n.name for n in lab.nodes if n.name != victim.name}
    moved = {
        n: ps
        for n, ps in node_pods(
            Lab(
                lab.state_dir, lab.subnet, lab.bridge, lab.identity_file, tuple(n for n in lab.nodes if n.name in alive)
            ),
            "web-",
        ).items()
    }
    assert sum(len(ps) for ps in moved.values()) == 3


CRON = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: shop}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - {name: tick, command: [python3, -c, "print('tick')"]}
"""


def test_cronjob_runs_on_schedule(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("cron", {"apps.yaml": CRON})
    t0 = time.time()
    controller.reconcile(now=t0)  # first sight: the next minute is the first run
    assert not [p for p in controller.store.pods() if p.owner_kind == "Job"]
    later = t0 + 61  # the controller's clock, moved past the next minute

    def job_pods() -> list[PodRecord]:
        controller.reconcile(now=later)
        return [p for p in controller.store.pods() if p.owner_kind == "Job" and p.owner_name.startswith("tick-")]

    runs = wait_until("the scheduled run to succeed", job_pods, timeout=40, interval=0.3,
                      accept=lambda pods: pods and all(p.phase == "Succeeded" for p in pods),
                      show=lambda pods: str([(p.name, p.phase) for p in pods]))
    assert len(runs) == 1
    status = controller.store.object_status("CronJob", "shop", "tick")
    assert status is not None and status.body.get("lastScheduleTime") is not None
    assert any(e.reason == "SuccessfulCreate" for e in controller.store.events())


def test_a_replicaset_runs_its_pods(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    rs = _fix_port(web(replicas=2)).replace("kind: Deployment", "kind: ReplicaSet")
    rs = "\n".join(line for line in rs.splitlines()
                   if not line.strip().startswith(("strategy:", "type: RollingUpdate", "rollingUpdate:"))) + "\n"
    repo.commit("rs", {"apps.yaml": rs})
    converge(controller)
    running = [p for ps in node_pods(lab, "web-").values() for p in ps if p["phase"] == "Running"]
    assert sorted(p["name"] for p in running) == ["web-0", "web-1"]
    status = controller.store.object_status("ReplicaSet", "shop", "web")
    assert status is not None and status.health == "Healthy"


SOLO = """\
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: shop}}
spec:
  containers:
    - {{name: solo, command: [sh, -c, 'echo "$V"; exec sleep 300'], env: [{{name: V, value: "{version}"}}]}}
"""


def test_a_bare_pod_runs_and_a_change_replaces_it_on_its_node(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    repo.commit("solo", {"apps.yaml": SOLO.format(version="v1")})
    converge(controller)
    where = {n: ps for n, ps in node_pods(lab, "solo").items() if ps}
    assert len(where) == 1 and [p["name"] for p in next(iter(where.values()))] == ["solo"]
    node = next(iter(where))
    repo.commit("solo v2", {"apps.yaml": SOLO.format(version="v2")})
    converge(controller)
    pods = node_pods(lab, "solo")
    assert [p["name"] for p in pods[node] if p["phase"] == "Running"] == ["solo"]  # same node, replaced
    assert wait_until("v2 in its log", lambda: gitorch_logs(lab, node), timeout=30, accept=lambda log: "v2" in log)
    status = controller.store.object_status("Pod", "shop", "solo")
    assert status is not None and status.health == "Healthy"


def gitorch_logs(lab: Lab, node: str) -> str:
    script = ('f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); '
              'echo \'{"pod": "solo", "namespace": "shop"}\' | python3 "$f" logs')
    return str(json.loads(ssh_run(lab, node, script).stdout).get("log", ""))


ONCE = """\
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: shop}
spec:
  ttlSecondsAfterFinished: 60
  template:
    spec:
      restartPolicy: Never
      containers:
        - {name: once, command: [python3, -c, "print('done')"]}
"""


def test_a_finished_job_keeps_its_pods_until_its_ttl_and_never_runs_again(
    lab: Lab, cluster: tuple[GitRepo, Controller]
) -> None:
    """ttlSecondsAfterFinished (issue 10): the Job's pods go that long after it finished, as
    Kubernetes deletes the Job; its status stays Complete and it does not run a second time."""
    repo, controller = cluster
    repo.commit("once", {"apps.yaml": ONCE})

    def job_pods(now: float | None = None) -> list[PodRecord]:
        controller.reconcile(now=now)
        return [p for p in controller.store.pods() if p.owner_name == "once"]

    pods = wait_until("the Job to succeed", job_pods, timeout=60, interval=0.3,
                      accept=lambda ps: ps and all(p.phase == "Succeeded" for p in ps))
    status = controller.store.object_status("Job", "shop", "once")
    assert status is not None and status.health == "Healthy"
    finished = status.body["finished"]
    assert finished["complete"] and finished["revision"]
    # Before the TTL: kept. Past it (the controller's clock moved on): removed, from the nodes too.
    assert [p.name for p in job_pods(finished["at"] + 30)] == [p.name for p in pods]
    wait_until("the pods removed", lambda: job_pods(finished["at"] + 61), timeout=30, interval=0.3,
               accept=lambda ps: ps == [])
    wait_until("gone from the nodes", lambda: [p for ps in node_pods(lab, "once-").values() for p in ps],
               timeout=30, interval=0.3, accept=lambda ps: ps == [])
    for _ in range(3):  # and it never runs again
        assert job_pods(finished["at"] + 70) == []
    status = controller.store.object_status("Job", "shop", "once")
    assert status is not None and status.health == "Healthy"
    ready = next(c for c in status.conditions if c["type"] == "Ready")
    assert ready["message"].startswith("Complete: 1/1 succeeded; pods removed 60 s after"), ready


SHARDS = """\
apiVersion: batch/v1
kind: Job
metadata: {name: shard, namespace: shop}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - {name: work, command: [sh, -c, "echo shard=$JOB_COMPLETION_INDEX"]}
"""


def test_an_indexed_job_gives_each_pod_its_completion_index(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    """completionMode Indexed (issue 10): on real nodes, each pod's container reads its own
    JOB_COMPLETION_INDEX, and the Job completes when every index succeeded."""
    repo, controller = cluster
    repo.commit("shards", {"apps.yaml": SHARDS})

    def job_pods() -> list[PodRecord]:
        controller.reconcile()
        return [p for p in controller.store.pods() if p.owner_name == "shard"]

    pods = wait_until("both indexes to succeed", job_pods, timeout=60, interval=0.3,
                      accept=lambda ps: len(ps) == 2 and all(p.phase == "Succeeded" for p in ps))
    logs = {p.name: pod_log(lab, p.node or "", p.name) for p in pods}
    assert {name: log.strip() for name, log in logs.items()} == {"shard-0": "shard=0", "shard-1": "shard=1"}

    def health() -> str:
        controller.reconcile()
        status = controller.store.object_status("Job", "shop", "shard")
        return status.health if status is not None else ""

    wait_until("the Job Complete", health, timeout=30, interval=0.3, accept=lambda h: h == "Healthy")
    assert [p.name for p in job_pods()] == [p.name for p in pods]  # and no index runs twice


def pod_log(lab: Lab, node: str, pod: str) -> str:
    script = ('f=$(ls -t /var/lib/gitorch/agent/agent-*.py | head -1); '
              f'echo \'{{"pod": "{pod}", "namespace": "shop"}}\' | python3 "$f" logs')
    return str(json.loads(ssh_run(lab, node, script).stdout).get("log", ""))


def test_serve_follows_commits_elects_one_leader_and_stops_on_sigterm(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    repo.commit(
        "web",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": NAMESPACE,
            "apps.yaml": _fix_port(web(replicas=2)),
        },
    )
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "gitorch", "serve", "--interval", "1"]
    leader = subprocess.Popen(cmd, cwd=repo.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    standby = subprocess.Popen(cmd, cwd=repo.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def count() -> int:
            return len([p for ps in node_pods(lab, "web-").values() for p in ps if p["phase"] == "Running"])

        wait_until("2 pods running", count, timeout=60, interval=0.5, accept=lambda n: n == 2)
        repo.commit("scale", {"apps.yaml": _fix_port(web(replicas=3))})
        wait_until("3 pods running", count, timeout=60, interval=0.5, accept=lambda n: n == 3)
        repo.commit("remove", {"apps.yaml": ""})
        wait_until("no pods running", count, timeout=60, interval=0.5, accept=lambda n: n == 0)
    finally:
        for proc in (standby, leader):
            proc.send_signal(signal.SIGTERM)
        outs = [proc.communicate(timeout=30)[0] for proc in (leader, standby)]
    assert leader.returncode == 0 and standby.returncode == 0
    assert "leading" in outs[0] and outs[0].rstrip().endswith("stopped")
    assert "standing by" in outs[1] and "leading" not in outs[1]


TICKER = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: ticker, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: ticker}}
  template:
    metadata: {labels: {app: ticker}}
    spec:
      containers:
        - name: ticker
          command: [python3, -u, -c, "import time\\nwhile True:\\n    print('tick', flush=True); time.sleep(0.2)"]
"""


def test_cli_apply_status_get_describe_events_logs(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    from tests.samples import gitorch

    repo.commit(
        "web",
        {
            "nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(),
            "ns.yaml": NAMESPACE,
            "apps.yaml": _fix_port(web(replicas=2)) + "---\n" + TICKER,
        },
    )
    applied = gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "converged on" in applied.stdout
    try:
        status = json.loads(gitorch("status", "-o", "json", cwd=repo.path).stdout)
        web_status = next(o for o in status["objects"] if o["kind"] == "Deployment")
        assert web_status["health"] == "Healthy" and web_status["sync"] == "Synced"
        assert status["appliedRevision"] == status["latestRevision"]
        pods = json.loads(gitorch("get", "pods", "-n", "shop", "-o", "json", cwd=repo.path).stdout)
        pods = [p for p in pods if p["owner"] == "Deployment/web"]
        assert len(pods) == 2 and all(p["ready"] and p["node"] for p in pods)
        table = gitorch("get", "deployments", cwd=repo.path).stdout
        assert "web" in table and "2/2 ready" in table
        described = gitorch("describe", "deployment/web", "-n", "shop", cwd=repo.path)
        assert described.returncode == 0 and "Health:     Healthy" in described.stdout
        assert pods[0]["name"] in described.stdout
        missing = gitorch("describe", "deployment/nope", "-n", "shop", cwd=repo.path)
        assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
        assert gitorch("events", cwd=repo.path).returncode == 0
        logs = gitorch("logs", pods[0]["name"], "-n", "shop", cwd=repo.path)
        assert logs.returncode == 0, logs.stderr
        # --follow streams lines as the container writes them.
        ticker = next(
            p["name"]
            for p in json.loads(gitorch("get", "pods", "-n", "shop", "-o", "json", cwd=repo.path).stdout)
            if p["owner"] == "Deployment/ticker"
        )
        follow = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "logs", "-f", "--tail", "0", ticker, "-n", "shop"],
            cwd=repo.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert follow.stdout is not None
            lines = [follow.stdout.readline() for _ in range(3)]
            assert all(line.startswith("tick") for line in lines), lines
        finally:
            follow.kill()
            follow.wait()
    finally:
        repo.commit("empty", {"apps.yaml": ""})
        assert gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path).returncode == 0


def test_example_repo_reaches_all_ready_on_the_lab(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    from tests.conftest import EXAMPLES
    from tests.samples import gitorch

    repo.copy_tree(EXAMPLES)
    repo.write({"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text()})
    repo.commit("examples/repo on the lab")
    try:
        applied = gitorch("apply", "--wait", "--timeout", "120", cwd=repo.path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        status = json.loads(gitorch("status", "-o", "json", cwd=repo.path).stdout)
        assert {o["health"] for o in status["objects"]} == {"Healthy"}, status["objects"]
        pods = json.loads(gitorch("get", "pods", "-o", "json", cwd=repo.path).stdout)
        owners = {p["owner"] for p in pods}
        assert {"Deployment/web", "StatefulSet/kv", "DaemonSet/node-exporter"} <= owners
        assert all(p["ready"] for p in pods if not p["owner"].startswith("Job/"))
        # The web app served its readiness probe (its own log says so).
        web = next(p for p in pods if p["owner"] == "Deployment/web")
        logs = gitorch("logs", web["name"], "-n", "shop", cwd=repo.path)
        assert logs.returncode == 0 and "/healthz" in logs.stdout, logs.stdout + logs.stderr
    finally:
        repo.remove("apps")
        repo.remove("cluster.yaml")  # it names the ingress proxy's Service, which left with apps/
        repo.commit("remove the apps")
        assert gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path).returncode == 0


def _writer(replicas: int, claim: str = "data") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: writer, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: writer}}}}
  template:
    metadata: {{labels: {{app: writer}}}}
    spec:
      containers:
        - name: w
          command: [sh, -c, 'echo "$POD_NAME" >> /data/who; exec sleep 600']
          volumeMounts: [{{name: d, mountPath: /data}}]
      volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim}}}}}]
"""


CLAIM = """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local}
provisioner: gitorch.dev/local
reclaimPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: shop}
spec:
  storageClassName: local
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""


def test_a_claims_pods_share_its_node_and_a_gone_claim_is_reclaimed(
    lab: Lab, cluster: tuple[GitRepo, Controller]
) -> None:
    repo, controller = cluster
    repo.commit("writer", {"apps.yaml": CLAIM + "---\n" + _writer(3)})
    converge(controller)
    nodes = {n for n, pods in node_pods(lab, "writer-").items() if pods}
    assert len(nodes) == 1, nodes  # all three on the claim's node, one directory
    (node,) = nodes
    who = ssh_run(lab, node, "cat /var/lib/gitorch/volumes/shop/data/who").stdout.split()
    assert len(who) == 3
    record = controller.store.object_status("PersistentVolumeClaim", "shop", "data")
    assert record is not None and record.body["binding"]["node"] == node
    # The claim and its pods leave Git: with reclaimPolicy Delete the node removes the directory.
    repo.commit("no writer", {"apps.yaml": ""})
    converge(controller)
    wait_until("the claim's directory removed", lambda: (controller.reconcile(), ssh_run(
        lab, node, "test -e /var/lib/gitorch/volumes/shop/data && echo here || echo gone").stdout.strip())[1],
        timeout=30, interval=0.5, accept=lambda out: out == "gone")


def test_a_node_removed_from_git_drains_within_the_budget_then_is_forgotten(
    lab: Lab, cluster: tuple[GitRepo, Controller]
) -> None:
    """Removing a Node from Git is a drain (it is still reached as its row registered it), not
    every pod at once; once empty, retention forgets the node."""
    repo, controller = cluster
    pdb = ("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: shop}\n"
           "spec: {selector: {matchLabels: {app: web}}, maxUnavailable: 1}\n")
    repo.commit("web", {"apps.yaml": _fix_port(web(replicas=4)) + "---\n" + pdb})
    converge(controller)
    busy = max(node_pods(lab, "web-").items(), key=lambda kv: len(kv[1]))[0]
    assert len(node_pods(lab, "web-")[busy]) >= 2
    nodes_yaml = (lab.state_dir / "nodes.yaml").read_text()
    docs = nodes_yaml.split("\n---")
    kept = [d for d in docs if f'name: "{busy}"' not in d]
    assert len(kept) == len(docs) - 1, nodes_yaml
    repo.commit("remove a node", {"nodes.yaml": "\n---".join(kept)})
    ready_counts = []

    def check(_: PassResult) -> None:
        ready_counts.append(sum(1 for pods in node_pods(lab, "web-").values() for p in pods if p["ready"]))

    converge(controller, each=check)
    wait_until("the removed node emptied", lambda: (controller.reconcile(), node_pods(lab, "web-")[busy])[1],
               timeout=60, interval=0.5, accept=lambda pods: pods == [])
    assert min(ready_counts) >= 3, ready_counts  # never below the budget's 4 - 1, as a drain
    assert any(e.reason == "Evicted" and busy in e.message for e in controller.store.events())
    controller._pruned_at = 0.0  # retention's once a minute, now
    controller.reconcile()
    assert busy not in {n.name for n in controller.store.nodes()}
    repo.commit("back", {"nodes.yaml": nodes_yaml})
    converge(controller)


def test_draining_a_node_moves_its_pods_within_the_budget(lab: Lab, cluster: tuple[GitRepo, Controller]) -> None:
    repo, controller = cluster
    pdb = ("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: shop}\n"
           "spec: {selector: {matchLabels: {app: web}}, maxUnavailable: 1}\n")
    repo.commit("web", {"apps.yaml": _fix_port(web(replicas=4)) + "---\n" + pdb})
    converge(controller)
    busy = max(node_pods(lab, "web-").items(), key=lambda kv: len(kv[1]))[0]
    nodes_yaml = (lab.state_dir / "nodes.yaml").read_text()
    docs = nodes_yaml.split("\n---")
    docs = [d.replace("\nspec:\n", "\nspec:\n  drain: true\n", 1) if f'name: "{busy}"' in d else d for d in docs]
    assert sum("drain: true" in d for d in docs) == 1, nodes_yaml
    repo.commit("drain", {"nodes.yaml": "\n---".join(docs)})
    ready_counts = []

    def check(_: PassResult) -> None:
        ready_counts.append(sum(1 for pods in node_pods(lab, "web-").values() for p in pods if p["ready"]))

    converge(controller, each=check)
    assert node_pods(lab, "web-")[busy] == []
    assert min(ready_counts) >= 3, ready_counts  # never below the budget's 4 - 1
    assert any(e.reason == "Evicted" for e in controller.store.events())
    repo.commit("undrain", {"nodes.yaml": nodes_yaml})
