"""Small valid manifests shared by tests, and running the gitorch CLI as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def gitorch(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `gitorch ARGS` in a subprocess (the real entry point, real exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args], cwd=cwd, text=True, capture_output=True, check=False, input=input
    )


NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
"""

CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  GREETING: hello
"""

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
stringData:
  password: {password}
"""


def deployment(name: str = "web", replicas: int = 3, command: str = "python3") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: shop
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          command: ["{command}", "-m", "http.server", "8080"]
          envFrom:
            - configMapRef:
                name: web-config
          env:
            - name: PASSWORD
              valueFrom:
                secretKeyRef:
                  name: web-secret
                  key: password
"""
