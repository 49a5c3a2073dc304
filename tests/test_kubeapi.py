"""The read-only Kubernetes API of `gitorch serve`, read by clients nobody here wrote: kubectl
and the official `kubernetes` Python client. One serve (no nodes: pods stay Pending) for the
module; a commit it picks up shows in watches."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitorch.server import kubeapi, kubeobjects
from gitorch.server.kubeapi import Gone, KubeApiServer, KubeApiSettings
from gitorch.source.git import open_repository
from gitorch.store.database import PodRecord, Store
from tests.conftest import EXAMPLES
from tests.gitrepo import GitRepo
from tests.waiting import wait_until

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None and not os.environ.get("CI"), reason="kubectl is not installed")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """`gitorch serve --kube-api-listen` on the example repository without its nodes."""

    def __init__(self, root: Path, files: dict[str, str] | None = None, pods: int = 4) -> None:
        self.root = root
        self.state = root / "state"
        self.repo = GitRepo(root / "repo")
        if files is None:
            shutil.copytree(EXAMPLES, self.repo.path, dirs_exist_ok=True)
            (self.repo.path / "nodes.yaml").unlink()
            self.repo.commit("the example, without nodes")
        else:
            self.repo.commit("the lab", files)
        self.env = {**os.environ, "GITORCH_STATE_DIR": str(self.state), "PYTHONUNBUFFERED": "1"}
        self.log = root / "serve.log"
        self._out = self.log.open("w")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "serve", "--repo", str(self.repo.path), "--branch", "main",
             "--interval", "1", "--listen", "off", "--kube-api-listen", f"127.0.0.1:{self.port}"],
            stdout=self._out, stderr=subprocess.STDOUT, env=self.env)
        wait_until("the API's server file", lambda: (self.state / "kubeapi" / "server").exists(), timeout=60)
        self.kubeconfig = root / "kubeconfig"
        out = subprocess.run([sys.executable, "-m", "gitorch", "kubeconfig"], env=self.env, capture_output=True,
                             text=True, check=True)
        self.kubeconfig.write_text(out.stdout)
        config = json.loads(out.stdout)
        self.token = config["users"][0]["user"]["token"]
        self.server = config["clusters"][0]["cluster"]["server"]
        self.tls = ssl.create_default_context(cadata=(self.state / "kubeapi" / "ca.crt").read_text())
        wait_until("pods in the API", lambda: len(self.get("/api/v1/pods")["items"]) >= pods, timeout=60)

    def output(self) -> str:
        return self.log.read_text()

    def request(self, path: str, method: str = "GET", token: str | None = "", accept: str = "application/json",
                ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        req = urllib.request.Request(self.server + path, method=method, headers=headers,
                                     data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=20) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        code, body = self.request(path, **kw)
        assert code == 200, body
        return body

    def kubectl(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None, "kubectl is not installed (Debian: kubernetes-client)"
        proc = subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **(env or {})})
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("kubeapi"))
    try:
        yield c
    finally:
        c.stop()
        assert c.token not in c.output()


@needs_kubectl
def test_kubectl_reads_the_cluster(cluster: Cluster) -> None:
    version = cluster.kubectl("version").stdout
    assert "Server Version: v1.31.0+gitorch" in version
    resources = cluster.kubectl("api-resources").stdout
    assert any(line.split()[:2] == ["deployments", "deploy"] for line in resources.splitlines()), resources
    assert any(line.split()[:2] == ["pods", "po"] for line in resources.splitlines())
    pods = cluster.kubectl("get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert pods[0].split()[:5] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS"] and "NODE" in pods[0]
    assert any(line.split()[:2] == ["shop", "kv-0"] for line in pods), pods
    listed = cluster.kubectl("get", "deploy,sts,ds,svc,cm,ing", "-A").stdout
    for name in ("deployment.apps/web", "statefulset.apps/kv", "daemonset.apps/node-exporter", "service/web",
                 "configmap/web-config", "ingress.networking.k8s.io/web"):
        assert name in listed, listed
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-A").stdout.strip() == "yes"
    denied = cluster.kubectl("auth", "can-i", "delete", "deployments", "-n", "shop", check=False)
    assert denied.stdout.strip() == "no - gitorch's API is read-only" and denied.returncode == 1
    explained = cluster.kubectl("explain", "deployment.spec.replicas").stdout  # gitorch's own schemas
    assert "How many pods to run." in explained, explained
    described = cluster.kubectl("describe", "pod", "-n", "shop", "kv-0").stdout
    assert "Controlled By:  StatefulSet/kv" in described
    assert "gitorch.dev/path: apps/shop/kv.yaml" in described
    assert "FailedScheduling" in described.split("Events:")[1], described  # recorded on the StatefulSet
    secret = cluster.kubectl("get", "secret", "-n", "shop", "web-secrets", "-o", "yaml").stdout
    assert "gitorch.dev/data-keys: api-token" in secret
    assert not any(line.startswith(("data:", "stringData:")) for line in secret.splitlines()), secret
    assert "not-a-real-token" not in secret


@needs_kubectl
def test_kubectl_writes_are_refused_with_the_git_file_and_line(cluster: Cluster) -> None:
    repo = cluster.repo.path
    applied = cluster.kubectl("apply", "-f", str(repo / "apps/shop/web.yaml"), check=False)
    assert applied.returncode != 0
    assert f"edit apps/shop/web.yaml:3 in {repo} and push" in applied.stderr, applied.stderr
    deleted = cluster.kubectl("delete", "deploy", "-n", "shop", "web", check=False)
    assert "MethodNotAllowed" in deleted.stderr and "edit apps/shop/web.yaml:3" in deleted.stderr
    replicas = 1 + next(i for i, line in enumerate((repo / "apps/shop/web.yaml").read_text().splitlines())
                        if "replicas:" in line)
    scaled = cluster.kubectl("scale", "deploy", "-n", "shop", "web", "--replicas=5", check=False)
    assert f"edit apps/shop/web.yaml:{replicas} in" in scaled.stderr, scaled.stderr
    edited = cluster.kubectl("edit", "cm", "-n", "shop", "web-config", check=False,
                             env={"KUBE_EDITOR": "sed -i s/info/debug/"})
    assert "edit apps/shop/config.yaml:1 in" in edited.stderr, edited.stderr
    created = cluster.kubectl("create", "configmap", "new", "-n", "shop", "--from-literal=a=b", check=False)
    assert "add the ConfigMap to a file under apps/shop/" in created.stderr, created.stderr
    assert "edit apps/shop/kv.yaml:7" in cluster.kubectl("delete", "pod", "-n", "shop", "kv-0", check=False).stderr


def test_errors_are_kubernetes_status_objects(cluster: Cluster) -> None:
    code, body = cluster.request("/api/v1/pods", token=None)
    assert (code, body["kind"], body["reason"]) == (401, "Status", "Unauthorized")
    assert cluster.request("/api/v1/pods", token="x" * 40)[0] == 401
    code, body = cluster.request("/apis/apps/v1/namespaces/shop/deployments/nope")
    assert (code, body["reason"], body["details"]) == (404, "NotFound", {"name": "nope", "group": "apps",
                                                                        "kind": "deployments"})
    code, body = cluster.request("/api/v1/namespaces/shop/pods/kv-0/exec?command=sh", method="POST")
    assert (code, body["reason"]) == (403, "Forbidden")
    code, body = cluster.request("/api/v1/namespaces/shop/pods/kv-0/portforward")
    assert (code, body["reason"]) == (403, "Forbidden") and "not offered" in body["message"]
    code, body = cluster.request("/api/v1/pods?watch=true&resourceVersion=1")
    assert (code, body["reason"]) == (410, "Expired")
    code, body = cluster.request("/api/v1/pods?labelSelector=a%20in%20b")
    assert (code, body["reason"]) == (400, "BadRequest")


def test_lists_select_page_and_print_tables(cluster: Cluster) -> None:
    pods = cluster.get("/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb")["items"]
    assert len(pods) == 3 and all(p["metadata"]["name"].startswith("web-") for p in pods)
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" for p in pods)
    assert cluster.get("/api/v1/pods?fieldSelector=metadata.name%3Dkv-0,metadata.namespace%3Dshop")["items"][0][
        "status"]["phase"] == "Pending"
    assert cluster.get("/api/v1/pods?fieldSelector=status.phase%3DRunning")["items"] == []
    first = cluster.get("/api/v1/pods?limit=2")
    rest = cluster.get(f"/api/v1/pods?limit=100&continue={first['metadata']['continue']}")
    names = [p["metadata"]["name"] for p in first["items"] + rest["items"]]
    assert names == [p["metadata"]["name"] for p in cluster.get("/api/v1/pods")["items"]] and len(names) >= 4
    table = cluster.get("/api/v1/namespaces/shop/pods", accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert table["kind"] == "Table" and [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Ready",
                                                                                                "Status"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    node = cluster.get("/apis/gitorch.dev/v1/clusters/demo")
    assert node["metadata"]["annotations"]["gitorch.dev/path"] == "cluster.yaml"
    slices = cluster.get("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector="
                         "kubernetes.io%2Fservice-name%3Dweb")["items"]
    assert [s["metadata"]["name"] for s in slices] == ["web-gitorch"] and slices[0]["addressType"] == "IPv4"
    rs = cluster.get("/apis/apps/v1/namespaces/shop/replicasets")["items"]
    assert rs and rs[0]["metadata"]["ownerReferences"][0]["name"] == "web"


def test_a_second_instance_answers_from_the_store_with_plain_discovery(cluster: Cluster, tmp_path: Path) -> None:
    """Another API server on the same store (as a standby serve's): plain discovery lists only."""
    with Store.open(f"sqlite:///{cluster.state / 'gitorch.db'}") as store:
        settings = KubeApiSettings(tls_dir=tmp_path / "tls", token_file=cluster.state / "kubeapi" / "tokens",
                                   aggregated_discovery=False)
        server = KubeApiServer(store, open_repository(str(cluster.repo.path)), "127.0.0.1", 0, settings).start()
        try:
            ca = (tmp_path / "tls" / "ca.crt").read_bytes()
            config = tmp_path / "kubeconfig"
            config.write_text(kubeapi.kubeconfig(server.url, ca, cluster.token))
            context = ssl.create_default_context(cadata=ca.decode())
            req = urllib.request.Request(server.url + "/apis", headers={
                "Authorization": f"Bearer {cluster.token}",
                "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"})
            with urllib.request.urlopen(req, context=context, timeout=10) as resp:
                assert json.loads(resp.read())["kind"] == "APIGroupList"
            if KUBECTL is not None:
                out = subprocess.run([KUBECTL, "--kubeconfig", str(config), "get", "sts", "-A"], capture_output=True,
                                     text=True, timeout=60)
                assert out.returncode == 0 and "kv" in out.stdout, out.stderr
                resources = subprocess.run([KUBECTL, "--kubeconfig", str(config), "api-resources"],
                                           capture_output=True, text=True, timeout=60).stdout
                assert "cronjobs" in resources and "gitorch.dev/v1" in resources
        finally:
            server.close()


@needs_kubectl
def test_a_standby_serve_answers_too(cluster: Cluster) -> None:
    """A second `serve` on the same store stands by (the first one leads), and its API answers."""
    assert KUBECTL is not None
    port = free_port()
    log = cluster.root / "standby.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "serve", "--repo", str(cluster.repo.path), "--branch", "main",
             "--interval", "1", "--listen", "off", "--kube-api-listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env=cluster.env)
        try:
            wait_until("the standby", lambda: "standing by" in log.read_text(), timeout=60)
            got = subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "--server",
                                  f"https://127.0.0.1:{port}", "get", "pods", "-n", "shop", "kv-0"],
                                 capture_output=True, text=True, timeout=60)
            assert got.returncode == 0 and "kv-0" in got.stdout, (got.stderr, log.read_text())
            assert "leading" not in log.read_text().replace("standing by", "")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _scale_web(cluster: Cluster, replicas: int) -> None:
    path = cluster.repo.path / "apps/shop/web.yaml"
    text = path.read_text()
    before = next(line for line in text.splitlines() if line.strip().startswith("replicas:"))
    path.write_text(text.replace(before, before.split(":")[0] + f": {replicas}", 1))
    cluster.repo.commit(f"web: {replicas} replicas")


