"""The state store, every test on SQLite (a temp file) and on PostgreSQL (a real server)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import gitorch.store.database as store_module
from gitorch.model.errors import GitorchError
from gitorch.store.database import (
    MIGRATIONS,
    SQLITE_BUSY_TIMEOUT_MS,
    InventoryEntry,
    PodRecord,
    PodRow,
    Store,
    StoreError,
    merge_conditions,
    metadata,
    migrate,
)
from tests.postgres import PostgresServer, postgres_server  # noqa: F401  (a fixture)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40
HEAD = "0007"  # the newest migration in gitorch/migrations/versions


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'dir' / 'gitorch.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    yield from server.fresh_database()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()


def cond(kind: str, status: str, reason: str = "R", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def pod(name: str, **fields: Any) -> PodRecord:
    base: dict[str, Any] = {
        "namespace": "default",
        "owner_kind": "Deployment",
        "owner_name": "web",
        "template_hash": "h1",
    }
    return PodRecord(name=name, **{**base, **fields})


def run_threads(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..count-1) in threads released together; re-raise the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# ---- opening and migrations -----------------------------------------------------------------


def test_open_creates_the_schema_at_head_matching_the_models(store: Store, store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == HEAD
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_reopening_is_idempotent_and_keeps_data(store: Store, store_url: str) -> None:
    store.record_revision(SHA_A, committed_at=T0)
    store.close()
    again = Store.open(store_url)
    try:
        assert [r.commit for r in again.revisions()] == [SHA_A]
    finally:
        again.close()


def test_a_newer_gitorch_upgrades_an_older_store_keeping_its_data(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    # The store as this gitorch writes it ...
    store.upsert_node("n1", address="10.0.0.1", labels={"zone": "a"})
    store.save_allocations({}, {}, {"n1": "10.244.0.0/24"})
    store.record_revision(SHA_A, committed_at=T0)
    store.close()
    # ... opened by a "newer gitorch" whose tree has a second migration.
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_node_zone.py").write_text(
        '"""Nodes get a zone."""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        'revision = "9999"\n'
        f'down_revision = "{HEAD}"\n'
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("nodes") as batch:\n'
        '        batch.add_column(sa.Column("zone", sa.String(), nullable=False, server_default=""))\n'
        "    op.execute(\"UPDATE nodes SET zone = 'zone-' || name\")\n\n\n"
        "def downgrade() -> None:\n"
        '    with op.batch_alter_table("nodes") as batch:\n'
        '        batch.drop_column("zone")\n'
    )
    engine = sa.create_engine(store_url)
    try:
        migrate(engine, script_location=scripts)
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "9999"
            rows = conn.execute(sa.text("SELECT name, address, pod_cidr, zone FROM nodes")).all()
            assert [tuple(r) for r in rows] == [("n1", "10.0.0.1", "10.244.0.0/24", "zone-n1")]
            commits = conn.execute(sa.text("SELECT \"commit\" FROM revisions")).scalars().all()
            assert commits == [SHA_A]
            # The unique pod CIDR constraint survived SQLite's table rebuild.
            conn.execute(sa.text("INSERT INTO nodes (name, address, port, \"user\", capacity, "
                                 "allocatable, labels, taints, pod_cidr, facts, conditions, "
                                 "agent_version, ready, zone) VALUES ('n2', '', 22, 'root', "
                                 "'{}', '{}', '{}', '[]', '10.244.1.0/24', '{}', '[]', '', "
                                 "false, '')"))
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("UPDATE nodes SET pod_cidr = '10.244.0.0/24' "
                                     "WHERE name = 'n2'"))
    finally:
        engine.dispose()
    # This (now older) gitorch refuses the newer schema with a clear message.
    with pytest.raises(StoreError, match="newer gitorch"):
        Store.open(store_url)


def test_a_store_of_the_first_release_is_upgraded_keeping_its_data(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        Path(sa.engine.make_url(store_url).database or "").parent.mkdir(parents=True)
    engine = sa.create_engine(store_url)
    try:
        migrate(engine, "0001")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO revisions (\"commit\", author, message, committed_at, first_seen_at, "
                "outcome, error) VALUES (:c, '', 'first', :t, :t, 'applied', '')"
            ), {"c": SHA_A, "t": T0})
    finally:
        engine.dispose()
    with Store.open(store_url, upgrade=True) as upgraded:
        assert [r.commit for r in upgraded.revisions()] == [SHA_A]
        assert upgraded.notification_state() == {}
        assert upgraded.save_notification_state({"deployed": SHA_A}) == ["deployed"]


def test_sqlite_runs_in_wal_mode_with_normal_sync(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "gitorch.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        assert path.exists()
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
    finally:
        store.close()
    with sqlite3.connect(path) as raw:  # WAL is a property of the file, seen by anyone
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://root@localhost/gitorch", "scheme 'mysql' is not supported"),
        ("postgresql+psycopg2://u@h/db", "scheme 'postgresql\\+psycopg2' is not supported"),
        ("not a url", "is not a database URL"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("postgresql+psycopg://nobody:secret@127.0.0.1:1/gitorch", "cannot open the state store"),
    ],
    ids=["mysql", "psycopg2", "garbage", "sqlite-no-file", "sqlite-memory", "pg-unreachable"],
)
def test_a_bad_url_is_a_clear_error(url: str, match: str) -> None:
    with pytest.raises(StoreError, match=match) as info:
        Store.open(url)
    assert isinstance(info.value, GitorchError)
    assert "secret" not in str(info.value)
    assert "\n" not in str(info.value)


def test_naive_datetimes_are_refused_and_times_come_back_utc(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.record_revision(SHA_A, committed_at=datetime(2024, 1, 1))
    paris = timezone(timedelta(hours=2))
    store.record_revision(SHA_A, committed_at=datetime(2024, 5, 1, 14, 0, tzinfo=paris))
    rev = store.revision(SHA_A)
    assert rev is not None
    assert rev.committed_at == T0
    assert rev.committed_at.tzinfo is UTC


# ---- revisions ------------------------------------------------------------------------------


def test_revisions_and_outcomes(store: Store) -> None:
    store.record_revision(SHA_A, author="ann", message="one", committed_at=T0, first_seen_at=T0)
    again = store.record_revision(SHA_A, message="ignored", committed_at=T0,
                                  first_seen_at=T0 + timedelta(hours=1))
    assert again.message == "one" and again.first_seen_at == T0  # first sighting wins
    store.record_revision(SHA_B, committed_at=T0, first_seen_at=T0 + timedelta(minutes=1))
    store.record_revision(SHA_C, committed_at=T0, first_seen_at=T0 + timedelta(minutes=2))
    assert store.last_applied_revision() is None
    assert store.revision(SHA_A).outcome == "pending"  # type: ignore[union-attr]

    store.set_revision_outcome(SHA_A, "applied", when=T0 + timedelta(minutes=5))
    store.set_revision_outcome(SHA_B, "invalid", "deploy.yaml:3:1: /spec: bad")
    failed = store.set_revision_outcome(SHA_C, "failed", "n1: unreachable")
    assert failed.applied_at is None and failed.error == "n1: unreachable"

    last = store.last_applied_revision()
    assert last is not None and last.commit == SHA_A
    assert last.applied_at == T0 + timedelta(minutes=5)
    assert [r.commit for r in store.revisions()] == [SHA_C, SHA_B, SHA_A]
    assert [r.commit for r in store.revisions(limit=2)] == [SHA_C, SHA_B]
    assert store.revision(SHA_B).error == "deploy.yaml:3:1: /spec: bad"  # type: ignore[union-attr]

    with pytest.raises(ValueError, match="outcome"):
        store.set_revision_outcome(SHA_A, "done")
    with pytest.raises(StoreError, match="never recorded"):
        store.set_revision_outcome("d" * 40, "applied")
    with pytest.raises(ValueError, match="40 lowercase hex"):
        store.record_revision("abc", committed_at=T0)


# ---- conditions and object status -----------------------------------------------------------


def test_merge_conditions_keeps_transition_time_while_status_is_unchanged() -> None:
    t1, t2 = T0, T0 + timedelta(minutes=1)
    first = merge_conditions([], [cond("Ready", "False", "Progressing"),
                                  cond("Reconciling", "True")], t1)
    assert [c["last_transition_time"] for c in first] == [t1.isoformat()] * 2

    second = merge_conditions(first, [cond("Ready", "False", "Waiting", "2/3 ready"),
                                      cond("Stalled", "False")], t2)
    ready, stalled = second
    assert ready == {"type": "Ready", "status": "False", "reason": "Waiting",
                     "message": "2/3 ready", "last_transition_time": t1.isoformat()}
    assert stalled["last_transition_time"] == t2.isoformat()
    assert "Reconciling" not in [c["type"] for c in second]  # the new set is complete

    third = merge_conditions(second, [cond("Ready", "True", "Succeeded")], t2 + timedelta(hours=1))
    assert third[0]["last_transition_time"] == (t2 + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(
    ("new", "match"),
    [
        ([cond("Happy", "True")], "condition type"),
        ([cond("Ready", "yes")], "status"),
        ([cond("Ready", "True"), cond("Ready", "False")], "twice"),
    ],
    ids=["unknown-type", "bad-status", "duplicate"],
)
def test_merge_conditions_rejects_bad_conditions(new: list[dict[str, str]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        merge_conditions([], new, T0)


def test_object_status_conditions_generation_and_listing(store: Store) -> None:
    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    rec = store.upsert_object_status(
        "Deployment", "default", "web", now=t1, spec_hash="s1", last_attempted_revision=SHA_A,
        sync="OutOfSync", health="Progressing", body={"kind": "Deployment"},
        conditions=[cond("Ready", "False", "Progressing"), cond("Reconciling", "True")],
    )
    assert rec.generation == 1 and rec.observed_generation == 0 and rec.updated_at == t1

    store.upsert_object_status("Deployment", "default", "web", now=t2, spec_hash="s1",
                               observed_generation=1, conditions=[cond("Ready", "False", "Wait")])
    rec2 = store.upsert_object_status(
        "Deployment", "default", "web", now=t3, spec_hash="s2", sync="Synced", health="Healthy",
        last_applied_revision=SHA_B, conditions=[cond("Ready", "True", "Succeeded")],
    )
    assert rec2.generation == 2  # the spec changed
    got = store.object_status("Deployment", "default", "web")
    assert got is not None
    assert (got.sync, got.health, got.observed_generation) == ("Synced", "Healthy", 1)
    assert (got.last_applied_revision, got.last_attempted_revision) == (SHA_B, SHA_A)
    assert got.conditions == [{"type": "Ready", "status": "True", "reason": "Succeeded",
                               "message": "", "last_transition_time": t3.isoformat()}]
    assert got.body == {"kind": "Deployment"}
    assert got.updated_at == t3

    # Same status later: the transition time stays.
    store.upsert_object_status("Deployment", "default", "web", now=t3 + timedelta(hours=1),
                               conditions=[cond("Ready", "True", "Succeeded", "again")])
    again = store.object_status("Deployment", "default", "web")
    assert again is not None
    assert again.conditions[0]["last_transition_time"] == t3.isoformat()
    assert again.conditions[0]["message"] == "again"

    store.upsert_object_status("Namespace", "", "prod", health="Healthy")
    store.upsert_object_status("ConfigMap", "default", "cfg")
    keys = [(o.kind, o.namespace, o.name) for o in store.objects()]
    assert keys == [("ConfigMap", "default", "cfg"), ("Deployment", "default", "web"),
                    ("Namespace", "", "prod")]
    assert [o.name for o in store.objects(kind="Namespace")] == ["prod"]
    assert [o.name for o in store.objects(namespace="default")] == ["cfg", "web"]

    assert store.delete_object("ConfigMap", "default", "cfg") is True
    assert store.delete_object("ConfigMap", "default", "cfg") is False
    assert store.object_status("ConfigMap", "default", "cfg") is None

    with pytest.raises(TypeError, match="bogus"):
        store.upsert_object_status("Deployment", "default", "web", bogus=1)
    with pytest.raises(ValueError, match="health"):
        store.upsert_object_status("Deployment", "default", "web", health="Fine")


# ---- pods -----------------------------------------------------------------------------------


def test_pods_crud_and_queries(store: Store) -> None:
    store.upsert_pods(
        [
            pod("web-h1-a", node="n1", phase="Running", ip="10.244.0.2", spec={"c": [1]}),
            pod("web-h1-b"),
            pod("db-0", owner_kind="StatefulSet", owner_name="db", node="n2", ordinal=0),
            pod("dns-x", namespace="kube", owner_kind="DaemonSet", owner_name="dns", node="n1"),
        ],
        now=T0,
    )
    assert [p.name for p in store.pods()] == ["db-0", "web-h1-a", "web-h1-b", "dns-x"]
    assert [p.name for p in store.pods(namespace="kube")] == ["dns-x"]
    assert [p.name for p in store.pods(node="n1")] == ["web-h1-a", "dns-x"]
    assert [p.name for p in store.pods(owner=("Deployment", "web"))] == ["web-h1-a", "web-h1-b"]
    assert [p.name for p in store.pods(namespace="default", node="n2")] == ["db-0"]
    pending = [p.name for p in store.pods() if p.node is None]
    assert pending == ["web-h1-b"]

    first = store.pods(owner=("StatefulSet", "db"))[0]
    assert first.ordinal == 0 and first.phase == "Pending" and first.updated_at == T0
    created = store.pods(node="n1")[0].created_at

    later = T0 + timedelta(minutes=3)
    store.upsert_pods([pod("web-h1-a", node="n1", phase="Running", ready=True, restarts=2,
                           ip="10.244.0.2", started_at=T0, ready_at=later,
                           created_at=later)], now=later)
    updated = store.pods(node="n1")[0]
    assert (updated.ready, updated.restarts, updated.ready_at) == (True, 2, later)
    assert updated.created_at == created  # creation time is kept
    assert updated.updated_at == later
    assert updated.spec == {}  # a record replaces every field it carries

    assert store.delete_pods("default", ["web-h1-a", "web-h1-b", "nope"]) == 2
    assert store.delete_pods("default", []) == 0
    assert [p.name for p in store.pods()] == ["db-0", "dns-x"]

    with pytest.raises(ValueError, match="phase"):
        store.upsert_pods([pod("bad", phase="Sleeping")])


def test_pod_rows_as_plain_tuples_in_more_than_one_batch(store: Store) -> None:
    """What the controller writes (PodRow tuples), more pods than one batch reads and writes:
    every one inserted, then only the changed ones updated, a first created_at kept."""
    count = store_module._POD_BATCH * 2 + 7
    rows = [PodRow("default", f"web-{i:04}", "Deployment", "web", node="n1", spec={"i": i}, created_at=T0)
            for i in range(count)]
    rows.append(PodRow("other", "solo"))  # no created_at given: the write's time
    assert store.upsert_pods(rows, now=T0) == count + 1
    later = T0 + timedelta(minutes=1)
    changed = [r._replace(phase="Running", ready=True, created_at=later) if i % 3 == 0 else r
               for i, r in enumerate(rows[:count])]
    assert store.upsert_pods(changed, now=later) == len(range(0, count, 3))
    got = {p.name: p for p in store.pods(namespace="default")}
    assert len(got) == count
    assert got["web-0000"].phase == "Running" and got["web-0000"].updated_at == later
    assert got["web-0000"].created_at == T0 and got["web-0001"].updated_at == T0
    assert got[f"web-{count - 1:04}"].spec == {"i": count - 1}
    assert store.pods(namespace="other")[0].created_at == T0


# ---- nodes ----------------------------------------------------------------------------------


def test_nodes_and_heartbeat(store: Store) -> None:
    store.upsert_node("n2", address="10.0.0.2")
    node = store.upsert_node(
        "n1", address="10.0.0.1", port=2222, user="gitorch", host_key="ssh-ed25519 AAAA",
        capacity={"cpu": "4", "memory": "8Gi"}, allocatable={"cpu": "3500m"},
        labels={"zone": "a"}, taints=[{"key": "gpu", "effect": "NoSchedule"}],
    )
    assert node.ready is False and node.last_heartbeat is None
    assert [n.name for n in store.nodes()] == ["n1", "n2"]

    beat = store.heartbeat("n1", T0, {"os": "debian"}, agent_version="0.1.0",
                           conditions=[cond("Ready", "True", "AgentReady")])
    assert beat.ready is True and beat.last_heartbeat == T0
    store.heartbeat("n1", T0 + timedelta(seconds=10), {"os": "debian", "load": 1},
                    conditions=[cond("Ready", "True", "AgentReady")])
    got = store.node("n1")
    assert got is not None
    assert got.facts == {"os": "debian", "load": 1}
    assert got.last_heartbeat == T0 + timedelta(seconds=10)
    assert got.conditions[0]["last_transition_time"] == T0.isoformat()
    assert (got.port, got.user, got.agent_version) == (2222, "gitorch", "0.1.0")
    assert got.taints == [{"key": "gpu", "effect": "NoSchedule"}]

    store.heartbeat("n1", T0 + timedelta(seconds=20), {},
                    conditions=[cond("Ready", "False", "DiskPressure")])
    assert store.node("n1").ready is False  # type: ignore[union-attr]
    store.upsert_node("n1", ready=True, labels={"zone": "b"})
    assert store.node("n1").labels == {"zone": "b"}  # type: ignore[union-attr]

    with pytest.raises(StoreError, match="not registered"):
        store.heartbeat("ghost", T0, {})
    with pytest.raises(TypeError, match="colour"):
        store.upsert_node("n1", colour="red")
    assert store.delete_node("n2") is True
    assert store.delete_node("n2") is False
    assert store.node("n2") is None


def test_events_aggregate_repeats(store: Store) -> None:
    web = ("Deployment", "default", "web")
    for minute in range(3):
        store.record_event(*web, type="Warning", reason="FailedScheduling",
                           message="0/3 nodes fit", when=T0 + timedelta(minutes=minute),
                           revision=SHA_A)
    store.record_event(*web, reason="ScalingReplicaSet", message="scaled to 3",
                       when=T0 + timedelta(minutes=4))
    store.record_event("Pod", "default", "web-1", reason="Started", when=T0 + timedelta(minutes=5))
    store.record_event(*web, type="Warning", reason="FailedScheduling", message="1/3 nodes fit",
                       when=T0 + timedelta(minutes=6))

    mine = store.events(object=web)
    assert [(e.reason, e.message, e.count) for e in mine] == [
        ("FailedScheduling", "0/3 nodes fit", 3),
        ("ScalingReplicaSet", "scaled to 3", 1),
        ("FailedScheduling", "1/3 nodes fit", 1),
    ]
    assert (mine[0].first_time, mine[0].last_time, mine[0].revision) == (
        T0, T0 + timedelta(minutes=2), SHA_A)
    assert [e.name for e in store.events()] == ["web", "web", "web-1", "web"]
    assert [e.reason for e in store.events(limit=2)] == ["Started", "FailedScheduling"]
    recent = store.events(since=T0 + timedelta(minutes=4, seconds=30))
    assert [e.reason for e in recent] == ["Started", "FailedScheduling"]
    with pytest.raises(ValueError, match="event type"):
        store.record_event(*web, type="Error", reason="X")
    assert store.prune_events(T0 + timedelta(minutes=5)) == 2
    assert len(store.events()) == 2


# ---- inventory ------------------------------------------------------------------------------


def inv(kind: str, name: str, ns: str = "default", rev: str = SHA_A) -> InventoryEntry:
    return InventoryEntry(kind=kind, namespace=ns, name=name, applied_revision=rev)


def test_inventory_is_replaced_whole(store: Store) -> None:
    assert store.inventory() == []
    store.replace_inventory([inv("Service", "web"), inv("Deployment", "web"),
                             inv("Namespace", "prod", ns="")])
    assert [(e.kind, e.namespace, e.name) for e in store.inventory()] == [
        ("Deployment", "default", "web"), ("Namespace", "", "prod"), ("Service", "default", "web")
    ]
    store.replace_inventory([inv("Deployment", "web", rev=SHA_B)])
    assert [(e.kind, e.applied_revision) for e in store.inventory()] == [("Deployment", SHA_B)]
    store.replace_inventory([])
    assert store.inventory() == []


def test_a_failed_inventory_replace_keeps_the_old_one(store: Store) -> None:
    store.replace_inventory([inv("Deployment", "web"), inv("Service", "web")])
    before = [(e.kind, e.name) for e in store.inventory()]
    with pytest.raises(StoreError, match="more than once"):
        store.replace_inventory([inv("ConfigMap", "a"), inv("ConfigMap", "a")])
    broken = inv("ConfigMap", "b")
    broken.name = None  # type: ignore[assignment]  # NOT NULL fails after the delete ran
    with pytest.raises(StoreError):
        store.replace_inventory([inv("ConfigMap", "a"), broken])
    assert [(e.kind, e.name) for e in store.inventory()] == before


# ---- transactions ---------------------------------------------------------------------------


def test_a_failed_transaction_leaves_nothing_half_written(store: Store) -> None:
    with pytest.raises(RuntimeError, match="executor crashed"), store.transaction() as tx:
        tx.upsert_pods([pod("web-h1-a", node="n1")])
        tx.upsert_object_status("Deployment", "default", "web", health="Progressing")
        tx.record_event("Deployment", "default", "web", reason="Scaled")
        raise RuntimeError("executor crashed")
    assert store.pods() == []
    assert store.objects() == []
    assert store.events() == []

    with pytest.raises(StoreError), store.transaction() as tx:
        tx.upsert_pods([pod("web-h1-a")])
        tx.replace_inventory([inv("A", "a"), InventoryEntry(kind="A", name=None)])  # type: ignore[arg-type]
    assert store.pods() == []


def test_a_transaction_commits_every_step_together(store: Store) -> None:
    def step(tx: Store) -> int:
        tx.upsert_pods([pod("web-h1-a", node="n1")])
        with tx.transaction() as inner:  # joins the outer transaction
            inner.upsert_object_status("Deployment", "default", "web", health="Healthy")
        return len(tx.pods())  # reads see the transaction's own writes

    assert store.apply_in_transaction(step) == 1
    assert [p.name for p in store.pods()] == ["web-h1-a"]
    assert store.object_status("Deployment", "default", "web").health == "Healthy"  # type: ignore[union-attr]


# ---- leases ---------------------------------------------------------------------------------


def test_lease_acquire_renew_expire_and_steal(store: Store) -> None:
    assert store.try_acquire_lease("controller", "a", 15, T0) is True
    assert store.try_acquire_lease("controller", "b", 15, T0 + timedelta(seconds=5)) is False
    assert store.try_acquire_lease("controller", "a", 15, T0 + timedelta(seconds=10)) is True
    lease = store.lease("controller")
    assert lease is not None
    assert (lease.holder, lease.acquired_at, lease.renewed_at, lease.expires_at) == (
        "a", T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=25))
    # Still held at 24s, expired at 25s: b takes over.
    assert store.try_acquire_lease("controller", "b", 15, T0 + timedelta(seconds=24)) is False
    assert store.try_acquire_lease("controller", "b", 15, T0 + timedelta(seconds=25)) is True
    stolen = store.lease("controller")
    assert stolen is not None and (stolen.holder, stolen.acquired_at) == (
        "b", T0 + timedelta(seconds=25))
    assert store.try_acquire_lease("controller", "a", 15, T0 + timedelta(seconds=26)) is False
    # Releasing is only for the holder; then anyone may take it at once.
    assert store.release_lease("controller", "a") is False
    assert store.release_lease("controller", "b") is True
    released = store.lease("controller")
    assert released is not None and released.term == 2  # kept, expired: terms only grow
    fence = store.acquire_lease("controller", "a", 15)
    assert fence is not None and fence.term == 3
    # Leases are independent of each other.
    assert store.try_acquire_lease("dns", "b", 15, T0 + timedelta(seconds=27)) is True


def test_exactly_one_of_eight_racing_controllers_gets_the_lease(store_url: str) -> None:
    stores = [Store.open(store_url) for _ in range(8)]
    try:
        for round_ in range(3):
            lease = f"leader-{round_}"

            def race(i: int, lease: str = lease) -> bool:
                return stores[i].try_acquire_lease(lease, f"c{i}", 30, T0)

            won = run_threads(8, race)
            assert sum(won) == 1, won
            winner = f"c{won.index(True)}"
            assert stores[0].lease(lease).holder == winner  # type: ignore[union-attr]
        # Once expired, a race to take it over also has exactly one winner.
        later = T0 + timedelta(seconds=31)
        won = run_threads(8, lambda i: stores[i].try_acquire_lease("leader-0", f"d{i}", 30, later))
        assert sum(won) == 1, won
    finally:
        for s in stores:
            s.close()


# ---- drift reports --------------------------------------------------------------------------


def test_drift_reports(store: Store) -> None:
    first = store.save_drift_report(
        started_at=T0, finished_at=T0 + timedelta(seconds=3), mode="report", revision=SHA_A,
        findings=[{"object": "Deployment/default/web", "what": "pod missing"}],
        counts={"missing": 1},
    )
    assert first.id is not None
    store.save_drift_report(started_at=T0 + timedelta(hours=1), finished_at=None, mode="heal",
                            healed=["Pod/default/web-1"])
    reports = store.drift_reports()
    assert [r.mode for r in reports] == ["heal", "report"]
    assert reports[1].findings == [{"object": "Deployment/default/web", "what": "pod missing"}]
    assert reports[1].counts == {"missing": 1}
    assert reports[0].healed == ["Pod/default/web-1"] and reports[0].finished_at is None
    assert [r.mode for r in store.drift_reports(since=T0 + timedelta(minutes=1))] == ["heal"]
    assert [r.mode for r in store.drift_reports(limit=1)] == ["heal"]
    with pytest.raises(ValueError, match="drift mode"):
        store.save_drift_report(started_at=T0, finished_at=None, mode="fix")


# ---- notification state ---------------------------------------------------------------------


def test_notification_state_round_trips_and_writes_only_what_changed(
    store: Store, store_url: str
) -> None:
    assert store.notification_state() == {}
    state = {
        "deployed": SHA_A,
        "failed": ["nodes", SHA_A, "n2"],
        "health": {"Deployment/shop/web": "Degraded", "Namespace//shop": "Healthy"},
    }
    assert store.save_notification_state(state, now=T0) == ["deployed", "failed", "health"]
    assert store.save_notification_state(state, now=T0 + timedelta(seconds=1)) == []
    assert store.save_notification_state({}) == []
    # Another controller on the same store (a restart, or a new leader) reads the same.
    with Store.open(store_url) as other:
        assert other.notification_state() == state
        changed = {**state, "deployed": SHA_B}
        assert other.save_notification_state(changed, now=T0 + timedelta(seconds=2)) == ["deployed"]
    assert store.notification_state() == changed
    # Only the changed key was rewritten; the others keep their time.
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT key, updated_at FROM notification_state")).all()
    finally:
        engine.dispose()
    # SQLite gives naive UTC text, PostgreSQL an aware datetime.
    stamps = {key: when if isinstance(when, datetime) else datetime.fromisoformat(when)
              for key, when in rows}
    assert {key: when.replace(tzinfo=when.tzinfo or UTC) for key, when in stamps.items()} == {
        "deployed": T0 + timedelta(seconds=2), "failed": T0, "health": T0,
    }


def test_a_transaction_is_one_unit_of_work_on_its_thread(store: Store) -> None:
    """Every method called inside `with store.transaction()` writes in it: all or nothing."""
    store.record_revision(SHA_A, committed_at=T0)
    with pytest.raises(RuntimeError), store.transaction():
        store.record_revision(SHA_B, committed_at=T0)
        store.set_revision_outcome(SHA_A, "applied", when=T0)
        store.record_event("Revision", "", "x", reason="Test", when=T0)
        raise RuntimeError("the pass failed half way")
    assert store.revision(SHA_B) is None
    assert store.revision(SHA_A) is not None and store.revision(SHA_A).outcome == "pending"  # type: ignore[union-attr]
    assert store.events() == []
    with store.transaction():
        store.record_revision(SHA_B, committed_at=T0)
        # Another thread does not see the open transaction's rows, nor write in it.
        seen: list[object] = []
        worker = threading.Thread(target=lambda: seen.append(store.revision(SHA_B)))
        worker.start()
        worker.join()
        assert seen == [None]
    assert store.revision(SHA_B) is not None


def test_fenced_writes_are_refused_after_another_term_begins(store: Store) -> None:
    now = datetime.now(UTC)
    first = store.acquire_lease("controller", "a", 60)
    assert first is not None and first.term == 1
    again = store.acquire_lease("controller", "a", 60)
    assert again is not None and again.term == 1  # a renewal keeps the term
    with store.transaction(again):
        store.record_revision(SHA_A, committed_at=T0)
    # a stalls past its lease; b takes over in term 2 (b's clock is an hour on: a's lease ran out).
    taken = store.acquire_lease("controller", "b", 7200, now + timedelta(hours=1))
    assert taken is not None and taken.term == 2
    with pytest.raises(store_module.StaleLeader, match="held by b in term 2"), store.transaction(again):
        store.record_revision(SHA_B, committed_at=T0)
    assert store.revision(SHA_B) is None
    with pytest.raises(store_module.StaleLeader):
        store.check_fence(again)
    store.check_fence(taken)
    # a comes back after b's term lapses: term 3, and b's term-2 writes are refused in turn.
    back = store.acquire_lease("controller", "a", 60, now + timedelta(hours=4))
    assert back is not None and back.term == 3
    with pytest.raises(store_module.StaleLeader):
        store.check_fence(taken)


def test_an_expired_term_fences_its_own_holder(store: Store) -> None:
    fence = store.acquire_lease("controller", "a", 0.01)
    assert fence is not None
    threading.Event().wait(0.05)
    with pytest.raises(store_module.StaleLeader, match="expired"):
        store.check_fence(fence)


def test_saved_allocations_replace_and_release(store: Store) -> None:
    store.upsert_node("n1", address="10.0.0.1")
    store.upsert_node("n2", address="10.0.0.2")
    store.save_allocations(
        {("default", "web"): "10.96.0.10", ("default", "api"): "10.96.0.11"},
        {("default", "web", "http"): 30080},
        {"n1": "10.244.0.0/24", "n2": "10.244.1.0/24"},
        now=T0,
    )
    assert {(c.service, c.ip) for c in store.cluster_ips()} == {("web", "10.96.0.10"), ("api", "10.96.0.11")}
    # api deleted from Git, web's port gone, n1 gone, n2 swaps to n1's old CIDR: all in one step.
    store.save_allocations({("default", "web"): "10.96.0.10"}, {}, {"n2": "10.244.0.0/24"}, now=T0)
    assert [(c.service, c.ip) for c in store.cluster_ips()] == [("web", "10.96.0.10")]
    assert store.node_ports() == []
    assert {n.name: n.pod_cidr for n in store.nodes()} == {"n1": None, "n2": "10.244.0.0/24"}


def test_an_allocation_mark_is_kept_and_moved(store: Store) -> None:
    assert store.allocation_mark("account_ids") is None
    store.save_allocation_mark("account_ids", 200003, now=T0)
    store.save_allocation_mark("account_ids", 200005, now=T0)
    assert store.allocation_mark("account_ids") == 200005


def test_retention_rules(store: Store) -> None:
    now = datetime.now(UTC)
    for i in range(30):
        store.record_event("Pod", "default", f"p{i}", reason="Started", when=now - timedelta(minutes=90 - i))
    for i in range(5):
        store.record_event("Pod", "default", f"fresh{i}", reason="Started", when=now - timedelta(seconds=i))
    commits = [f"{i:040x}" for i in range(8)]
    for i, c in enumerate(commits):
        store.record_revision(c, committed_at=T0, first_seen_at=T0 + timedelta(minutes=i))
    store.set_revision_outcome(commits[0], "applied", when=T0)  # the oldest is the last applied
    for _ in range(6):
        store.save_drift_report(started_at=T0, finished_at=T0, mode="report", revision=None, findings=[], counts={})
    store.upsert_node("kept", address="10.0.0.1")
    store.upsert_node("busy", address="10.0.0.2")
    store.upsert_node("gone", address="10.0.0.3")
    store.upsert_pods([PodRecord(namespace="default", name="p", owner_kind="Deployment", owner_name="d",
                                 node="busy", template_hash="h")])
    gone = store.prune(events_before=now - timedelta(hours=1), max_events=3, revisions=3, drift_reports=2,
                       nodes=["kept"])
    assert [e.name for e in store.events()] and {e.name for e in store.events()} == {"fresh0", "fresh1", "fresh2"}
    assert {r.commit for r in store.revisions()} == {commits[0], *commits[5:]}
    assert len(store.drift_reports()) == 2
    assert {n.name for n in store.nodes()} == {"kept", "busy"}  # busy still has a pod recorded
    assert gone["events"] == 32 and gone["revisions"] == 4 and gone["drift_reports"] == 4 and gone["nodes"] == 1
