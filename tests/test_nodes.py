"""The SSH layer and the agent over real SSH, on real lab nodes."""

from __future__ import annotations

import json
import logging
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.client import AGENT_DIR, AGENT_FILE, AgentFile, Fleet, NodeClient, StaleTerm
from gitorch.nodes.lab import Lab
from gitorch.nodes.ssh import Endpoint, HostKeyMismatch, NodeUnreachable, Pool, ReplyTooLarge, SSHOptions
from tests.gitrepo import GitRepo
from tests.lab import ssh_run
from tests.samples import gitorch
from tests.waiting import wait_until

pytestmark = pytest.mark.lab


def _endpoints(lab: Lab) -> list[Endpoint]:
    return [Endpoint(n.name, n.address, n.port, "root", str(lab.identity_file), n.host_key) for n in lab.nodes]


@pytest.fixture
def fleet(lab: Lab, tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(_endpoints(lab), Pool(SSHOptions(known_hosts=tmp_path / "kh", connect_timeout=3))) as f:
        yield f


def _pod(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "hash": "h1",
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "command": command, "args": [], **extra}],
        "volumes": [],
    }


def test_facts_from_every_node_in_parallel(fleet: Fleet, lab: Lab) -> None:
    results = fleet.fan_out(lambda c: c.call("facts"), timeout=30)
    assert set(results) == {n.name for n in lab.nodes}
    for name, outcome in results.items():
        assert outcome.ok, outcome.error
        assert outcome.value is not None
        assert outcome.value["hostname"] == name
        assert outcome.value["cpus"] >= 1
        assert "process" in outcome.value["runtimes"]


def test_agent_is_shipped_by_content_hash_and_upgrades_itself(fleet: Fleet, lab: Lab, tmp_path: Path) -> None:
    client = fleet.clients[lab.nodes[0].name]
    client.call("facts")
    current = AgentFile.load()
    assert ssh_run(lab, lab.nodes[0].name, f"test -f {current.path} && echo yes").stdout.strip() == "yes"
    # A changed agent file gets a new path, is uploaded on next contact, and is what runs.
    changed = tmp_path / "agent.py"
    changed.write_bytes(AGENT_FILE.read_bytes() + b"\n# upgraded\n")
    newer = AgentFile.load(changed)
    assert newer.path != current.path
    upgraded = NodeClient(client.conn, newer)
    try:
        facts = upgraded.call("facts")
        assert facts["agentSha"] == newer.digest
    finally:
        upgraded.close()
    assert ssh_run(lab, lab.nodes[0].name, f"test -f {newer.path} && echo yes").stdout.strip() == "yes"


def test_the_agent_runs_from_bytecode_cached_on_the_node(fleet: Fleet, lab: Lab) -> None:
    """A node compiles an agent version once, not at every agent start (it cost each node ~100 ms
    of CPU per `gitorch nodes`)."""
    node = lab.nodes[2].name
    client = fleet.clients[node]
    assert client.call("facts")["hostname"] == node
    cached = ssh_run(lab, node, f"ls {AGENT_DIR}/__pycache__").stdout.split()
    assert [c for c in cached if c.startswith(f"agent-{client.agent.digest}.") and c.endswith(".pyc")], cached
    # Started again from the cached bytecode, each verb still gets its argv and stdin.
    assert client.run_once("facts")["hostname"] == node
    assert client.run_once("status", {"verify": False})["ok"]