def test_python_client_lists_and_watches_a_push(cluster: Cluster) -> None:
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    listed = api.list_namespaced_pod("shop")
    assert {"kv-0"} <= {p.metadata.name for p in listed.items}
    web = [p for p in listed.items if p.metadata.labels.get("app") == "web"]
    assert web and web[0].status.container_statuses[0].restart_count == 0
    seen: list[tuple[str, str]] = []
    w = watch.Watch()

    def follow() -> None:
        for event in w.stream(api.list_namespaced_pod, "shop", resource_version=listed.metadata.resource_version,
                              timeout_seconds=60):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "ADDED":
                w.stop()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    _scale_web(cluster, 4)
    thread.join(90)
    assert any(t == "ADDED" and n.startswith("web-") for t, n in seen), (seen, cluster.output()[-2000:])


@needs_kubectl
def test_kubectl_get_watch_sees_a_push(cluster: Cluster) -> None:
    assert KUBECTL is not None
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "get", "pods", "-n", "shop", "-w",
                             "--output-watch-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until("the first list", lambda: any("kv-0" in line for line in lines), timeout=30)
        before = len(lines)
        _scale_web(cluster, 2)
        wait_until("a change", lambda: any(line.split()[:1] in (["DELETED"], ["MODIFIED"])
                                           for line in lines[before:]), timeout=60)
    finally:
        proc.terminate()
        proc.wait(10)


