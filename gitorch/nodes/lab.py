"""The local lab: N real SSH nodes on this machine, as kind or minikube give a cluster.

Each node is a network namespace with a veth into a host bridge, its own UTS, mount and
PID namespaces, private `/run`, `/root`, `/tmp`, data and container dirs, and its own
sshd as PID 1. Everything is recorded in `<state_dir>/lab.json` before it is created,
and every name carries a prefix hashed from the state dir, so `down` can clean up after
a crash at any point (even without the record) and two labs never share a name.

Containers: each node also has its own cgroup namespace, rooted at a per-node cgroup
(`<caller's cgroup>/<prefix>-<node>` in every hierarchy the host mounts under
/sys/fs/cgroup), and mounts those hierarchies at /sys/fs/cgroup as the host does. So the
node agent's resource limits and podman (with runc) work inside a node without two nodes
sharing a cgroup, and podman's state (`/var/lib/containers`, `/run/containers`,
`/run/libpod`, `/run/runc`) is per node. `up(..., runtimes={"lab-1"})` gives only the
named nodes the machine's container runtimes: on the others /dev/null is bind-mounted over
the podman and docker binaries, so to the agent (and anyone logged in) they are not
installed there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitorch.model.errors import GitorchError

DEFAULT_SUBNET = "10.231.0.0/24"
SSHD = "/usr/sbin/sshd"
NODE_DATA_DIR = "/var/lib/gitorch"
"""Where a node's private data dir is mounted inside the node (for the node agent)."""

_RECORD = "lab.json"
_NODE_MOUNT = "/run/gitorch-lab"  # where a node sees its own directory of the state dir
_PORT = 22
_FIRST_HOST_OFFSET = 10  # nodes get .11, .12, ...; .1 is the host, .2-.10 stay free
_BANNER_TIMEOUT = 10.0
_STARTUP_SLACK = 0.1  # extra seconds per node: on a small machine 50 sshds start at once
_KILL_WAIT = 5.0
_LINK_WAIT = 3.0  # how long the kernel gets to free veths of deleted namespaces
_DRAIN_WAIT = 1.0  # how long a killed node's processes get to exit before they are hunted
_NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CGROUP_ROOT = "/sys/fs/cgroup"
CONTAINER_RUNTIMES = ("podman", "docker")
"""Binaries a node left out of `up(runtimes=...)` does not see (the node agent's runtimes)."""
# Mount points shared with the host's /etc and /var/lib that each node gets a private copy of.
_PRIVATE_DIRS = (
    ("root", "/root", 0o700),
    ("tmp", "/tmp", 0o1777),
    ("data", NODE_DATA_DIR, 0o755),
    ("netns", "/etc/netns", 0o755),
    ("containers", "/var/lib/containers", 0o700),
)
_UNSAFE_PATH = re.compile(r"[\s\"'\\#$`]")


class LabError(GitorchError):
    """The lab cannot be created, reached or removed; the message says what to do."""


@dataclass(frozen=True)
class LabNode:
    """One lab node as a client sees it."""

    name: str
    address: str
    port: int
    host_key: str
    """Public host key line, `ssh-ed25519 AAAA...`, without a comment."""
    pid: int
    """Host PID of the node's `unshare` process (0 while it was not started yet)."""


@dataclass(frozen=True)
class Lab:
    """A recorded lab: where it lives, its network and its nodes."""

    state_dir: Path
    subnet: str
    bridge: str
    identity_file: Path
    """Private key that logs in as root on every node."""
    nodes: tuple[LabNode, ...]


# ---------------------------------------------------------------------------- preflight


