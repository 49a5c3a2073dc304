"""NetworkPolicy manifests: what validation accepts and the errors it gives (issue 12, part 3, slice 1)."""

from __future__ import annotations

import pytest

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.git import SourceFile, open_repository
from gitorch.source.validation import _check_file
from tests.gitrepo import GitRepo

_GOOD = b"""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: a
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: b}}
          podSelector: {matchLabels: {pod: "y"}}
        - podSelector: {}
      ports:
        - {protocol: TCP, port: 80}
        - {protocol: UDP, port: http}
        - {port: 8000, endPort: 8100}
  egress:
    - to:
        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
"""


def _diags(doc: bytes) -> tuple[list[str], list[str]]:
    result = _check_file(SourceFile("np.yaml", "blob-" + str(hash(doc)), doc), None)
    errors = [d.format() for d in result.diagnostics if d.severity is Severity.ERROR]
    warnings = [d.format() for d in result.diagnostics if d.severity is Severity.WARNING]
    return errors, warnings


_NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"


def _loaded(repo: GitRepo, doc: bytes) -> tuple[list[str], list[str]]:
    """Diagnostics of a whole commit (schema and cross-object rules)."""
    repo.commit("case", {"np.yaml": doc.decode(), "ns.yaml": _NAMESPACE})
    state = desired.load(open_repository(repo.path), None)
    errors = [d.format() for d in state.diagnostics if d.severity is Severity.ERROR]
    warnings = [d.format() for d in state.diagnostics if d.severity is Severity.WARNING]
    return errors, warnings


def test_a_full_policy_validates() -> None:
    errors, warnings = _diags(_GOOD)
    assert not errors and not warnings, errors + warnings


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        pytest.param(b"protocol: TCP", b"protocol: SCTP", "np.yaml:15:", id="sctp-refused"),
        pytest.param(b"[Ingress, Egress]", b"[Ingres]", "np.yaml:8:", id="bad-policy-type"),
        pytest.param(b"port: 80}", b"port: 70000}", "np.yaml:15:", id="port-out-of-range"),
        pytest.param(b"{port: 8000, endPort", b"{endPort", "np.yaml:17:", id="endport-without-port"),
        pytest.param(b"cidr: 10.0.0.0/8,", b"cidr: ten,", "np.yaml:20:", id="bad-cidr"),
        pytest.param(b"        - podSelector: {}\n", b"        - {}\n", "np.yaml:13:", id="empty-peer"),
        pytest.param(b"ipBlock: {cidr", b"podSelector: {}\n          ipBlock: {cidr", "np.yaml:21:",
                     id="ipblock-with-selector"),
        pytest.param(b"  podSelector: {matchLabels: {pod: x}}\n", b"", "np.yaml:6:", id="podselector-required"),
    ],
)
def test_bad_policies_name_file_line_and_column(old: bytes, new: bytes, where: str) -> None:
    assert old in _GOOD
    errors, _ = _diags(_GOOD.replace(old, new, 1))
    assert errors, "accepted"
    assert any(e.startswith(where) for e in errors), errors
    assert all("Traceback" not in e for e in errors)


@pytest.mark.parametrize(
    ("old", "new", "where", "words"),
    [
        pytest.param(b"endPort: 8100", b"endPort: 7000", "np.yaml:17:", "below port 8000", id="endport-low"),
        pytest.param(b"{port: 8000, endPort", b"{port: http, endPort", "np.yaml:17:", "numeric port",
                     id="endport-named"),
        pytest.param(b"cidr: 10.0.0.0/8,", b"cidr: 10.0.0.300/8,", "np.yaml:20:", "not an IPv4 or IPv6 CIDR",
                     id="octet"),
        pytest.param(b"[10.1.0.0/16]", b"['fd00::/8']", "np.yaml:20:", "not inside", id="except-other-family"),
        pytest.param(b"[10.1.0.0/16]", b"[192.168.0.0/16]", "np.yaml:20:", "not inside", id="except-outside"),
        pytest.param(b"[10.1.0.0/16]", b"[10.0.0.0/8]", "np.yaml:20:", "not inside", id="except-not-smaller"),
    ],
)
def test_rules_the_schema_cannot_say(repo: GitRepo, old: bytes, new: bytes, where: str, words: str) -> None:
    assert old in _GOOD
    errors, _ = _loaded(repo, _GOOD.replace(old, new, 1))
    assert any(e.startswith(where) and words in e for e in errors), errors


