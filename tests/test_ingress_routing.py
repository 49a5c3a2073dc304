"""Ingress routing semantics: Kubernetes' path-matching table of examples, host precedence,
longest match, and the default backend (gitorch.model.routes, pure)."""

from __future__ import annotations

import pytest

from gitorch.model.routes import (
    Backend,
    backend_endpoints,
    choose,
    conflicts,
    default_backend,
    defaults,
    host_matches,
    missing_backends,
    path_matches,
    routes,
)

# The examples table of https://kubernetes.io/docs/concepts/services-networking/ingress/#examples:
# (pathType, rule paths, request path, the rule path that answers or None).
TABLE = [
    ("Prefix", ["/"], "/anything/at/all", "/"),
    ("Exact", ["/foo"], "/foo", "/foo"),
    ("Exact", ["/foo"], "/bar", None),
    ("Exact", ["/foo"], "/foo/", None),
    ("Exact", ["/foo/"], "/foo", None),
    ("Prefix", ["/foo"], "/foo", "/foo"),
    ("Prefix", ["/foo"], "/foo/", "/foo"),
    ("Prefix", ["/foo/"], "/foo", "/foo/"),
    ("Prefix", ["/foo/"], "/foo/", "/foo/"),
    ("Prefix", ["/aaa/bb"], "/aaa/bbb", None),
    ("Prefix", ["/aaa/bbb"], "/aaa/bbb", "/aaa/bbb"),
    ("Prefix", ["/aaa/bbb/"], "/aaa/bbb", "/aaa/bbb/"),
    ("Prefix", ["/aaa/bbb"], "/aaa/bbb/", "/aaa/bbb"),
    ("Prefix", ["/aaa/bbb"], "/aaa/bbb/ccc", "/aaa/bbb"),
    ("Prefix", ["/aaa/bbb"], "/aaa/bbbxyz", None),
    ("Prefix", ["/", "/aaa"], "/aaa/ccc", "/aaa"),
    ("Prefix", ["/", "/aaa", "/aaa/bbb"], "/aaa/bbb", "/aaa/bbb"),
    ("Prefix", ["/", "/aaa", "/aaa/bbb"], "/ccc", "/"),
    ("Prefix", ["/aaa"], "/ccc", None),
    ("ImplementationSpecific", ["/foo"], "/foo/bar", "/foo"),
    ("ImplementationSpecific", ["/foo"], "/foobar", None),
]


def _ingress(paths: list[tuple[str, str]], host: str = "") -> dict:
    rule: dict = {
        "http": {
            "paths": [
                {
                    "path": p,
                    "pathType": t,
                    "backend": {"service": {"name": "svc" + p.replace("/", "-"), "port": {"number": 80}}},
                }
                for p, t in paths
            ]
        }
    }
    if host:
        rule["host"] = host
    return {"rules": [rule]}


@pytest.mark.parametrize(
    ("path_type", "rule_paths", "request_path", "answer"),
    TABLE,
    ids=[f"{t}-{'+'.join(ps)}-{r}" for t, ps, r, _ in TABLE],
)
def test_kubernetes_examples_table(
    path_type: str, rule_paths: list[str], request_path: str, answer: str | None
) -> None:
    rs = routes("default", "web", _ingress([(p, path_type) for p in rule_paths]))
    got = choose(rs, "any.example", request_path)
    assert got == (None if answer is None else Backend("default", "svc" + answer.replace("/", "-"), 80))


def test_exact_beats_prefix_of_the_same_path() -> None:
    rs = routes("default", "web", _ingress([("/foo", "Prefix"), ("/foo", "Exact")]))
    exact = rs[1].backend
    assert choose(rs, "h", "/foo") == exact
    assert choose(rs, "h", "/foo/bar") == rs[0].backend


@pytest.mark.parametrize(
    ("rule", "asked", "matches"),
    [
        ("foo.bar.com", "foo.bar.com", True),
        ("foo.bar.com", "FOO.bar.com.", True),
        ("foo.bar.com", "bar.com", False),
        ("*.foo.com", "bar.foo.com", True),
        ("*.foo.com", "baz.bar.foo.com", False),
        ("*.foo.com", "foo.com", False),
        ("", "anything.example", True),
    ],
    ids=lambda v: str(v),
)
def test_host_matching(rule: str, asked: str, matches: bool) -> None:
    assert host_matches(rule, asked) is matches


def test_exact_host_beats_wildcard_beats_no_host() -> None:
    rs = (
        routes("default", "a", _ingress([("/", "Prefix")], host="*.shop.test"))
        + routes(
            "default",
            "b",
            {
                "rules": [
                    {
                        "host": "www.shop.test",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "www", "port": {"name": "http"}}},
                                }
                            ]
                        },
                    }
                ]
            },
        )
        + routes(
            "default",
            "c",
            {
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "any", "port": {"number": 8080}}},
                                }
                            ]
                        }
                    }
                ]
            },
        )
    )
    assert choose(rs, "www.shop.test", "/x") == Backend("default", "www", "http")
    assert choose(rs, "api.shop.test", "/x") == Backend("default", "svc-", 80)
    assert choose(rs, "elsewhere.test", "/x") == Backend("default", "any", 8080)