# ---- the change feed on a store filled directly --------------------------------------------------


def _pods(n: int, phase: str = "Pending") -> list[PodRecord]:
    return [PodRecord(namespace="default", name=f"p-{i}", owner_kind="Pod", owner_name=f"p-{i}", phase=phase)
            for i in range(n)]


def test_feed_orders_changes_resumes_and_expires(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        store.upsert_pods(_pods(3))
        feed = kubeapi.Feed(store, None, KubeApiSettings(tls_dir=tmp_path, token_file=tmp_path / "t", ring=4))
        feed.refresh(force=True)
        start = feed.rv
        pods = next(r for r in kubeobjects.RESOURCES if r.plural == "pods")
        assert len(feed.objects[pods]) == 3 and feed.since(start) == []
        store.upsert_pods(_pods(1, "Running"))
        assert feed.refresh()
        assert not feed.refresh()  # nothing moved: nothing rebuilt
        changes = feed.since(start)
        assert [(c.type, c.obj["metadata"]["name"]) for c in changes] == [("MODIFIED", "p-0")]
        assert changes[0].obj["status"]["phase"] == "Running" and changes[0].old is not None
        store.delete_pods("default", ["p-2"])
        feed.refresh()
        assert [(c.type, c.obj["metadata"]["name"]) for c in feed.since(changes[0].rv)] == [("DELETED", "p-2")]
        store.upsert_pods(_pods(8)[3:])  # five more: the ring keeps four changes
        feed.refresh()
        with pytest.raises(Gone):
            feed.since(start)
        assert len(feed.ring) == 4 and feed.since(feed.floor) == []  # the floor: the batch partly dropped


def _deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}