def test_sync_runs_pods_with_env_and_keeps_secrets_out_of_outputs(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[1].name
    client = fleet.clients[node]
    script = (
        "import os,time; open('/tmp/seen-env','w').write(os.environ['GREETING']+' '+os.environ['TOKEN']); "
        "time.sleep(600)"
    )
    pod = _pod(
        "envpod",
        ["python3", "-c", script],
        env=[{"name": "GREETING", "value": "hello"}, {"name": "TOKEN", "value": "tok-8f2b91", "secret": True}],
    )
    try:
        answer = client.call("sync", {"pods": [pod]})
        assert answer["ok"]

        def running() -> bool:
            pods = client.call("status")["pods"]
            return bool(pods) and pods[0]["phase"] == "Running"

        wait_until("envpod running", running, timeout=20, interval=0.1)
        seen = wait_until("the env the pod saw", lambda: ssh_run(lab, node, "cat /tmp/seen-env 2>/dev/null",
                                                                 check=False).stdout, timeout=20, interval=0.1)
        assert seen == "hello tok-8f2b91"
        status = json.dumps(client.call("status"))
        assert "tok-8f2b91" not in status
        log = ssh_run(lab, node, "cat /var/lib/gitorch/supervisor.log", check=False).stdout
        assert "tok-8f2b91" not in log
    finally:
        client.call("sync", {"pods": []})


def test_killed_pod_is_restarted_by_the_supervisor(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[2].name
    client = fleet.clients[node]
    try:
        client.call("sync", {"pods": [_pod("sleeper", ["sleep", "600"])]})

        def pid() -> int | None:
            pods = client.call("status")["pods"]
            if not pods or pods[0]["phase"] != "Running":
                return None
            return pods[0]["containers"][0]["pid"]

        first = wait_until("sleeper running", pid, timeout=20, interval=0.1)
        ssh_run(lab, node, f"kill -9 {first}")
        second = wait_until("sleeper running again", pid, timeout=30, interval=0.1,
                            accept=lambda p: p is not None and p != first)
        assert second != first
        assert client.call("status")["pods"][0]["restarts"] >= 1
    finally:
        client.call("sync", {"pods": []})


def test_changed_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.nodes[0], lab.nodes[1]
    wrong = Endpoint(a.name, a.address, a.port, "root", str(lab.identity_file), b.host_key)
    with Pool(SSHOptions(known_hosts=tmp_path / "kh")) as pool, pytest.raises(HostKeyMismatch) as err:
        pool.get(wrong).run("true")
    assert a.name in str(err.value) and "changed" in str(err.value)


def test_trust_on_first_use_records_and_then_pins(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.nodes[0], lab.nodes[1]
    known = tmp_path / "kh"
    with Pool(SSHOptions(known_hosts=known)) as pool:
        pool.get(Endpoint(a.name, a.address, 22, "root", str(lab.identity_file))).run("true")
    assert a.host_key in known.read_text()
    # The same address now presenting another node's key (as after a reinstall) is refused.
    known.write_text(known.read_text().replace(a.host_key.split()[1], b.host_key.split()[1]))
    with Pool(SSHOptions(known_hosts=known)) as pool, pytest.raises(HostKeyMismatch):
        pool.get(Endpoint(a.name, a.address, 22, "root", str(lab.identity_file))).run("true")


def test_dead_node_fails_fast_and_names_itself_while_others_answer(lab: Lab, tmp_path: Path) -> None:
    ghost_ip = lab.nodes[0].address.rsplit(".", 1)[0] + ".250"
    eps = [*_endpoints(lab), Endpoint("ghost", ghost_ip, 22, "root", str(lab.identity_file))]
    options = SSHOptions(known_hosts=tmp_path / "kh", connect_timeout=1, retries=2)
    with Fleet(eps, Pool(options)) as fleet:
        results = fleet.fan_out(lambda c: c.call("facts"), timeout=20)
    assert all(results[n.name].ok for n in lab.nodes)
    ghost = results["ghost"]
    assert not ghost.ok
    assert ghost.error.startswith(f"ghost: root@{ghost_ip}:22:")
    assert "after 2 tries" in ghost.error


def test_stopped_sshd_is_reported_unreachable(lab: Lab, tmp_path: Path) -> None:
    ep = Endpoint("closed", lab.nodes[0].address, 2222, "root", str(lab.identity_file))
    with Pool(SSHOptions(known_hosts=tmp_path / "kh", retries=1)) as pool, pytest.raises(NodeUnreachable) as err:
        pool.get(ep).run("true")
    assert "connection refused" in str(err.value)


def test_gitorch_nodes_command(lab: Lab, repo: GitRepo) -> None:
    repo.write({"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text()})
    repo.commit("nodes")
    res = gitorch("nodes", "-o", "json", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == [n.name for n in lab.nodes]
    assert all(r["reachable"] and r["agentVersion"] for r in rows)
    table = gitorch("nodes", cwd=repo.path)
    assert "REACHABLE" in table.stdout and lab.nodes[0].address in table.stdout


def test_probes_and_supervisor_restart_over_ssh(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[0].name
    client = fleet.clients[node]
    live = _pod(
        "live",
        ["sleep", "600"],
        livenessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
    )
    unready = _pod("unready", ["sleep", "600"], readinessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1})
    steady = _pod("steady", ["sleep", "600"])
    try:
        client.call("sync", {"pods": [live, unready, steady]})

        def pods() -> dict[str, Any]:
            return {p["name"]: p for p in client.call("status")["pods"]}

        # A failing liveness probe restarts the container; a failing readiness probe only marks it not ready.
        wait_until("live restarted", lambda: pods()["live"]["restarts"], timeout=40, interval=0.1,
                   accept=lambda restarts: restarts >= 1)
        wait_until("unready running", lambda: pods()["unready"]["phase"], timeout=20, interval=0.1,
                   accept=lambda phase: phase == "Running")
        assert pods()["unready"]["ready"] is False and pods()["unready"]["restarts"] == 0
        steady_pid = wait_until("steady's pid", lambda: pods()["steady"]["containers"][0]["pid"], timeout=20,
                                interval=0.1)
        # A restarted supervisor adopts the running pods: same process, no duplicate.
        assert client.call("stop-supervisor")["ok"]
        client.call("sync", {"pods": [live, unready, steady]})
        wait_until("steady adopted", lambda: pods()["steady"]["containers"][0]["pid"], timeout=20, interval=0.1,
                   accept=lambda pid: pid == steady_pid)
        count = ssh_run(lab, node, "pgrep -xc sleep || true").stdout.strip()
        assert 2 <= int(count or 0) <= 3  # steady + unready, and live unless it is in back-off: never more
    finally:
        client.call("sync", {"pods": []})


def test_a_node_refuses_a_sync_from_an_older_controller_term(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[1].name
    client = fleet.clients[node]
    kept = _pod("fenced", ["sleep", "600"])
    try:
        ssh_run(lab, node, "rm -f /var/lib/gitorch/fence.json")
        assert client.call("sync", {"pods": [kept], "fence": {"term": 5, "holder": "ctl-a"}})["ok"]
        # The old leader (term 4) wakes up and would remove the pod: refused, nothing done.
        with pytest.raises(StaleTerm) as err:
            client.call("sync", {"pods": [], "fence": {"term": 4, "holder": "ctl-b"}})
        assert str(err.value) == f"{node}: stale controller term 4 (node has seen 5, held by ctl-a)"
        assert (err.value.term, err.value.seen, err.value.holder) == (4, 5, "ctl-a")
        status = client.call("status")
        assert [p["name"] for p in status["pods"]] == ["fenced"]
        assert status["fence"] == {"term": 5, "holder": "ctl-a", "lease": ""}
        # A fan-out hands the controller the error itself, so it can stop its pass.
        outcome = fleet.fan_out(lambda c: c.call("sync", {"pods": [], "fence": {"term": 3, "holder": "x"}}),
                                nodes=[node])[node]
        assert isinstance(outcome.failure, StaleTerm) and "stale controller term 3" in outcome.error
        # The same term (another request of the leader) and a CLI one-shot without one pass.
        assert client.call("sync", {"pods": [kept], "fence": {"term": 5, "holder": "ctl-a"}})["ok"]
        assert client.run_once("sync", {"pods": [kept]})["ok"]
        # A new leader's higher term replaces it, on disk, before the sync acts.
        assert client.call("sync", {"pods": [kept], "fence": {"term": 9, "holder": "ctl-c"}})["ok"]
        stored = json.loads(ssh_run(lab, node, "cat /var/lib/gitorch/fence.json").stdout)
        assert (stored["term"], stored["holder"]) == (9, "ctl-c")
        with pytest.raises(StaleTerm, match="node has seen 9, held by ctl-c"):
            client.call("sync", {"pods": [kept], "fence": {"term": 5, "holder": "ctl-a"}})
        # Terms of another store's lease do not compare: a new store's term 1 takes the node over.
        assert client.call("sync", {"pods": [kept], "fence": {"term": 1, "holder": "new", "lease": "e2"}})["ok"]
        with pytest.raises(StaleTerm, match="node has seen 1, held by new"):
            client.call("sync", {"pods": [kept], "fence": {"term": 0, "holder": "old", "lease": "e2"}})
    finally:
        client.call("sync", {"pods": []})
        ssh_run(lab, node, "rm -f /var/lib/gitorch/fence.json")


def test_a_pods_secrets_live_only_in_its_own_folder(fleet: Fleet, lab: Lab) -> None:
    node = lab.nodes[2].name
    client = fleet.clients[node]
    token, key = f"tok-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    owner = _pod("secret-a", ["sleep", "600"], env=[{"name": "TOKEN", "value": token, "secret": True}])
    owner["volumes"] = [{"name": "creds", "files": {"key.pem": key}, "secret": True}]
    owner["containers"][0]["volumeMounts"] = [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}]
    # A neighbour running as root, as process-runtime pods do, looking for secrets.
    # (It looks for their shape: the values themselves must not be in its own spec.)
    snoop = _pod("snoop", ["sh", "-c", "grep -rlsE '(tok|key)-[0-9a-f]{32}' /var/lib/gitorch; exec sleep 600"])
    try:
        client.call("sync", {"pods": [owner, snoop]})
        wait_until("both pods running", lambda: [p["phase"] for p in client.call("status")["pods"]], timeout=20,
                   interval=0.1, accept=lambda phases: phases == ["Running"] * 2)
        environ = ssh_run(lab, node, f"cat /proc/{client.call('status')['pods'][0]['containers'][0]['pid']}/environ")
        assert f"TOKEN={token}" in environ.stdout  # the pod itself has it
        folder = "/var/lib/gitorch/pods/default_secret-a"
        # Every file on the node's own filesystems (its /run holds its data, /tmp, /root and
        # container storage) that holds either value is in the owner's folder.
        hits = ssh_run(lab, node, f"grep -rlsF -e {token} -e {key} /run /etc /var/lib/gitorch", check=False)
        found = sorted(set(hits.stdout.split()))
        allowed = (f"{folder}/", "/run/gitorch-lab/data/pods/default_secret-a/")
        assert found and all(f.startswith(allowed) for f in found), found
        assert f"{folder}/secrets.json" in found and f"{folder}/volumes/creds/key.pem" in found
        modes = ssh_run(lab, node, f"stat -c '%a %U %n' /var/lib/gitorch/pods {folder} {folder}/secrets.json "
                        f"{folder}/volumes/creds {folder}/volumes/creds/key.pem").stdout.splitlines()
        # pods/ is 0711 so that a pod with a user of its own reaches its folder; a root pod's stays 0700.
        assert [m.split()[:2] for m in modes] == [["711", "root"], ["700", "root"], ["600", "root"],
                                                  ["700", "root"], ["600", "root"]]
        # What the neighbour found (outside the owner's folder there is nothing to find).
        seen = client.call("logs", {"pod": "snoop", "namespace": "default"})["log"].split()
        assert seen and all(f.startswith(f"{folder}/") for f in seen), seen
        # Removed with the pod.
        client.call("sync", {"pods": [snoop]})
        wait_until(f"{folder} removed", lambda: ssh_run(lab, node, f"test -e {folder} || echo gone",
                                                        check=False).stdout.strip(), timeout=20, interval=0.1)
        assert not ssh_run(lab, node, f"grep -rlsF -e {token} -e {key} /run /etc", check=False).stdout
    finally:
        client.call("sync", {"pods": []})


def test_oversized_answers_are_abandoned_naming_the_host(lab: Lab, tmp_path: Path) -> None:
    node = lab.nodes[0]
    options = SSHOptions(known_hosts=tmp_path / "kh", max_reply_bytes=1024 * 1024)
    with Pool(options) as pool:
        conn = pool.get(_endpoints(lab)[0])
        with pytest.raises(ReplyTooLarge) as err:
            conn.run("head -c 3000000 /dev/zero")
        assert str(err.value) == f"{node.name}: root@{node.address}:22: answer larger than 1 MiB; abandoned"
        assert conn.run("echo still here").stdout == b"still here\n"  # the connection is fine
        stream = conn.open_stream("head -c 3000000 /dev/zero; sleep 30")
        with pytest.raises(ReplyTooLarge, match=f"root@{node.address}:22: answer larger than 1 MiB"):
            stream.readline(20)
        assert not stream.alive
    # Through the client: an answer past the bound is an error at once, not retried.
    with Pool(SSHOptions(known_hosts=tmp_path / "kh", max_reply_bytes=64)) as small:
        tiny = NodeClient(small.get(_endpoints(lab)[0]), AgentFile.load())
        try:
            with pytest.raises(ReplyTooLarge):
                tiny.call("facts")
        finally:
            tiny.close()


def test_pod_ips_outside_the_nodes_pod_cidr_are_dropped(
    fleet: Fleet, lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = lab.nodes[1].name
    client = fleet.clients[node]
    network = {"podCIDR": "10.244.250.0/24", "gateway": "10.244.250.1"}
    try:
        client.call("sync", {"pods": [_pod("honest", ["sleep", "600"])], "network": network})
        honest = wait_until("a pod IP for honest", lambda: next((p for p in client.call("status")["pods"]
                                                                if p["podIP"]), None), timeout=20, interval=0.1)
        assert honest["podIP"].startswith("10.244.250.")
        # The node lies (its status file edited as a compromised node could): other pods'
        # addresses, a service VIP, an outside address, garbage, a name that is no name.
        client.call("stop-supervisor")
        forged = [
            {"name": "vip", "namespace": "default", "podIP": "10.96.0.10", "phase": "Running", "ready": True},
            {"name": "outside", "namespace": "default", "podIP": "8.8.8.8", "phase": "Running", "ready": True},
            {"name": "garbage", "namespace": "default", "podIP": "10.244.250.x", "phase": "Running"},
            {"name": "../escape", "namespace": "default", "podIP": "10.244.250.9"},
            "not a pod",
        ]
        edit = (
            "import json; f='/var/lib/gitorch/status.json'; d=json.load(open(f)); "
            f"d['pods'] += json.loads({json.dumps(json.dumps(forged))}); json.dump(d, open(f, 'w'))"
        )
        ssh_run(lab, node, f"python3 -c {shlex.quote(edit)}")
        with caplog.at_level(logging.WARNING, logger="gitorch.nodes.client"):
            pods = {p["name"]: p for p in client.call("status")["pods"]}
            again = {p["name"]: p for p in client.call("status")["pods"]}
        assert set(pods) == {"honest", "vip", "outside", "garbage"} == set(again)
        assert pods["honest"]["podIP"] == honest["podIP"]
        assert [pods[n]["podIP"] for n in ("vip", "outside", "garbage")] == [None, None, None]
        warnings = [r.getMessage() for r in caplog.records]
        vip = f"{node}: pod default/vip reports IP '10.96.0.10', outside the node's pod CIDR 10.244.250.0/24; ignored"
        assert vip in warnings
        assert sum("10.96.0.10" in w for w in warnings) == 1  # once, not every pass
        assert any("malformed pod report" in w and "escape" in w for w in warnings)
        # The watch stream is checked the same way.
        watch = client.watch()
        try:
            event = watch.next(5)
            assert event is not None
            assert {p["name"]: p["podIP"] for p in event["pods"]} == {
                "honest": honest["podIP"], "vip": None, "outside": None, "garbage": None}
        finally:
            watch.close()
        # A client that never sent this node its network trusts no address yet.
        with Pool(SSHOptions(known_hosts=tmp_path / "kh2")) as pool:
            fresh = NodeClient(pool.get(next(e for e in _endpoints(lab) if e.name == node)), AgentFile.load())
            try:
                assert all(p["podIP"] is None for p in fresh.call("status")["pods"])
            finally:
                fresh.close()
    finally:
        client.call("sync", {"pods": []})
