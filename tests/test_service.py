"""gitorch as a service: systemd's notify protocol from a real `gitorch serve`, SIGHUP reloads,
JSON logs, the unit file, shell completion, and migrations only through `gitorch migrate`."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from gitorch.model.settings import Settings
from gitorch.store.database import MIGRATIONS, Store, migrate
from tests.gitrepo import GitRepo, git
from tests.samples import NAMESPACE, gitorch
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
RECV_TIMEOUT = 30.0  # seconds for each expected notification (a loaded machine is slow, not wrong)


def head_version() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


class NotifySocket:
    """What systemd listens on: a Unix datagram socket, by path or abstract name (@...)."""

    def __init__(self, tmp_path: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"gitorch-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.env = str(path)
        self.sock.settimeout(RECV_TIMEOUT)
        self.seen: list[dict[str, str]] = []
        self.log: Path | None = None
        """The sender's log, shown when an expected message does not come."""

    def expect(self, key: str, value: str | None = None) -> dict[str, str]:
        """The next message carrying KEY (=VALUE); earlier ones are kept in `seen`."""
        deadline = time.monotonic() + RECV_TIMEOUT
        while True:
            try:
                if time.monotonic() > deadline:
                    raise TimeoutError
                data = self.sock.recv(4096)
            except TimeoutError:
                shown = [m for m in self.seen if "WATCHDOG" not in m][-8:]
                log = self.log.read_text()[-3000:] if self.log is not None else ""
                pytest.fail(f"no {key}={value or '*'} received; the last ones: {shown}\n{log}", pytrace=False)
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.seen.append(message)
            if key in message and (value is None or message[key] == value):
                return message

    def close(self) -> None:
        self.sock.close()


class Serving:
    """`gitorch serve` in a subprocess with its stderr (the logs) in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitorch", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._err, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, text=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str) -> None:
        """Until `text` is in the logs; fails at once if serve exits."""

        def found() -> bool:
            out = self.output()
            assert text in out or self.proc.poll() is None, out
            return text in out

        wait_until(f"{text!r} in serve's log", found, timeout=RECV_TIMEOUT, interval=0.1,
                   show=lambda _: "not there", describe=lambda: self.output()[-3000:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._err.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    started: list[Serving] = []
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def committed(repo: GitRepo) -> GitRepo:
    repo.commit("a namespace", {"ns.yaml": NAMESPACE})
    return repo


# ---- systemd: sd_notify, SIGHUP, watchdog -----------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["socket-path", "abstract-socket"])
def test_serve_notifies_systemd_ready_status_reload_and_stopping(
    committed: GitRepo, tmp_path: Path, serving: list[Serving], abstract: bool
) -> None:
    notify = NotifySocket(tmp_path, abstract)
    env_file = tmp_path / "gitorch.env"
    env_file.write_text("# as systemd's EnvironmentFile= reads it\nGITORCH_LOG_FORMAT=text\n")
    try:
        server = Serving(
            ["serve", "--repo", str(committed.path), "--branch", "main", "--interval", "3600",
             "--listen", "127.0.0.1:0", "--env-file", str(env_file)],
            {"NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "200000"},
            tmp_path / "serve.log",
        )
        serving.append(server)
        notify.log = server.log
        ready = notify.expect("READY", "1")
        assert ready["STATUS"].startswith(("starting", "leading")), ready
        assert "listening on http://127.0.0.1:" in server.output()  # READY=1 came once it was serving
        # The first pass makes it the leader; STATUS says so, with the revision it reached.
        first = git("rev-parse", "--short=7", "main", cwd=committed.path).stdout.strip()
        while f"at {first}" not in notify.expect("STATUS")["STATUS"]:
            pass
        assert notify.seen[-1]["STATUS"].startswith("leading (")
        notify.expect("WATCHDOG", "1")  # WatchdogSec= is pinged from the timer thread

        # SIGHUP: the env file is read again (JSON logs from now on) and a pass runs at once
        # (the interval is an hour and nothing else wakes it), reaching a new commit.
        short = committed.commit("again")[:7]
        env_file.write_text("GITORCH_LOG_FORMAT=json\n")
        server.proc.send_signal(signal.SIGHUP)
        notify.expect("RELOADING", "1")
        assert notify.expect("READY", "1")["STATUS"].startswith("leading")
        while short not in notify.expect("STATUS")["STATUS"]:
            pass  # the pass after the reload reached the new head

        server.proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING", "1")
        assert server.stop() == 0
    finally:
        notify.close()
    lines = server.output().splitlines()
    reloaded = next(i for i, line in enumerate(lines) if "reloaded" in line)
    assert not lines[0].startswith("{"), lines[0]  # text before the reload ...
    assert json.loads(lines[reloaded])["event"] == "reloaded"  # ... JSON from the reload on
    assert all(json.loads(line)["level"] for line in lines[reloaded:])


def test_serve_without_notify_socket_runs_as_before(committed: GitRepo, tmp_path: Path,
                                                   serving: list[Serving]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    server = Serving(["serve", "--repo", str(committed.path), "--interval", "3600", "--listen", "off"],
                     {**env, "NOTIFY_SOCKET": ""}, tmp_path / "serve.log")
    serving.append(server)
    server.wait_for("pass 1:")
    assert server.stop() == 0
    assert "systemd" not in server.output()


def test_serve_reload_with_a_bad_env_file_keeps_running(committed: GitRepo, tmp_path: Path,
                                                       serving: list[Serving]) -> None:
    notify = NotifySocket(tmp_path, abstract=True)
    env_file = tmp_path / "gitorch.env"
    env_file.write_text("GITORCH_LOG_LEVEL=info\n")
    try:
        server = Serving(["serve", "--repo", str(committed.path), "--interval", "3600", "--listen", "off",
                          "--env-file", str(env_file)], {"NOTIFY_SOCKET": notify.env}, tmp_path / "serve.log")
        serving.append(server)
        notify.expect("READY", "1")
        env_file.write_text("GITORCH_LOG_LEVEL=chatty\nthis line is not a setting\n")
        server.proc.send_signal(signal.SIGHUP)
        notify.expect("READY", "1")  # back to ready after the failed reload
        assert server.proc.poll() is None
    finally:
        notify.close()
    assert server.stop() == 0
    out = server.output()
    assert "reload failed, keeping the running settings" in out and ":2: not a KEY=VALUE line" in out
    assert "this line is not a setting" not in out  # a line of an env file may hold a secret


# ---- structured logs -----------------------------------------------------------------------------------


UNREACHABLE_NODE = """\
apiVersion: gitorch.dev/v1
kind: Node
metadata:
  name: gone-1
