"""systemd integration for `gitorch serve`: sd_notify(3) over $NOTIFY_SOCKET, and the unit file.

Standard library only: a notification is one Unix datagram of `KEY=VALUE` lines; a socket
name starting with `@` is in the abstract namespace. Without $NOTIFY_SOCKET (not started by
systemd) every call does nothing, so `serve` runs the same under a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

MAX_STATUS = 200  # characters of STATUS=: systemctl shows one line
_SEND_TIMEOUT = 1.0  # seconds: a notification never holds `serve` up


class Notifier:
    """Sends sd_notify messages to the socket systemd named in the environment (if any)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send `KEY=VALUE` lines (READY=1, STATUS=..., STOPPING=1, WATCHDOG=1); False when
        there is no socket or systemd did not take the message (logged once, never raised)."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.connect(self.address)
                sock.sendall(message)
            return True
        except OSError as exc:
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                log.warning(f"cannot notify systemd at {os.environ.get('NOTIFY_SOCKET', '')!r}: {exc}",
                            extra={"event": "systemd-notify-failed"})
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def reloading(self, status: str) -> bool:
        return self.notify(RELOADING="1", STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING="1", STATUS=status)

    def watchdog(self) -> None:
        """The timer job behind WatchdogSec=."""
        self.notify(WATCHDOG="1")


def _one_line(value: str) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_STATUS else text[: MAX_STATUS - 1] + "…"


def _address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or `@name` for the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and relative paths: not for a service on this host


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), None when there is no watchdog
    for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


# ---- settings ------------------------------------------------------------------------------------

MAX_ENV_FILE = 64 * 1024  # bytes: an env file is a handful of lines


def read_environment_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, blank lines,
    single or double quotes); one clear error naming the file and line otherwise."""
    from gitorch.model.errors import GitorchError

    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_ENV_FILE + 1)
    except OSError as exc:
        raise GitorchError(f"{file}: cannot read the env file: {exc.strerror or exc}") from exc
    if len(data) > MAX_ENV_FILE:
        raise GitorchError(f"{file}: env file larger than {MAX_ENV_FILE // 1024} KiB")
    values: dict[str, str] = {}
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            # The line itself may hold a secret: name the place, never the content.
            raise GitorchError(f"{file}:{number}: not a KEY=VALUE line")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


# ---- the unit file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSettings:
    """What `gitorch systemd-unit` writes into the unit."""

    executable: str
    """Absolute path of the `gitorch` program (a virtualenv's or pipx's bin/gitorch)."""

    serve_args: tuple[str, ...]
    """Arguments after `gitorch serve` (--repo, --branch, --listen, --dns, ...)."""

    user: str = "gitorch"
    """The system user the controller runs as (its home holds ~/.ssh for the nodes' keys)."""

    state_dir: str = "/var/lib/gitorch"
    """GITORCH_STATE_DIR: the SQLite store, known_hosts, Git mirrors; the one writable place."""

    env_file: str = "/etc/gitorch/gitorch.env"
    """Settings as KEY=VALUE lines, read at start and again on `systemctl reload` (SIGHUP)."""

    watchdog_seconds: int = 60
    """WatchdogSec=: systemd restarts a controller whose timers stopped ticking this long."""


def unit_file(settings: UnitSettings) -> str:
    """The systemd service unit for `gitorch serve`, each hardening choice explained."""
    import shlex

    state = PurePosixPath(settings.state_dir)
    in_home = state.is_relative_to("/home") or state.is_relative_to("/root")
    lib = PurePosixPath("/var/lib")
    state_directory = str(state.relative_to(lib)) if state.is_relative_to(lib) and state != lib else None
    command = " ".join(shlex.quote(a) for a in (settings.executable, "serve", "--env-file", settings.env_file,
                                                *settings.serve_args))
    lines = [
        "# gitorch controller: `gitorch systemd-unit > /etc/systemd/system/gitorch.service`, then",
        "#   systemctl daemon-reload && systemctl enable --now gitorch",
        "# `systemctl reload gitorch` re-reads the env file (log level and format) and runs a pass;",
        "# `systemctl status gitorch` shows whether this controller leads or stands by.",
        "[Unit]",
        "Description=gitorch controller (GitOps reconcile loop, webhooks, cluster DNS)",
        "Documentation=https://gitorch.dev/",
        "# It reaches Git remotes and nodes over the network, so it starts once the network is up.",
        "Wants=network-online.target",
        "After=network-online.target postgresql.service",
        "",
        "[Service]",
        "# serve tells systemd when it is serving (READY=1) and whether it leads (STATUS=).",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# A crash or a failed start is retried; a clean stop (SIGTERM) is not.",
        "Restart=on-failure",
        "RestartSec=5s",
        "# SIGTERM lets the current pass finish and hands the lease over; then it is killed.",
        "TimeoutStopSec=90s",
        "# serve pings from its timer thread: a hung scheduler is restarted.",
        f"WatchdogSec={settings.watchdog_seconds}s",
        f"User={settings.user}",
        f"Group={settings.user}",
        f"Environment=GITORCH_STATE_DIR={settings.state_dir}",
        "# GITORCH_DATABASE_URL (PostgreSQL for several controllers), GITORCH_WEBHOOK_SECRET,",
        "# GITORCH_LOG_LEVEL, GITORCH_LOG_FORMAT=json go here. serve reads it again on reload,",
        "# as its user: root-owned, group of the user, mode 0640 (it holds secrets).",
        f"EnvironmentFile=-{settings.env_file}",
    ]
    if state_directory is not None:
        lines += [
            "# systemd creates the state dir for the user, mode 0700 (it holds the store and keys).",
            f"StateDirectory={state_directory}",
            "StateDirectoryMode=0700",
        ]
    lines += [
        "",
        "# --- hardening: only what serve needs (network, its state dir, reading Git and keys) ---",
        "# No setuid or file capabilities can raise privileges: serve never needs them.",
        "NoNewPrivileges=yes",
        "# The whole file system is read-only except the state dir (store, known_hosts, mirrors).",
        "ProtectSystem=strict",
        f"ReadWritePaths={settings.state_dir}",
        "# Home folders are readable (a --repo or --ssh-key there) but never written"
        + (" (the state dir under a home stays writable: ReadWritePaths wins)." if in_home else "."),
        "ProtectHome=read-only",
        "# Its own /tmp and /var/tmp: nothing is shared with other services through them.",
        "PrivateTmp=yes",
        "# No raw devices; the kernel's tunables, modules, logs and cgroups stay untouched.",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "# IPv4/IPv6 to Git, nodes, PostgreSQL and notification targets; Unix sockets for",
        "# sd_notify and a local PostgreSQL; netlink for the address lookups of getaddrinfo.",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "# MemoryDenyWriteExecute= is left out: cffi callbacks (pygit2's) may need such memory.",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "# Binding --dns on port 53 needs this one capability, nothing else (empty: no capabilities).",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "# New files (the SQLite store, mirrors) readable by this user only.",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def default_executable() -> str:
    """The `gitorch` program next to this Python (a virtualenv's bin/), else the one on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).with_name("gitorch")
    if beside.is_file():
        return str(beside)
    found = shutil.which("gitorch")
    return str(Path(found).resolve()) if found else "/usr/local/bin/gitorch"