def test_default_backend_when_no_path_answers() -> None:
    spec = _ingress([("/api", "Prefix")]) | {
        "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}}
    }
    fallback = default_backend("shop", spec)
    assert fallback == Backend("shop", "fallback", 80)
    rs = routes("shop", "web", spec)
    assert choose(rs, "h", "/api/v1", fallback) == Backend("shop", "svc-api", 80)
    assert choose(rs, "h", "/apiv1", fallback) == fallback
    assert choose([], "h", "/", fallback) == fallback


def test_defaults_per_host_and_the_catch_all() -> None:
    """As ingress-nginx: an Ingress's defaultBackend answers its own hosts' unmatched paths; the
    catch-all is the first Ingress without rules that has one (else the first with one)."""
    def spec(host: str | None, service: str) -> dict:
        out: dict = {"defaultBackend": {"service": {"name": service, "port": {"number": 80}}}}
        if host is not None:
            out["rules"] = [{"host": host, "http": {"paths": [
                {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "x", "port": {"number": 80}}}}]}}]
        return out

    got = defaults([("shop", "b", spec("b.test", "bdef")), ("shop", "a", spec("a.test", "adef"))])
    assert (got.catch_all, got.catch_all_ingress) == (Backend("shop", "adef", 80), "shop/a")
    assert got.by_host == {"a.test": Backend("shop", "adef", 80), "b.test": Backend("shop", "bdef", 80)}
    assert got.unused == ()
    rs = routes("shop", "a", spec("a.test", "adef")) + routes("shop", "b", spec("b.test", "bdef"))
    assert choose(rs, "b.test", "/nothing", got.catch_all, got.by_host) == Backend("shop", "bdef", 80)
    assert choose(rs, "b.test", "/x", got.catch_all, got.by_host) == Backend("shop", "x", 80)
    assert choose(rs, "c.test", "/", got.catch_all, got.by_host) == Backend("shop", "adef", 80)
    # A rule-less Ingress is the catch-all; a second one, and one whose host an earlier one took, do nothing.
    got = defaults([("shop", "a", spec("a.test", "adef")), ("shop", "z", spec(None, "zdef")),
                    ("shop", "y", spec(None, "ydef")), ("shop", "a2", spec("a.test", "a2def"))])
    assert (got.catch_all, got.catch_all_ingress) == (Backend("shop", "ydef", 80), "shop/y")
    assert [u[0] for u in got.unused] == ["shop/a2", "shop/z"]
    assert "Ingress shop/a" in got.unused[0][1] and "Ingress shop/y's" in got.unused[1][1]
    assert defaults([("shop", "n", {"rules": []})]) == defaults([])


def test_path_matches_is_case_sensitive() -> None:
    assert not path_matches("Prefix", "/Foo", "/foo")
    assert not path_matches("Exact", "/foo", "/FOO")


def test_two_ingresses_claiming_the_same_host_and_path_conflict() -> None:
    a = routes("shop", "a", _ingress([("/foo", "Prefix"), ("/bar", "Exact")], host="www.shop.test"))
    b = routes("shop", "b", _ingress([("/foo/", "ImplementationSpecific"), ("/bar", "Prefix")], host="WWW.shop.test"))
    c = routes("shop", "c", _ingress([("/foo", "Exact")], host="www.shop.test"))
    found = conflicts(b + a + c)
    assert [(x.ingress, y.ingress, y.path) for x, y in found] == [("shop/a", "shop/b", "/foo/")]
    # The same Ingress listing a path twice is its own business (Kubernetes accepts it too).
    assert conflicts(routes("shop", "a", _ingress([("/foo", "Prefix"), ("/foo", "Prefix")]))) == []


TABLE_ENTRIES = [
    {"name": "shop/web:http", "protocol": "TCP", "port": 80, "endpoints": [{"ip": "10.1.0.5", "port": 8080}]},
    {"name": "shop/web:metrics", "protocol": "TCP", "port": 9090, "endpoints": []},
    {"name": "shop/dns:53", "protocol": "UDP", "port": 53, "endpoints": [{"ip": "10.1.0.6", "port": 53}]},
]


def test_backend_endpoints_by_port_number_or_name() -> None:
    by_number, by_name, gone = Backend("shop", "web", 80), Backend("shop", "web", "http"), Backend("shop", "x", 80)
    got = backend_endpoints(TABLE_ENTRIES, [by_number, by_name, gone, Backend("shop", "dns", 53)])
    assert got == {
        by_number: [("10.1.0.5", 8080)],
        by_name: [("10.1.0.5", 8080)],
        gone: [],
        Backend("shop", "dns", 53): [],
    }


def test_missing_backends_say_what_is_missing() -> None:
    services = {("shop", "web"): [{"name": "http", "port": 80}, {"port": 9090}]}
    spec = {
        "rules": [
            {
                "http": {
                    "paths": [
                        {
                            "path": "/a",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"name": "http"}}},
                        },
                        {
                            "path": "/b",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 9090}}},
                        },
                        {
                            "path": "/c",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "web", "port": {"number": 81}}},
                        },
                        {
                            "path": "/d",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "api", "port": {"number": 80}}},
                        },
                    ]
                }
            }
        ]
    }
    found = [(r.path, why) for r, why in missing_backends(services, routes("shop", "web", spec))]
    assert found == [
        ("/c", "Service shop/web has no port 81 (it has: http, 9090)"),
        ("/d", "Service shop/api does not exist"),
    ]
