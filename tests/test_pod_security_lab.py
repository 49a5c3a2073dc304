"""securityContext and ServiceAccount identities on real lab nodes, read back from the kernel:
/proc/<pid>/status of each container (Uid, Gid, Groups, CapEff, CapBnd, NoNewPrivs, Seccomp),
writes a read-only pod tries, files of another account's pod, and the kubelet's refusal of a
root container that asked for runAsNonRoot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitorch.nodes.lab import Lab
from tests.gitrepo import GitRepo
from tests.lab import controlled, ssh_run
from tests.waiting import wait_until

pytestmark = pytest.mark.lab

NS = "psec"


def pod(name: str, script: str, *, pod_sc: str = "{}", sc: str = "{}", account: str = "default",
        volume: bool = False, probe: str = "") -> str:
    mounts = "\n      volumeMounts: [{name: data, mountPath: /data}, {name: data, mountPath: /inner, subPath: in}]" \
        if volume else ""
    mounts += f"\n      readinessProbe: {{exec: {{command: [sh, -c, {json.dumps(probe)}]}}, periodSeconds: 1}}" \
        if probe else ""
    volumes = "\n  volumes: [{name: data, emptyDir: {}}]" if volume else ""
    return f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: lab-1}}
  serviceAccountName: {account}
  securityContext: {pod_sc}
  containers:
    - name: c
      command: [sh, -c, {json.dumps(script)}]
      securityContext: {sc}{mounts}{volumes}
"""


def status(lab: Lab) -> dict[str, Any]:
    proc = ssh_run(lab, "lab-1", "cat /var/lib/gitorch/status.json", check=False)
    if proc.returncode != 0:
        return {}  # before the first sync
    doc: dict[str, Any] = json.loads(proc.stdout)
    return {p["name"]: p for p in doc["pods"] if p["namespace"] == NS}


def proc_status(lab: Lab, name: str) -> dict[str, str]:
    pid = wait_until(f"pod {name} running", lambda: (status(lab).get(name) or {}).get("containers", [{}])[0].get("pid"),
                     timeout=60)
    # The reported pid is the container's exit-recording shim (root); the container is its child.
    child = wait_until(f"pod {name}'s process", lambda: ssh_run(
        lab, "lab-1", f"cat /proc/{pid}/task/{pid}/children").stdout.split(), timeout=30)[0]
    text = ssh_run(lab, "lab-1", f"cat /proc/{child}/status").stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def describe(lab: Lab) -> str:
    pods = {n: [(c["state"], c["reason"], c["message"], c.get("pid")) for c in p["containers"]]
            for n, p in status(lab).items()}
    tail = ssh_run(lab, "lab-1", "tail -n 30 /var/lib/gitorch/supervisor.log", check=False).stdout
    return f"{pods}\n{tail}"


def log(lab: Lab, name: str) -> str:
    return ssh_run(lab, "lab-1", f"cat /var/lib/gitorch/pods/{NS}_{name}/logs/c.log", check=False).stdout


