"""Each notification is sent once: what was announced lives in the state store, so a restarted
controller, or a standby that becomes leader, does not announce it again. A real Git repository,
a real SQLite store and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gitorch.model.backoff import Backoff
from gitorch.model.objects import ObjectKey
from gitorch.model.revisions import Revision
from gitorch.reconcile.controller import PassResult
from gitorch.reconcile.planning import Plan, Status
from gitorch.server.notifications import Memory, Notifier
from gitorch.source.git import open_repository
from gitorch.store.database import Store
from tests.gitrepo import GitRepo
from tests.waiting import wait_until

WEB = ObjectKey("Deployment", "shop", "web")
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"


class Receiver:
    """A webhook target that keeps (event, revision) of each notification it is sent, and
    answers with `answers` in turn, then 200."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.received: list[tuple[str, str]] = []
        self.answers = list(answers)
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                outer.posts += 1
                code = outer.answers.pop(0) if outer.answers else 200
                if code == 200:
                    outer.received.append((body["event"], body["revision"]))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, event: str, revision: str, timeout: float = 30.0) -> None:
        wait_until(f"{event} of {revision[:7]}", lambda: self.received, timeout=timeout, interval=0.05,
                   accept=lambda got: (event, revision) in got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'gitorch.db'}") as opened:
        yield opened


def cluster(url: str) -> str:
    return (
        "apiVersion: gitorch.dev/v1\nkind: Cluster\nmetadata:\n  name: test\nspec:\n"
        f"  notifications:\n    - name: chat\n      url: {url}\n"
        "      events: [deployed, syncFailed, degraded]\n"
    )


def passed(oid: str, health: str) -> PassResult:
    """A valid pass of `oid` whose one workload has `health`."""
    revision = Revision(oid, "Test Author", f"commit {oid[:7]}", "2026-01-01T00:00:00Z")
    return PassResult(revision, True, plan=Plan(statuses={WEB: Status(health, "rollout stuck")}))


class Controllers:
    """Notifiers of controllers sharing one store and repository; stopped at the end."""

    def __init__(self, repo: GitRepo, store: Store) -> None:
        self.repo = repo
        self.store = store
        self.started: list[Notifier] = []

    def start(self) -> Notifier:
        notifier = Notifier(open_repository(self.repo.path), self.store, backoff=Backoff(0.01))
        notifier.start()
        self.started.append(notifier)
        return notifier

    def stop(self) -> None:
        for notifier in self.started:
            notifier.stop()


@pytest.fixture
def controllers(repo: GitRepo, store: Store) -> Iterator[Controllers]:
    running = Controllers(repo, store)
    try:
        yield running
    finally:
        running.stop()


def test_a_restarted_controller_does_not_announce_a_deployment_again(
    repo: GitRepo, receiver: Receiver, controllers: Controllers
) -> None:
    first = repo.commit("v1", {"ns.yaml": NAMESPACE, "cluster.yaml": cluster(receiver.url)})
    before = controllers.start()
    before.observe(passed(first, "Healthy"))
    receiver.wait_for("deployed", first)
    before.observe(passed(first, "Healthy"))
    before.stop()

    # `gitorch serve` restarted: a new Notifier on the same store sees the same pass.
    after = controllers.start()
    after.observe(passed(first, "Healthy"))
    second = repo.commit("v2", {"two.yaml": NAMESPACE.replace("shop", "two")})
    after.observe(passed(second, "Healthy"))
    # One delivery thread, in order: a repeat of `first` would have arrived before this.
    receiver.wait_for("deployed", second)
    assert receiver.received == [("deployed", first), ("deployed", second)]


def test_a_standby_taking_over_does_not_announce_a_degraded_workload_again(
    repo: GitRepo, receiver: Receiver, controllers: Controllers, store: Store
) -> None:
    oid = repo.commit("v1", {"ns.yaml": NAMESPACE, "cluster.yaml": cluster(receiver.url)})
    leader, standby = controllers.start(), controllers.start()  # both running from the start
    leader.observe(passed(oid, "Progressing"))
    leader.observe(passed(oid, "Degraded"))
    receiver.wait_for("degraded", oid)

    # The lease moves: the standby's first passes see the same Degraded workload, then it heals.
    standby.observe(passed(oid, "Degraded"))
    standby.observe(passed(oid, "Healthy"))
    receiver.wait_for("deployed", oid)
    assert receiver.received == [("degraded", oid), ("deployed", oid)]
    assert Memory.from_state(store.notification_state()) == Memory(deployed=oid, health={WEB: "Healthy"})


def test_memory_round_trips_through_its_stored_form() -> None:
    memory = Memory(
        deployed="a" * 40,
        failed=("nodes", "a" * 40, "node-2"),
        health={WEB: "Degraded", ObjectKey("Namespace", "", "shop"): "Healthy"},
    )
    state = json.loads(json.dumps(memory.to_state()))  # as a JSON column gives it back
    assert Memory.from_state(state) == memory
    assert Memory.from_state({}) == Memory()


@pytest.mark.parametrize("health", [
    pytest.param("'\"not a mapping\"'", id="json-of-the-wrong-shape"),
    pytest.param("'{not json'", id="not-json"),
])
def test_a_record_edited_by_hand_is_rewritten_not_fatal(
    repo: GitRepo, receiver: Receiver, controllers: Controllers, store: Store, tmp_path: Path, health: str
) -> None:
    """Whatever the stored memory holds, a pass still announces and rewrites it."""
    first = repo.commit("v1", {"ns.yaml": NAMESPACE, "cluster.yaml": cluster(receiver.url)})
    notifier = controllers.start()
    notifier.observe(passed(first, "Healthy"))
    receiver.wait_for("deployed", first)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gitorch.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE notification_state SET value = {health} WHERE key = 'health'"))
    finally:
        engine.dispose()
    second = repo.commit("v2", {"two.yaml": NAMESPACE.replace("shop", "two")})
    notifier.observe(passed(second, "Healthy"))
    receiver.wait_for("deployed", second)
    assert Memory.from_state(store.notification_state()) == Memory(deployed=second, health={WEB: "Healthy"})


@pytest.mark.parametrize(
    ("answers", "delivered", "posts", "logged"),
    [
        ((503, 502, 429), True, 4, "notified"),
        ((503,) * 5, False, 5, "failed after 5 attempt(s): HTTP 503"),
        ((400,), False, 1, "failed after 1 attempt(s): HTTP 400"),
    ],
    ids=["retried until accepted", "given up after its attempts", "a client error is not retried"],
)
def test_a_failing_target_is_retried_with_back_off_while_retrying_can_help(
    repo: GitRepo, controllers: Controllers, caplog: pytest.LogCaptureFixture,
    answers: tuple[int, ...], delivered: bool, posts: int, logged: str,
) -> None:
    hook = Receiver(answers)
    try:
        first = repo.commit("v1", {"ns.yaml": NAMESPACE, "cluster.yaml": cluster(hook.url)})
        with caplog.at_level("INFO", logger="gitorch.server.notifications"):
            controllers.start().observe(passed(first, "Healthy"))
            wait_until(f"a log line with {logged!r}", lambda: [r.message for r in caplog.records
                                                               if logged in r.message], timeout=30, interval=0.05)
        assert hook.posts == posts
        assert hook.received == ([("deployed", first)] if delivered else [])
    finally:
        hook.close()
