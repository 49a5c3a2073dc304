"""Ingress on lab nodes (issue 11 part 2): HAProxy run by the agent on the Cluster's ingress node,
configured from the Ingresses; from this machine, through the proxy Service's LoadBalancer
address: host and path routing across two Services, TLS by SNI with a test CA and the redirect
to HTTPS, the status and the proxy's access log; and a rolling update of a backend under a
steady request stream with 0 failed requests."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab
from gitorch.reconcile.controller import ControllerSettings
from tests.gitrepo import GitRepo
from tests.lab import controlled, converge, ssh_run
from tests.tls import certificate_pem, key_pem, make_ca, new_key
from tests.waiting import wait_until

APP = """\
import http.server, os
name, version = os.environ['POD_NAME'], os.environ.get('VERSION', '')
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = f'{os.environ["APP"]} {version} {name} {self.path}'.encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"""


def deployment(app: str, replicas: int = 2, version: str = "v1") -> str:
    indented = "\n".join("              " + line for line in APP.splitlines())
    return f"""\
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}, namespace: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {app}}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      containers:
        - name: app
          env:
            - {{name: APP, value: {app}}}
            - {{name: VERSION, value: {version}}}
            - name: POD_NAME
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          command:
            - python3
            - -c
            - |
{indented}
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe:
            tcpSocket: {{port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: {app}, namespace: web}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def cluster(lab: Lab) -> str:
    net = ipaddress.ip_network(lab.subnet)
    return f"""\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {{name: lab}}
spec:
  loadBalancer:
    pools: [{{name: lab, addresses: [{net[244]}-{net[246]}]}}]
  ingress:
    nodeSelector: {{kubernetes.io/hostname: {lab.nodes[0].name}}}
    service: {{namespace: web, name: proxy}}
---
apiVersion: v1
kind: Service
metadata: {{name: proxy, namespace: web}}
spec:
  type: LoadBalancer
  ports:
    - {{name: http, port: 80, targetPort: 80}}
    - {{name: https, port: 443, targetPort: 443}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: gitorch
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec:
  controller: gitorch.dev/ingress-haproxy
"""


INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: web}
spec:
  tls: [{hosts: [a.shop.test], secretName: a-tls}]
  rules:
    - host: a.shop.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: alpha, port: {name: http}}}}
          - {path: /api, pathType: Prefix, backend: {service: {name: beta, port: {number: 80}}}}
    - host: "*.shop.test"
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: beta, port: {number: 80}}}}
"""


def tls_secret(ca: tuple, hosts: list[str]) -> str:
    key = new_key()
    crt = certificate_pem(key, hosts, ca).decode()
    pem = key_pem(key).decode()

    def block(text: str) -> str:
        return "\n".join("    " + line for line in text.strip().splitlines())

    return f"""\