def test_security_contexts_and_accounts_on_the_node(lab: Lab, repo: GitRepo, tmp_path: Path) -> None:
    accounts = "".join(f"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {a}, namespace: {NS}}}\n"
                       for a in ("alice", "bob"))
    # process_vm_readv on itself with nothing to read: 0, unless the seccomp filter refuses it (EPERM).
    # (Every argument a C long: syscall(2) is variadic, and a 32-bit int leaves the register's top half as it was.)
    vm_read = ("python3 -c 'import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); L = ctypes.c_long; "
               "print(\"process_vm_readv\", libc.syscall(L(310), L(os.getpid()), L(0), L(0), L(0), L(0), L(0)), "
               "ctypes.get_errno())'; sleep 3600")
    pods = [
        pod("ids", vm_read, pod_sc="{runAsUser: 1234, runAsGroup: 2345, supplementalGroups: [3456], "
            "fsGroup: 4567}", sc="{allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: "
            "[NET_BIND_SERVICE]}, seccompProfile: {type: RuntimeDefault}}",
            probe='test "$(id -u):$(id -g)" = 1234:2345'),
        pod("rootcaps", vm_read, pod_sc="{runAsUser: 0}",
            sc="{capabilities: {drop: [ALL], add: [NET_BIND_SERVICE, CHOWN]}}"),
        pod("ro", "touch /data/ok && echo volume-written; touch /tmp/x || echo tmp-refused; "
            "touch /var/lib/gitorch/x || echo node-refused; sleep 3600", sc="{readOnlyRootFilesystem: true}",
            volume=True),
        pod("alice", "export ALICE_KEY=secret-of-alice; echo $ALICE_KEY > /data/file && echo x > /inner/file && "
            "echo subpath-written && exec sleep 3600",
            account="alice", volume=True),
        pod("bob", f"sleep 2; cat /var/lib/gitorch/pods/{NS}_alice/volumes/data/file || echo alice-refused; "
            "ls /var/lib/gitorch/pods || echo list-refused; sleep 3600", account="bob", volume=True),
        pod("asked", "sleep 3600", pod_sc="{runAsNonRoot: true}"),
        pod("nonroot", "sleep 3600", pod_sc="{runAsNonRoot: true}", sc="{runAsUser: 0}"),
        # No securityContext, the default account: its uid, not root; port 80 is any user's in the pod's netns.
        pod("plain", "python3 -c 'import socket; s = socket.socket(); s.bind((\"0.0.0.0\", 80)); print(\"bound-80\", "
            "flush=True)'; touch /var/lib/gitorch/x || echo node-refused; sleep 3600"),
        # fsGroup: the volume is the group's (setgid, so what the pod writes is the group's too).
        pod("fsg", "echo x > /data/f && echo fs-written; sleep 3600",
            pod_sc="{runAsUser: 1234, runAsGroup: 2345, fsGroup: 4567}", volume=True),
        pod("priv", "sleep 3600", pod_sc="{runAsUser: 0}", sc="{privileged: true}"),
    ]
    with controlled(lab, repo, tmp_path, NS) as (repo, controller):
        repo.commit("pods with security contexts", {"apps.yaml": accounts + "".join(pods)})
        first = controller.reconcile()
        assert not first.diagnostics, first.diagnostics
        running = ("ids", "rootcaps", "ro", "alice", "bob", "asked", "plain", "fsg", "priv")
        wait_until("every pod running", lambda: controller.reconcile() and all(
            (status(lab).get(n) or {}).get("containers", [{}])[0].get("pid")
            for n in running), timeout=120, describe=lambda: describe(lab))
        uids = {(r.namespace, r.name): r.uid for r in controller.store.account_ids()}
        assert set(uids) >= {(NS, "alice"), (NS, "bob"), (NS, "default")} and len(set(uids.values())) == len(uids)

        ids = proc_status(lab, "ids")
        assert ids["Uid"].split() == ["1234"] * 4 and ids["Gid"].split() == ["2345"] * 4
        assert ids["Groups"].split() == ["3456", "4567"]
        assert int(ids["CapEff"], 16) == 0 and int(ids["CapBnd"], 16) == 1 << 10  # NET_BIND_SERVICE only
        assert ids["NoNewPrivs"] == "1" and ids["Seccomp"] == "2"
        # Its exec probe runs as it too (the probe passes only as 1234:2345).
        wait_until("ids ready", lambda: controller.reconcile() and status(lab)["ids"]["ready"], timeout=60,
                   describe=lambda: describe(lab))

        wait_until("ids' system call tried", lambda: "process_vm_readv" in log(lab, "ids"), timeout=30)
        assert log(lab, "ids").split() == ["process_vm_readv", "-1", "1"], log(lab, "ids")  # EPERM

        root = proc_status(lab, "rootcaps")
        wait_until("rootcaps' system call tried", lambda: "process_vm_readv" in log(lab, "rootcaps"), timeout=30)
        assert log(lab, "rootcaps").split() == ["process_vm_readv", "0", "0"], log(lab, "rootcaps")  # no filter
        assert root["Uid"].split() == ["0"] * 4
        assert int(root["CapEff"], 16) == int(root["CapBnd"], 16) == (1 << 10) | (1 << 0)
        assert root["NoNewPrivs"] == "0" and root["Seccomp"] == "0"

        wait_until("ro's writes tried", lambda: "node-refused" in log(lab, "ro"), timeout=30)
        out = log(lab, "ro")
        assert [w for w in out.split() if w.endswith(("-written", "-refused"))] == [
            "volume-written", "tmp-refused", "node-refused"], out
        assert out.count("Read-only file system") == 2, out
        ssh_run(lab, "lab-1", "touch /tmp/podsec-node-writable && rm /tmp/podsec-node-writable")  # the node's own

        alice, bob = proc_status(lab, "alice"), proc_status(lab, "bob")
        assert alice["Uid"].split()[0] == alice["Gid"].split()[0] == str(uids[(NS, "alice")])
        assert bob["Uid"].split()[0] == str(uids[(NS, "bob")])
        wait_until("bob's reads tried", lambda: "list-refused" in log(lab, "bob"), timeout=30)
        wait_until("alice wrote its subPath (made for it, its own)", lambda: "subpath-written" in log(lab, "alice"),
                   timeout=30, describe=lambda: log(lab, "alice"))
        out = log(lab, "bob")
        assert "secret-of-alice" not in out and "alice-refused" in out and "Permission denied" in out, out
        # Its processes' environment too: root finds alice's key there, bob's uid does not.
        grep = "grep -l -s ALICE_KEY /proc/[0-9]*/environ"
        wait_until("alice's key in its environment", lambda: ssh_run(lab, "lab-1", grep, check=False).stdout,
                   timeout=30)
        bob_uid = uids[(NS, "bob")]
        as_bob = ssh_run(lab, "lab-1", f"setpriv --reuid={bob_uid} --regid={bob_uid} --clear-groups -- sh -c '{grep}'",
                         check=False)
        assert as_bob.stdout == "" and as_bob.returncode != 0, as_bob

        asked = proc_status(lab, "asked")  # the default account, asked not to be root: its uid
        assert asked["Uid"].split()[0] == str(uids[(NS, "default")])
        plain = proc_status(lab, "plain")  # asked for nothing: the same, root only when asked for
        assert plain["Uid"].split() == [str(uids[(NS, "default")])] * 4 and int(plain["CapEff"], 16) == 0
        wait_until("plain's bind and write tried", lambda: "node-refused" in log(lab, "plain"), timeout=30,
                   describe=lambda: log(lab, "plain"))
        assert "bound-80" in log(lab, "plain").split() and "Permission denied" in log(lab, "plain"), log(lab, "plain")

        wait_until("fsg wrote its volume", lambda: "fs-written" in log(lab, "fsg"), timeout=30,
                   describe=lambda: log(lab, "fsg"))
        volume = f"/var/lib/gitorch/pods/{NS}_fsg/volumes/data"
        owned = ssh_run(lab, "lab-1", f"stat -c '%u %g %a' {volume} {volume}/f").stdout.split("\n")
        assert owned[0] == "1234 4567 2770", owned  # the pod's uid, fsGroup, setgid 2770 (as the agent sets it)
        assert owned[1].split()[:2] == ["1234", "4567"], owned  # written as 1234:2345, the folder's group

        # Privileged root: every capability the node's agent has (its shim's set; a lab node's own
        # sshd may hold fewer than the kernel knows), far beyond the default 14 (SYS_ADMIN, bit 21).
        priv = proc_status(lab, "priv")
        shim = ssh_run(lab, "lab-1", f"cat /proc/{status(lab)['priv']['containers'][0]['pid']}/status").stdout
        node_set = int(next(line for line in shim.splitlines() if line.startswith("CapBnd:")).split()[1], 16)
        assert int(priv["CapBnd"], 16) == int(priv["CapEff"], 16) == node_set and node_set & (1 << 21), (priv, shim)

        def refused() -> str | None:
            controller.reconcile()
            row = next((p for p in controller.store.pods(namespace=NS) if p.name == "nonroot"), None)
            if row is None or row.reason != "CreateContainerConfigError":
                return None
            return row.message

        message = wait_until("nonroot refused", refused, timeout=60)
        assert message is not None and 'container\'s runAsUser breaks non-root policy (pod: "nonroot_psec(' in message
        assert message.endswith(", container: c)"), message
        c = status(lab)["nonroot"]["containers"][0]
        assert c["reason"] == "CreateContainerConfigError" and c["state"] == "waiting" and not c.get("pid")
