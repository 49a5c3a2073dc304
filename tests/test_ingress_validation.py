"""Ingress validation and the proxy config the controller sends (pure): which Ingresses gitorch
serves, two Ingresses claiming one host and path (an error naming both files), TLS Secrets that
are not a certificate and its key (an error that never holds the key), unknown backends; the
proxy Service's endpoints and the addresses an Ingress answers on."""

from __future__ import annotations

import base64

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.reconcile import ingress, services
from gitorch.reconcile.allocations import allocate
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo
from tests.tls import certificate_pem, key_pem, new_key

CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: lab}
spec:
  loadBalancer:
    pools: [{name: lab, addresses: [10.0.0.200-10.0.0.201]}]
  ingress:
    nodeSelector: {edge: "true"}
    service: {namespace: shop, name: proxy}
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: n1, labels: {edge: "true"}}
spec: {address: 10.0.0.11}
---
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: n2}
spec: {address: 10.0.0.12}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: proxy, namespace: shop}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, targetPort: 80}, {name: https, port: 443, targetPort: 443}]
"""


def ingress_doc(name: str, host: str, path: str, *, service: str = "web", port: str = "{number: 80}",
                extra: str = "") -> str:
    return f"""\
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: shop}}
spec:
{extra}  rules:
    - host: {host}
      http:
        paths:
          - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {port}}}}}}}
"""


def tls_secret(name: str, crt: bytes, key: bytes, kind: str = "kubernetes.io/tls") -> str:
    return f"""\
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: shop}}
type: {kind}
data:
  tls.crt: {base64.b64encode(crt).decode()}
  tls.key: {base64.b64encode(key).decode()}
