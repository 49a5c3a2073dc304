"""GitOps flows end to end: `gitorch serve` deploys a real `git push` at once (post-receive hook or
signed webhook, no polling), rolls back through a Git commit, serves /metrics and sends
notifications to a real HTTP receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitorch.model.settings import Settings
from gitorch.nodes.lab import Lab
from gitorch.store.database import Store
from tests.gitrepo import GitRepo, git
from tests.lab import ssh_run
from tests.samples import gitorch
from tests.test_reconcile import NAMESPACE, _fix_port, node_pods, web
from tests.waiting import wait_until

SECRET = "s3cret-webhook-value"
TOKEN = "Bearer very-secret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def store() -> Store:
    return Store.open(Settings.from_env().database_url)


def revisions() -> list[str]:
    with store() as s:
        return [r.commit for r in s.revisions()]


def last_applied() -> str:
    with store() as s:
        last = s.last_applied_revision()
        return last.commit if last else ""


class Serve:
    """`gitorch serve` as a subprocess, with its output in a file."""

    def __init__(self, repo: Path, log: Path, *, interval: float = 3600, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GITORCH_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "serve", "--repo", str(repo), "--branch", "main",
             "--interval", str(interval), "--listen", f"127.0.0.1:{self.port}", *extra],
            stdout=self._out, stderr=subprocess.STDOUT, env=env,
        )
        wait_until("the listener", self._up, timeout=30, interval=0.2)

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text()

    def wake(self) -> int:
        """POST /hooks/wake as the post-receive hook does, with the token serve made in the state dir."""
        token = (Settings.from_env().state_dir / "wake-token").read_text().strip()
        return post(f"{self.url}/hooks/wake", headers={"Authorization": f"Bearer {token}"})[0]

    def metrics(self) -> dict[str, list[Any]]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(repo: Path, interval: float = 3600, extra: tuple[str, ...] = ()) -> Serve:
        s = Serve(repo, tmp_path / f"serve-{len(started)}.log", interval=interval, extra=extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
        assert SECRET not in s.output() and TOKEN not in s.output()


def github(body: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={sig}", "Content-Type": "application/json"}


# --- webhooks (no nodes needed: a Namespace-only repository still records its passes) ---------


def test_webhooks_wake_only_when_signed(repo: GitRepo, serve_factory: Callable[[Path], Serve]) -> None:
    first = repo.commit("ns", {"ns.yaml": NAMESPACE})
    server = serve_factory(repo.path)
    wait_until("the first pass", revisions, timeout=30, interval=0.2, accept=lambda got: first in got)

    second = repo.commit("config", {"two.yaml": NAMESPACE.replace("shop", "shop2")})
    body = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
    refused = [
        github(body, secret="wrong"),
        {"X-GitHub-Event": "push"},  # no signature
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "00" * 32},
        {},  # no provider at all
    ]
    for headers in refused:
        code, _ = post(f"{server.url}/hooks/git", body, headers)
        assert code == 401, headers
    # The wake is logged before the answer is sent: no log line means no pass was asked for.
    assert "woken by" not in server.output()
    assert second not in revisions()

    code, _ = post(f"{server.url}/hooks/git", body, github(body, event="ping"))
    assert code == 200
    other = json.dumps({"ref": "refs/heads/feature"}).encode()
    assert post(f"{server.url}/hooks/git", other, github(other))[0] == 202
    assert "woken by" not in server.output()

    code, text = post(f"{server.url}/hooks/git", body, github(body))
    assert code == 202, text
    wait_until("a pass of the pushed commit", revisions, timeout=30, interval=0.2, accept=lambda got: second in got)
    assert "woken by github webhook" in server.output()

    third = repo.commit("three", {"three.yaml": NAMESPACE.replace("shop", "shop3")})
    assert post(f"{server.url}/hooks/git", body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})[0] == 202
    wait_until("a pass after the GitLab hook", revisions, timeout=30, interval=0.2, accept=lambda got: third in got)

    fourth = repo.commit("four", {"four.yaml": NAMESPACE.replace("shop", "shop4")})
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert post(f"{server.url}/hooks/git", body, {"X-Gitea-Event": "push", "X-Gitea-Signature": sig})[0] == 202
    wait_until("a pass after the Gitea hook", revisions, timeout=30, interval=0.2, accept=lambda got: fourth in got)
    wait_until("the newest commit applied", last_applied, timeout=30, interval=0.2, accept=lambda got: got == fourth)

    metrics = server.metrics()
    results = {(s.labels["provider"], s.labels["result"]): s.value
               for s in metrics["gitorch_webhook_requests"] if s.name.endswith("_total")}
    assert results[("github", "unauthorized")] == 2
    assert results[("github", "accepted")] == 1
    assert results[("gitlab", "accepted")] == 1 and results[("gitea", "unauthorized")] == 1
    assert results[("unknown", "unauthorized")] == 1
    info = [s for s in metrics["gitorch_last_applied_revision_info"] if s.labels.get("commit")]
    assert info and info[0].labels["commit"] == fourth
    passes = sum(s.value for s in metrics["gitorch_reconcile_passes"] if s.name.endswith("_total"))
    assert passes >= 4
    assert any(s.name.endswith("_count") and s.value >= 4 for s in metrics["gitorch_reconcile_pass_duration_seconds"])
    objects = {(s.labels["kind"], s.labels["health"], s.labels["sync"]): s.value for s in metrics["gitorch_objects"]}
    assert objects[("Namespace", "Healthy", "Synced")] == 4

    # /hooks/wake answers only callers with the wake token (the post-receive hook).
    assert post(f"{server.url}/hooks/wake")[0] == 401
    assert server.wake() == 202


# --- notifications ---------------------------------------------------------------------------


class Receiver:
    """A real HTTP endpoint that records what it is sent; fails the first request to prove retries."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.failures_left = 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.failures_left > 0:
                    outer.failures_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append((dict(self.headers.items()), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/abc-token-in-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [body["event"] for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cluster_with_notifications(url: str) -> str:
    return f"""\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata:
  name: test
spec:
  notifications:
    - name: chat
      url: {url}
      events: [deployed, syncFailed]
      headers:
        - name: Authorization
          valueFrom:
            secretKeyRef: {{namespace: shop, name: chat-token, key: authorization}}
"""


SECRET_MANIFEST = f"""\
apiVersion: v1
kind: Secret
metadata:
  name: chat-token
  namespace: shop
data:
  authorization: {base64.b64encode(TOKEN.encode()).decode()}
"""


def test_notifications_reach_a_webhook(repo: GitRepo, serve_factory: Callable[[Path], Serve]) -> None:
    receiver = Receiver()
    try:
        good = repo.commit("with notifications", {
            "ns.yaml": NAMESPACE,
            "cluster.yaml": cluster_with_notifications(receiver.url),
            "secret.yaml": SECRET_MANIFEST,
        })
        server = serve_factory(repo.path)
        wait_until("the deployed notification", receiver.events, timeout=30, interval=0.2,
                   accept=lambda got: "deployed" in got)
        headers, body = receiver.received[0]
        assert body["revision"] == good and body["text"].startswith(f"gitorch: deployed {good[:7]}")
        assert headers["Authorization"] == TOKEN
        assert headers["Content-Type"] == "application/json"

        bad = repo.commit("broken", {"bad.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {nam: x}\n"})
        assert server.wake() == 202
        wait_until("the syncFailed notification", receiver.events, timeout=30, interval=0.2,
                   accept=lambda got: "syncFailed" in got)
        failed = next(b for _, b in receiver.received if b["event"] == "syncFailed")
        assert failed["revision"] == bad and "is invalid" in failed["text"]
        assert "notified chat (127.0.0.1" in server.output()
        assert "abc-token-in-path" not in server.output()
    finally:
        receiver.close()


# --- rollback ------------------------------------------------------------------------------


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.git"
    git("init", "-q", "--bare", "-b", "main", str(path), cwd=tmp_path)
    return path


def _push(repo: GitRepo, remote: Path) -> None:
    res = git("push", "-q", str(remote), "HEAD:refs/heads/main", cwd=repo.path, check=False)
    assert res.returncode == 0, res.stderr


def test_rollback_writes_a_commit_with_the_old_tree(
    repo: GitRepo, bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No user.name anywhere: the committer falls back to gitorch's own identity.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    one = repo.commit("one", {"ns.yaml": NAMESPACE})
    two = repo.commit("two", {"more.yaml": NAMESPACE.replace("shop", "more")})
    _push(repo, bare)

    res = gitorch("rollback", one, "--reason", "more broke checkout", "--repo", str(bare), cwd=bare)
    assert res.returncode == 0, res.stderr
    new = git("rev-parse", "main", cwd=bare).stdout.strip()
    assert new in res.stdout
    message = git("log", "-1", "--format=%B", "main", cwd=bare).stdout
    assert message.startswith(f"Rollback to {one[:7]}: more broke checkout")
    assert f"Gitorch-Rollback-Of: {one}" in message
    assert git("rev-parse", "main^{tree}", cwd=bare).stdout == git("rev-parse", f"{one}^{{tree}}", cwd=bare).stdout
    assert git("rev-parse", "main^", cwd=bare).stdout.strip() == two
    assert "gitorch <gitorch@localhost>" in git("log", "-1", "--format=%cn <%ce>", cwd=bare).stdout

    # Rolling back to what the head already holds, or to nothing, is one clear error.
    res = gitorch("rollback", one, "--reason", "again", "--repo", str(bare), cwd=bare)
    assert res.returncode == 1 and "nothing to roll back" in res.stderr and "Traceback" not in res.stderr
    res = gitorch("rollback", "deadbeef", "--reason", "x", "--repo", str(bare), cwd=bare)
    assert res.returncode == 1 and "no such revision" in res.stderr

    # Without REV and an empty store: the head's parent (here: back to `two`).
    res = gitorch("rollback", "--reason", "undo the rollback", "--repo", str(bare), cwd=bare)
    assert res.returncode == 0, res.stderr
    assert git("rev-parse", "main^{tree}", cwd=bare).stdout == git("rev-parse", f"{two}^{{tree}}", cwd=bare).stdout


def test_rollback_in_a_work_tree(repo: GitRepo) -> None:
    git("config", "user.name", "Rolling Person", cwd=repo.path)
    git("config", "user.email", "roll@example.test", cwd=repo.path)
    one = repo.commit("one", {"ns.yaml": NAMESPACE})
    repo.commit("two", {"ns.yaml": NAMESPACE.replace("shop", "other")})
    (repo.path / "ns.yaml").write_text("dirty\n")
    res = gitorch("rollback", one, "--reason", "x", "--repo", str(repo.path), cwd=repo.path)
    assert res.returncode == 1 and "uncommitted changes" in res.stderr and "ns.yaml" in res.stderr
    git("checkout", "--", "ns.yaml", cwd=repo.path)

    res = gitorch("rollback", one, "--reason", "x", "--repo", str(repo.path), cwd=repo.path)
    assert res.returncode == 0, res.stderr
    # The branch, the index and the files all hold the old content: nothing shows as changed.
    assert (repo.path / "ns.yaml").read_text() == NAMESPACE
    assert git("status", "--porcelain", cwd=repo.path).stdout == ""
    assert "Rolling Person <roll@example.test>" in git("log", "-1", "--format=%cn <%ce>", cwd=repo.path).stdout


# --- git push to deploy, on real lab nodes ----------------------------------------------------


def _web_pods(lab: Lab) -> list[dict[str, Any]]:
    return [p for pods in node_pods(lab, "web-").values() for p in pods]


def _store_versions() -> set[str]:
    with store() as s:
        specs = [json.dumps(p.spec) for p in s.pods() if p.owner_name == "web"]
    return {v for spec in specs for v in ("v1", "v2", "v3") if f'"{v}"' in spec}


@pytest.mark.lab
def test_push_deploys_without_polling_and_rollback_follows(
    lab: Lab, repo: GitRepo, bare: Path, serve_factory: Callable[[Path], Serve]
) -> None:
    repo.commit("nodes", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE})
    _push(repo, bare)
    server = serve_factory(bare)
    res = gitorch("hook", "install", str(bare), "--branch", "main", "--notify", f"{server.url}/hooks/wake", cwd=bare)
    assert res.returncode == 0, res.stderr
    assert (bare / "hooks" / "post-receive").stat().st_mode & 0o111

    try:
        v1 = repo.commit("web v1", {"apps.yaml": _fix_port(web(replicas=2))})
        res = git("push", str(bare), "HEAD:refs/heads/main", cwd=repo.path, check=False)
        assert res.returncode == 0 and "controller notified" in res.stderr, res.stderr
        # The interval is an hour: only the hook can have started this pass.
        wait_until("v1 pods Running on the nodes", lambda: len([p for p in _web_pods(lab) if p["ready"]]), timeout=60,
                   interval=0.2, accept=lambda got: got == 2)
        wait_until("v1 applied", last_applied, timeout=30, interval=0.2, accept=lambda got: got == v1)

        # Two quick pushes: the newest commit wins, even when the first push lands mid-pass.
        repo.commit("web v2", {"apps.yaml": _fix_port(web(replicas=2, version="v2"))})
        _push(repo, bare)
        v3 = repo.commit("web v3", {"apps.yaml": _fix_port(web(replicas=2, version="v3"))})
        _push(repo, bare)
        wait_until("v3 applied", last_applied, timeout=60, interval=0.2, accept=lambda got: got == v3)
        wait_until("only v3 pods", lambda: (_store_versions(), len(_web_pods(lab))), timeout=60, interval=0.2,
                   accept=lambda got: got == ({"v3"}, 2))

        metrics = server.metrics()
        reachable = {s.labels["node"]: s.value for s in metrics["gitorch_node_reachable"]}
        assert reachable == {n.name: 1.0 for n in lab.nodes}
        pods = {s.labels["phase"]: s.value for s in metrics["gitorch_pods"]}
        assert pods.get("Running", 0) >= 1

        # Roll back to v1 through Git; the cluster follows the new commit.
        res = gitorch("rollback", v1, "--reason", "v3 is slow", "--repo", str(bare),
                      "--notify", f"{server.url}/hooks/wake", cwd=bare)
        assert res.returncode == 0, res.stderr
        rolled = git("rev-parse", "main", cwd=bare).stdout.strip()
        assert f"Gitorch-Rollback-Of: {v1}" in git("log", "-1", "--format=%B", rolled, cwd=bare).stdout
        wait_until("the rollback commit applied", last_applied, timeout=60, interval=0.2,
                   accept=lambda got: got == rolled)
        wait_until("v1 pods again", lambda: (_store_versions(), len(_web_pods(lab))), timeout=60, interval=0.2,
                   accept=lambda got: got == ({"v1"}, 2))
        running = {p["name"] for p in _web_pods(lab)}
        with store() as s:
            assert running == {p.name for p in s.pods() if p.owner_name == "web"}
    finally:
        git("fetch", "-q", str(bare), "main", cwd=repo.path)
        git("reset", "-q", "--hard", "FETCH_HEAD", cwd=repo.path)
        repo.commit("empty", {"apps.yaml": ""})
        _push(repo, bare)
        server.wake()
        wait_until("the nodes emptied", lambda: not _web_pods(lab), timeout=60, interval=0.5)


# --- smaller pieces: the hook without a controller, wakes during a pass, degraded -------------


def test_post_receive_never_fails_a_push(repo: GitRepo, bare: Path) -> None:
    res = gitorch("hook", "install", str(bare), "--notify", f"http://127.0.0.1:{free_port()}/hooks/wake", cwd=bare)
    assert res.returncode == 0, res.stderr
    oid = repo.commit("ns", {"ns.yaml": NAMESPACE})
    res = git("push", str(bare), "HEAD:refs/heads/main", cwd=repo.path, check=False)
    assert res.returncode == 0, res.stderr
    assert "could not notify the controller" in res.stderr
    assert git("rev-parse", "main", cwd=bare).stdout.strip() == oid
    # Other branches do not wake anyone.
    res = git("push", str(bare), "HEAD:refs/heads/feature", cwd=repo.path, check=False)
    assert res.returncode == 0 and "notify" not in res.stderr


def test_a_wake_during_a_pass_runs_another_pass(repo: GitRepo, tmp_path: Path) -> None:
    from gitorch.server.serving import Server
    from gitorch.source.git import open_repository

    first = repo.commit("ns", {"ns.yaml": NAMESPACE})
    with store() as s:
        server = Server(open_repository(repo.path), s, tmp_path / "state", branch="main", interval=3600)
        seen: list[str] = []
        real_pass = server._pass

        def pass_with_a_push_in_the_middle() -> None:
            real_pass()
            seen.append(s.revisions(limit=1)[0].commit)
            if len(seen) == 1:  # a push lands while this pass is still running
                repo.commit("newer", {"two.yaml": NAMESPACE.replace("shop", "two")})
                server.wake("test")

        server._pass = pass_with_a_push_in_the_middle  # type: ignore[method-assign]
        server.reconcile()
        server.controller.close()
    assert len(seen) == 2 and seen[0] == first and seen[1] != first
    assert last_applied() == seen[1]


def test_degraded_and_failures_are_announced_once() -> None:
    from gitorch.model.objects import ObjectKey
    from gitorch.model.revisions import Revision
    from gitorch.reconcile.controller import PassResult
    from gitorch.reconcile.planning import Plan, Status
    from gitorch.server.notifications import Memory, notifications_for

    rev = Revision("a" * 40, "A <a@x>", "web v2", "2026-01-01T00:00:00Z")
    web_key = ObjectKey("Deployment", "shop", "web")

    def result(health: str, node_errors: dict[str, str] | None = None) -> PassResult:
        return PassResult(rev, True, plan=Plan(statuses={web_key: Status(health, "rollout stuck")}),
                          node_errors=node_errors or {})

    memory = Memory()
    assert [n.event for n in notifications_for(result("Progressing"), memory)] == []
    assert [n.event for n in notifications_for(result("Degraded"), memory)] == ["degraded"]
    assert [n.event for n in notifications_for(result("Degraded"), memory)] == []
    errs = {"node-2": "node-2: connection refused"}
    assert [n.event for n in notifications_for(result("Degraded", errs), memory)] == ["syncFailed"]
    assert [n.event for n in notifications_for(result("Degraded", errs), memory)] == []
    assert [n.event for n in notifications_for(result("Healthy"), memory)] == ["deployed"]
    assert [n.event for n in notifications_for(result("Healthy"), memory)] == []
    assert [n.event for n in notifications_for(result("Degraded"), memory)] == ["degraded"]
    # A workload removed from Git is forgotten (the stored memory does not grow forever).
    notifications_for(PassResult(rev, True, plan=Plan(statuses={})), memory)
    assert web_key not in memory.health


def test_serve_waits_calmly_for_the_first_push(
    repo: GitRepo, bare: Path, serve_factory: Callable[[Path], Serve]
) -> None:
    """An empty bare repository (serve started before the first push) is not an error."""
    server = serve_factory(bare)
    wait_until("the waiting line", server.output, timeout=30, interval=0.2,
               accept=lambda got: "waiting for a commit on main" in got)
    first = repo.commit("config", {"ns.yaml": NAMESPACE})
    _push(repo, bare)
    assert server.wake() == 202
    wait_until("a pass of the first commit", server.output, timeout=30, interval=0.2,
               accept=lambda got: f"{first[:7]} valid" in got)
    out = server.output()
    assert "error" not in out.lower() and out.count("waiting for a commit") == 1, out


@pytest.mark.lab
def test_gitorch_nodes_asks_a_running_serve_over_its_connections(
    lab: Lab, repo: GitRepo, serve_factory: Callable[[Path], Serve]
) -> None:
    """`gitorch nodes` beside a running serve (same state folder) gets every node's facts through
    serve's control socket, over the connections serve holds; with serve gone it connects itself."""
    repo.commit("nodes", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE})
    server = serve_factory(repo.path)
    wait_until("a pass connected to the nodes", revisions, timeout=60, interval=0.2)
    sock = Settings.from_env().state_dir / "control.sock"
    assert sock.exists() and sock.stat().st_mode & 0o777 == 0o600
    res = gitorch("nodes", "-o", "json", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == [n.name for n in lab.nodes]
    assert all(r["reachable"] and r["agentVersion"] and r["via"] == "serve" for r in rows), rows
    server.stop()
    assert not sock.exists()
    res = gitorch("nodes", "-o", "json", cwd=repo.path)
    assert res.returncode == 0, res.stderr
    assert all(r["reachable"] and r["via"] == "ssh" for r in json.loads(res.stdout))


def _passes(server: Serve) -> float:
    return sum(s.value for s in server.metrics().get("gitorch_reconcile_passes", []) if s.name.endswith("_total"))


@pytest.mark.lab
def test_a_quiet_cluster_passes_only_when_woken_while_every_pod_watch_is_open(
    lab: Lab, repo: GitRepo, serve_factory: Callable[..., Serve]
) -> None:
    """With every node's pod watch open and nothing left to do, the timer pass (every 0.2 s here)
    stands aside: a change wakes a pass anyway. A node whose watch drops brings the timer back."""
    repo.commit("nodes and web", {"nodes.yaml": (lab.state_dir / "nodes.yaml").read_text(), "ns.yaml": NAMESPACE,
                                  "apps.yaml": _fix_port(web(replicas=2))})
    server = serve_factory(repo.path, 0.2, ("--idle-interval", "3600"))
    wait_until("web Ready", lambda: len([p for p in _web_pods(lab) if p["ready"]]), timeout=90, interval=0.2,
               accept=lambda got: got == 2)
    def two_readings() -> tuple[float, float]:
        first = _passes(server)
        time.sleep(1.5)  # 7 timer ticks
        return first, _passes(server)

    # Settled: the count stops moving (a timer tick every 0.2 s would move it 5 times a second).
    wait_until("the passes to stop", two_readings, timeout=60, interval=0.1,
               accept=lambda seen: seen[0] == seen[1] > 0)
    # A change still reaches the cluster at once: a pod's process killed on its node, and the
    # store (written only by a pass) records the restart.
    node, pods = next((n, ps) for n, ps in node_pods(lab, "web-").items() if ps)
    victim = pods[0]
    ssh_run(lab, node, f"kill -KILL {int(victim['containers'][0]['pid'])}")
    wait_until("the restart recorded by a pass", lambda: [p for p in store().pods() if p.name == victim["name"]
               and p.ready and p.restarts >= 1], timeout=60, interval=0.2)
    # A node whose watch stream drops: timer passes resume until it is open again.
    before = _passes(server)
    # The agent as the controller runs it (client._launcher: python3 -c "...main()" watch).
    ssh_run(lab, node, "pkill -f '[.]main[(][)][)] watch' || true")
    wait_until("timer passes while a watch is down", lambda: _passes(server) - before, timeout=30, interval=0.2,
               accept=lambda moved: moved >= 1)
