"""Fan-out to 50 lab nodes: gitorch cold and warm rounds against Ansible's ping in the same run.

Cold round: connect + authenticate + upload the agent + `facts` on every node.
Warm round: `facts` on every node over the open connections (the controller's steady state).
Anchor: `ansible all -m ping -f 50` against the same nodes. Target: warm round under 0.5 s,
Ansible / gitorch-warm of 10 or more. Then `gitorch nodes` as a user runs it, the whole
process: with no serve (it connects to every node; once before any supervisor runs, so each
node starts the agent, then with a supervisor on every node publishing facts.json, which it
reads with `cat`), and beside a running `gitorch serve`
(it asks serve over the control socket; issue 17's target: 10x Ansible or more). Needs root
(it builds a lab); installs ansible-core from PyPI when missing. Last line: the speed-up of
`gitorch nodes` beside serve over Ansible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shared import git
from gitorch.nodes import lab as labmod
from gitorch.nodes.client import Fleet
from gitorch.nodes.ssh import Endpoint, Pool, SSHOptions


def ansible_bin() -> str:
    found = shutil.which("ansible", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ansible-core"], check=True)
    return str(Path(sys.executable).parent / "ansible")


def round_time(fleet: Fleet) -> float:
    t = time.perf_counter()
    results = fleet.fan_out(lambda c: c.call("facts"), timeout=60)
    took = time.perf_counter() - t
    bad = [o.error for o in results.values() if not o.ok]
    if bad:
        raise SystemExit(f"{len(bad)} node(s) failed: {bad[:3]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--warm-rounds", type=int, default=10)
    parser.add_argument("--subnet", default=os.environ.get("GITORCH_TEST_SUBNET", "10.231.50.0/24"),
                        help="Private network of the lab (default: GITORCH_TEST_SUBNET, else 10.231.50.0/24).")
    args = parser.parse_args()
    labmod.preflight()
    ansible = ansible_bin()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "lab"
        t = time.perf_counter()
        lab = labmod.up(args.nodes, state_dir=state, subnet=args.subnet, nodes_file=state / "nodes.yaml")
        print(f"lab: {args.nodes} nodes up in {time.perf_counter() - t:.2f} s")
        try:
            eps = [Endpoint(n.name, n.address, n.port, "root", str(lab.identity_file), n.host_key) for n in lab.nodes]
            # Start from nodes without the agent so the cold round includes its upload.
            subprocess.run(["sh", "-c", f"rm -rf {state}/nodes/*/data/agent"], check=False)
            with Fleet(eps, Pool(SSHOptions(known_hosts=Path(tmp) / "kh", max_connecting=50))) as fleet:
                cold = round_time(fleet)
                warm = [round_time(fleet) for _ in range(args.warm_rounds)]
            inventory = Path(tmp) / "hosts.ini"
            inventory.write_text(
                "[all]\n"
                + "".join(f"{n.name} ansible_host={n.address}\n" for n in lab.nodes)
                + "[all:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n"
                f"ansible_ssh_private_key_file={lab.identity_file}\n"
            )
            env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_STDOUT_CALLBACK": "minimal",
                   "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o UserKnownHostsFile=/dev/null",
                   "ANSIBLE_LOCAL_TEMP": tmp, "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible"}
            cmd = [ansible, "all", "-i", str(inventory), "-m", "ping", "-f", str(args.nodes)]
            t = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            ansible_time = time.perf_counter() - t
            if res.returncode != 0 or res.stdout.count("SUCCESS") != args.nodes:
                raise SystemExit(f"ansible failed ({res.returncode}): {res.stdout[-500:]} {res.stderr[-500:]}")
            cli_cold, cli_serve = cli_rounds(lab, Path(tmp))
        finally:
            labmod.down(state)
    warm_median = statistics.median(warm)
    print(f"gitorch cold round (connect + agent upload + facts), {args.nodes} nodes: {cold:.3f} s")
    print(f"gitorch warm round (facts on open connections), median of {len(warm)}: {warm_median:.3f} s "
          f"(best {min(warm):.3f}, worst {max(warm):.3f}; target under 0.5 s)")
    print(f"ansible all -m ping -f {args.nodes}: {ansible_time:.3f} s")
    print(f"speed-up, ansible / gitorch warm: {ansible_time / warm_median:.1f}x (target 10x or more)")
    print(f"`gitorch nodes`, the whole process, no serve running (connects to every node; supervisors "
          f"publish facts.json), median of 3: "
          f"{cli_cold:.3f} s, {ansible_time / cli_cold:.1f}x faster than ansible (target 10x or more)")
    print(f"`gitorch nodes`, the whole process, beside a running serve (asked over its control socket): "
          f"{cli_serve:.3f} s")
    print(f"speed-up, ansible / `gitorch nodes` beside serve: {ansible_time / cli_serve:.1f}x (target 10x or more)")


def cli_rounds(lab: labmod.Lab, tmp: Path) -> tuple[float, float]:
    """`gitorch nodes -o json` timed as a user runs it: first with no serve (median of 3, each with a
    fresh state folder and new connections), then beside a `gitorch serve` of the same repository
    after its first pass (median of 5)."""
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "nodes.yaml").write_text((lab.state_dir / "nodes.yaml").read_text())
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "nodes", cwd=repo)
    # As installed (pip byte-compiles a wheel's modules): without bytecode each run would compile
    # gitorch's sources anew, ~0.2 s of CPU no user pays.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["GITORCH_STATE_DIR"] = str(tmp / "cli-state")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(labmod.__file__).resolve().parents[1])],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    gitorch = [sys.executable, "-m", "gitorch"]

    def nodes_cmd(state: str = "cli-state") -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run([*gitorch, "nodes", "-o", "json", "--repo", str(repo)], capture_output=True,
                             env={**env, "GITORCH_STATE_DIR": str(tmp / state)}, text=True, timeout=300)
        took = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"gitorch nodes failed: {res.stderr[-500:]}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"  `gitorch nodes` ({state}): {took:.3f} s, {cpu:.2f} s of CPU in the process", flush=True)
        return took

    # Each cold run a new process with a fresh state folder: no serve, new connections. First
    # with no supervisor on the nodes (each node starts the agent to answer), then as a cluster
    # runs: a supervisor on every node publishing facts.json, which the CLI reads with `cat`.
    asked = nodes_cmd("cold-agent")
    start_supervisors(lab, tmp)
    cold = statistics.median(nodes_cmd(f"cold-{i}") for i in range(3))
    print(f"`gitorch nodes`, no serve, no supervisor on the nodes (the agent answers): {asked:.3f} s", flush=True)
    serve = subprocess.Popen([*gitorch, "serve", "--repo", str(repo), "--interval", "3600"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = tmp / "cli-state" / "control.sock"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sock.exists() and json_rows_via(gitorch, repo, env) == "serve":
                break
            time.sleep(0.5)
        else:
            raise SystemExit("serve never answered `gitorch nodes` over its control socket")
        with_serve = statistics.median(nodes_cmd() for _ in range(5))
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    return cold, with_serve


def start_supervisors(lab: labmod.Lab, tmp: Path) -> None:
    """A supervisor on every node (an empty sync starts one, as `gitorch apply` or serve would);
    back when each has published facts.json."""
    eps = [Endpoint(n.name, n.address, n.port, "root", str(lab.identity_file), n.host_key) for n in lab.nodes]
    with Fleet(eps, Pool(SSHOptions(known_hosts=tmp / "kh-sync", max_connecting=50))) as fleet:
        bad = [o.error for o in fleet.fan_out(lambda c: c.call("sync", {"pods": []}), timeout=120).values()
               if not o.ok]
    if bad:
        raise SystemExit(f"{len(bad)} node(s) failed to start a supervisor: {bad[:3]}")
    published = [lab.state_dir / "nodes" / n.name / "data" / "facts.json" for n in lab.nodes]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in published):
        if time.monotonic() > deadline:
            raise SystemExit("supervisors did not publish facts.json within 60 s")
        time.sleep(0.5)
    time.sleep(5)  # past the supervisors' start-up (restore, first checks): as in a running cluster


def json_rows_via(gitorch: list[str], repo: Path, env: dict[str, str]) -> str:
    res = subprocess.run([*gitorch, "nodes", "-o", "json", "--repo", str(repo)], env=env, capture_output=True,
                         text=True, timeout=300)
    vias = {r.get("via") for r in json.loads(res.stdout or "[]")}
    return vias.pop() if len(vias) == 1 else ""


if __name__ == "__main__":
    main()