def _which(name: str) -> str | None:
    # `sudo` keeps sbin on PATH but a plain root login shell may not; look there too.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def preflight() -> None:
    """Raise LabError naming what this machine lacks to run a lab (root and tools)."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, mounts): run as root, "
            "e.g. sudo gitorch lab up 3"
        )
    missing = []
    if _which("ip") is None:
        missing.append("ip (apt-get install -y iproute2)")
    if not os.access(SSHD, os.X_OK):
        missing.append(f"{SSHD} (apt-get install -y openssh-server)")
    if _which("ssh-keygen") is None:
        missing.append("ssh-keygen (apt-get install -y openssh-client)")
    for tool, package in (("unshare", "util-linux"), ("mount", "mount")):
        if _which(tool) is None:
            missing.append(f"{tool} (apt-get install -y {package})")
    if missing:
        raise LabError("the lab needs " + "; ".join(missing))


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:  # preflight ran first, so only a machine changing under us gets here
        raise LabError(f"{name} not found; run preflight")
    return path


# ---------------------------------------------------------------------------- names


@dataclass(frozen=True)
class _Names:
    """Interface and namespace names of one lab, derived from its state dir."""

    prefix: str

    @classmethod
    def of(cls, state_dir: Path) -> _Names:
        # 24 bits of the path keep names short (an interface name has at most 15 chars).
        return cls("gl" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:6])

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def bridge_mac(self) -> str:
        # A fixed MAC: otherwise a bridge takes its lowest port's MAC, which changes as
        # nodes come and go and leaves stale ARP entries on the nodes.
        h = self.prefix[2:]
        return f"02:67:6c:{h[0:2]}:{h[2:4]}:{h[4:6]}"

    def veth(self, index: int) -> str:
        return f"{self.prefix}v{index}"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def is_ours(self, ifname: str) -> bool:
        return ifname == self.bridge or re.fullmatch(rf"{self.prefix}v\d+", ifname) is not None


def _node_name(index: int) -> str:
    return f"lab-{index}"


# ---------------------------------------------------------------------------- record


def _resolve(state_dir: Path) -> Path:
    state_dir = state_dir.expanduser().resolve()
    if state_dir == Path("/run") or Path("/run") in state_dir.parents:
        raise LabError(
            f"lab state dir {state_dir} is under /run, which every node replaces with its "
            "own; use another one (GITORCH_STATE_DIR)"
        )
    if _UNSAFE_PATH.search(str(state_dir)):
        # The path goes into each node's fstab and ssh's UserKnownHostsFile, which split
        # on spaces, and into shell scripts.
        raise LabError(
            f"lab state dir {str(state_dir)!r} contains spaces, quotes or shell characters; "
            "use another one (GITORCH_STATE_DIR)"
        )
    return state_dir


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save(state_dir: Path, record: dict[str, Any]) -> None:
    # No fsync: the record guards against a crashed process, and a crashed machine
    # loses the namespaces (they live in /run) along with everything else.
    _write_atomic(state_dir / _RECORD, json.dumps(record, indent=2) + "\n")


def _read_record(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / _RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"{path}: unreadable lab record ({exc}); `gitorch lab down` still removes the lab"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise LabError(f"{path}: not a lab record; `gitorch lab down` still removes the lab")
    return data


def _lab_from(state_dir: Path, record: dict[str, Any]) -> Lab:
    nodes = tuple(
        LabNode(
            name=n["name"],
            address=n["address"],
            port=int(n["port"]),
            host_key=n["host_key"],
            pid=int(n.get("pid") or 0),
        )
        for n in record["nodes"]
    )
    return Lab(
        state_dir=state_dir,
        subnet=record["subnet"],
        bridge=record["bridge"],
        identity_file=Path(record["identity_file"]),
        nodes=nodes,
    )


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialize up/down on one state dir (two `up`s at once would fight over names)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lab.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def load(state_dir: Path) -> Lab | None:
    """The lab recorded in `state_dir` (possibly half-started after a crash), or None."""
    state_dir = _resolve(state_dir)
    record = _read_record(state_dir)
    return None if record is None else _lab_from(state_dir, record)


# ---------------------------------------------------------------------------- processes


def _start_time(pid: int) -> int | None:
    """The kernel start time of `pid`, which tells a recorded PID from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] == "Z":  # a zombie is dead, it only waits for its parent to reap it
        return None
    return int(fields[19])


def _is_alive(pid: int, start: int | None) -> bool:
    # Without a start time the PID may since belong to anyone: never act on it.
    return pid > 0 and start is not None and _start_time(pid) == start


def _reap(pid: int) -> None:
    # The process that ran `up` (a test session, say) is the parent of the nodes it started.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _netns_pids(namespaces: list[str]) -> dict[str, list[int]]:
    """PIDs in each named network namespace: what `ip netns pids` does, in one /proc pass."""
    inodes: dict[tuple[int, int], str] = {}
    for ns in namespaces:
        try:
            st = os.stat(f"/run/netns/{ns}")
        except OSError:
            continue
        inodes[(st.st_dev, st.st_ino)] = ns
    found: dict[str, list[int]] = {ns: [] for ns in inodes.values()}
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        ns_name = inodes.get((st.st_dev, st.st_ino))
        if ns_name is not None and _start_time(int(entry)) is not None:  # zombies are done
            found[ns_name].append(int(entry))
    return found


