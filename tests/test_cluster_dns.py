"""`gitorch dns` answers from the store after a real apply on lab nodes, and follows changes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import dns.resolver
import pytest

from gitorch.nodes.lab import Lab
from tests.gitrepo import GitRepo
from tests.lab import ssh_run
from tests.samples import gitorch
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

APPS = """\
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: kv, namespace: shop}}
spec:
  serviceName: kv
  replicas: {replicas}
  selector: {{matchLabels: {{app: kv}}}}
  template:
    metadata: {{labels: {{app: kv}}}}
    spec:
      containers:
        - name: kv
          command: [python3, -m, http.server, "7379"]
          ports: [{{name: kv, containerPort: 7379}}]
          readinessProbe:
            exec: {{command: [sh, -c, 'test ! -f /tmp/unready-$POD_NAME']}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: kv, namespace: shop}}
spec:
  clusterIP: None
  selector: {{app: kv}}
  ports: [{{name: kv, port: 7379}}]
---
apiVersion: v1
kind: Service
metadata: {{name: docs, namespace: shop}}
spec: {{type: ExternalName, externalName: docs.example.invalid}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: kv}}
  ports: [{{name: http, port: 80, targetPort: kv}}]
"""


def _resolver(port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = 2
    return r


def _a(r: dns.resolver.Resolver, name: str) -> set[str]:
    try:
        return {a.to_text() for a in r.resolve(name, "A")}
    except dns.resolver.NXDOMAIN:
        return set()


def until_answers(repo: GitRepo, r: dns.resolver.Resolver, name: str, want: set[str], timeout: float = 45) -> None:
    """One-pass applies (as serve would run them) until `name` answers `want`."""

    def answers() -> set[str]:
        gitorch("apply", cwd=repo.path)
        return _a(r, name)

    wait_until(f"{name} to answer {want}", answers, timeout=timeout, interval=0.5, accept=lambda got: got == want)


def test_dns_serves_services_and_pods_from_the_store(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("kv", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "apps.yaml": APPS.format(replicas=2)})
    assert gitorch("apply", "--wait", "--timeout", "90", cwd=repo.path).returncode == 0
    env = {**os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitorch", "dns", "--listen", "127.0.0.1:0"],
        cwd=repo.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r"port (\d+)", line).group(1))  # type: ignore[union-attr]
        r = _resolver(port)
        services = json.loads(gitorch("get", "services", "-n", "shop", "-o", "json", cwd=repo.path).stdout)
        cluster_ip = next(s["clusterIP"] for s in services if s["name"] == "web")
        assert _a(r, "web.shop.svc.cluster.local") == {cluster_ip}
        pods = json.loads(gitorch("get", "pods", "-n", "shop", "-o", "json", cwd=repo.path).stdout)
        from gitorch.store.database import Store

        store = Store.open(f"sqlite:///{os.environ['GITORCH_STATE_DIR']}/gitorch.db")
        ips = {p.name: p.ip for p in store.pods(namespace="shop")}
        store.close()
        assert all(ips.values()) and len(pods) == 2
        assert _a(r, "kv.shop.svc.cluster.local") == set(ips.values())
        assert _a(r, "kv-0.kv.shop.svc.cluster.local") == {ips["kv-0"]}
        with pytest.raises(dns.resolver.NXDOMAIN):
            r.resolve("nope.shop.svc.cluster.local", "A")
        cname = r.resolve("docs.shop.svc.cluster.local", "CNAME")
        assert [c.target.to_text() for c in cname] == ["docs.example.invalid."]
        # kv-1 fails its readiness probe: it leaves the headless answers and its own name,
        # while its pod keeps running; it comes back once ready again.
        kv1_node = next(p["node"] for p in pods if p["name"] == "kv-1")
        ssh_run(lab, kv1_node, "touch /tmp/unready-kv-1")
        until_answers(repo, r, "kv.shop.svc.cluster.local", {ips["kv-0"]})
        assert _a(r, "kv-1.kv.shop.svc.cluster.local") == set()
        ssh_run(lab, kv1_node, "rm -f /tmp/unready-kv-1")
        until_answers(repo, r, "kv.shop.svc.cluster.local", set(ips.values()))
        assert _a(r, "kv-1.kv.shop.svc.cluster.local") == {ips["kv-1"]}
        # Scale down: the answers follow the store.
        repo.commit("one kv", {"apps.yaml": APPS.format(replicas=1)})
        assert gitorch("apply", "--wait", "--timeout", "90", cwd=repo.path).returncode == 0
        wait_until("kv to answer kv-0 only", lambda: _a(r, "kv.shop.svc.cluster.local"), timeout=10, interval=0.2,
                   accept=lambda got: got == {ips["kv-0"]})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        repo.commit("empty", {"apps.yaml": ""})
        gitorch("apply", "--wait", "--timeout", "60", cwd=repo.path)
