"""`gitorch nodes` reads the facts a node's supervisor published (facts.json) with one `cat`,
and asks the agent when that copy is missing, stale or from another agent version."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes import agent
from gitorch.nodes.client import FACTS_MAX_AGE_SECONDS, AgentFile, Fleet, fresh_facts
from gitorch.nodes.lab import Lab
from gitorch.nodes.ssh import Endpoint, Pool, SSHOptions
from tests.gitrepo import GitRepo
from tests.lab import ssh_run
from tests.samples import gitorch
from tests.test_agent import Node
from tests.waiting import wait_until

AGENT = Path(agent.__file__)
DIGEST = AgentFile.load().digest
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text()


def _published(tmp_path: Path) -> dict[str, Any]:
    paths = agent.Paths(str(tmp_path / "root"))
    Path(paths.root).mkdir()
    agent.publish_facts(paths, agent.Redactor())
    doc: dict[str, Any] = json.loads(Path(paths.facts).read_text())
    return doc


def _uptime() -> str:
    """/proc/uptime now (not at collection: a whole suite's run later, a copy published now
    would be from the future)."""
    return Path("/proc/uptime").read_text()


def _output(doc: dict[str, Any], uptime: str | None = None, boot_id: str = BOOT_ID) -> bytes:
    """What `cat facts.json /proc/uptime /proc/sys/kernel/random/boot_id` prints."""
    return (json.dumps(doc) + "\n" + (uptime if uptime is not None else _uptime()) + boot_id).encode()


def test_the_published_file_is_the_facts_verbs_answer(tmp_path: Path) -> None:
    doc = _published(tmp_path)
    verb = subprocess.run([sys.executable, str(AGENT), "facts", "--root", str(tmp_path / "root")],
                          input=b"{}", capture_output=True, check=True)
    answer = json.loads(verb.stdout)
    facts = fresh_facts(_output(doc), DIGEST)
    assert facts is not None
    assert sorted(facts) == sorted(answer)
    assert facts["hostname"] == answer["hostname"] and facts["agentSha"] == DIGEST


def test_stale_missing_foreign_or_broken_copies_are_refused(tmp_path: Path) -> None:
    doc = _published(tmp_path)
    uptime = _uptime()
    now = float(uptime.split()[0])
    assert fresh_facts(_output({**doc, "at": now - FACTS_MAX_AGE_SECONDS + 1}, uptime), DIGEST) is not None
    assert fresh_facts(_output({**doc, "at": now - FACTS_MAX_AGE_SECONDS - 1}, uptime), DIGEST) is None  # stale
    assert fresh_facts(_output({**doc, "at": now + 60}, uptime), DIGEST) is None  # from a clock this is not
    assert fresh_facts(_output(doc), "0123456789ab") is None  # another agent version
    assert fresh_facts(_output(doc, boot_id="another-boot\n"), DIGEST) is None  # before a reboot
    assert fresh_facts((uptime + BOOT_ID).encode(), DIGEST) is None  # no facts.json
    assert fresh_facts(b'{"at": 1, "sha"\n' + (uptime + BOOT_ID).encode(), DIGEST) is None  # torn
    assert fresh_facts(_output({**doc, "facts": {**doc["facts"], "ok": False}}), DIGEST) is None
    assert fresh_facts(_output({**doc, "at": True}), DIGEST) is None


def test_a_supervisor_publishes_its_facts_refreshes_them_and_takes_them_away_when_it_stops(tmp_path: Path) -> None:
    node = Node(tmp_path / "root")
    published = tmp_path / "root" / "facts.json"
    try:
        node.sync()  # starts the supervisor
        first = wait_until("facts.json", lambda: published.exists() and json.loads(published.read_text()),
                           timeout=20, interval=0.1)
        facts = fresh_facts(_output(first, Path("/proc/uptime").read_text()), DIGEST)
        assert facts is not None and facts["supervisor"]["running"] and facts["agentSha"] == DIGEST
        assert sorted(facts) == sorted(node.run("facts"))
        wait_until("facts.json refreshed", lambda: json.loads(published.read_text())["at"] > first["at"],
                   timeout=agent.FACTS_PUBLISH_SECONDS * 5, interval=0.2)
        node.run("stop-supervisor")
        assert not published.exists()
    finally:
        node.teardown()


# --- on lab nodes -----------------------------------------------------------------------------

FACTS = "/var/lib/gitorch/facts.json"


def _rewrite(lab: Lab, node: str, age: float, hostname: str) -> None:
    """Put a facts.json published `age` seconds ago (by the node's clock) naming `hostname`."""
    code = (f"import json, time; p = {FACTS!r}; d = json.load(open(p)); "
            f"d['at'] = time.clock_gettime(time.CLOCK_BOOTTIME) - {age}; d['facts']['hostname'] = {hostname!r}; "
            "open(p, 'w').write(json.dumps(d) + '\\n')")
    ssh_run(lab, node, f"python3 -c \"{code}\"")


def _hostnames(repo: GitRepo) -> dict[str, str]:
    res = gitorch("nodes", "-o", "json", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    return {r["name"]: r["hostname"] for r in json.loads(res.stdout)}


@pytest.mark.lab
def test_gitorch_nodes_reads_the_published_facts_and_falls_back_when_stale_or_missing(
    lab: Lab, repo: GitRepo, tmp_path: Path
) -> None:
    node = lab.nodes[0].name
    eps = [Endpoint(n.name, n.address, n.port, "root", str(lab.identity_file), n.host_key) for n in lab.nodes]
    with Fleet(eps, Pool(SSHOptions(known_hosts=tmp_path / "kh", connect_timeout=3))) as fleet:
        client = fleet.clients[node]
        client.call("sync", {"pods": []})  # starts the supervisor, which publishes
        published = wait_until("facts published", lambda: client.published_facts(), timeout=20, interval=0.2)
        asked = client.call("facts")
        assert published["supervisor"]["running"] and published["agentSha"] == client.agent.digest
        assert sorted(published) == sorted(asked) and published["hostname"] == asked["hostname"] == node
        # Stopped, the supervisor takes its copy away: readers ask the agent.
        ssh_run(lab, node, "kill $(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/' /var/lib/gitorch/supervisor.pid)")
        wait_until("facts.json removed", lambda: ssh_run(lab, node, f"test -e {FACTS}", check=False).returncode,
                   timeout=20, interval=0.2)
        assert client.published_facts() is None
    repo.write({"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text()})
    repo.commit("nodes")
    # A fresh copy (written here: no supervisor runs to overwrite it) is what the CLI shows...
    doc = base64.b64encode(json.dumps({"at": 0, "bootId": published["bootId"], "sha": DIGEST,
                                       "facts": published}).encode()).decode()
    ssh_run(lab, node, f"echo {doc} | base64 -d > {FACTS}")
    _rewrite(lab, node, 1, "from-facts-json")
    assert _hostnames(repo)[node] == "from-facts-json"
    # ...a stale one is not (the supervisor stopped or is stuck): the agent answers.
    _rewrite(lab, node, FACTS_MAX_AGE_SECONDS + 5, "from-facts-json")
    assert _hostnames(repo)[node] == node
    ssh_run(lab, node, f"rm -f {FACTS}")
    assert _hostnames(repo) == {n.name: n.name for n in lab.nodes}