spec:
  address: 127.0.0.1
  port: 1
"""

STUCK_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 1
  progressDeadlineSeconds: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          command: ["sleep", "3600"]
"""


def test_json_logs_are_one_object_a_line_with_event_revision_node_and_object(
    committed: GitRepo, tmp_path: Path, serving: list[Serving]
) -> None:
    # A node nobody answers on (connection refused at once) and a rollout that cannot progress.
    head = committed.commit("unreachable", {"node.yaml": UNREACHABLE_NODE, "web.yaml": STUCK_DEPLOYMENT})
    server = Serving(["--log-format", "json", "serve", "--repo", str(committed.path), "--interval", "3600",
                      "--listen", "127.0.0.1:0"], {}, tmp_path / "serve.log")
    serving.append(server)
    server.wait_for('"object-degraded"')
    assert server.stop() == 0
    records = [json.loads(line) for line in server.output().splitlines()]  # every line is JSON
    for record in records:
        assert {"time", "level", "message"} <= record.keys(), record
        assert record["level"] in {"debug", "info", "warning", "error"}
        assert record["time"].endswith("+00:00")
    by_event: dict[str, list[dict[str, str]]] = {}
    for record in records:
        by_event.setdefault(record.get("event", ""), []).append(record)
    assert {"serving", "leading", "pass", "node-error", "object-degraded", "stopping", "stopped"} <= by_event.keys()
    assert all(r["revision"] == head for r in by_event["pass"])
    [node_error] = by_event["node-error"]  # once, not once a pass
    assert node_error["node"] == "gone-1" and node_error["level"] == "warning" and node_error["revision"] == head
    assert "connection refused" in node_error["message"]
    [degraded] = by_event["object-degraded"]
    assert degraded["object"] == "Deployment shop/web" and degraded["revision"] == head
    assert "made no progress" in degraded["message"]


