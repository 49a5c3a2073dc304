"""Validate and plan a generated repository of 10,000 objects; last line: objects per second.

Issue target: 10,000 objects validated and planned in under 5 s on a 2-core machine.
A commit of 10,000 objects is validated cold (a fresh process parses every file), then a
second commit changing 5% of the objects is planned against it, as a pull request would be.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitorch.source import desired
from gitorch.source.diffs import diff_states
from gitorch.source.git import open_repository
from gitorch.source.rendering import PlanReport, plan_markdown, plan_text

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@x",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@x",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def app(ns: str, i: int, replicas: int) -> str:
    """Four objects an application typically has: config, secret, deployment, service."""
    name = f"app-{i}"
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, namespace: {ns}}}
data: {{GREETING: hello-{i}, LOG_LEVEL: info}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-secret, namespace: {ns}}}
stringData: {{token: not-a-real-token-{i}}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: web
          command: ["python3", "-m", "http.server", "8080"]
          envFrom:
            - configMapRef: {{name: {name}-config}}
          env:
            - name: TOKEN
              valueFrom:
                secretKeyRef: {{name: {name}-secret, key: token}}
          ports:
            - {{name: http, containerPort: 8080}}
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits: {{memory: 128Mi}}
          readinessProbe:
            httpGet: {{path: /, port: http}}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"""


def generate(root: Path, objects: int) -> tuple[str, str]:
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env=ENV)
    namespaces = max(1, objects // 400)
    apps = (objects - namespaces) // 4
    for n in range(namespaces):
        (root / f"ns-{n}").mkdir()
        (root / f"ns-{n}" / "namespace.yaml").write_text(
            f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n"
        )
    for i in range(apps):
        (root / f"ns-{i % namespaces}" / f"app-{i}.yaml").write_text(app(f"ns-{i % namespaces}", i, 2))
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=ENV)
    subprocess.run(["git", "commit", "-q", "-m", "base"], cwd=root, check=True, env=ENV)
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, env=ENV, capture_output=True, text=True
    ).stdout.strip()
    for i in range(0, apps, 20):  # change 5% of the applications
        (root / f"ns-{i % namespaces}" / f"app-{i}.yaml").write_text(app(f"ns-{i % namespaces}", i, 3))
    subprocess.run(["git", "commit", "-q", "-am", "scale"], cwd=root, check=True, env=ENV)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, env=ENV, capture_output=True, text=True
    ).stdout.strip()
    return base, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        base, head = generate(root, args.objects)
        repo = open_repository(root)
        t0 = time.perf_counter()
        base_state = desired.load(repo, base)
        t1 = time.perf_counter()
        head_state = desired.load(repo, head)
        changes = diff_states(base_state, head_state)
        report = PlanReport(base_state.revision, head_state.revision, changes, head_state.diagnostics)
        text = plan_text(report)
        md = plan_markdown(report)
        t2 = time.perf_counter()
        n = len(base_state.objects)
        assert base_state.ok and head_state.ok, [d.format() for d in head_state.diagnostics[:5]]
        print(f"objects: {n} in {base_state.files} files")
        print(f"cold validate of one commit: {t1 - t0:.2f} s ({n / (t1 - t0):,.0f} objects/s)")
        print(f"plan of a 5% change against it (parse changed files, validate, diff, render): {t2 - t1:.2f} s")
        print(f"  {changes.summary}  (text {len(text):,} chars, markdown {len(md):,} chars)")
        total = t2 - t0
        print(f"validate + plan total: {total:.2f} s (target: under 5 s for 10,000 objects)")
        print(f"{n / total:,.0f} objects validated and planned per second")


if __name__ == "__main__":
    main()
