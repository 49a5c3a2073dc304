"""The agent's side of the ingress proxy, against a real HAProxy started as the supervisor starts
it: the first config is written, an endpoint change goes through the runtime API (same worker),
a route change is a graceful reload, a config HAProxy refuses is not applied; certificates are
0600 in a 0700 folder; bad sync input is refused; the slot arithmetic is the controller's."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from gitorch.model.routes import Backend, routes
from gitorch.nodes import agent
from gitorch.reconcile.haproxy import Certificate, backend_name, initial_slots, render, runtime_commands
from tests.test_haproxy_rendering import HAPROXY, _free_port, _get, pytestmark  # noqa: F401
from tests.test_haproxy_runtime import _serve
from tests.tls import certificate_pem, key_pem, new_key
from tests.waiting import wait_until

B = Backend("shop", "web", 80)


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        ([("10.0.0.1", 80), ("10.0.0.2", 80)], [("10.0.0.2", 80), ("10.0.0.3", 80)]),
        ([("10.0.0.1", 80)], []),
        ([], [(f"10.0.1.{i}", 80) for i in range(8)]),
        ([("10.0.0.1", 80)], [(f"10.0.1.{i}", 80) for i in range(8)]),
    ],
    ids=["one-for-one", "emptied", "fill", "overflow"],
)
def test_the_agent_computes_the_controllers_slot_commands(current: list, wanted: list) -> None:
    slots = initial_slots(current)
    ours = runtime_commands(B, slots, wanted)
    theirs = agent.slot_commands(backend_name(B), list(slots), wanted)
    assert theirs == (ours[0] if ours is not None else None)


def test_bad_ingress_input_is_refused() -> None:
    assert agent.parse_ingress(None) is None and agent.parse_ingress({}) == {}
    for bad in ({"config": "x", "files": {"../etc/passwd": "x"}}, {"config": "x", "files": {"certs/a.pem": 1}},
                {"config": "x" * (agent.INGRESS_MAX_CONFIG + 1)}, {"config": "x", "files": []}):
        with pytest.raises(agent.RequestError):
            agent.parse_ingress(bad)


HTTPS_PORT = _free_port()


def _spec(port: int, endpoints: list[tuple[str, int]], path: str = "/", pem: str = "") -> dict:
    spec = {"rules": [{"http": {"paths": [
        {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
    certs = [Certificate("shop", "www-tls", pem, ("www.shop.test",))] if pem else []
    rendered = render(routes("shop", "web", spec), {B: endpoints}, None, certs, http_port=port,
                      https_port=HTTPS_PORT)
    return {"config": rendered.config, "files": rendered.files}


def _workers(where: Path) -> list[str]:
    text = agent.runtime_call(str(where / "master.sock"), ["show proc"])
    return [line.split()[0] for line in text.splitlines() if " worker " in f" {line} "]


def test_endpoint_changes_use_the_runtime_api_and_route_changes_reload(tmp_path: Path) -> None:
    paths = agent.Paths(str(tmp_path / "root"))
    v1, v2 = _serve("v1"), _serve("v2")
    port = _free_port()
    key = new_key()
    pem = (certificate_pem(key, ["www.shop.test"]) + key_pem(key)).decode()
    first = agent.program_ingress(paths, agent.parse_ingress(_spec(port, [("127.0.0.1", v1.server_address[1])],
                                                                   pem=pem)) or {})
    assert first == {"ok": True, "mode": "written", "commands": 0, "message": ""}
    where = Path(agent.ingress_dir(paths))
    assert stat.S_IMODE(os.stat(where / "certs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(where / "certs" / "shop_www-tls.pem").st_mode) == 0o600
    assert "PRIVATE KEY" not in repr(first)
    pod = agent.proxy_pod(paths)
    proc = subprocess.Popen(pod["containers"][0]["command"], cwd=where, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until("v1 answering", lambda: (where / "admin.sock").exists() and _get(port, "h", "/")[1] == "v1",
                   timeout=20)
        workers = _workers(where)
        # v2 replaces v1: runtime commands, the same worker, v2 answers.
        moved = agent.program_ingress(paths, agent.parse_ingress(
            _spec(port, [("127.0.0.1", v2.server_address[1])], pem=pem)) or {})
        assert moved["mode"] == "runtime" and moved["commands"] == 3, moved
        wait_until("v2 answering", lambda: _get(port, "h", "/")[1] == "v2", timeout=10)
        assert _workers(where) == workers
        assert agent.program_ingress(paths, agent.parse_ingress(
            _spec(port, [("127.0.0.1", v2.server_address[1])], pem=pem)) or {})["mode"] == "unchanged"
        # A renewed certificate (the same config): a reload, as HAProxy reads certificates only then.
        key2 = new_key()
        cert2 = certificate_pem(key2, ["www.shop.test"])
        pem = (cert2 + key_pem(key2)).decode()
        renewed = agent.program_ingress(paths, agent.parse_ingress(
            _spec(port, [("127.0.0.1", v2.server_address[1])], pem=pem)) or {})
        assert renewed["mode"] == "reload", renewed
        served = lambda: ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(  # noqa: E731
            ssl.get_server_certificate(("127.0.0.1", HTTPS_PORT)))).encode()
        normal = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(cert2.decode())).encode()
        wait_until("the renewed certificate served", served, timeout=20, accept=lambda got: got == normal)
        # A new route: a graceful reload, a new worker, the route served.
        routed = agent.program_ingress(paths, agent.parse_ingress(
            _spec(port, [("127.0.0.1", v2.server_address[1])], path="/api", pem=pem)) or {})
        assert routed["mode"] == "reload"
        wait_until("the new route", lambda: _get(port, "h", "/")[0] == 404 and _get(port, "h", "/api/x")[1] == "v2",
                   timeout=20)
        # A config HAProxy refuses is not applied: the running one stays.
        broken = _spec(port, [("127.0.0.1", v2.server_address[1])], path="/api", pem=pem)
        broken["config"] = broken["config"].replace("balance roundrobin", "balance nonsense")
        refused = agent.program_ingress(paths, agent.parse_ingress(broken) or {})
        assert not refused["ok"] and refused["mode"] == "refused" and "haproxy.cfg.new:" in refused["message"]
        assert "nonsense" not in (where / "haproxy.cfg").read_text()
        assert _get(port, "h", "/api/x")[1] == "v2"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for s in (v1, v2):
            s.shutdown()
            s.server_close()
    agent.stop_ingress(paths)
    assert not where.exists()


def test_the_proxy_is_reported_apart_from_the_workload_pods(tmp_path: Path) -> None:
    """Controllers and drift read `pods`: the system pod is not a workload's and must not show up
    there as a pod gitorch does not know; its state is under `ingress`."""
    paths = agent.Paths(str(tmp_path / "root"))
    os.makedirs(paths.root)
    pods = [{"name": "web-1", "namespace": "shop", "phase": "Running", "ready": True},
            {"name": agent.INGRESS_POD, "namespace": agent.SYSTEM_NAMESPACE, "phase": "Running", "ready": True,
             "restarts": 2, "reason": "", "message": ""}]
    agent.atomic_write(paths.status, json.dumps({"pods": pods}))
    doc = agent.status_doc(paths, agent.Redactor())
    assert [p["name"] for p in doc["pods"]] == ["web-1"]
    assert doc["ingress"] == {"phase": "Running", "ready": True, "restarts": 2, "reason": "", "message": ""}
    assert [r["name"] for r in agent.endpoint_view({"pods": pods})] == ["web-1"]