def test_a_build_after_pod_changes_is_the_full_build(tmp_path: Path) -> None:
    """After each random pod change the feed rebuilds only what the pod feeds into (its owner, the
    Services selecting it, a CronJob's run): what it serves must equal a build of everything."""
    import random

    rng = random.Random(7)
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        for name in ("web", "api"):
            store.upsert_object_status("Deployment", "shop", name, body={
                "manifest": _deployment(name), "rollout": {"revision": "r1"}}, health="Healthy", sync="Synced")
            store.upsert_object_status("Service", "shop", name, body={"manifest": {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}}, health="Healthy", sync="Synced")
        store.upsert_object_status("CronJob", "shop", "tick", body={"manifest": {
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick", "namespace": "shop"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "t", "image": "busybox"}], "restartPolicy": "Never"}}}}}}})
        owners = [("Deployment", "web"), ("Deployment", "api"), ("Job", "tick-29000000"), ("Job", "tick-29000001"),
                  ("Pod", "")]
        feed = kubeapi.Feed(store, None, KubeApiSettings(tls_dir=tmp_path, token_file=tmp_path / "t"))
        feed.refresh(force=True)
        names = [f"pod-{i}" for i in range(12)]
        for step in range(60):
            name = rng.choice(names)
            if rng.random() < 0.2:
                store.delete_pods("shop", [name])
            else:
                kind, owner = rng.choice(owners)
                store.upsert_pods([PodRecord(
                    namespace="shop", name=name, owner_kind=kind, owner_name=owner or name, template_hash="r1",
                    phase=rng.choice(["Pending", "Running", "Succeeded"]), ready=rng.random() < 0.5,
                    node="n1", ip=f"10.244.0.{names.index(name) + 2}")])
            feed.refresh()
            full = kubeapi.Feed(store, None, KubeApiSettings(tls_dir=tmp_path, token_file=tmp_path / "t"))
            full.refresh(force=True)
            for resource, objects in full.objects.items():
                got = {k: {**o, "metadata": {**o["metadata"], "resourceVersion": None}}
                       for k, o in feed.objects[resource].items()}
                want = {k: {**o, "metadata": {**o["metadata"], "resourceVersion": None}} for k, o in objects.items()}
                assert got == want, (step, resource.plural)
        jobs = next(r for r in kubeobjects.RESOURCES if r.plural == "jobs")
        assert feed.objects[jobs], "no CronJob run was ever built: the test exercised nothing"


def test_instances_give_a_change_the_same_resource_version(tmp_path: Path) -> None:
    """Behind a load balancer a client lists on one instance and watches on another: the version
    is the store's, not the instance's."""
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        store.upsert_pods(_pods(3))
        feeds = [kubeapi.Feed(store, None, KubeApiSettings(tls_dir=tmp_path, token_file=tmp_path / "t"))
                 for _ in range(2)]
        feeds[0].refresh(force=True)
        store.upsert_pods(_pods(1, "Running"))
        feeds[0].refresh()
        feeds[1].refresh(force=True)  # started later: sees both writes at once
        assert feeds[0].rv == feeds[1].rv
        store.upsert_pods(_pods(2, "Running"))
        assert all(f.refresh() for f in feeds)
        assert feeds[0].rv == feeds[1].rv
        assert [c.obj["metadata"]["name"] for c in feeds[0].since(feeds[1].rv - 1)] == ["p-1"]


def test_a_write_in_this_process_wakes_the_feed(tmp_path: Path) -> None:
    """The leader's own writes reach watches without waiting for a poll (here an hour away)."""
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        store.upsert_pods(_pods(2))
        settings = KubeApiSettings(tls_dir=tmp_path, token_file=tmp_path / "t", poll=3600)
        feed = kubeapi.Feed(store, None, settings).start()
        assert feed.ready.wait(60)
        try:
            start = feed.rv
            store.upsert_pods(_pods(1, "Running"))
            changes = wait_until("the feed to see the write", lambda: feed.since(start), timeout=60)
            assert [(c.type, c.obj["metadata"]["name"]) for c in changes] == [("MODIFIED", "p-0")]
        finally:
            feed.stop()
        assert feed._wake.set not in store.written


@pytest.mark.parametrize("text, labels, expected", [
    ("app=web", {"app": "web"}, True),
    ("app==web,tier!=db", {"app": "web", "tier": "db"}, False),
    ("env in (a, b)", {"env": "b"}, True),
    ("env notin (a,b)", {"env": "a"}, False),
    ("!legacy", {"app": "x"}, True),
    ("legacy", {"app": "x"}, False),
], ids=["equal", "not-equal", "in", "notin", "absent", "exists"])
def test_label_selector_strings(text: str, labels: dict[str, str], expected: bool) -> None:
    from gitorch.model.selectors import matches, parse

    assert matches(parse(text), labels) is expected


# ---- on lab nodes: node facts and pod logs streamed from the node --------------------------------

TALKER = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: talker, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: talker}}
  template:
    metadata: {labels: {app: talker}}
    spec:
      containers:
        - name: main
          command: [/usr/bin/python3, -u, -c, "import time\\nfor i in range(10**6): print('line', i); time.sleep(0.2)"]
"""


@pytest.mark.lab
@needs_kubectl
def test_nodes_and_logs_from_lab_nodes(lab: Any, tmp_path: Path) -> None:
    nodes = (lab.state_dir / "nodes.yaml").read_text()
    c = Cluster(tmp_path, {"nodes.yaml": nodes, "apps/talker.yaml": TALKER}, pods=1)
    try:
        wait_until("the talker Running", lambda: c.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dtalker")[
            "items"][0]["status"]["phase"], timeout=120, accept=lambda phase: phase == "Running")
        shown = c.kubectl("get", "nodes", "-o", "wide").stdout
        for n in lab.nodes:
            assert any(line.split()[:2] == [n.name, "Ready"] for line in shown.splitlines()), shown
        node = c.get(f"/api/v1/nodes/{lab.nodes[0].name}")
        assert node["status"]["nodeInfo"]["kernelVersion"] and node["status"]["capacity"]["cpu"]
        pod = c.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dtalker")["items"][0]
        name = pod["metadata"]["name"]
        assert pod["status"]["podIP"] and pod["status"]["hostIP"] and pod["spec"]["nodeName"]
        assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        wait_until("some lines", lambda: c.kubectl("logs", name, "--tail=3").stdout.splitlines(), timeout=30,
                   accept=lambda lines: len(lines) == 3 and all(line.startswith("line ") for line in lines))
        # Each line carries the time the node saw it written (one line each 0.2 s; the node's
        # supervisor notes them each 1 s pass), not the time the API read it.
        wait_until("15 lines", lambda: c.kubectl("logs", name, "--tail=15").stdout.splitlines(), timeout=30,
                   accept=lambda lines: len(lines) == 15)
        asked = datetime.now(UTC)
        text = c.kubectl("logs", name, "--tail=15", "--timestamps").stdout
        stamped = [line.split(" ", 1) for line in text.splitlines()]
        read = datetime.now(UTC)
        assert len(stamped) == 15 and all(rest.startswith("line ") for _, rest in stamped), stamped
        assert all(len(stamp) == 30 and stamp.endswith("Z") for stamp, _ in stamped), stamped  # RFC3339Nano, fixed
        times = [datetime.fromisoformat(stamp) for stamp, _ in stamped]
        assert times == sorted(times) and len(set(times)) > 1 and times[-1] <= read, stamped
        assert times[0] < asked, stamped  # written seconds before it was asked for
        cli = subprocess.run([sys.executable, "-m", "gitorch", "logs", name, "--tail", "3", "--timestamps", "--repo",
                              str(c.repo.path)], env=c.env, capture_output=True, text=True, timeout=60, check=False)
        assert cli.returncode == 0, cli.stderr
        ours = [line.split(" ", 1) for line in cli.stdout.splitlines()]  # `gitorch logs --timestamps` alike
        assert len(ours) == 3 and all(len(stamp) == 30 and rest.startswith("line ") for stamp, rest in ours), ours
        when = [datetime.fromisoformat(stamp) for stamp, _ in ours]
        assert when == sorted(when) and when[-1] <= datetime.now(UTC), ours
        with subprocess.Popen([KUBECTL or "kubectl", "--kubeconfig", str(c.kubeconfig), "logs", "-f", "--tail=1",
                               "--timestamps", name], stdout=subprocess.PIPE, text=True) as follow:
            try:
                assert follow.stdout is not None
                lines = [follow.stdout.readline().split(" ", 1) for _ in range(3)]
                assert all(datetime.fromisoformat(stamp) <= datetime.now(UTC) and rest.startswith("line ")
                           for stamp, rest in lines), lines
            finally:
                follow.terminate()
        assert KUBECTL is not None
        follow = subprocess.Popen([KUBECTL, "--kubeconfig", str(c.kubeconfig), "logs", "-f", "--tail=1", name],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert follow.stdout is not None
            numbers = [int(follow.stdout.readline().split()[1]) for _ in range(4)]
            assert numbers == sorted(numbers) and numbers[-1] > numbers[0], numbers  # lines as they are written
        finally:
            follow.terminate()
            follow.wait(10)
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(c.kubeconfig)))
        text = api.read_namespaced_pod_log(name, "default", tail_lines=2, container="main")
        assert len(text.splitlines()) == 2
    finally:
        c.repo.commit("empty", {"apps/talker.yaml": ""})
        wait_until("the talker gone", lambda: c.get("/api/v1/namespaces/default/pods")["items"], timeout=60,
                   accept=lambda items: items == [])
        c.stop()


# ---- an API server in this process, on a store filled directly ------------------------------------


def test_requests_wait_for_the_first_build_then_get_a_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first build runs in the feed's thread (serve is not held up by it); a request waits for
    it, and past `first_build_wait` gets a Status it can retry on."""
    token = "t" * 32
    (tmp_path / "tokens").write_text(f"{token},me\n")
    release = threading.Event()
    real = kubeapi.Feed.refresh

    def slow(self: kubeapi.Feed, *, force: bool = False) -> bool:
        release.wait(60)
        return real(self, force=force)

    monkeypatch.setattr(kubeapi.Feed, "refresh", slow)
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        store.upsert_pods(_pods(2))
        settings = KubeApiSettings(tls_dir=tmp_path / "tls", token_file=tmp_path / "tokens", first_build_wait=0.5)
        server = KubeApiServer(store, None, "127.0.0.1", 0, settings).start()  # returns while the build waits
        try:
            context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
            host, port = server.http.address

            def ask() -> tuple[int, dict[str, Any], str | None]:
                conn = http.client.HTTPSConnection(host, port, context=context, timeout=20)
                conn.request("GET", "/api/v1/pods", headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                body = json.loads(resp.read())
                conn.close()
                return resp.status, body, resp.getheader("Retry-After")

            code, body, retry = ask()
            assert (code, body["reason"], retry) == (503, "ServiceUnavailable", "5"), body
            release.set()
            assert server.feed.ready.wait(60)
            code, body, _ = ask()
            assert code == 200 and len(body["items"]) == 2
        finally:
            release.set()
            server.close()


def test_bounds_tokens_and_certificates(tmp_path: Path) -> None:
    """Watches and followed logs are capped, bodies are never read, a short token is no token,
    and the certificate made on first start names the listen address and is kept."""
    token = "t" * 32
    (tmp_path / "tokens").write_text(f"# comment\nshort,nobody\n{token},me\n")
    with Store.open(f"sqlite:///{tmp_path / 'db'}") as store:
        store.upsert_pods(_pods(2))
        # "default-x/..." sorts before "default/..." as text, after it as (namespace, name): pages follow the latter
        store.upsert_pods([PodRecord(namespace="default-x", name="q", owner_kind="Pod", owner_name="q")])
        settings = KubeApiSettings(tls_dir=tmp_path / "tls", token_file=tmp_path / "tokens", max_watches=1,
                                   hosts=("api.example.test",))
        server = KubeApiServer(store, None, "127.0.0.1", 0, settings).start()
        try:
            from gitorch.source.certificates import certificate_hosts

            names = certificate_hosts((tmp_path / "tls/server.crt").read_bytes())
            assert {"api.example.test", "localhost"} <= set(names)
            assert all((tmp_path / "tls" / f).stat().st_mode & 0o077 == 0 for f in ("ca.key", "server.key"))
            context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
            host, port = server.http.address

            def ask(path: str, method: str = "GET", who: str = token, body: bytes | None = None,
                    ) -> tuple[int, dict[str, Any]]:
                conn = http.client.HTTPSConnection(host, port, context=context, timeout=20)
                headers = {"Authorization": f"Bearer {who}"}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, json.loads(data) if data.startswith(b"{") else {}

            assert ask("/api/v1/pods", who="short")[0] == 401
            later = "n" * 32
            assert ask("/api/v1/pods", who=later)[0] == 401
            with (tmp_path / "tokens").open("a") as f:
                f.write(f"{later}\n")
            assert ask("/api/v1/pods", who=later)[0] == 200  # the file is read again when it changes
            code, listed = ask("/api/v1/pods")
            assert code == 200 and len(listed["items"]) == 3
            paged, token_ = [], ""
            while True:
                page = ask(f"/api/v1/pods?limit=1&continue={token_}")[1]
                paged += [p["metadata"]["name"] for p in page["items"]]
                token_ = page["metadata"].get("continue", "")
                if not token_:
                    break
            assert paged == ["p-0", "p-1", "q"]
            rv = listed["metadata"]["resourceVersion"]
            watch = http.client.HTTPSConnection(host, port, context=context, timeout=20)
            watch.request("GET", f"/api/v1/pods?watch=true&resourceVersion={rv}",
                          headers={"Authorization": f"Bearer {token}"})
            stream = watch.getresponse()
            assert stream.status == 200
            code, body = ask("/api/v1/pods?watch=true")
            assert (code, body["reason"]) == (429, "TooManyRequests")  # the one watch allowed is open
            store.upsert_pods(_pods(1, "Running"))
            event = json.loads(stream.readline())
            assert (event["type"], event["object"]["metadata"]["name"]) == ("MODIFIED", "p-0")
            watch.close()  # the client goes: its slot is free again

            def another() -> int:
                again = http.client.HTTPSConnection(host, port, context=context, timeout=20)
                again.request("GET", "/api/v1/pods?watch=true&timeoutSeconds=1",
                              headers={"Authorization": f"Bearer {token}"})
                code = again.getresponse().status
                again.close()
                return code

            wait_until("the watch's slot freed", another, timeout=30, accept=lambda code: code == 200)
            code, body = ask("/api/v1/namespaces/default/pods/p-0", "PUT", body=b"x" * (4 * 1024 * 1024))
            assert code == 413  # refused before a byte of the body is read
            code, body = ask("/api/v1/namespaces/default/pods", "DELETE")
            assert code == 405 and "remove the pods from the files under" in body["message"]
        finally:
            server.close()
        made = (tmp_path / "tls" / "server.crt").read_bytes()
        KubeApiServer(store, None, "127.0.0.1", 0, settings).close()  # a second start keeps the certificate
        assert (tmp_path / "tls" / "server.crt").read_bytes() == made


def test_cli_errors_name_the_fix(tmp_path: Path) -> None:
    env = {**os.environ, "GITORCH_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "gitorch", "kubeconfig"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "gitorch serve --kube-api-listen HOST:PORT" in out.stderr
    assert "Traceback" not in out.stderr
    repo = GitRepo(tmp_path / "repo")
    repo.commit("empty", {"README.md": "nothing\n"})
    out = subprocess.run([sys.executable, "-m", "gitorch", "serve", "--repo", str(repo.path), "--kube-api-listen",
                          "6443"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--kube-api-listen '6443': expected HOST:PORT" in out.stderr, out.stderr