def _banner(address: str, port: int, timeout: float) -> bool:
    """Whether an SSH server answers on address:port with its `SSH-` banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"SSH-")
    except OSError:
        return False


def _run(argv: list[str], *, stdin: str | None = None, what: str) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{what} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


# ---------------------------------------------------------------------------- cgroups, runtimes


@dataclass(frozen=True)
class _Hierarchy:
    """A cgroup hierarchy the host mounts under /sys/fs/cgroup, which each node mounts too."""

    mount_point: str
    fstype: str  # cgroup (v1) | cgroup2
    options: str  # what a node mounts it with: its controllers/name, e.g. "rw,cpu,cpuacct"
    own: str  # the cgroup dir of this process in it, under which nodes get theirs


def _cgroup_hierarchies() -> list[_Hierarchy]:
    """The host's cgroup mounts under /sys/fs/cgroup (v1, hybrid or v2), in mount order."""
    try:
        own_lines = Path("/proc/self/cgroup").read_text().splitlines()
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    own: dict[str, str] = {}  # "cpu,cpuacct" / "name=systemd" / "" (v2) -> cgroup path
    for line in own_lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    found = []
    for line in mountinfo:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        root, mount_point = fields[3], fields[4]
        fstype, super_options = fields[sep + 1], fields[sep + 3]
        if fstype not in ("cgroup", "cgroup2") or not (
            mount_point == _CGROUP_ROOT or mount_point.startswith(_CGROUP_ROOT + "/")
        ):
            continue
        options = [o for o in super_options.split(",") if o not in ("rw", "ro") and "=" not in o]
        options += [o for o in super_options.split(",") if o.startswith("name=")]
        if fstype == "cgroup2":
            key: str | None = ""
        else:  # the /proc/self/cgroup line whose controllers this mount carries
            key = next((k for k in own if k and set(k.split(",")) <= set(options)), None)
        path = own.get(key) if key is not None else None
        if path is None or _UNSAFE_PATH.search(mount_point) or not (path + "/").startswith(root.rstrip("/") + "/"):
            continue
        path = path[len(root.rstrip("/")) :]
        found.append(_Hierarchy(mount_point, fstype, ",".join(["rw", *options]), path))
    return found


def _node_cgroups(names: _Names, node: str, hierarchies: list[_Hierarchy]) -> list[str]:
    """The host-side cgroup dirs of one node, one per hierarchy."""
    return [os.path.join(h.mount_point, h.own.lstrip("/"), names.netns(node)) for h in hierarchies]


def _lab_cgroups(names: _Names) -> list[str]:
    """Node cgroup dirs carrying this lab's prefix under this process's own cgroups."""
    found = []
    for h in _cgroup_hierarchies():
        base = os.path.join(h.mount_point, h.own.lstrip("/"))
        with contextlib.suppress(OSError):
            found += [os.path.join(base, e) for e in os.listdir(base) if e.startswith(names.prefix + "-")]
    return found


def _make_cgroups(dirs: list[str]) -> list[str]:
    """Create a node's cgroup dirs; returns those that exist (the node joins only those)."""
    made = []
    for d in dirs:
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        except OSError:
            continue  # the node then stays in the caller's cgroup of that hierarchy
        made.append(d)
        for name in ("cpuset.cpus", "cpuset.mems"):
            # A v1 cpuset starts empty and takes no process until it is given CPUs and memory nodes.
            with contextlib.suppress(OSError):
                if not _read(Path(d, name)):
                    Path(d, name).write_text(_read(Path(os.path.dirname(d), name)))
    return made


def _remove_cgroups(dirs: list[str]) -> list[str]:
    """Remove node cgroup dirs with everything created inside them; returns what is left."""
    deadline = time.monotonic() + _KILL_WAIT
    while True:
        left = []
        for top in dirs:
            if not os.path.isdir(top):
                continue
            for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            if os.path.isdir(top):
                left.append(top)
        if not left or time.monotonic() > deadline:
            return left
        # Only what ran inside a node sits in its cgroups; the kernel kills a node's whole
        # PID namespace with it, so this is a straggler on its way out at most.
        for top in left:
            for d, _, _ in os.walk(top):
                for pid in _read(Path(d, "cgroup.procs")).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.02)


def _cgroup_fstab(hierarchies: list[_Hierarchy]) -> list[str]:
    """fstab lines mounting the host's cgroup hierarchies in a node, as the host has them."""
    if any(h.mount_point == _CGROUP_ROOT for h in hierarchies):  # cgroup v2 only
        return [f"cgroup2 {_CGROUP_ROOT} cgroup2 rw 0 0"]
    if not hierarchies:
        return []
    lines = [f"gitorch-lab-cgroup {_CGROUP_ROOT} tmpfs mode=0755 0 0"]
    lines += [f"cgroup {h.mount_point} {h.fstype} {h.options},X-mount.mkdir 0 0" for h in hierarchies]
    return lines


