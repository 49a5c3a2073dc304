"""securityContext and ServiceAccounts from manifest to the agent's command line, without nodes:
how pod and container levels merge into what the agent runs (podspecs), how ServiceAccount uids
are allocated and kept (allocations), and what the agent makes of them (setpriv's arguments,
podman's flags, the kubelet's runAsNonRoot messages, the RuntimeDefault seccomp program). The
same path on real nodes, read back from /proc: tests/test_pod_security_lab.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from gitorch.model.objects import DesiredState, ObjectKey
from gitorch.nodes import agent
from gitorch.reconcile import podspecs
from gitorch.reconcile.allocations import ACCOUNT_IDS, allocate
from gitorch.source import desired
from gitorch.source.git import open_repository
from tests.gitrepo import GitRepo


def load(repo: GitRepo, text: str) -> DesiredState:
    repo.commit("case", {"x.yaml": text})
    state = desired.load(open_repository(repo.path), None)
    assert state.ok, [d.format() for d in state.diagnostics]
    return state


def deployment(pod: str = "", container: str = "") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
{pod}      containers:
        - name: web
          command: [sleep, "600"]
{container}"""


def spec_of(state: DesiredState) -> dict:  # type: ignore[type-arg]
    obj = state.objects[ObjectKey("Deployment", "default", "web")]
    return podspecs.pod_spec(state, obj, obj.spec["template"], "web-1")


def test_a_pod_without_security_runs_as_its_account_not_root(repo: GitRepo) -> None:
    spec = spec_of(load(repo, deployment()))  # a process container: the default account's uid
    security = spec["containers"][0]["security"]
    assert security["account"] == "default" and "runAsUser" not in security
    assert spec["volumeOwner"] == {"account": "default"}
    # An image container keeps its image's USER (as Kubernetes runs it) and its volumes stay root's.
    image = spec_of(load(repo, deployment(container="          image: nginx:1.27\n")))
    assert "security" not in image["containers"][0] and "volumeOwner" not in image
    # Root only when asked for.
    root = spec_of(load(repo, deployment(pod="      securityContext: {runAsUser: 0}\n")))
    assert root["containers"][0]["security"]["runAsUser"] == 0 and "account" not in root["containers"][0]["security"]


def test_container_level_wins_and_the_account_gives_the_uid(repo: GitRepo) -> None:
    sa = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app}\n"
    state = load(repo, deployment(
        pod="      serviceAccountName: app\n      securityContext: {runAsGroup: 5, fsGroup: 7, supplementalGroups: [9],"
            " seccompProfile: {type: RuntimeDefault}}\n",
        container="          securityContext: {runAsGroup: 6, allowPrivilegeEscalation: false, readOnlyRootFilesystem:"
                  " true, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}\n") + sa)
    spec = spec_of(state)
    assert spec["containers"][0]["security"] == {
        "runAsGroup": 6, "account": "app", "groups": [7, 9], "readOnlyRootFilesystem": True, "privileged": False,
        "noNewPrivs": True, "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}, "seccomp": "RuntimeDefault",
    }
    assert spec["volumeOwner"] == {"runAsGroup": 6, "account": "app", "fsGroup": 7}


@pytest.mark.parametrize(
    ("pod", "account"),
    [
        ("      securityContext: {runAsNonRoot: true}\n", "default"),  # the default account, only when asked
        ("      securityContext: {runAsNonRoot: true, runAsUser: 1000}\n", None),  # an explicit uid wins
        ("      securityContext: {fsGroup: 7}\n", "default"),  # the default account is a user like any other
    ],
)
def test_when_the_account_uid_is_used(repo: GitRepo, pod: str, account: str | None) -> None:
    security = spec_of(load(repo, deployment(pod=pod)))["containers"][0]["security"]
    assert security.get("account") == account


@pytest.mark.parametrize(
    ("pod", "account"),
    [
        ("      securityContext: {fsGroup: 7}\n", None),  # the image's USER
        ("      securityContext: {runAsNonRoot: true}\n", "default"),  # asked not to be root: the account's uid
        ("      serviceAccountName: app\n", "app"),  # an account of its own
    ],
)
def test_when_an_image_container_uses_the_account_uid(repo: GitRepo, pod: str, account: str | None) -> None:
    sa = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app}\n"
    spec = spec_of(load(repo, deployment(pod=pod, container="          image: nginx:1.27\n") + sa))
    assert spec["containers"][0]["security"].get("account") == account