def test_json_errors_are_json_too(tmp_path: Path) -> None:
    res = gitorch("--log-format", "json", "apply", "--repo", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert res.returncode == 1
    [line] = res.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["event"] == "error" and "nowhere" in record["message"]


def test_library_code_never_prints() -> None:
    """Only the CLI (tables, messages) and the node agent (its own process) write to stdout."""
    offenders = []
    for path in sorted((ROOT / "gitorch").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("gitorch/cli/") or rel == "gitorch/nodes/agent.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


# ---- the unit file ---------------------------------------------------------------------------------------


def _unit(*args: str, cwd: Path) -> dict[str, list[str]]:
    res = gitorch("systemd-unit", *args, cwd=cwd)
    assert res.returncode == 0, res.stderr
    keys: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def test_systemd_unit_is_type_notify_hardened_and_verifies(tmp_path: Path) -> None:
    keys = _unit("--", "--repo", "/srv/git/cluster.git", "--branch", "main", "--dns", "10.0.0.1:53", cwd=tmp_path)
    assert keys["Type"] == ["notify"] and keys["Restart"] == ["on-failure"]
    assert keys["ProtectSystem"] == ["strict"] and keys["ReadWritePaths"] == ["/var/lib/gitorch"]
    assert keys["ProtectHome"] == ["read-only"] and keys["PrivateTmp"] == ["yes"]
    assert keys["NoNewPrivileges"] == ["yes"] and keys["StateDirectory"] == ["gitorch"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    [start] = keys["ExecStart"]
    argv = start.split()
    assert Path(argv[0]).is_absolute() and argv[1:4] == ["serve", "--env-file", "/etc/gitorch/gitorch.env"]
    assert argv[4:] == ["--repo", "/srv/git/cluster.git", "--branch", "main", "--dns", "10.0.0.1:53"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not checked")
    unit = tmp_path / "gitorch.service"
    unit.write_text(gitorch("systemd-unit", "--", "--repo", "/srv/git/cluster.git", cwd=tmp_path).stdout)
    verify = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False)
    # systemd-analyze reports unknown keys and bad values as warnings on stderr (exit 0).
    assert verify.returncode == 0 and str(unit) not in verify.stderr, verify.stderr


def test_systemd_unit_with_the_state_dir_in_a_home_and_bad_paths(tmp_path: Path) -> None:
    keys = _unit("--state-dir", "/home/ops/gitorch", "--user", "ops", cwd=tmp_path)
    assert keys["ReadWritePaths"] == ["/home/ops/gitorch"] and "StateDirectory" not in keys
    assert keys["Environment"] == ["GITORCH_STATE_DIR=/home/ops/gitorch"] and keys["User"] == ["ops"]
    for bad in ("relative/dir", "/var/lib/git orch"):
        res = gitorch("systemd-unit", "--state-dir", bad, cwd=tmp_path)
        assert res.returncode == 1 and len(res.stderr.splitlines()) == 1 and "absolute path" in res.stderr


# ---- shell completion ----------------------------------------------------------------------------------


def test_bash_completion_source_and_answers(tmp_path: Path) -> None:
    env = {**os.environ, "_GITORCH_COMPLETE": "bash_source"}
    source = subprocess.run([sys.executable, "-m", "gitorch"], env=env, capture_output=True, text=True,
                            check=False)
    assert source.returncode == 0, source.stderr
    assert "_gitorch_completion()" in source.stdout
    # bash itself accepts it and registers the function for `gitorch`.
    script = tmp_path / "complete.bash"
    script.write_text(source.stdout)
    bash = subprocess.run(["bash", "-c", f"source {script} && complete -p gitorch"], capture_output=True, text=True,
                          check=False)
    assert bash.returncode == 0 and "_gitorch_completion" in bash.stdout, bash.stderr
    answer = subprocess.run(
        [sys.executable, "-m", "gitorch"],
        env={**os.environ, "_GITORCH_COMPLETE": "bash_complete", "COMP_WORDS": "gitorch mig", "COMP_CWORD": "1"},
        capture_output=True, text=True, check=False,
    )
    assert "plain,migrate" in answer.stdout.splitlines(), answer.stdout


# ---- migrations only through `gitorch migrate` --------------------------------------------------------------


def _store_at(version: str) -> str:
    url = Settings.from_env().database_url
    Path(sa.engine.make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    try:
        migrate(engine, version)
    finally:
        engine.dispose()
    return url


def _version(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_an_older_store_stops_every_command_until_gitorch_migrate(committed: GitRepo, tmp_path: Path) -> None:
    head = head_version()
    assert head != "0001"
    url = _store_at("0001")
    for args in (["status"], ["events"], ["apply", "--repo", str(committed.path)],
                 ["serve", "--repo", str(committed.path), "--listen", "off"]):
        res = gitorch(*args, cwd=tmp_path)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        [line] = res.stderr.splitlines()
        assert "version 0001" in line and f"needs {head}" in line and "`gitorch migrate`" in line, line
    assert _version(url) == "0001"  # nothing migrated it behind the operator's back

    res = gitorch("migrate", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"schema migrated from version 0001 to {head}" in res.stdout
    assert _version(url) == head
    again = gitorch("migrate", cwd=tmp_path)
    assert again.returncode == 0 and f"already at version {head}" in again.stdout
    assert gitorch("status", cwd=tmp_path).returncode == 0


def test_serve_migrate_upgrades_then_serves(committed: GitRepo, tmp_path: Path, serving: list[Serving]) -> None:
    url = _store_at("0001")
    notify = NotifySocket(tmp_path, abstract=True)
    try:
        server = Serving(["serve", "--migrate", "--repo", str(committed.path), "--interval", "3600", "--listen", "off"],
                         {"NOTIFY_SOCKET": notify.env}, tmp_path / "serve.log")
        serving.append(server)
        notify.expect("READY", "1")
    finally:
        notify.close()
    assert server.stop() == 0
    assert _version(url) == head_version()


def test_an_empty_store_is_created_at_head_by_any_command(tmp_path: Path) -> None:
    res = gitorch("events", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    url = Settings.from_env().database_url
    assert _version(url) == head_version()
    with Store.open(url) as store:
        assert store.schema_change == (head_version(), head_version())