def _runtime_binaries() -> list[str]:
    """Every container runtime binary a node could run from its PATH (real paths)."""
    found = set()
    for name in CONTAINER_RUNTIMES:
        for d in _NODE_PATH.split(":"):
            path = os.path.join(d, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                real = os.path.realpath(path)
                if not _UNSAFE_PATH.search(real):
                    found.add(real)
    return sorted(found)


# ---------------------------------------------------------------------------- up


def _plan(count: int, subnet: str) -> tuple[ipaddress.IPv4Network, list[str]]:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise LabError(f"invalid lab subnet {subnet!r}: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise LabError(f"lab subnet {subnet} must be IPv4, e.g. {DEFAULT_SUBNET}")
    room = net.num_addresses - _FIRST_HOST_OFFSET - 2  # minus the broadcast address
    if count < 1:
        raise LabError(f"a lab needs at least 1 node, got {count}")
    if count > room:
        raise LabError(f"subnet {subnet} has room for {max(room, 0)} nodes, not {count}")
    addrs = [str(net.network_address + _FIRST_HOST_OFFSET + i) for i in range(1, count + 1)]
    return net, addrs


def _check_subnet_free(net: ipaddress.IPv4Network) -> None:
    """Refuse a subnet already on a host interface: routes would break both users."""
    out = _run([_tool("ip"), "-j", "-4", "addr", "show"], what="ip addr show")
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            iface = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
            if iface.network.overlaps(net):
                raise LabError(
                    f"subnet {net} overlaps {iface} on interface {link['ifname']}; "
                    "choose another subnet (or `gitorch lab down` the lab that uses it)"
                )


def _ensure_keys(paths: list[Path], comments: list[str]) -> None:
    """Generate the ed25519 keys that do not exist yet, in parallel."""
    keygen = _tool("ssh-keygen")
    procs = []
    for path, comment in zip(paths, comments, strict=True):
        if path.exists() and _pub(path).exists():
            continue
        path.unlink(missing_ok=True)
        argv = [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append((path, proc))
    for path, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise LabError(f"ssh-keygen for {path} failed: {out.decode(errors='replace').strip()}")


def _pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _public_key(path: Path) -> str:
    fields = _pub(path).read_text().split()
    return f"{fields[0]} {fields[1]}"


def _sshd_config(address: str) -> str:
    return "\n".join(
        [
            f"ListenAddress {address}:{_PORT}",
            # OpenSSH 9's default post-quantum key exchange costs ~85 ms of a ~210 ms login
            # here; a throwaway local lab gains nothing from it.
            "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
            f"HostKey {_NODE_MOUNT}/ssh_host_ed25519_key",
            "PidFile none",
            f"AuthorizedKeysFile {_NODE_MOUNT}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "MaxStartups 200",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _write_node_files(
    state_dir: Path,
    node: dict[str, Any],
    hosts: str,
    resolv: str,
    prefixlen: int,
    extra_mounts: Sequence[str] = (),
) -> Path:
    """Create one node's directory: private dirs, keys, config files and its fstab."""
    d: Path = state_dir / "nodes" / node["name"]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    # The node dir is mounted at _NODE_MOUNT first and every other mount takes its source
    # from there: a state dir under /root or /tmp would be hidden by those mounts.
    fstab = [
        "gitorch-lab-run /run tmpfs mode=0755 0 0",
        f"{d} {_NODE_MOUNT} none bind,X-mount.mkdir 0 0",
    ]
    for sub, target, mode in _PRIVATE_DIRS:
        (d / sub).mkdir()
        os.chmod(d / sub, mode)  # mkdir's mode is masked by the umask
        fstab.append(f"{_NODE_MOUNT}/{sub} {target} none bind 0 0")
    for name, text in (("hosts", hosts), ("resolv.conf", resolv)):
        (d / name).write_text(text)
        fstab.append(f"{_NODE_MOUNT}/{name} /etc/{name} none bind 0 0")
    fstab.extend(extra_mounts)
    (d / "fstab").write_text("\n".join(fstab) + "\n")
    (d / "net.batch").write_text(
        f"link set lo up\naddr add {node['address']}/{prefixlen} dev eth0\nlink set eth0 up\n"
    )
    shutil.copy(state_dir / "keys" / f"host-{node['name']}", d / "ssh_host_ed25519_key")
    shutil.copy(state_dir / "id_ed25519.pub", d / "authorized_keys")
    (d / "sshd_config").write_text(_sshd_config(node["address"]))
    return d


def _node_script(name: str, node_dir: Path) -> str:
    q = shlex.quote
    # One `ip -batch` and one `mount -a` keep process starts per node low; sshd must be
    # PID 1 so that killing unshare (--kill-child) takes the whole node with it.
    return "\n".join(
        [
            "set -e",
            f"echo {q(name)} > /proc/sys/kernel/hostname",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
            f"{q(_tool('ip'))} -batch {q(str(node_dir / 'net.batch'))}",
            f"{q(_tool('mount'))} -a -T {q(str(node_dir / 'fstab'))}",
            "mkdir -m 0755 /run/sshd",
            f"exec {SSHD} -D -e -f {_NODE_MOUNT}/sshd_config",
        ]
    )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _log_tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _wait_ready(
    nodes: list[dict[str, Any]], procs: dict[str, subprocess.Popen[bytes]], logs: Path
) -> None:
    """Wait until every node's sshd sends its banner; LabError names the first that did not."""
    timeout = _BANNER_TIMEOUT + _STARTUP_SLACK * len(nodes)

    def wait_one(node: dict[str, Any]) -> str | None:
        deadline = time.monotonic() + timeout
        proc = procs[node["name"]]
        port_state = Path(f"/sys/class/net/{node['veth']}/brport/state")
        while True:
            code = proc.poll()
            if code is not None:
                tail = _log_tail(logs / f"{node['name']}.log")
                detail = f": {tail}" if tail else ""
                return f"{node['name']}: node exited with code {code}{detail}"
            # Probe only once the node's link is up and its bridge port forwards (state 3):
            # a SYN sent earlier waits a whole ARP retry (1 s) before it gets anywhere.
            if _read(port_state) == "3" and _banner(node["address"], _PORT, 1.0):
                return None
            if time.monotonic() > deadline:
                return (
                    f"{node['name']}: sshd did not answer on {node['address']}:{_PORT} "
                    f"within {timeout:.0f} s"
                )
            time.sleep(0.02)

    with ThreadPoolExecutor(max_workers=min(64, len(nodes))) as pool:
        errors = [e for e in pool.map(wait_one, nodes) if e is not None]
    if errors:
        more = f" (and {len(errors) - 1} more nodes)" if len(errors) > 1 else ""
        raise LabError(f"{errors[0]}{more}; logs in {logs}")


def up(
    count: int,
    *,
    state_dir: Path,
    subnet: str = DEFAULT_SUBNET,
    nodes_file: Path | None = None,
    runtimes: Collection[str] | None = None,
) -> Lab:
    """Start a lab of `count` nodes and wait until each answers SSH.

    `runtimes` names the nodes that get this machine's container runtimes (podman,
    docker); the others see none of them installed. None, the default, gives them to all.

    A lab already recorded in `state_dir` is returned as is when it has the same count,
    subnet and runtimes and every node is alive; otherwise it is brought down first. On
    failure everything started is removed again (logs stay in `<state_dir>/logs`).
    """
    net, addresses = _plan(count, subnet)
    with_runtimes = None if runtimes is None else sorted(set(runtimes))
    unknown = sorted(set(with_runtimes or ()) - {_node_name(i) for i in range(1, count + 1)})
    if unknown:
        raise LabError(f"runtimes names unknown nodes {', '.join(unknown)}: nodes are lab-1 to lab-{count}")
    preflight()
    state_dir = _resolve(state_dir)
    with _locked(state_dir):
        lab = _reuse(state_dir, count, str(net), with_runtimes)
        if lab is None:
            _down(state_dir)
            try:
                lab = _up(state_dir, net, addresses, with_runtimes)
            except BaseException:
                # Leave nothing half-made behind, also on Ctrl-C; the error says why.
                with contextlib.suppress(Exception):
                    _down(state_dir)
                raise
    if nodes_file is not None:
        write_nodes_file(lab, nodes_file)
    return lab


def _reuse(state_dir: Path, count: int, subnet: str, runtimes: list[str] | None) -> Lab | None:
    try:
        record = _read_record(state_dir)
    except LabError:
        return None
    if (
        record is None
        or record.get("state") != "up"
        or record.get("subnet") != subnet
        or len(record["nodes"]) != count
        or record.get("runtimes") != runtimes
    ):
        return None
    lab = _lab_from(state_dir, record)
    if all(s["alive"] for s in status(state_dir)):
        return lab
    return None


def _up(
    state_dir: Path, net: ipaddress.IPv4Network, addresses: list[str], runtimes: list[str] | None
) -> Lab:
    names = _Names.of(state_dir)
    _check_subnet_free(net)
    ip = _tool("ip")
    for sub in ("keys", "nodes", "logs"):
        (state_dir / sub).mkdir(exist_ok=True)
    for _, target, _ in _PRIVATE_DIRS:
        # Bind mounts need a mount point; on the host these stay empty and unused.
        os.makedirs(target, exist_ok=True)

    node_names = [_node_name(i) for i in range(1, len(addresses) + 1)]
    identity = state_dir / "id_ed25519"
    host_keys = [state_dir / "keys" / f"host-{n}" for n in node_names]
    _ensure_keys([identity, *host_keys], ["gitorch-lab", *node_names])

    host_address = str(net.network_address + 1)
    hierarchies = _cgroup_hierarchies()
    nodes: list[dict[str, Any]] = [
        {
            "name": name,
            "address": addr,
            "port": _PORT,
            "host_key": _public_key(key),
            "namespace": names.netns(name),
            "veth": names.veth(i),
            "pid": 0,
            "pid_start": None,
            "cgroups": _node_cgroups(names, name, hierarchies),
        }
        for i, (name, addr, key) in enumerate(zip(node_names, addresses, host_keys, strict=True), 1)
    ]
    record: dict[str, Any] = {
        "version": 1,
        "state": "starting",
        "subnet": str(net),
        "host_address": host_address,
        "bridge": names.bridge,
        "identity_file": str(identity),
        "runtimes": runtimes,
        "nodes": nodes,
    }
    # Recorded before anything exists, so `down` finds every name whatever happens next.
    _save(state_dir, record)

    hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    hosts += f"{host_address} lab-host\n"
    hosts += "".join(f"{n['address']} {n['name']}\n" for n in nodes)
    # The host's side of the bridge is where a cluster DNS server can listen; until one
    # does, lookups fail at once (port unreachable) rather than stalling for seconds.
    resolv = f"nameserver {host_address}\noptions timeout:1 attempts:1\n"
    batch = [
        f"link add {names.bridge} address {names.bridge_mac} type bridge",
        f"addr add {host_address}/{net.prefixlen} dev {names.bridge}",
        f"link set {names.bridge} up",
    ]
    for n in nodes:
        batch += [
            f"netns add {n['namespace']}",
            f"link add {n['veth']} type veth peer name eth0 netns {n['namespace']}",
            f"link set {n['veth']} master {names.bridge} up",
        ]
    _run([ip, "-batch", "-"], stdin="\n".join(batch) + "\n", what="creating the lab network")

    unshare = [
        _tool("unshare"), "--uts", "--mount", "--pid", "--cgroup", "--fork", "--kill-child",
        "--mount-proc", "--propagation", "private", "--",
    ]  # fmt: skip
    env = {"PATH": _NODE_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    cgroup_mounts = _cgroup_fstab(hierarchies)
    hidden = [f"/dev/null {path} none bind 0 0" for path in _runtime_binaries()]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for n in nodes:
        # Each node starts as soon as its files exist: its start-up (CPU) then overlaps
        # with writing the next node's files (disk latency).
        extra = cgroup_mounts + (hidden if runtimes is not None and n["name"] not in runtimes else [])
        node_dir = _write_node_files(state_dir, n, hosts, resolv, net.prefixlen, extra)
        script = _node_script(n["name"], node_dir)
        argv = [ip, "netns", "exec", n["namespace"], *unshare, "/bin/sh", "-c", script]
        cgroups = _make_cgroups(n["cgroups"])
        if cgroups:
            # Join the node's cgroups before `unshare --cgroup`, which makes them the node's
            # cgroup root; on the host side, because `ip netns exec` hides the cgroup fs.
            join = "".join(
                f"echo $$ 2>/dev/null > {shlex.quote(d + '/cgroup.procs')} || "
                f"echo {shlex.quote(f'gitorch-lab: cannot join cgroup {d}')} >&2; "
                for d in cgroups
            )
            argv = ["/bin/sh", "-c", join + 'exec "$@"', "gitorch-lab-node", *argv]
        with open(state_dir / "logs" / f"{n['name']}.log", "wb") as log:
            # A new session: Ctrl-C in the terminal that ran `up` must not stop the lab.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        procs[n["name"]] = proc
        # sh and `ip netns exec` exec the next command in place, so this PID is unshare's.
        n["pid"], n["pid_start"] = proc.pid, _start_time(proc.pid)
    # Any process missing from the record still sits in a recorded namespace.
    _save(state_dir, record)

    _wait_ready(nodes, procs, state_dir / "logs")
    known = "".join(f"{n['name']},{n['address']} {n['host_key']}\n" for n in nodes)
    _write_atomic(state_dir / "known_hosts", known)
    record["state"] = "up"
    _save(state_dir, record)
    return _lab_from(state_dir, record)


# ---------------------------------------------------------------------------- down


def down(state_dir: Path) -> list[str]:
    """Remove the lab of `state_dir`, from its record and its name prefix; idempotent.

    Keys stay (a new lab keeps its host keys, so Node manifests stay valid); node
    directories and the record go. Returns one line per thing removed.
    """
    state_dir = _resolve(state_dir)
    if not state_dir.exists():
        return []
    with _locked(state_dir):
        return _down(state_dir)


def _down(state_dir: Path) -> list[str]:
    names = _Names.of(state_dir)
    try:
        record = _read_record(state_dir)
    except LabError:
        record = None  # a damaged record: the name prefix still finds everything
    nodes: list[dict[str, Any]] = list(record["nodes"]) if record else []
    bridges = {record["bridge"]} if record else set()
    bridges.add(names.bridge)

    # What exists now: recorded names plus anything carrying this lab's prefix.
    try:
        present_ns = set(os.listdir("/run/netns"))
    except FileNotFoundError:
        present_ns = set()
    ip = _which("ip")
    links = _links(ip) if ip is not None else set()
    known_ns = {n["namespace"] for n in nodes}
    known_links = {n["veth"] for n in nodes}
    for ns in sorted(present_ns - known_ns):
        if ns.startswith(names.prefix + "-"):
            nodes.append({"name": ns[len(names.prefix) + 1 :], "namespace": ns, "veth": None})
    extra_links = sorted(lk for lk in links - known_links - bridges if names.is_ours(lk))
    recorded_pids = [n for n in nodes if _is_alive(int(n.get("pid") or 0), n.get("pid_start"))]
    cgroups = [d for d in dict.fromkeys([c for n in nodes for c in n.get("cgroups") or []] + _lab_cgroups(names))
               if os.path.isdir(d)]
    node_dirs = state_dir / "nodes"
    anything = (
        recorded_pids
        or any(n["namespace"] in present_ns or n.get("veth") in links for n in nodes)
        or extra_links
        or bridges & links
        or cgroups
    )
    lines: list[str] = []
    if not anything:
        if (state_dir / _RECORD).exists() or node_dirs.exists():
            _forget(state_dir, lines)
        return lines
    preflight()

    actions: dict[str, list[str]] = {n["name"]: [] for n in nodes}
    killed: list[int] = []
    # unshare ignores SIGTERM; SIGKILL on it makes --kill-child take the node's PID 1, and
    # with it the node's whole PID namespace, along.
    for n in recorded_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(n["pid"]), signal.SIGKILL)
            killed.append(int(n["pid"]))
            actions[n["name"]].append(f"killed pid {n['pid']}")
    _wait_gone(killed)
    # Then whatever is still in a namespace (a node from a crashed `up`, or something
    # started with `ip netns exec`), after giving the killed nodes a moment to empty out.
    namespaces = [n["namespace"] for n in nodes if n["namespace"] in present_ns]
    deadline = time.monotonic() + (_DRAIN_WAIT if killed else 0.0)
    while True:
        by_ns = _netns_pids(namespaces)
        if not any(by_ns.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    stray_all: list[int] = []
    for n in nodes:
        stray = by_ns.get(n["namespace"], [])
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stray:
            stray_all += stray
            actions[n["name"]].append("killed leftover pids " + ",".join(map(str, stray)))
    _wait_gone(stray_all)

    veths = {n["veth"] for n in nodes if n.get("veth") in links} | set(extra_links)
    for n in nodes:
        if n.get("veth") in links:
            actions[n["name"]].append(f"deleted link {n['veth']}")
        if n["namespace"] in present_ns:
            actions[n["name"]].append(f"deleted namespace {n['namespace']}")
    assert ip is not None  # something exists, so preflight found ip
    # Namespaces first: the kernel then frees all their veth pairs in one batch (~70 ms for
    # 50 nodes), where deleting veths one by one waits a grace period each (~1.5 s).
    _ip_batch(ip, [f"netns del {n['namespace']}" for n in nodes if n["namespace"] in present_ns])
    deadline = time.monotonic() + _LINK_WAIT
    while veths & _links(ip) and time.monotonic() < deadline:
        time.sleep(0.02)
    # A veth outlives the wait only if something still holds its namespace: delete it.
    leftover = sorted(veths & _links(ip))
    _ip_batch(ip, [f"link del {lk}" for lk in leftover + sorted(bridges & links)])
    cgroups_left = _remove_cgroups(cgroups)
    for n in nodes:
        if any(os.path.basename(d) == n["namespace"] and d not in cgroups_left for d in cgroups):
            actions.setdefault(n["name"], []).append("removed cgroups")
    lines += [f"{name}: {', '.join(done)}" for name, done in actions.items() if done]
    lines += [f"deleted link {lk}" for lk in extra_links]
    lines += [f"deleted bridge {br}" for br in sorted(bridges & links)]

    _check_gone(names, nodes, bridges, ip, cgroups_left)
    _forget(state_dir, lines)
    return lines


def _links(ip: str) -> set[str]:
    out = _run([ip, "-j", "link", "show"], what="ip link show")
    return {link["ifname"] for link in json.loads(out or "[]")}


def _ip_batch(ip: str, commands: list[str]) -> None:
    """Run `ip` commands, going on past errors: what is left over is checked afterwards."""
    if commands:
        subprocess.run(
            [ip, "-force", "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + _KILL_WAIT
    pending = list(pids)
    while pending:
        for pid in pending:
            _reap(pid)
        pending = [p for p in pending if _start_time(p) is not None]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes {pending} did not exit after SIGKILL; check `ps`")
        time.sleep(0.01)


def _check_gone(
    names: _Names, nodes: list[dict[str, Any]], bridges: set[str], ip: str | None, cgroups: list[str]
) -> None:
    left: list[str] = list(cgroups)
    try:
        recorded = {n["namespace"] for n in nodes}
        left += sorted(
            ns
            for ns in os.listdir("/run/netns")
            if ns.startswith(names.prefix + "-") or ns in recorded
        )
    except FileNotFoundError:
        pass
    if ip is not None:
        veths = {n.get("veth") for n in nodes}
        left += sorted(lk for lk in _links(ip) if names.is_ours(lk) or lk in bridges or lk in veths)
    if left:
        how = "`ip` (and `rmdir` for cgroup dirs)" if cgroups else "`ip`"
        raise LabError(f"could not remove {', '.join(left)}; remove them with {how} and retry")


def _forget(state_dir: Path, lines: list[str]) -> None:
    node_dirs = state_dir / "nodes"
    if node_dirs.exists():
        shutil.rmtree(node_dirs)
        lines.append(f"removed node directories {node_dirs}")
    record = state_dir / _RECORD
    if record.exists():
        record.unlink()
        lines.append(f"removed lab record {record}")


# ---------------------------------------------------------------------------- clients


def status(state_dir: Path) -> list[dict[str, Any]]:
    """Per recorded node: name, address, pid and alive (process running and SSH answering)."""
    state_dir = _resolve(state_dir)
    record = _read_record(state_dir)
    if record is None:
        return []

    def one(n: dict[str, Any]) -> dict[str, Any]:
        pid = int(n.get("pid") or 0)
        alive = _is_alive(pid, n.get("pid_start")) and _banner(n["address"], int(n["port"]), 1.0)
        return {"name": n["name"], "address": n["address"], "pid": pid, "alive": alive}

    nodes = record["nodes"]
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(64, len(nodes))) as pool:
        return list(pool.map(one, nodes))


def ssh_command(lab: Lab, node: str, command: list[str]) -> list[str]:
    """OpenSSH argv running `command` on `node` (a login shell when it is empty).

    `command` is an argv: each element is quoted for the remote shell, as `kubectl exec`
    does; pass `["sh", "-c", "..."]` for shell syntax.
    """
    by_name = {n.name: n for n in lab.nodes}
    target = by_name.get(node)
    if target is None:
        known = ", ".join(by_name) or "none"
        raise LabError(f"unknown lab node {node!r}; known nodes: {known}")
    argv = [
        "ssh",
        "-F", "none",  # the user's ssh config must not redirect or multiplex lab logins
        "-i", str(lab.identity_file),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={lab.state_dir / 'known_hosts'}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=5",
        "-o", "LogLevel=ERROR",
        "-p", str(target.port),
        f"root@{target.address}",
    ]  # fmt: skip
    if command:
        argv += ["--", shlex.join(command)]
    return argv


def node_manifests(lab: Lab) -> list[dict[str, Any]]:
    """One gitorch `Node` manifest per lab node."""
    return [
        {
            "apiVersion": "gitorch.dev/v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": {"gitorch.dev/lab": "true", "kubernetes.io/hostname": n.name},
            },
            "spec": {
                "address": n.address,
                "port": n.port,
                "user": "root",
                "identityFile": str(lab.identity_file),
                "hostKey": n.host_key,
            },
        }
        for n in lab.nodes
    ]


def write_nodes_file(lab: Lab, path: Path) -> None:
    """Write the lab's Node manifests to `path` as one multi-document YAML file."""
    header = (
        f"Node manifests of the gitorch lab in {lab.state_dir} ({len(lab.nodes)} nodes, "
        f"{lab.subnet}).\nWritten by `gitorch lab up`; host keys stay the same across "
        "`gitorch lab down` and up."
    )
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, _yaml_documents(node_manifests(lab), header=header))


def _yaml_documents(bodies: list[dict[str, Any]], header: str) -> str:
    """Block-style YAML for plain nested mappings of strings and numbers.

    Scalars are written as JSON, which YAML reads as the same values; the nodes layer
    does not import the YAML library (that is the source layer's).
    """

    def emit(value: Any, indent: int) -> list[str]:
        lines: list[str] = []
        for key, item in value.items():
            if isinstance(item, dict):
                lines.append(" " * indent + f"{key}:")
                lines += emit(item, indent + 2)
            else:
                lines.append(" " * indent + f"{key}: {json.dumps(item)}")
        return lines

    out = [f"# {line}" if line else "#" for line in header.split("\n")]
    for body in bodies:
        out.append("---")
        out += emit(body, 0)
    return "\n".join(out) + "\n"