def test_account_uids_are_stable_and_released_only_when_unused(repo: GitRepo) -> None:
    sas = "".join(f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {n}}}\n" for n in ("a", "b"))
    state = load(repo, sas)
    first = allocate(state, {}, {}, {}).account_ids
    base = ACCOUNT_IDS.start
    assert first == {("default", "a"): base, ("default", "b"): base + 1, ("default", "default"): base + 2}
    assert allocate(state, {}, {}, {}, None, first).account_ids == first
    b = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n"
    only_b = load(repo, b)
    # a is gone from Git: kept while a recorded pod may run as it, released after.
    assert allocate(only_b, {}, {}, {}, None, first, [("default", "a")]).account_ids == first
    after = allocate(only_b, {}, {}, {}, None, first)
    assert after.account_ids == {("default", "b"): base + 1, ("default", "default"): base + 2}
    assert after.next_account_id == base + 3
    # A released uid is never given again: c does not own what a left on the nodes (its claim
    # folders), nor does d get the highest uid once its holder is gone too.
    c = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: c}\n"
    again = allocate(load(repo, b + c), {}, {}, {}, None, after.account_ids, (), after.next_account_id)
    assert again.account_ids[("default", "c")] == base + 3 and again.next_account_id == base + 4
    without_c = {k: v for k, v in again.account_ids.items() if k[1] != "c"}
    d = allocate(load(repo, b + c.replace("c}", "d}")), {}, {}, {}, None, without_c, (), again.next_account_id)
    assert d.account_ids[("default", "d")] == base + 4
    # A store from before the mark: above every uid it holds.
    assert allocate(load(repo, b + c), {}, {}, {}, None, after.account_ids).account_ids[("default", "c")] == base + 3


def security(**raw: object) -> agent.SecuritySpec:
    spec = agent.SecuritySpec.parse(raw, "security")
    assert spec is not None
    return spec


