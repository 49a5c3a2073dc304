"""Network-policy truth tables in the style of Kubernetes' e2e suite (test/e2e/network/netpol)
and cyclonus: pods x, y, z in namespaces a, b, c, each serving TCP and UDP on ports 80 and 81
(named serve-80-tcp, serve-80-udp, serve-81-tcp, serve-81-udp, as the e2e pods are), and TCP
on 85 and 91 (one port inside an endPort range of 81-90, one past it); a case
is a policy set plus, per probe (protocol, port), the expected 9x9 matrix (row: from, column:
to). A pod reaches itself through loopback, always allowed (the e2e's AllowLoopback)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

NAMESPACES = ("a", "b", "c")
PODS = ("x", "y", "z")
ALL = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in PODS)
PROBES = (("TCP", 80), ("UDP", 80), ("TCP", 81), ("UDP", 81), ("TCP", 85), ("TCP", 91))

Matrix = dict[tuple[str, str], bool]
Expect = Callable[[str, str, str, int], bool]  # (from, to, protocol, port) -> allowed


@dataclass(frozen=True)
class Case:
    name: str
    policies: Callable[[Mapping[str, str]], str]  # pod IPs -> YAML of the policy set
    expect: Expect


def _np(ns: str, name: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {ns}\nspec:\n{body}\n---\n")


def _ns(pod: str) -> str:
    return pod.split("/")[0]


def _name(pod: str) -> str:
    return pod.split("/")[1]


CASES = [
    Case("deny-all-ingress", lambda ips: _np("a", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
         lambda s, d, proto, port: _ns(d) != "a"),
    Case("deny-all-egress", lambda ips: _np("a", "deny", "podSelector: {}\npolicyTypes: [Egress]"),
         lambda s, d, proto, port: _ns(s) != "a"),
    Case("allow-within-namespace",
         lambda ips: _np("a", "same-ns", "podSelector: {}\ningress:\n  - from:\n      - podSelector: {}"),
         lambda s, d, proto, port: _ns(d) != "a" or _ns(s) == "a"),
    Case("allow-from-namespace-label",
         lambda ips: _np("a", "from-b", "podSelector: {}\ningress:\n  - from:\n"
                                        "      - namespaceSelector: {matchLabels: {ns: b}}"),
         lambda s, d, proto, port: _ns(d) != "a" or _ns(s) == "b"),
    Case("allow-from-pod-label-in-other-namespace",
         lambda ips: _np("a", "from-b-y", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                          "      - namespaceSelector: {matchLabels: {ns: b}}\n"
                                          "        podSelector: {matchLabels: {pod: \"y\"}}"),
         lambda s, d, proto, port: d != "a/x" or s == "b/y"),
    Case("rules-add-up",
         lambda ips: _np("a", "from-b", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                        "      - namespaceSelector: {matchLabels: {ns: b}}")
         + _np("a", "from-c-z", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                "      - namespaceSelector: {matchLabels: {ns: c}}\n"
                                "        podSelector: {matchLabels: {pod: z}}"),
         lambda s, d, proto, port: d != "a/x" or _ns(s) == "b" or s == "c/z"),
    Case("egress-ipblock-except",
         lambda ips: _np("a", "to-block", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress]\negress:\n"
                                          "  - to:\n      - ipBlock:\n          cidr: 0.0.0.0/0\n"
                                          f"          except: [{ips['b/y']}/32, {ips['c/z']}/32]"),
         lambda s, d, proto, port: s != "a/x" or d not in ("b/y", "c/z")),
    Case("named-port",
         lambda ips: _np("a", "udp-81", "podSelector: {}\ningress:\n  - ports:\n"
                                        "      - {protocol: UDP, port: serve-81-udp}"),
         lambda s, d, proto, port: _ns(d) != "a" or (proto, port) == ("UDP", 81)),
    Case("egress-named-port",
         lambda ips: _np("a", "to-80", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress]\negress:\n"
                                       "  - to:\n      - namespaceSelector: {matchLabels: {ns: c}}\n"
                                       "    ports:\n      - {protocol: TCP, port: serve-80-tcp}"),
         lambda s, d, proto, port: s != "a/x" or (_ns(d) == "c" and (proto, port) == ("TCP", 80))),
    Case("endport-range",
         lambda ips: _np("a", "range", "podSelector: {}\ningress:\n  - ports:\n"
                                       "      - {protocol: TCP, port: 81, endPort: 90}"),
         lambda s, d, proto, port: _ns(d) != "a" or (proto == "TCP" and 81 <= port <= 90)),
    # From Kubernetes' test/e2e/network/netpol/network_policy.go, each named by its It(...),
    # their namespaces x, y, z being a, b, c here and their pods a, b, c being x, y, z.
    # "should enforce policy based on PodSelector with MatchExpressions"
    Case("pod-selector-match-expressions",
         lambda ips: _np("a", "x-from-y", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                          "      - podSelector: {matchExpressions: [{key: pod, operator: In, "
                                          "values: [\"y\"]}]}"),
         lambda s, d, proto, port: d != "a/x" or s == "a/y"),
    # "should enforce policy based on PodSelector or NamespaceSelector"
    Case("namespace-match-expressions-or-pod",
         lambda ips: _np("a", "x-from-not-a-or-y", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                                   "      - namespaceSelector: {matchExpressions: [{key: "
                                                   "kubernetes.io/metadata.name, operator: NotIn, values: [a]}]}\n"
                                                   "      - podSelector: {matchLabels: {pod: \"y\"}}"),
         lambda s, d, proto, port: d != "a/x" or _ns(s) != "a" or s == "a/y"),
    # "should enforce policy to allow ingress traffic for a target" (namespaceSelector {} with podSelector {})
    Case("all-namespaces-to-one-target",
         lambda ips: _np("a", "deny", "podSelector: {}\npolicyTypes: [Ingress]")
         + _np("a", "all-to-x", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                "      - namespaceSelector: {}\n        podSelector: {}"),
         lambda s, d, proto, port: _ns(d) != "a" or d == "a/x"),
    # "should enforce multiple ingress policies with ingress allow-all policy taking precedence"
    Case("allow-all-ingress-rule",
         lambda ips: _np("a", "only-80", "podSelector: {}\ningress:\n  - ports: [{port: 80}]")
         + _np("a", "allow-all", "podSelector: {}\ningress:\n  - {}"),
         lambda s, d, proto, port: True),
    # "should enforce ingress policy allowing any port traffic to a server on a specific protocol"
    Case("protocol-only-port",
         lambda ips: _np("a", "tcp-only", "podSelector: {matchLabels: {pod: x}}\ningress:\n"
                                          "  - ports: [{protocol: TCP}]"),
         lambda s, d, proto, port: d != "a/x" or proto == "TCP"),
    # "should not allow access by TCP when a policy specifies only UDP"
    Case("udp-only-blocks-tcp",
         lambda ips: _np("a", "udp-81", "podSelector: {matchLabels: {pod: x}}\ningress:\n"
                                        "  - ports: [{protocol: UDP, port: 81}]"),
         lambda s, d, proto, port: d != "a/x" or (proto, port) == ("UDP", 81)),
    # "should enforce multiple, stacked policies with overlapping podSelectors"
    Case("stacked-policies-multiple-ports",
         lambda ips: _np("a", "b-81", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                                      "      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}\n"
                                      "    ports: [{protocol: TCP, port: 81}]")
         + _np("a", "b-80", "podSelector: {matchLabels: {pod: x}}\ningress:\n  - from:\n"
                            "      - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}\n"
                            "    ports: [{protocol: TCP, port: 80}]"),
         lambda s, d, proto, port: d != "a/x" or (_ns(s) == "b" and proto == "TCP" and port in (80, 81))),
    # "should work with Ingress, Egress specified together"
    Case("ingress-and-egress-on-one-pod",
         lambda ips: _np("a", "both", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress, Ingress]\n"
                                      "ingress:\n  - from:\n      - podSelector: {matchLabels: {pod: \"y\"}}\n"
                                      "egress:\n  - ports: [{port: 80}]"),
         lambda s, d, proto, port: (d != "a/x" or s == "a/y") and (s != "a/x" or (proto, port) == ("TCP", 80))),
    # "should enforce egress policy allowing traffic to a server in a different namespace based on
    # PodSelector and NamespaceSelector"
    Case("egress-to-other-namespace-by-label",
         lambda ips: _np("a", "to-b-x", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress]\negress:\n"
                                        "  - to:\n      - namespaceSelector: {matchLabels: {ns: b}}\n"
                                        "        podSelector: {matchLabels: {pod: x}}"),
         lambda s, d, proto, port: s != "a/x" or d == "b/x"),
    # "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"
    Case("ipblock-except-allowed-by-another-rule",
         lambda ips: _np("a", "block", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress]\negress:\n"
                                       "  - to:\n      - ipBlock:\n          cidr: 0.0.0.0/0\n"
                                       f"          except: [{ips['a/y']}/32, {ips['c/z']}/32]")
         + _np("a", "to-a-y", "podSelector: {matchLabels: {pod: x}}\npolicyTypes: [Egress]\negress:\n"
                              f"  - to:\n      - ipBlock: {{cidr: {ips['a/y']}/32}}"),
         lambda s, d, proto, port: s != "a/x" or d != "c/z"),
    # "should support a 'default-deny-all' policy", then "should stop enforcing policies after they are deleted"
    Case("default-deny-all",
         lambda ips: _np("a", "deny-all", "podSelector: {}\npolicyTypes: [Ingress, Egress]"),
         lambda s, d, proto, port: _ns(s) != "a" and _ns(d) != "a"),
    Case("policies-deleted", lambda ips: "", lambda s, d, proto, port: True),
]


def expected(case: Case, proto: str, port: int) -> Matrix:
    return {(s, d): s == d or case.expect(s, d, proto, port) for s in ALL for d in ALL}


def render(matrix: Matrix) -> str:
    """A matrix as the e2e suite prints one: rows from, columns to, '.' allowed, 'X' blocked."""
    lines = ["     " + " ".join(f"{d:>3}" for d in ALL)]
    for s in ALL:
        lines.append(f"{s:>4} " + " ".join(f"{'.' if matrix[(s, d)] else 'X':>3}" for d in ALL))
    return "\n".join(lines)


def compare(case: Case, observed: Mapping[tuple[str, int], Matrix]) -> list[str]:
    """Mismatches as printable blocks (expected beside observed), empty when all agree."""
    out = []
    for proto, port in PROBES:
        want, got = expected(case, proto, port), observed[(proto, port)]
        if want != got:
            wrong = sorted(k for k in want if want[k] != got[k])
            out.append(f"{case.name} {proto}/{port}: {len(wrong)} wrong, e.g. {wrong[:5]}\n"
                       f"expected:\n{render(want)}\nobserved:\n{render(got)}")
    return out


def pods_yaml(command: Callable[[str], list[str]] | None = None) -> str:
    """Namespaces a, b, c (labelled ns: <name>) and a Pod per (namespace, name), labelled pod: <name>."""
    out = []
    for ns in NAMESPACES:
        out.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n---\n")
        for p in PODS:
            cmd = command(f"{ns}/{p}") if command else ["sleep", "infinity"]
            out.append(
                f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{p}\"\n  namespace: {ns}\n"
                f"  labels: {{pod: \"{p}\"}}\nspec:\n  containers:\n    - name: serve\n"
                f"      command: {json.dumps(cmd)}\n      ports:\n"
                "        - {name: serve-80-tcp, containerPort: 80, protocol: TCP}\n"
                "        - {name: serve-80-udp, containerPort: 80, protocol: UDP}\n"
                "        - {name: serve-81-tcp, containerPort: 81, protocol: TCP}\n"
                "        - {name: serve-81-udp, containerPort: 81, protocol: UDP}\n---\n")
    return "".join(out)