def test_rules_hidden_by_policy_types_warn(repo: GitRepo) -> None:
    assert not _loaded(repo, _GOOD)[0]
    errors, warnings = _loaded(repo, _GOOD.replace(b"[Ingress, Egress]", b"[Ingress]"))
    assert not errors, errors
    assert any(w.startswith("np.yaml:19:") and "egress rules have no effect" in w for w in warnings), warnings


def test_an_ipv6_block_is_taken_with_no_effect(repo: GitRepo) -> None:
    """Dual-stack manifests list ::/0 beside 0.0.0.0/0: taken, as Kubernetes takes it, with a
    warning that it matches nothing here (pods have no IPv6), not refused."""
    doc = _GOOD.replace(b"- ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}",
                        b"- ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n"
                        b"        - ipBlock: {cidr: '::/0', except: ['fd00::/8']}")
    assert doc != _GOOD
    assert not _diags(doc)[0], _diags(doc)[0]
    errors, warnings = _loaded(repo, doc)
    assert not errors, errors
    assert any(w.startswith("np.yaml:21:") and "no effect" in w and "IPv6" in w for w in warnings), warnings


_HOST_AGENT = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: a}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      containers: [{name: agent, command: [sleep, infinity]}]
"""
_POD_NETWORK_WEB = _HOST_AGENT.replace("DaemonSet", "Deployment").replace("agent", "web").replace(
    "      hostNetwork: true\n", "")
_SELECT_AGENT = b"""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: agent, namespace: a}
spec:
  podSelector: {matchLabels: {app: agent}}
  policyTypes: [Ingress]
"""


def test_a_policy_of_host_network_pods_only_has_no_effect(repo: GitRepo) -> None:
    repo.write({"agent.yaml": _HOST_AGENT})
    errors, warnings = _loaded(repo, _SELECT_AGENT)
    assert not errors, errors
    assert any(w.startswith("np.yaml:5:") and "no effect" in w and "hostNetwork" in w and "DaemonSet/agent" in w
               for w in warnings), warnings
    # One selected pod on the pod network: the policy does something, no warning.
    repo.write({"web.yaml": _POD_NETWORK_WEB})
    errors, warnings = _loaded(repo, _SELECT_AGENT.replace(b"{matchLabels: {app: agent}}", b"{}"))
    assert not errors and not [w for w in warnings if "hostNetwork" in w], errors + warnings


_DNS_EGRESS = b"""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
          podSelector: {matchLabels: {k8s-app: kube-dns}}
      ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"""
_CLUSTER_DNS = ("apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata: {name: lab}\n"
                "spec:\n  dns: {address: '10.0.0.53:53'}\n")


def test_a_peer_aimed_at_kube_dns_says_what_to_allow(repo: GitRepo) -> None:
    """Kubernetes' usual "allow DNS" egress rule names the kube-dns pods; gitorch's cluster DNS
    is no pod, so the rule allows nothing, and the warning names the address to allow instead."""
    errors, warnings = _loaded(repo, _DNS_EGRESS)
    assert not errors, errors
    assert any(w.startswith("np.yaml:10:") and "kube-dns" in w and "UDP and TCP port 53" in w for w in warnings), \
        warnings
    repo.write({"cluster.yaml": _CLUSTER_DNS})
    errors, warnings = _loaded(repo, _DNS_EGRESS)
    assert any("ipBlock 10.0.0.53/32" in w for w in warnings), errors + warnings