---
apiVersion: v1
kind: Secret
metadata: {{name: a-tls, namespace: web}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{block(crt)}
  tls.key: |
{block(pem)}
"""


def fetch(address: str, host: str, path: str, *, port: int = 80, context: ssl.SSLContext | None = None,
          timeout: float = 5.0) -> tuple[int, str, str]:
    if context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(address, port, timeout=timeout,
                                                                       context=context)
        sock = socket.create_connection((address, port), timeout=timeout)
        conn.sock = context.wrap_socket(sock, server_hostname=host)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Location") or ""
    finally:
        conn.close()


def answers(address: str, host: str, path: str) -> str:
    try:
        status, body, _ = fetch(address, host, path, timeout=2)
    except OSError:
        return ""
    return body if status == 200 else ""


def cli(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "GITORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    return subprocess.run([sys.executable, "-m", "gitorch", *args], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def lb_address(controller) -> str:  # type: ignore[no-untyped-def]
    rows = wait_until("the proxy Service's address", lambda: controller.reconcile() and [
        r for r in controller.store.load_balancer_ips() if r.node and r.service == "proxy"], timeout=60)
    return str(rows[0].ip)


@pytest.mark.lab
def test_hosts_paths_and_tls_through_the_load_balancer_address(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    ca_pem, ca = make_ca()
    with controlled(lab, repo, tmp_path, "web") as (repo, controller):
        controller.settings = ControllerSettings(node_call_timeout=5.0)
        # All in apps.yaml, which `controlled` empties at the end: the Cluster's ingress goes too, and the proxy stops.
        repo.commit("two services behind an Ingress", {
            "apps.yaml": cluster(lab) + deployment("alpha") + deployment("beta") + INGRESS
            + tls_secret(ca, ["a.shop.test"]),
        })
        converge(controller, timeout=120)
        address = lb_address(controller)
        # Host and path routing, as Kubernetes says: an exact host first, its longest path, then the wildcard.
        wait_until("the proxy to answer", lambda: answers(address, "b.shop.test", "/x"), timeout=60,
                   accept=lambda body: body.startswith("beta "))
        assert answers(address, "api.shop.test", "/api").startswith("beta ")
        assert answers(address, "x.y.shop.test", "/") == ""  # a wildcard covers one label: 404
        status, _, location = fetch(address, "a.shop.test", "/api/v1?q=1")
        assert (status, location) == (308, "https://a.shop.test/api/v1?q=1")  # the host has TLS
        context = ssl.create_default_context(cadata=ca_pem.decode())
        status, body, _ = fetch(address, "a.shop.test", "/", port=443, context=context)
        assert status == 200 and body.startswith("alpha v1 alpha-"), body
        status, body, _ = fetch(address, "a.shop.test", "/api/orders", port=443, context=context)
        assert status == 200 and body.startswith("beta v1 beta-") and body.endswith(" /api/orders"), body
        status, body, _ = fetch(address, "a.shop.test", "/apiary", port=443, context=context)
        assert body.startswith("alpha "), body  # Prefix matches by path element
        # The ingress node answers on its own address too.
        assert answers(lab.nodes[0].address, "b.shop.test", "/").startswith("beta ")
        # Status: the proxy Service's address; get and describe show it; the access log has the requests.
        shown = json.loads(cli(tmp_path, "get", "ingresses", "-n", "web", "-o", "json"))
        assert shown[0]["status"] == {"loadBalancer": {"ingress": [{"ip": address}]}}, shown
        table = cli(tmp_path, "get", "ingresses", "-n", "web")
        assert "a.shop.test,*.shop.test" in table and address in table, table
        described = cli(tmp_path, "describe", "ingress/shop", "-n", "web")
        assert f"Address:    {address}" in described and "a.shop.test  /api (Prefix)  beta:80" in described, described
        log = cli(tmp_path, "logs", "ingress", "--node", lab.nodes[0].name, "--repo", str(repo.path))
        assert '"GET /api/orders HTTP/1.1"' in log and "be_web_beta_80" in log, log
        assert "PRIVATE KEY" not in log and "PRIVATE KEY" not in table
        # On the node the certificate is root's alone; the proxy is supervised like a pod: killed, it comes back.
        node = lab.nodes[0].name
        assert ssh_run(lab, node, "stat -c %a /var/lib/gitorch/ingress/certs/web_a-tls.pem").stdout.strip() == "600"
        master = ssh_run(lab, node, "pgrep -o -f 'haproxy -W -db'").stdout.strip()
        ssh_run(lab, node, f"kill -KILL {int(master)}")
        wait_until("the proxy to be restarted", lambda: ssh_run(lab, node, "pgrep -o -f 'haproxy -W -db'",
                                                                 check=False).stdout.strip() not in ("", master),
                   timeout=90)
        wait_until("the proxy to answer again", lambda: answers(address, "b.shop.test", "/x"), timeout=60,
                   accept=lambda body: body.startswith("beta "))
        # The proxy Service sends to ingress nodes whose proxy runs and is ready, as their status says.
        wait_until("the restarted proxy's readiness in its node's status",
                   lambda: controller.reconcile() and controller._proxy_ready(node), timeout=60)
        assert not controller._proxy_ready(lab.nodes[1].name)  # no proxy there


@pytest.mark.lab
def test_a_rolling_update_behind_the_ingress_fails_no_request(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    with controlled(lab, repo, tmp_path, "web") as (repo, controller):
        controller.settings = ControllerSettings(node_call_timeout=5.0)
        files = {"apps.yaml": cluster(lab) + deployment("alpha", replicas=3) + INGRESS.replace(
            "  tls: [{hosts: [a.shop.test], secretName: a-tls}]\n", "").replace("name: beta", "name: alpha")}
        repo.commit("alpha v1", files)
        converge(controller, timeout=120)
        address = lb_address(controller)

        def logs() -> str:
            return cli(tmp_path, "logs", "ingress", "--node", lab.nodes[0].name, "--repo", str(repo.path))

        wait_until("v1 answering", lambda: answers(address, "a.shop.test", "/"), timeout=60,
                   accept=lambda body: body.startswith("alpha v1"))
        results: list[str] = []
        stop = threading.Event()

        def client() -> None:  # a steady stream: one request at a time, a new connection each
            while not stop.is_set():
                try:
                    status, body, _ = fetch(address, "a.shop.test", "/", timeout=10)
                    results.append(body if status == 200 else f"HTTP {status}")
                except OSError as exc:
                    results.append(f"error {exc!r}")
                stop.wait(0.02)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        try:
            wait_until("requests flowing", lambda: len(results) > 20, timeout=30)
            workers = logs().count("New worker")
            repo.commit("alpha v2", {"apps.yaml": files["apps.yaml"].replace("value: v1", "value: v2")})

            def rolled() -> bool:
                controller.reconcile()
                pods = controller.store.pods(namespace="web")
                return len(pods) == 3 and all(p.ready for p in pods) and results[-5:] != [] and all(
                    r.startswith("alpha v2") for r in results[-5:])

            wait_until("every pod on v2 and answering", rolled, timeout=180)
            seen = len(results)
            wait_until("requests after the roll", lambda: len(results) > seen + 20, timeout=30)
        finally:
            stop.set()
            thread.join(timeout=20)
        failed = [r for r in results if not r.startswith("alpha ")]
        versions = {r.split()[1] for r in results if r.startswith("alpha ")}
        assert failed == [], failed[:5]
        assert versions == {"v1", "v2"} and len(results) > 100
        # Endpoint changes went through the runtime API: the same HAProxy worker the whole time.
        assert workers >= 1 and logs().count("New worker") == workers