def test_setpriv_arguments() -> None:
    sec = security(runAsUser=1234, runAsGroup=2345, groups=[4567, 3456], noNewPrivs=True,
                   capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    ident = agent.resolve_identity(sec, "ns", {})
    assert agent.setpriv_argv(sec, ident)[1:] == [
        "--reuid=1234", "--regid=2345", "--groups=3456,4567", "--inh-caps=-all",
        "--bounding-set=-all,+net_bind_service", "--no-new-privs", "--"]
    # The account's uid is its gid too; the default set less what is dropped; RuntimeDefault first.
    sec = security(account="app", capabilities={"drop": ["NET_RAW", "MKNOD"]}, seccomp="RuntimeDefault")
    argv = agent.setpriv_argv(sec, agent.resolve_identity(sec, "ns", {"ns/app": 200001}))
    assert argv[1:4] == ["-S", "-c", agent.SECCOMP_EXEC] and argv[5] == "--"
    assert bytes.fromhex(argv[4]) == agent.seccomp_filter(agent.SECCOMP_DENIED_X86_64)
    assert argv[7:10] == ["--reuid=200001", "--regid=200001", "--clear-groups"]
    bounding = argv[argv.index("--inh-caps=-all") + 1]
    assert "+net_raw" not in bounding and "+mknod" not in bounding and "+chown" in bounding
    assert security(privileged=True, capabilities={"drop": ["ALL"]}).capabilities() is None
    with pytest.raises(agent.StartError, match="ServiceAccount ns/gone has no uid"):
        agent.resolve_identity(security(account="gone"), "ns", {})
    with pytest.raises(agent.SpecError, match="unknown capability 'NET_ADMN'"):
        security(capabilities={"add": ["NET_ADMN"]})


def test_run_as_non_root_refusals_have_the_kubelets_words() -> None:
    root = security(runAsNonRoot=True, runAsUser=0)
    with pytest.raises(agent.ConfigError) as exc:
        agent.check_non_root(root, agent.resolve_identity(root, "ns", {}), "web_ns(abc)", "app")
    assert str(exc.value) == 'container\'s runAsUser breaks non-root policy (pod: "web_ns(abc)", container: app)'
    implicit = security(runAsNonRoot=True)
    with pytest.raises(agent.ConfigError) as exc:
        agent.check_non_root(implicit, agent.Identity(0, 0, ()), "web_ns(abc)", "app")
    assert str(exc.value) == ('container has runAsNonRoot and image will run as root (pod: "web_ns(abc)", '
                              "container: app)")
    agent.check_non_root(implicit, agent.Identity(1000, 1000, ()), "web_ns(abc)", "app")  # fine


def test_podman_flags() -> None:
    sec = security(runAsUser=1000, groups=[7], readOnlyRootFilesystem=True, noNewPrivs=True, seccomp="Unconfined",
                   capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
    assert agent.security_flags(sec, agent.Identity(1000, 1000, (7,))) == [
        "--user", "1000:1000", "--group-add", "7", "--read-only", "--cap-drop=ALL", "--cap-add=NET_BIND_SERVICE",
        "--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined"]
    assert agent.security_flags(security(privileged=True), agent.Identity(None, None, ())) == ["--privileged"]
    assert agent.security_flags(None, None) == []


def test_the_runtime_default_seccomp_program() -> None:
    code = agent.seccomp_filter([165, 101])
    prog = [struct.unpack("<HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    # arch check, nr load, x32 guard, one jump per denied call, allow, EPERM.
    assert prog[1] == (0x15, 1, 0, 0xC000003E) and prog[2] == (0x06, 0, 0, 0x80000000)
    assert prog[5:7] == [(0x15, 2, 0, 101), (0x15, 1, 0, 165)]
    assert prog[-2:] == [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050001)]
    for i, (op, jt, _, _) in enumerate(prog):  # every jump lands on the EPERM return
        if op in (0x15, 0x35) and i > 1:
            assert i + 1 + jt == len(prog) - 1


def test_get_serviceaccounts_shows_the_recorded_uids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gitorch.cli import views
    from gitorch.store.database import Store

    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.save_account_ids({("shop", "web"): 200001, ("shop", "default"): 200000})
        store.save_account_ids({("shop", "web"): 200001, ("shop", "default"): 200000, ("ops", "default"): 200002})
        views.get(store, "serviceaccounts", "shop", "json")
        shown = json.loads(capsys.readouterr().out)
        assert [(a["namespace"], a["name"], a["uid"], a["gid"]) for a in shown] == [
            ("shop", "default", 200000, 200000), ("shop", "web", 200001, 200001)]
        views.get(store, "serviceaccounts", None, "table")
        assert "200002" in capsys.readouterr().out
    finally:
        store.close()


def test_capability_names_are_read_as_the_container_runtimes_read_them(repo: GitRepo) -> None:
    """sock-shop's `drop: [all]` and a `CAP_`-prefixed name: podman and containerd read any case,
    with or without CAP_; validation accepts them and the agent drops and adds the same."""
    state = load(repo, deployment(container="          securityContext:\n            capabilities: "
                                            "{drop: [all], add: [cap_net_bind_service]}\n"))
    sec = security(**spec_of(state)["containers"][0]["security"])
    assert sec.capabilities() == frozenset({"NET_BIND_SERVICE"})
    repo.commit("bad", {"x.yaml": deployment(container="          securityContext:\n"
                                                       "            capabilities: {drop: [net-raw]}\n")})
    errors = [d.format() for d in desired.load(open_repository(repo.path), None).diagnostics]
    assert any('/capabilities/drop/0: "net-raw" is not valid' in e for e in errors), errors


def test_a_pod_network_namespace_lets_any_user_bind_any_port() -> None:
    """ip_unprivileged_port_start=0 in the pod's namespace only (the node's stays as it was)."""
    import os
    import shutil
    import subprocess
    import uuid

    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("needs root and ip(8) to make a network namespace (CI must not skip it)", pytrace=False)
        pytest.skip("needs root and ip(8) to make a network namespace")
    key = f"ports-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", agent.netns_name(key)], check=True)
    try:
        with open(agent.UNPRIVILEGED_PORTS) as fh:
            node_value = fh.read()
        assert agent.unprivileged_ports([key]) == {}
        inside = subprocess.run(["ip", "netns", "exec", agent.netns_name(key), "cat", agent.UNPRIVILEGED_PORTS],
                                capture_output=True, text=True, check=True).stdout
        assert inside.strip() == "0"
        with open(agent.UNPRIVILEGED_PORTS) as fh:
            assert fh.read() == node_value
        assert "No such file" in agent.unprivileged_ports(["gone-" + key])["gone-" + key]
    finally:
        subprocess.run(["ip", "netns", "del", agent.netns_name(key)], check=False)