"""


def load(repo: GitRepo, files: dict[str, str]) -> tuple[desired.DesiredState, list[str], list[str]]:
    repo.commit("case", files)
    state = desired.load(open_repository(repo.path), None)
    errors = [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]
    warnings = [d.format() for d in state.diagnostics if d.severity is Severity.WARNING]
    return state, errors, warnings


def test_two_ingresses_claiming_one_host_and_path_is_an_error_naming_both_files(repo: GitRepo) -> None:
    _, errors, _ = load(repo, {"c.yaml": CLUSTER, "a.yaml": ingress_doc("a", "www.shop.test", "/api"),
                               "b.yaml": ingress_doc("b", "www.shop.test", "/api/")})
    assert errors == ["b.yaml:10:13: /spec/rules/0/http/paths/0: host www.shop.test path /api/ (Prefix) is also "
                      "claimed by Ingress shop/a (a.yaml:10:13) (hint: give each host and path one Ingress: remove "
                      "or change one of the two)"]


def test_unknown_backend_services_and_ports(repo: GitRepo) -> None:
    _, errors, _ = load(repo, {"c.yaml": CLUSTER, "a.yaml": ingress_doc("a", "a.test", "/", service="api")
                               + ingress_doc("b", "b.test", "/", port="{name: metrics}")})
    assert [e.split(" (hint")[0] for e in errors] == [
        "a.yaml:10:60: /spec/rules/0/http/paths/0/backend/service: Service shop/api does not exist",
        "a.yaml:20:60: /spec/rules/0/http/paths/0/backend/service: Service shop/web has no port metrics "
        "(it has: http, admin)",
    ]


KEY, OTHER = new_key(), new_key()


@pytest.mark.parametrize(
    ("crt", "key", "says"),
    [
        (certificate_pem(KEY, ["www.shop.test"]), key_pem(OTHER), "not the private key of the first certificate"),
        (b"not a certificate", key_pem(KEY), "tls.crt is not a PEM certificate"),
        (certificate_pem(KEY, ["www.shop.test"]), key_pem(KEY)[:-70] + b"\n-----END PRIVATE KEY-----\n",
         "tls.key is not a PEM private key"),
    ],
    ids=["other-key", "not-pem", "truncated-key"],
)
def test_a_tls_secret_that_is_not_a_pair_is_an_error_without_the_key(
    repo: GitRepo, crt: bytes, key: bytes, says: str
) -> None:
    files = {"c.yaml": CLUSTER, "s.yaml": tls_secret("www-tls", crt, key),
             "a.yaml": ingress_doc("a", "www.shop.test", "/", extra="  tls: [{secretName: www-tls}]\n")}
    _, errors, _ = load(repo, files)
    assert len(errors) == 1 and errors[0].startswith("s.yaml:7:3: /data: Secret shop/www-tls: ") and says in errors[0]
    encoded = base64.b64encode(key).decode()
    body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----")).decode()
    for secret in (encoded, body):
        for i in range(0, len(secret) - 12, 12):
            assert secret[i : i + 12] not in errors[0]


def test_tls_secret_must_exist_and_be_of_the_tls_type(repo: GitRepo) -> None:
    good = tls_secret("opaque", certificate_pem(KEY, ["a.test"]), key_pem(KEY), kind="Opaque")
    _, errors, _ = load(repo, {"c.yaml": CLUSTER, "s.yaml": good,
                               "a.yaml": ingress_doc("a", "a.test", "/", extra="  tls: [{secretName: opaque}, "
                                                     "{secretName: gone}]\n")})
    assert [e.split(" (hint")[0] for e in errors] == [
        "a.yaml:6:22: /spec/tls/0/secretName: Secret shop/opaque is of type 'Opaque', not 'kubernetes.io/tls'",
        "a.yaml:6:44: /spec/tls/1/secretName: Secret shop/gone does not exist",
    ]


CLASS = """\
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: {name}{annotations}}}
spec: {{controller: {controller}}}
"""


def test_ingress_classes_decide_what_gitorch_serves(repo: GitRepo) -> None:
    files = {
        "c.yaml": CLUSTER
        + CLASS.format(name="ours", annotations=", annotations: {ingressclass.kubernetes.io/is-default-class: "
                       "\"true\"}", controller="gitorch.dev/ingress-haproxy")
        + CLASS.format(name="nginx", annotations="", controller="k8s.io/ingress-nginx"),
        "a.yaml": ingress_doc("a", "a.test", "/") + ingress_doc("b", "b.test", "/", extra="  ingressClassName: nginx\n")
        + ingress_doc("c", "c.test", "/", extra="  ingressClassName: ours\n")
        + ingress_doc("d", "d.test", "/", extra="  ingressClassName: missing\n"),
    }
    state, errors, warnings = load(repo, files)
    assert errors == []
    assert [w.split(": ", 2)[2].split(" (hint")[0] for w in warnings if "Ingress" in w] == [
        "warning: gitorch's proxy does not serve this Ingress: IngressClass 'nginx' is for controller "
        "'k8s.io/ingress-nginx'",
        "warning: gitorch's proxy does not serve this Ingress: IngressClass 'missing' does not exist",
    ]
    assert [o.key.name for o in ingress.served(state)] == ["a", "c"]


def test_a_default_backend_without_effect_is_a_warning(repo: GitRepo) -> None:
    default = "  defaultBackend: {service: {name: web, port: {number: 80}}}\n"
    files = {"c.yaml": CLUSTER, "a.yaml": ingress_doc("a", "a.test", "/", extra=default)
             + ingress_doc("b", "b.test", "/", extra=default) + ingress_doc("c", "a.test", "/other", extra=default)}
    _, errors, warnings = load(repo, files)
    assert errors == []
    shown = [w for w in warnings if "defaultBackend" in w]
    assert len(shown) == 1 and "/spec/defaultBackend: warning: this defaultBackend has no effect: its hosts " \
        "(a.test) take their default from Ingress shop/a, and the catch-all is Ingress shop/a's" in shown[0], shown
    assert shown[0].startswith("a.yaml:")


def test_an_ingress_without_ingress_nodes_is_an_error(repo: GitRepo) -> None:
    block = '  ingress:\n    nodeSelector: {edge: "true"}\n    service: {namespace: shop, name: proxy}\n'
    cluster = CLUSTER.replace(block, "")
    _, errors, _ = load(repo, {"c.yaml": cluster, "a.yaml": ingress_doc("a", "a.test", "/")})
    assert errors == ["a.yaml:4:18: /metadata/name: no ingress nodes: this Ingress would never be served (hint: add "
                      "spec.ingress.nodeSelector to the Cluster (e.g. {gitorch.dev/ingress: \"true\"}) and that label "
                      "to the Nodes that should run the proxy)"]


def test_the_proxy_config_status_and_service_endpoints(repo: GitRepo) -> None:
    pem_crt, pem_key = certificate_pem(KEY, ["www.shop.test"]), key_pem(KEY)
    files = {"c.yaml": CLUSTER, "s.yaml": tls_secret("www-tls", pem_crt, pem_key),
             "a.yaml": ingress_doc("a", "www.shop.test", "/", port="{name: http}",
                                   extra="  tls: [{secretName: www-tls}]\n")
             + ingress_doc("b", "www.shop.test", "/admin", port="{number: 80}")}
    state, errors, _ = load(repo, files)
    assert errors == []
    assert ingress.ingress_nodes(state) == ["n1"]
    table = [{"name": "shop/web:http", "protocol": "TCP", "port": 80,
              "endpoints": [{"ip": "10.244.1.5", "port": 8080}]}]
    sent = ingress.payload(state, table)
    config = sent["config"]
    assert "server s1 10.244.1.5:8080" in config and "backend be_shop_web_http" in config
    assert "backend be_shop_web_80" in config  # by number and by name: two backends, the same endpoints
    assert "redirect scheme https code 308 if !{ ssl_fc } { var(txn.host) -m str www.shop.test }" in config
    assert "PRIVATE KEY" not in config  # the key is only in the files, written 0600 on the node
    assert sent["files"]["certs/shop_www-tls.pem"] == pem_crt.decode() + pem_key.decode()
    assert sent["files"]["crt-list.txt"] == "./certs/shop_www-tls.pem www.shop.test\n"
    # The proxy Service's endpoints are the ingress nodes; its address is every Ingress's status.
    allocs = allocate(state, {}, {}, {})
    entries = services.service_table(state, [], allocs.cluster_ips, allocs.node_ports, allocs.lb_ips)
    proxy = {e["name"]: e["endpoints"] for e in entries if e["name"].startswith("shop/proxy")}
    assert proxy == {"shop/proxy:http": [{"ip": "10.0.0.11", "port": 80}],
                     "shop/proxy:https": [{"ip": "10.0.0.11", "port": 443}]}
    assert ingress.addresses(state, allocs.lb_ips) == [allocs.lb_ips[("shop", "proxy")]]
    assert ingress.addresses(state, {}) == ["10.0.0.11"]


def test_the_clusters_ingress_service_exists_without_a_selector(repo: GitRepo) -> None:
    _, errors, _ = load(repo, {"c.yaml": CLUSTER.replace("name: proxy}", "name: gone}")})
    assert [e.split(" (hint")[0] for e in errors] == [
        "c.yaml:9:14: /spec/ingress/service: Service shop/gone does not exist"]
    _, errors, _ = load(repo, {"c.yaml": CLUSTER.replace("  type: LoadBalancer\n", "  type: LoadBalancer\n"
                                                         "  selector: {app: web}\n")})
    assert [e.split(" (hint")[0] for e in errors] == ["c.yaml:9:14: /spec/ingress/service: Service shop/proxy has "
                                                      "a selector"]


def test_the_reviewed_plan_shows_the_routes_and_where_they_answer(repo: GitRepo) -> None:
    from gitorch.reconcile.planning import Observed
    from gitorch.reconcile.reviewing import Holdings, cluster_preview, preview_text
    from gitorch.source.diffs import diff_states

    state, errors, _ = load(repo, {"c.yaml": CLUSTER, "a.yaml": ingress_doc("a", "a.test", "/api")})
    assert errors == []
    changes = diff_states(desired.load(open_repository(repo.path), ""), state)
    preview = cluster_preview(state, Observed(now=0.0), changes, Holdings())
    route = "Ingress shop/a: http://a.test/api (Prefix) -> Service web:80, on 10.0.0.200"
    assert preview.to_json()["ingressRoutes"] == [route]
    assert f"  ~ {route}" in preview_text(preview)


def test_the_proxy_service_sends_only_to_ingress_nodes_that_answer(repo: GitRepo) -> None:
    both = CLUSTER.replace("metadata: {name: n2}", 'metadata: {name: n2, labels: {edge: "true"}}')
    state, errors, _ = load(repo, {"c.yaml": both})
    assert errors == []
    allocs = allocate(state, {}, {}, {})

    def proxy(up: set[str]) -> list[dict]:
        entries = services.service_table(state, [], allocs.cluster_ips, allocs.node_ports, allocs.lb_ips, up)
        return next(e["endpoints"] for e in entries if e["name"] == "shop/proxy:http")

    assert proxy({"n1", "n2"}) == [{"ip": "10.0.0.11", "port": 80}, {"ip": "10.0.0.12", "port": 80}]
    assert proxy({"n2"}) == [{"ip": "10.0.0.12", "port": 80}]  # n1 is not answering: no traffic sent there
    assert proxy(set()) == proxy({"n1", "n2"})  # none answering: better all than none


def test_the_system_namespace_is_gitorchs_own(repo: GitRepo) -> None:
    _, errors, _ = load(repo, {"n.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: gitorch-system}\n"})
    assert [e.split(" (hint")[0] for e in errors] == [
        "n.yaml:3:18: /metadata/name: namespace 'gitorch-system' is gitorch's own (its nodes' ingress proxy "
        "runs there)"]
