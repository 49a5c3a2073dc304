"""The state store: what gitorch saw, applied and observed, in SQLite (default) or PostgreSQL.

The only module that imports sqlmodel, sqlalchemy and alembic. Every public method is one
short transaction; `Store.transaction()` groups several writes into one. Rows come back
detached, so callers never need a session. All times are timezone-aware UTC.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar, cast, get_args

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    JSON,
    CursorResult,
    DateTime,
    Dialect,
    Engine,
    Index,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    update,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, select

from gitorch.model.errors import GitorchError

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant: concurrent controllers starting at once migrate one after the other.
_MIGRATION_LOCK_KEY = 0x6769746F7263
# How often an allocation retries after a concurrent writer took the same value.

Outcome = Literal["applied", "failed", "invalid", "pending"]
Sync = Literal["Synced", "OutOfSync"]
Health = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"]
ConditionType = Literal[
    "Ready", "Progressing", "Degraded", "Reconciling", "Stalled", "Available", "Complete", "Failed",
    "DisruptionAllowed",
    "AbleToScale", "ScalingActive", "ScalingLimited",  # a HorizontalPodAutoscaler's
    "RecommendationProvided", "LowConfidence", "NoPodsMatched",  # a VerticalPodAutoscaler's
]
ConditionStatus = Literal["True", "False", "Unknown"]
PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
EventType = Literal["Normal", "Warning"]
DriftMode = Literal["report", "heal"]

OUTCOMES: tuple[str, ...] = get_args(Outcome)
SYNC_STATES: tuple[str, ...] = get_args(Sync)
HEALTH_STATES: tuple[str, ...] = get_args(Health)
CONDITION_TYPES: tuple[str, ...] = get_args(ConditionType)
CONDITION_STATUSES: tuple[str, ...] = get_args(ConditionStatus)
POD_PHASES: tuple[str, ...] = get_args(PodPhase)
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
DRIFT_MODES: tuple[str, ...] = get_args(DriftMode)


class StoreError(GitorchError):
    """The state store cannot be opened, reached or written as asked."""


class StaleLeader(StoreError):
    """A write fenced by a leadership term that is no longer current: another controller leads."""


@dataclass(frozen=True)
class Fence:
    """A leadership term: the lease, its holder and the term number (a fencing token).

    The number grows each time the lease changes hands, so a controller that lost the lease
    (paused, partitioned) is refused by the store and by the node agents that saw a newer term.
    """

    lease: str
    holder: str
    term: int
    expires_at: datetime
    """When the lease runs out unless renewed, on the database's clock."""
    epoch: str = ""
    """The lease's identity in its store (terms of another store's lease do not compare)."""

    def token(self) -> dict[str, Any]:
        """What node agents get with `sync`: they refuse terms older than one they have seen."""
        return {"term": self.term, "holder": self.holder, "lease": self.epoch}


class Condition(TypedDict):
    """A status condition as stored (Kubernetes' shape; the time is ISO 8601 UTC)."""

    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str


# ---- column types --------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()}: pass a timezone-aware time")
    return when.astimezone(UTC)


def _now(when: datetime | None = None) -> datetime:
    return datetime.now(UTC) if when is None else _utc(when)


def _json_list() -> Any:
    return Field(default_factory=list, sa_type=JSON)


def _json_dict() -> Any:
    return Field(default_factory=dict, sa_type=JSON)


def _time(*, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=UTCDateTime)
    return Field(default_factory=lambda: datetime.now(UTC), sa_type=UTCDateTime)


# ---- tables --------------------------------------------------------------------------------
# Cluster-scoped objects use namespace "" (never NULL, so unique constraints hold).


class Revision(SQLModel, table=True):
    """A commit gitorch has seen, and what became of it."""

    __tablename__ = "revisions"

    commit: str = Field(primary_key=True, max_length=40)
    author: str = ""
    message: str = Field(default="", sa_type=Text)
    committed_at: datetime = _time()
    first_seen_at: datetime = _time()
    applied_at: datetime | None = _time(nullable=True)
    outcome: str = "pending"
    error: str = Field(default="", sa_type=Text)


class ObjectRecord(SQLModel, table=True):
    """The status of one desired object (Flux's status fields plus the applied manifest)."""

    __tablename__ = "objects"
    __table_args__ = (UniqueConstraint("kind", "namespace", "name", name="uq_objects_key"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    namespace: str = ""
    name: str
    spec_hash: str = ""
    last_applied_revision: str | None = None
    last_attempted_revision: str | None = None
    generation: int = 1
    observed_generation: int = 0
    sync: str = "OutOfSync"
    health: str = "Unknown"
    conditions: list[dict[str, Any]] = _json_list()
    body: dict[str, Any] = _json_dict()
    updated_at: datetime = _time()


class PodRecord(SQLModel, table=True):
    """A pod: where it is scheduled (node None = Pending) and what its node last reported."""

    __tablename__ = "pods"
    __table_args__ = (
        Index("ix_pods_node", "node"),
        Index("ix_pods_owner", "namespace", "owner_kind", "owner_name"),
    )

    namespace: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    owner_kind: str = ""
    owner_name: str = ""
    node: str | None = None
    template_hash: str = ""
    phase: str = "Pending"
    ip: str | None = None
    restarts: int = 0
    ready: bool = False
    reason: str = ""
    message: str = Field(default="", sa_type=Text)
    spec: dict[str, Any] = _json_dict()
    created_at: datetime = _time()
    started_at: datetime | None = _time(nullable=True)
    ready_at: datetime | None = _time(nullable=True)
    updated_at: datetime = _time()
    ordinal: int | None = None


class PodRow(NamedTuple):
    """A pod row to write (upsert_pods), as a plain tuple: a pass that starts thousands of pods
    builds one per pod, and a PodRecord (an ORM instance with its instance state) costs about
    two kilobytes more each, at the pass's peak."""

    namespace: str
    name: str
    owner_kind: str = ""
    owner_name: str = ""
    node: str | None = None
    template_hash: str = ""
    phase: str = "Pending"
    ip: str | None = None
    restarts: int = 0
    ready: bool = False
    reason: str = ""
    message: str = ""
    spec: Mapping[str, Any] = {}
    created_at: datetime | None = None
    started_at: datetime | None = None
    ready_at: datetime | None = None
    updated_at: datetime | None = None
    ordinal: int | None = None


class NodeRecord(SQLModel, table=True):
    """A server: how to reach it, what it offers, and what its agent last reported."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("pod_cidr", name="uq_nodes_pod_cidr"),)

    name: str = Field(primary_key=True)
    address: str = ""
    port: int = 22
    user: str = "root"
    host_key: str | None = Field(default=None, sa_type=Text)
    capacity: dict[str, Any] = _json_dict()
    allocatable: dict[str, Any] = _json_dict()
    labels: dict[str, Any] = _json_dict()
    taints: list[dict[str, Any]] = _json_list()
    pod_cidr: str | None = None
    facts: dict[str, Any] = _json_dict()
    last_heartbeat: datetime | None = _time(nullable=True)
    conditions: list[dict[str, Any]] = _json_list()
    agent_version: str = ""
    ready: bool = False


class ClusterIPAllocation(SQLModel, table=True):
    """A Service's cluster IP; the primary key makes an IP belong to one service at a time."""

    __tablename__ = "cluster_ips"
    __table_args__ = (UniqueConstraint("namespace", "service", name="uq_cluster_ips_service"),)

    ip: str = Field(primary_key=True, max_length=45)
    namespace: str
    service: str
    allocated_at: datetime = _time()


class LoadBalancerAllocation(SQLModel, table=True):
    """A LoadBalancer Service's address, and the node announcing it (None: none can)."""

    __tablename__ = "load_balancer_ips"
    __table_args__ = (UniqueConstraint("namespace", "service", name="uq_load_balancer_ips_service"),)

    ip: str = Field(primary_key=True, max_length=45)
    namespace: str
    service: str
    node: str | None = None
    allocated_at: datetime = _time()


class ServiceAccountId(SQLModel, table=True):
    """A ServiceAccount's Unix identity on the nodes: its uid, also its gid."""

    __tablename__ = "service_account_ids"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_service_account_ids_account"),)

    uid: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    namespace: str
    name: str
    allocated_at: datetime = _time()


class AllocationMark(SQLModel, table=True):
    """A high-water mark of an allocation that never gives a value twice (`account_ids`: the
    uid the next new ServiceAccount gets). Retention: one row per kind of allocation, kept."""

    __tablename__ = "allocation_marks"

    name: str = Field(primary_key=True)
    value: int
    updated_at: datetime = _time()


class NodePortAllocation(SQLModel, table=True):
    """A NodePort of one named port of a Service."""

    __tablename__ = "node_ports"
    __table_args__ = (
        UniqueConstraint("namespace", "service", "port_name", name="uq_node_ports_service_port"),
    )

    port: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    namespace: str
    service: str
    port_name: str = ""
    allocated_at: datetime = _time()


class Event(SQLModel, table=True):
    """Something that happened to an object; repeats are counted, as Kubernetes does."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_object", "kind", "namespace", "name"),
        Index("ix_events_last_time", "last_time"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    namespace: str = ""
    name: str
    type: str = "Normal"
    reason: str
    message: str = Field(default="", sa_type=Text)
    count: int = 1
    first_time: datetime = _time()
    last_time: datetime = _time()
    revision: str | None = None


class InventoryEntry(SQLModel, table=True):
    """One object gitorch applied; the whole table is the current inventory."""

    __tablename__ = "inventory"

    kind: str = Field(primary_key=True)
    namespace: str = Field(primary_key=True, default="")
    name: str = Field(primary_key=True)
    applied_revision: str = ""


class Lease(SQLModel, table=True):
    """Leader election: who holds `name` until `expires_at`."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    term: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Leadership term: +1 each time the lease changes hands (a fencing token)."""
    epoch: str = Field(default="", sa_column_kwargs={"server_default": ""})
    """Random, set when the lease is created: node agents compare terms of one epoch only."""
    acquired_at: datetime = _time()
    renewed_at: datetime = _time()
    expires_at: datetime = _time()


class DriftReport(SQLModel, table=True):
    """One drift check: what differed between Git, the store and the nodes, and what was healed."""

    __tablename__ = "drift_reports"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = _time()
    finished_at: datetime | None = _time(nullable=True)
    mode: str = "report"
    revision: str | None = None
    findings: list[Any] = _json_list()
    counts: dict[str, Any] = _json_dict()
    healed: list[Any] = _json_list()


class NotificationState(SQLModel, table=True):
    """What notifications already announced, as JSON by key: shared by every controller, so
    each event is sent once across restarts (Argo CD keeps this in an annotation)."""

    __tablename__ = "notification_state"

    key: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_type=JSON, sa_column_kwargs={"nullable": False})
    updated_at: datetime = _time()


class RecommenderCheckpoint(SQLModel, table=True):
    """One VerticalPodAutoscaler container's usage history (VPA's VerticalPodAutoscalerCheckpoint):
    its histograms as JSON. Retention: the recommender makes the table exactly what it keeps."""

    __tablename__ = "recommender_checkpoints"

    namespace: str = Field(primary_key=True)
    autoscaler: str = Field(primary_key=True)
    container: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_type=JSON, sa_column_kwargs={"nullable": False})
    saved_at: datetime = _time()


metadata = SQLModel.metadata


# ---- pure helpers --------------------------------------------------------------------------


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: datetime
) -> list[Condition]:
    """The conditions `new`, each keeping its old transition time while its status is unchanged.

    Purely computational. `new` is the complete set (level-triggered): types absent from it
    are dropped. A condition's `last_transition_time` moves to `now` only when it is new or
    its status changed (Flux / Kubernetes semantics); reason and message are always updated.
    """
    stamp = _utc(now).isoformat()
    previous = {c["type"]: c for c in old}
    merged: list[Condition] = []
    seen: set[str] = set()
    for cond in new:
        kind, status = cond.get("type"), cond.get("status")
        if kind not in CONDITION_TYPES:
            raise ValueError(f"condition type {kind!r} is not one of {', '.join(CONDITION_TYPES)}")
        if status not in CONDITION_STATUSES:
            raise ValueError(f"condition {kind} status {status!r} is not True, False or Unknown")
        if kind in seen:
            raise ValueError(f"condition {kind} given twice")
        seen.add(kind)
        before = previous.get(kind)
        unchanged = before is not None and before.get("status") == status
        merged.append(
            Condition(
                type=kind,
                status=status,
                reason=str(cond.get("reason", "")),
                message=str(cond.get("message", "")),
                last_transition_time=(
                    str(before["last_transition_time"]) if before and unchanged else stamp
                ),
            )
        )
    return merged


def _check(value: object, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(allowed)}")


# ---- opening -------------------------------------------------------------------------------


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            f"state store URL {url!r} is not a database URL: use sqlite:///PATH "
            "or postgresql+psycopg://USER@HOST/DB"
        ) from exc
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if parsed.database in (None, "", ":memory:"):
            raise StoreError(f"state store URL {url!r} names no file: use sqlite:///PATH")
        return parsed.set(drivername="sqlite+pysqlite")
    if parsed.drivername in ("postgresql", "postgresql+psycopg", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    raise StoreError(
        f"state store URL scheme {parsed.drivername!r} is not supported: use sqlite:///PATH "
        "or postgresql+psycopg://USER@HOST/DB"
    )


def _private(path: Path) -> None:
    """The store's file and its -wal/-shm readable by their owner only (0600; SQLite gives the
    journal files the database's mode), in a folder made 0700 when the store creates it."""
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in created:  # a folder that was there (the user's choice) keeps its mode
        os.chmod(folder, 0o700)
    with contextlib.suppress(FileExistsError):  # an empty file is an empty database
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:  # left alone when right (it may be another's)
            os.chmod(file, 0o600)


def _sqlite_engine(url: URL) -> Engine:
    path = Path(cast(str, url.database)).expanduser()
    try:
        _private(path)
    except OSError as exc:
        raise StoreError(f"cannot create the state store {path}: {exc}") from exc
    engine = create_engine(
        url.set(database=str(path)), connect_args={"check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver, so that the "begin" hook below decides how BEGIN is sent.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the write lock up front: a read-then-write transaction is atomic and
        # waits in busy_timeout instead of failing on lock upgrade.
        mode = conn.get_execution_options().get("gitorch_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _migrations(script_location: Path | str) -> tuple[Config, ScriptDirectory]:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    return config, ScriptDirectory.from_config(config)


def _known(script: ScriptDirectory, current: str, head: str | None) -> None:
    try:
        script.get_revision(current)
    except CommandError as exc:
        raise StoreError(
            f"the state store's schema is at version {current}, which this gitorch (schema {head}) "
            "does not know: it was written by a newer gitorch; upgrade gitorch"
        ) from exc


def migrate(
    engine: Engine, revision: str = "head", *, script_location: Path | str = MIGRATIONS
) -> tuple[str | None, str | None]:
    """Upgrade the store's schema to `revision` (alembic), in one transaction; returns the
    versions before and after (None: an empty store)."""
    config, script = _migrations(script_location)
    writer = engine.execution_options(gitorch_begin="IMMEDIATE")
    with writer.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
        context = MigrationContext.configure(conn)
        current = context.get_current_revision()
        if current is not None:
            _known(script, current, script.get_current_head())
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        return current, context.get_current_revision()


def schema_versions(engine: Engine, *, script_location: Path | str = MIGRATIONS) -> tuple[str | None, str | None]:
    """The store's schema version (None: an empty store) and the newest this gitorch knows."""
    _, script = _migrations(script_location)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision(), script.get_current_head()


def _open_schema(
    engine: Engine, *, script_location: Path | str = MIGRATIONS
) -> tuple[str | None, str | None]:
    """An empty store is created at the newest schema; one at the newest is used as it is; any
    other version is refused: only `gitorch migrate` (or `serve --migrate`) changes a schema, so
    a newer CLI never migrates a database under an older running controller."""
    current, head = schema_versions(engine, script_location=script_location)
    if current == head:
        return current, head
    if current is None:
        return migrate(engine, script_location=script_location)  # re-checked under the migration lock
    _known(_migrations(script_location)[1], current, head)
    raise StoreError(
        f"the state store's schema is at version {current}, this gitorch needs {head}: "
        "run `gitorch migrate` (back up the store first; see README, Running in production)"
    )


_POD_BATCH = 500  # pods upsert_pods reads and writes at a time


def _comparable(stored: Any, given: Any) -> Any:
    """A stored value as the given one is compared with it: a naive timestamp read back from
    SQLite is UTC."""
    if isinstance(stored, datetime) and isinstance(given, datetime) and stored.tzinfo is None \
            and given.tzinfo is not None:
        return stored.replace(tzinfo=UTC)
    return stored


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- the store -----------------------------------------------------------------------------


class Store:
    """The state store. Thread-safe; each method is its own transaction unless bound to one."""

    schema_change: tuple[str | None, str | None] = (None, None)
    """The schema versions before and after `open` (None: an empty store); they differ when it
    created or migrated the schema."""

    def __init__(self, engine: Engine, *, display_url: str) -> None:
        self._engine = engine
        self._writer = engine.execution_options(gitorch_begin="IMMEDIATE")
        # The session of the transaction open on each thread: every method called inside
        # `with store.transaction():` on that thread writes in it, so a pass is one unit of work.
        self._local = threading.local()
        self.url = display_url
        """The store's URL with any password hidden."""
        self.written: list[Callable[[], None]] = []
        """Called after each write transaction this object commits: a reader in the same process
        (the Kubernetes API's feed) looks at once instead of at its next poll."""

    @classmethod
    def open(cls, url: str, *, upgrade: bool = False) -> Store:
        """Open the store at `url`. An empty store is created at the newest schema; a store at
        another schema version is refused, unless `upgrade` migrates it (`gitorch migrate`)."""
        parsed = _parse_url(url)
        display = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
        try:
            change = migrate(engine) if upgrade else _open_schema(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the state store {display}: {_one_line(exc)}") from exc
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, display_url=display)
        store.schema_change = change
        return store

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ----

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        bound: Session | None = getattr(self._local, "session", None)
        if bound is not None:
            try:
                yield bound
            except SQLAlchemyError as exc:
                raise StoreError(f"state store {self.url}: {_one_line(exc)}") from exc
            return
        try:
            engine = self._writer if write else self._engine
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"state store {self.url}: {_one_line(exc)}") from exc
        if write:
            for hook in list(self.written):
                hook()

    @contextmanager
    def transaction(self, fence: Fence | None = None) -> Iterator[Store]:
        """Every store method this thread calls inside the block writes in one transaction,
        committed at exit; an exception rolls all of it back. Nested use joins the outer one.

        With a `fence`, the transaction first checks (and on PostgreSQL locks, FOR SHARE, so no
        one can take it over until commit) that the fence's lease is still held by its holder
        in its term; otherwise it raises StaleLeader and writes nothing.
        """
        if getattr(self._local, "session", None) is not None:
            if fence is not None:
                self._check_fence(self._local.session, fence)
            yield self
            return
        with self._session(write=True) as session:
            self._local.session = session
            try:
                if fence is not None:
                    self._check_fence(session, fence)
                yield self
                session.flush()
            finally:
                self._local.session = None

    def apply_in_transaction(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` with every write it makes in one transaction."""
        with self.transaction() as tx:
            return fn(tx)

    # ---- revisions ----

    def record_revision(
        self,
        commit: str,
        *,
        author: str = "",
        message: str = "",
        committed_at: datetime,
        first_seen_at: datetime | None = None,
    ) -> Revision:
        """Remember a commit (outcome `pending`); a commit seen before is returned unchanged."""
        if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
            raise ValueError(f"commit {commit!r} is not 40 lowercase hex digits")
        with self._session(write=True) as s:
            row = s.get(Revision, commit)
            if row is None:
                row = Revision(
                    commit=commit,
                    author=author,
                    message=message,
                    committed_at=_utc(committed_at),
                    first_seen_at=_now(first_seen_at),
                )
                s.add(row)
            return row

    def set_revision_outcome(
        self, commit: str, outcome: str, error: str = "", *, when: datetime | None = None
    ) -> Revision:
        """Record what applying `commit` gave; `applied` also stamps `applied_at`."""
        _check(outcome, OUTCOMES, "outcome")
        with self._session(write=True) as s:
            row = s.get(Revision, commit)
            if row is None:
                raise StoreError(f"revision {commit} was never recorded")
            row.outcome = outcome
            row.error = error
            if outcome == "applied":
                row.applied_at = _now(when)
            return row

    def revision(self, commit: str) -> Revision | None:
        with self._session(write=False) as s:
            return s.get(Revision, commit)

    def last_applied_revision(self) -> Revision | None:
        """The revision most recently applied successfully."""
        with self._session(write=False) as s:
            query = (
                select(Revision)
                .where(Revision.outcome == "applied")
                .order_by(col(Revision.applied_at).desc())
                .limit(1)
            )
            return s.exec(query).first()

    def revisions(self, limit: int | None = None) -> list[Revision]:
        """Revisions, newest first seen first."""
        with self._session(write=False) as s:
            query = select(Revision).order_by(
                col(Revision.first_seen_at).desc(), col(Revision.committed_at).desc()
            )
            return list(s.exec(query.limit(limit)).all())

    # ---- object status ----

    def upsert_object_status(
        self, kind: str, namespace: str, name: str, *, now: datetime | None = None, **fields: Any
    ) -> ObjectRecord:
        """Create or update an object's status with `fields` (columns of ObjectRecord).

        `conditions` is merged with `merge_conditions`. A changed `spec_hash` bumps
        `generation` (as the Kubernetes API server does) unless `generation` is given.
        """
        unknown = set(fields) - (set(ObjectRecord.model_fields) - {"id", "kind", "namespace",
                                                                   "name", "updated_at"})
        if unknown:
            raise TypeError(f"ObjectRecord has no settable field(s) {', '.join(sorted(unknown))}")
        if "sync" in fields:
            _check(fields["sync"], SYNC_STATES, "sync")
        if "health" in fields:
            _check(fields["health"], HEALTH_STATES, "health")
        stamp = _now(now)
        with self._session(write=True) as s:
            row = s.exec(
                select(ObjectRecord).where(
                    ObjectRecord.kind == kind,
                    ObjectRecord.namespace == namespace,
                    ObjectRecord.name == name,
                )
            ).first()
            if row is None:
                row = ObjectRecord(kind=kind, namespace=namespace, name=name)
                s.add(row)
            elif (
                "spec_hash" in fields
                and "generation" not in fields
                and fields["spec_hash"] != row.spec_hash
            ):
                row.generation += 1
            changed = False
            for key, value in fields.items():
                if key == "conditions":
                    value = merge_conditions(row.conditions or [], value, stamp)
                if getattr(row, key) != value:
                    setattr(row, key, value)
                    changed = True
            if changed or row.id is None:
                row.updated_at = stamp  # the time of the last change: unchanged rows are not written
                s.flush()
            return row

    def object_status(self, kind: str, namespace: str, name: str) -> ObjectRecord | None:
        with self._session(write=False) as s:
            return s.exec(
                select(ObjectRecord).where(
                    ObjectRecord.kind == kind,
                    ObjectRecord.namespace == namespace,
                    ObjectRecord.name == name,
                )
            ).first()

    def objects(self, kind: str | None = None, namespace: str | None = None) -> list[ObjectRecord]:
        """Object statuses, ordered by kind, namespace and name."""
        with self._session(write=False) as s:
            query = select(ObjectRecord)
            if kind is not None:
                query = query.where(ObjectRecord.kind == kind)
            if namespace is not None:
                query = query.where(ObjectRecord.namespace == namespace)
            query = query.order_by(
                col(ObjectRecord.kind), col(ObjectRecord.namespace), col(ObjectRecord.name)
            )
            return list(s.exec(query).all())

    def delete_object(self, kind: str, namespace: str, name: str) -> bool:
        """Forget an object's status; False if there was none."""
        with self._session(write=True) as s:
            table = _table(ObjectRecord)
            result = s.connection().execute(
                delete(table).where(
                    table.c.kind == kind, table.c.namespace == namespace, table.c.name == name
                )
            )
            return result.rowcount > 0

    # ---- pods ----

    def upsert_pods(self, records: Iterable[PodRecord | PodRow], *, now: datetime | None = None) -> int:
        """Create or update pods by (namespace, name); an existing pod keeps its `created_at`.
        Only pods whose fields changed are written (their `updated_at` is then `now`); returns
        how many were written."""
        stamp = _now(now)
        wanted = list(records)
        if not wanted:
            return 0
        # Plain rows, not ORM objects, a batch at a time: a pass that starts thousands of pods
        # would otherwise hold every pod's stored row (its spec decoded) and new values at once,
        # at its peak (and the heap keeps the peak's size after it).
        table = _table(PodRecord)
        fields = [c.name for c in table.columns if c.name not in ("namespace", "name", "updated_at")]
        written = 0
        with self._session(write=True) as s:
            conn = s.connection()
            by_ns: dict[str, dict[str, PodRecord | PodRow]] = {}
            for r in wanted:
                by_ns.setdefault(r.namespace, {})[r.name] = r  # the last one given for a name wins
            for ns, given in by_ns.items():
                names = list(given)
                for i in range(0, len(names), _POD_BATCH):  # bounded IN lists
                    batch = names[i:i + _POD_BATCH]
                    query = sa_select(table).where(table.c.namespace == ns, table.c.name.in_(batch))
                    existing = {row.name: row for row in conn.execute(query)}
                    inserts: list[dict[str, Any]] = []
                    updates: list[tuple[str, dict[str, Any]]] = []
                    for name in batch:
                        record = given[name]
                        _check(record.phase, POD_PHASES, f"pod {record.namespace}/{record.name} phase")
                        row = existing.get(name)
                        if row is None:
                            values = {f: getattr(record, f) for f in fields}
                            if values["created_at"] is None:
                                values["created_at"] = stamp
                            inserts.append({**values, "namespace": ns, "name": name, "updated_at": stamp})
                            continue
                        changed = {f: v for f in fields if f != "created_at"
                                   and (v := getattr(record, f)) != _comparable(getattr(row, f), v)}
                        if changed:
                            updates.append((name, changed))
                    del existing
                    if inserts:
                        conn.execute(insert(table), inserts)
                    for name, changed in updates:
                        conn.execute(update(table).where(table.c.namespace == ns, table.c.name == name)
                                     .values(**changed, updated_at=stamp))
                    written += len(inserts) + len(updates)
        return written

    def delete_pods(self, namespace: str, names: Iterable[str]) -> int:
        """Forget pods of `namespace`; returns how many there were."""
        wanted = list(names)
        if not wanted:
            return 0
        with self._session(write=True) as s:
            table = _table(PodRecord)
            result = s.connection().execute(
                delete(table).where(table.c.namespace == namespace, table.c.name.in_(wanted))
            )
            return result.rowcount

    def pods(
        self,
        namespace: str | None = None,
        owner: tuple[str, str] | None = None,
        node: str | None = None,
        *,
        spec: bool = True,
    ) -> list[PodRecord]:
        """Pods, optionally of a namespace, an owner (kind, name) or a node; by namespace, name.
        `spec=False` leaves each pod's (masked) spec out, as the controller's passes do; such
        rows have `spec` empty."""
        if not spec:
            return self._pod_rows(namespace, owner, node)
        with self._session(write=False) as s:
            query = select(PodRecord)
            if namespace is not None:
                query = query.where(PodRecord.namespace == namespace)
            if owner is not None:
                query = query.where(
                    PodRecord.owner_kind == owner[0], PodRecord.owner_name == owner[1]
                )
            if node is not None:
                query = query.where(PodRecord.node == node)
            query = query.order_by(col(PodRecord.namespace), col(PodRecord.name))
            return list(s.exec(query).all())

    def pods_updated_since(self, since: datetime) -> list[PodRecord]:
        """Pods (without their specs) written at or after `since`: what a reader that keeps
        every pod reads again after a change (`server/kubeapi.py`)."""
        return self._pod_rows(None, None, None, since=since)

    def pod_keys(self) -> set[tuple[str, str]]:
        """(namespace, name) of every pod."""
        table = _table(PodRecord)
        with self._session(write=False) as s:
            return {(r[0], r[1]) for r in s.connection().execute(select(table.c.namespace, table.c.name))}

    def _pod_rows(
        self, namespace: str | None, owner: tuple[str, str] | None, node: str | None, *,
        since: datetime | None = None,
    ) -> list[PodRecord]:
        """Pods without their specs, read as plain rows (no ORM identity map or validation): a
        pass reads every pod, and 10,000 ORM objects cost most of a no-op pass."""
        table = _table(PodRecord)
        query = select(*[c for c in table.c if c.name != "spec"])
        if namespace is not None:
            query = query.where(table.c.namespace == namespace)
        if owner is not None:
            query = query.where(table.c.owner_kind == owner[0], table.c.owner_name == owner[1])
        if node is not None:
            query = query.where(table.c.node == node)
        if since is not None:
            query = query.where(table.c.updated_at >= _utc(since))
        query = query.order_by(table.c.namespace, table.c.name)
        with self._session(write=False) as s:
            return [PodRecord.model_construct(**row._mapping, spec={}) for row in s.connection().execute(query)]

    # ---- nodes ----

    def upsert_node(self, name: str, *, now: datetime | None = None, **fields: Any) -> NodeRecord:
        """Create or update a node with `fields` (columns of NodeRecord; conditions are merged)."""
        unknown = set(fields) - (set(NodeRecord.model_fields) - {"name"})
        if unknown:
            raise TypeError(f"NodeRecord has no settable field(s) {', '.join(sorted(unknown))}")
        with self._session(write=True) as s:
            row = s.get(NodeRecord, name)
            if row is None:
                row = NodeRecord(name=name)
                s.add(row)
            for key, value in fields.items():
                if key == "conditions":
                    value = merge_conditions(row.conditions or [], value, _now(now))
                setattr(row, key, value)
            s.flush()
            return row

    def heartbeat(
        self,
        node: str,
        when: datetime,
        facts: Mapping[str, Any],
        *,
        conditions: Sequence[Mapping[str, Any]] | None = None,
        agent_version: str | None = None,
    ) -> NodeRecord:
        """Record what a node's agent reported at `when`; a Ready condition sets `ready`."""
        stamp = _utc(when)
        with self._session(write=True) as s:
            row = s.get(NodeRecord, node)
            if row is None:
                raise StoreError(f"node {node!r} is not registered")
            row.last_heartbeat = stamp
            row.facts = dict(facts)
            if agent_version is not None:
                row.agent_version = agent_version
            if conditions is not None:
                merged = merge_conditions(row.conditions or [], conditions, stamp)
                row.conditions = [dict(c) for c in merged]
                for cond in row.conditions:
                    if cond["type"] == "Ready":
                        row.ready = cond["status"] == "True"
            return row

    def node(self, name: str) -> NodeRecord | None:
        with self._session(write=False) as s:
            return s.get(NodeRecord, name)

    def nodes(self) -> list[NodeRecord]:
        """Nodes by name."""
        with self._session(write=False) as s:
            return list(s.exec(select(NodeRecord).order_by(col(NodeRecord.name))).all())

    def delete_node(self, name: str) -> bool:
        """Forget a node (and so free its pod CIDR); False if there was none."""
        with self._session(write=True) as s:
            table = _table(NodeRecord)
            result = s.connection().execute(delete(table).where(table.c.name == name))
            return result.rowcount > 0

    # ---- service cluster IPs and node ports ----

    def save_allocations(
        self,
        cluster_ips: Mapping[tuple[str, str], str],
        node_ports: Mapping[tuple[str, str, str], int],
        pod_cidrs: Mapping[str, str],
        *,
        now: datetime | None = None,
    ) -> None:
        """Make the stored allocations exactly these (a pass's plan): new ones inserted, changed
        ones replaced, the rest released. Rows that stay are not written."""
        stamp = _now(now)
        with self._session(write=True) as s:
            ips = {(r.namespace, r.service): r for r in s.exec(select(ClusterIPAllocation)).all()}
            for key, row in ips.items():
                if cluster_ips.get(key) != row.ip:
                    s.delete(row)
            ports = {(r.namespace, r.service, r.port_name): r for r in s.exec(select(NodePortAllocation)).all()}
            for pkey, prow in ports.items():
                if node_ports.get(pkey) != prow.port:
                    s.delete(prow)
            s.flush()
            for key, ip in cluster_ips.items():
                if key not in ips or ips[key].ip != ip:
                    s.add(ClusterIPAllocation(ip=ip, namespace=key[0], service=key[1], allocated_at=stamp))
            for pkey, port in node_ports.items():
                if pkey not in ports or ports[pkey].port != port:
                    s.add(NodePortAllocation(port=port, namespace=pkey[0], service=pkey[1], port_name=pkey[2],
                                             allocated_at=stamp))
            # Pod CIDRs are unique: clear the ones that change (or go, with their Node) first.
            rows = list(s.exec(select(NodeRecord)).all())
            for node in rows:
                if node.pod_cidr != pod_cidrs.get(node.name):
                    node.pod_cidr = None
            s.flush()
            for node in rows:
                wanted = pod_cidrs.get(node.name)
                if wanted is not None and node.pod_cidr != wanted:
                    node.pod_cidr = wanted
            s.flush()

    def load_balancer_ips(self) -> list[LoadBalancerAllocation]:
        """Every LoadBalancer address, by namespace and service."""
        with self._session(write=False) as s:
            query = select(LoadBalancerAllocation).order_by(
                col(LoadBalancerAllocation.namespace), col(LoadBalancerAllocation.service)
            )
            return list(s.exec(query).all())

    def save_load_balancer_ips(
        self, ips: Mapping[tuple[str, str], str], announcers: Mapping[str, str | None], *, now: datetime | None = None
    ) -> None:
        """Make the stored LoadBalancer addresses exactly `ips`, each with the node announcing it
        (`announcers`, by address); rows that stay the same are not written."""
        stamp = _now(now)
        with self._session(write=True) as s:
            rows = {(r.namespace, r.service): r for r in s.exec(select(LoadBalancerAllocation)).all()}
            for key, row in rows.items():
                if ips.get(key) != row.ip:
                    s.delete(row)
            s.flush()
            for key, ip in ips.items():
                kept = rows.get(key)
                node = announcers.get(ip)
                if kept is None or kept.ip != ip:
                    s.add(LoadBalancerAllocation(ip=ip, namespace=key[0], service=key[1], node=node,
                                                 allocated_at=stamp))
                elif kept.node != node:
                    kept.node = node
            s.flush()

    def account_ids(self) -> list[ServiceAccountId]:
        """Every ServiceAccount's uid, by namespace and name."""
        with self._session(write=False) as s:
            query = select(ServiceAccountId).order_by(col(ServiceAccountId.namespace), col(ServiceAccountId.name))
            return list(s.exec(query).all())

    def save_account_ids(self, ids: Mapping[tuple[str, str], int], *, now: datetime | None = None) -> None:
        """Make the stored ServiceAccount uids exactly `ids`; rows that stay the same are not written."""
        stamp = _now(now)
        with self._session(write=True) as s:
            rows = {(r.namespace, r.name): r for r in s.exec(select(ServiceAccountId)).all()}
            for key, row in rows.items():
                if ids.get(key) != row.uid:
                    s.delete(row)
            s.flush()
            for key, uid in ids.items():
                kept = rows.get(key)
                if kept is None or kept.uid != uid:
                    s.add(ServiceAccountId(uid=uid, namespace=key[0], name=key[1], allocated_at=stamp))
            s.flush()

    def allocation_mark(self, name: str) -> int | None:
        """The stored high-water mark `name` (see AllocationMark), None before the first."""
        with self._session(write=False) as s:
            row = s.get(AllocationMark, name)
            return row.value if row is not None else None

    def save_allocation_mark(self, name: str, value: int, *, now: datetime | None = None) -> None:
        with self._session(write=True) as s:
            row = s.get(AllocationMark, name)
            if row is None:
                s.add(AllocationMark(name=name, value=value, updated_at=_now(now)))
            elif row.value != value:
                row.value, row.updated_at = value, _now(now)
            s.flush()

    def cluster_ips(self) -> list[ClusterIPAllocation]:
        """Every cluster IP allocation, by namespace and service."""
        with self._session(write=False) as s:
            query = select(ClusterIPAllocation).order_by(
                col(ClusterIPAllocation.namespace), col(ClusterIPAllocation.service)
            )
            return list(s.exec(query).all())

    def node_ports(self) -> list[NodePortAllocation]:
        """Every node port allocation, by port."""
        with self._session(write=False) as s:
            query = select(NodePortAllocation).order_by(col(NodePortAllocation.port))
            return list(s.exec(query).all())

    # ---- events ----

    def record_event(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        reason: str,
        message: str = "",
        type: str = "Normal",
        when: datetime | None = None,
        revision: str | None = None,
    ) -> Event:
        """Record an event; a repeat of the same (object, type, reason, message) is counted."""
        _check(type, EVENT_TYPES, "event type")
        stamp = _now(when)
        with self._session(write=True) as s:
            row = s.exec(
                select(Event)
                .where(
                    Event.kind == kind,
                    Event.namespace == namespace,
                    Event.name == name,
                    Event.type == type,
                    Event.reason == reason,
                    Event.message == message,
                )
                .order_by(col(Event.last_time).desc())
                .limit(1)
            ).first()
            if row is None:
                row = Event(
                    kind=kind, namespace=namespace, name=name, type=type, reason=reason,
                    message=message, first_time=stamp, last_time=stamp, revision=revision,
                )
                s.add(row)
            else:
                row.count += 1
                row.last_time = max(row.last_time, stamp)
                row.revision = revision if revision is not None else row.revision
            s.flush()
            return row

    def events(
        self,
        object: tuple[str, str, str] | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        *,
        revision: str | None = None,
        namespace: str | None = None,
    ) -> list[Event]:
        """Events oldest first (the newest `limit` of them), of an object (kind, ns, name), of
        the pass that applied `revision`, of a namespace."""
        with self._session(write=False) as s:
            query = select(Event)
            if revision is not None:
                query = query.where(Event.revision == revision)
            if namespace is not None:
                query = query.where(Event.namespace == namespace)
            if object is not None:
                kind, namespace, name = object
                query = query.where(
                    Event.kind == kind, Event.namespace == namespace, Event.name == name
                )
            if since is not None:
                query = query.where(col(Event.last_time) >= _utc(since))
            query = query.order_by(col(Event.last_time).desc(), col(Event.id).desc())
            return list(reversed(s.exec(query.limit(limit)).all()))

    def prune_events(self, before: datetime) -> int:
        """Forget events last seen before `before`; returns how many."""
        with self._session(write=True) as s:
            table = _table(Event)
            query = delete(table).where(table.c.last_time < _utc(before))
            return s.connection().execute(query).rowcount

    def prune(
        self,
        *,
        events_before: datetime,
        max_events: int,
        revisions: int,
        drift_reports: int,
        nodes: Iterable[str] | None = None,
    ) -> dict[str, int]:
        """Apply the retention rules; returns how many rows of each kind went.

        Events last seen before `events_before`, then all but the newest `max_events`; all but
        the newest `revisions` revisions (never the last applied one: rollbacks start there);
        all but the newest `drift_reports` reports; and, given the Nodes in Git, the rows of
        Nodes no longer there once no pod is recorded on them.
        """
        out: dict[str, int] = {}
        with self._session(write=True) as s:
            conn = s.connection()
            events = _table(Event)
            gone = conn.execute(delete(events).where(events.c.last_time < _utc(events_before))).rowcount
            newest = select(events.c.id).order_by(events.c.last_time.desc(), events.c.id.desc()).limit(max_events)
            keep_ids = [row[0] for row in conn.execute(newest)]
            if len(keep_ids) >= max_events:
                gone += conn.execute(delete(events).where(events.c.id.not_in(keep_ids))).rowcount
            out["events"] = gone
            revs = _table(Revision)
            kept = [row[0] for row in conn.execute(
                select(revs.c.commit).order_by(revs.c.first_seen_at.desc(), revs.c.commit).limit(revisions))]
            last = conn.execute(
                select(revs.c.commit).where(revs.c.outcome == "applied").order_by(revs.c.applied_at.desc()).limit(1)
            ).scalar()
            if last is not None:
                kept.append(last)
            out["revisions"] = conn.execute(delete(revs).where(revs.c.commit.not_in(kept))).rowcount
            reports = _table(DriftReport)
            report_ids = [row[0] for row in conn.execute(
                select(reports.c.id).order_by(reports.c.id.desc()).limit(drift_reports))]
            out["drift_reports"] = (
                conn.execute(delete(reports).where(reports.c.id.not_in(report_ids))).rowcount if report_ids else 0
            )
            out["nodes"] = 0
            if nodes is not None:
                wanted = set(nodes)
                node_table = _table(NodeRecord)
                pod_nodes = {row[0] for row in conn.execute(select(_table(PodRecord).c.node).distinct())}
                stale = [row[0] for row in conn.execute(select(node_table.c.name))
                         if row[0] not in wanted and row[0] not in pod_nodes]
                if stale:
                    out["nodes"] = conn.execute(delete(node_table).where(node_table.c.name.in_(stale))).rowcount
        return out

    # ---- inventory ----

    def replace_inventory(self, entries: Iterable[InventoryEntry]) -> None:
        """Make `entries` the inventory, all at once."""
        rows = [e.model_dump() for e in entries]
        keys = [(r["kind"], r["namespace"], r["name"]) for r in rows]
        if len(set(keys)) != len(keys):
            dupes = sorted({"/".join(k) for k in keys if keys.count(k) > 1})
            raise StoreError(f"inventory lists {', '.join(dupes)} more than once")
        with self._session(write=True) as s:
            table = _table(InventoryEntry)
            conn = s.connection()
            conn.execute(delete(table))
            if rows:
                conn.execute(insert(table), rows)

    def inventory(self) -> list[InventoryEntry]:
        """The current inventory, by kind, namespace and name."""
        with self._session(write=False) as s:
            query = select(InventoryEntry).order_by(
                col(InventoryEntry.kind), col(InventoryEntry.namespace), col(InventoryEntry.name)
            )
            return list(s.exec(query).all())

    # ---- leases ----

    def db_now(self, session: Session | None = None) -> datetime:
        """The database's clock on PostgreSQL (every controller of a shared store agrees on it);
        this host's clock on SQLite, whose controllers all run on the one host that has the file."""
        if self._engine.dialect.name != "postgresql":
            return datetime.now(UTC)
        if session is not None:
            value = session.connection().exec_driver_sql("SELECT clock_timestamp()").scalar()
        else:
            with self._engine.connect() as conn:
                value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
        return _utc(cast(datetime, value))

    def acquire_lease(
        self, name: str, holder: str, ttl_seconds: float, now: datetime | None = None
    ) -> Fence | None:
        """Take or renew the lease `name` for `holder` until now + ttl on the database's clock;
        None if another holder's lease has not expired.

        Atomic on both backends: one conditional UPDATE (renew, or take over an expired lease,
        which starts a new term), else one INSERT that does nothing if someone else created the
        lease first. Holders must be unique names (host:pid), as in Kubernetes' leader election.
        """
        table = _table(Lease)
        with self._session(write=True) as s:
            stamp = _now(now) if now is not None else self.db_now(s)
            expires = stamp + timedelta(seconds=ttl_seconds)
            conn = s.connection()
            taken: CursorResult[Any] = conn.execute(
                update(table)
                .where(
                    table.c.name == name,
                    or_(table.c.holder == holder, table.c.expires_at <= stamp),
                )
                .values(
                    holder=holder,
                    term=case((table.c.holder == holder, table.c.term), else_=table.c.term + 1),
                    acquired_at=case(
                        (table.c.holder == holder, table.c.acquired_at),
                        else_=literal(stamp, UTCDateTime()),
                    ),
                    renewed_at=stamp,
                    expires_at=expires,
                )
            )
            if taken.rowcount != 1:
                dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                conn.execute(
                    dialect_insert(table)
                    .values(name=name, holder=holder, term=1, epoch=uuid.uuid4().hex, acquired_at=stamp,
                            renewed_at=stamp, expires_at=expires)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            # Holder names are unique per controller: the row is ours iff our UPDATE or INSERT won.
            row = conn.execute(
                select(table.c.holder, table.c.term, table.c.epoch).where(table.c.name == name)
            ).one_or_none()
            if row is None or row.holder != holder:
                return None
            return Fence(name, holder, int(row.term), expires, str(row.epoch))

    def try_acquire_lease(
        self, name: str, holder: str, ttl_seconds: float, now: datetime | None = None
    ) -> bool:
        """Take or renew the lease; False if another holds it (see acquire_lease)."""
        return self.acquire_lease(name, holder, ttl_seconds, now) is not None

    def _check_fence(self, session: Session, fence: Fence) -> None:
        table = _table(Lease)
        query = select(table.c.holder, table.c.term, table.c.expires_at).where(table.c.name == fence.lease)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        row = session.connection().execute(query).one_or_none()
        now = self.db_now(session)
        if row is None or row.holder != fence.holder or int(row.term) != fence.term:
            who = f"{row.holder} in term {row.term}" if row is not None else "nobody"
            raise StaleLeader(f"term {fence.term} of {fence.holder} is over: {fence.lease} is held by {who}")
        expires = row.expires_at if isinstance(row.expires_at, datetime) else UTCDateTime().process_result_value(
            row.expires_at, session.get_bind().dialect)
        if expires is not None and _utc(expires) <= now:
            raise StaleLeader(f"term {fence.term} of {fence.holder} expired at {_utc(expires).isoformat()}")

    def check_fence(self, fence: Fence) -> None:
        """Raise StaleLeader unless `fence` is still the current, unexpired term (a read)."""
        with self._session(write=False) as s:
            self._check_fence(s, fence)

    def break_lease(self, name: str, holder: str) -> bool:
        """End `holder`'s term now (released, or its process is known to be dead); False if it
        does not hold the lease."""
        with self._session(write=True) as s:
            table = _table(Lease)
            past = self.db_now(s) - timedelta(seconds=1)
            result = s.connection().execute(
                update(table)
                .where(table.c.name == name, table.c.holder == holder)
                .values(expires_at=past)
            )
            return result.rowcount > 0

    def release_lease(self, name: str, holder: str) -> bool:
        """Give up the lease if `holder` holds it (anyone may take it at once); False otherwise.
        The row stays, expired, so the next holder's term number is higher than every earlier one."""
        return self.break_lease(name, holder)

    def lease(self, name: str) -> Lease | None:
        """The lease as stored (it may have expired: compare `expires_at` with now)."""
        with self._session(write=False) as s:
            return s.get(Lease, name)

    # ---- drift reports ----

    def save_drift_report(
        self,
        *,
        started_at: datetime,
        finished_at: datetime | None,
        mode: str,
        revision: str | None = None,
        findings: Sequence[Any] = (),
        counts: Mapping[str, Any] | None = None,
        healed: Sequence[Any] = (),
    ) -> DriftReport:
        """Save one drift check's report."""
        _check(mode, DRIFT_MODES, "drift mode")
        report = DriftReport(
            started_at=_utc(started_at),
            finished_at=None if finished_at is None else _utc(finished_at),
            mode=mode,
            revision=revision,
            findings=list(findings),
            counts=dict(counts or {}),
            healed=list(healed),
        )
        with self._session(write=True) as s:
            s.add(report)
            s.flush()
            return report

    def drift_reports(
        self, since: datetime | None = None, limit: int | None = None
    ) -> list[DriftReport]:
        """Drift reports, newest first, started at or after `since`."""
        with self._session(write=False) as s:
            query = select(DriftReport)
            if since is not None:
                query = query.where(col(DriftReport.started_at) >= _utc(since))
            query = query.order_by(col(DriftReport.started_at).desc(), col(DriftReport.id).desc())
            return list(s.exec(query.limit(limit)).all())

    # ---- change marks ----

    def marks(self) -> dict[str, tuple[Any, ...]]:
        """A cheap fingerprint per kind of record (pods, objects, nodes, events, revisions, drift,
        allocations): it changes when a row of that kind is added, removed or updated, so a
        watcher (the dashboard's live updates, the Kubernetes API's feed) polls with a few
        aggregate queries instead of reading rows."""
        columns: dict[str, tuple[Any, ...]] = {
            "pods": (func.count(), func.max(PodRecord.updated_at)),
            "objects": (func.count(), func.max(ObjectRecord.updated_at)),
            "nodes": (func.count(), func.max(NodeRecord.last_heartbeat),
                      func.sum(case((col(NodeRecord.ready), 1), else_=0))),
            "events": (func.count(), func.max(Event.id), func.max(Event.last_time)),
            "revisions": (func.count(), func.max(Revision.first_seen_at), func.max(Revision.applied_at),
                          func.count(func.nullif(Revision.outcome, "pending"))),
            "drift": (func.count(), func.max(DriftReport.id), func.max(DriftReport.finished_at)),
            # Cluster IPs, node ports and load-balancer addresses (and which node announces one).
            "allocations": tuple(sa_select(f).scalar_subquery() for f in (
                func.count(col(ClusterIPAllocation.ip)), func.max(ClusterIPAllocation.allocated_at),
                func.count(col(NodePortAllocation.port)), func.max(NodePortAllocation.allocated_at),
                func.count(col(LoadBalancerAllocation.ip)), func.max(LoadBalancerAllocation.allocated_at),
                func.min(LoadBalancerAllocation.node), func.max(LoadBalancerAllocation.node),
            )),
        }
        with self._session(write=False) as s:
            conn = s.connection()
            return {name: tuple(conn.execute(sa_select(*cols)).one()) for name, cols in columns.items()}

    # ---- recommender checkpoints ----

    def checkpoints(self) -> list[tuple[tuple[str, str, str], Any]]:
        """Every stored checkpoint: ((namespace, autoscaler, container), value)."""
        table = _table(RecommenderCheckpoint)
        with self._session(write=False) as s:
            rows = s.connection().execute(select(table.c.namespace, table.c.autoscaler, table.c.container,
                                                 table.c.value.cast(Text)).order_by(
                table.c.namespace, table.c.autoscaler, table.c.container))
            return [((r[0], r[1], r[2]), json.loads(r[3])) for r in rows]

    def save_checkpoints(self, values: Mapping[tuple[str, str, str], Any], *, now: datetime | None = None) -> None:
        """Make the stored checkpoints exactly `values` (the ones not given are deleted)."""
        stamp = _now(now)
        table = _table(RecommenderCheckpoint)
        with self._session(write=True) as s:
            conn = s.connection()
            conn.execute(delete(table))
            if values:
                conn.execute(table.insert(), [
                    {"namespace": k[0], "autoscaler": k[1], "container": k[2], "value": v, "saved_at": stamp}
                    for k, v in values.items()])

    # ---- notification state ----

    def notification_state(self) -> dict[str, Any]:
        """Every key of what notifications already announced, with its JSON value."""
        table = _table(NotificationState)
        with self._session(write=False) as s:
            return _json_values(s.connection().execute(select(table.c.key, table.c.value.cast(Text))))

    def save_notification_state(
        self, values: Mapping[str, Any], *, now: datetime | None = None
    ) -> list[str]:
        """Store the keys of `values` whose value changed, in one transaction; returns them.

        Unchanged keys are not written (and keys not given are kept). Last writer wins: only
        the leader announces, so concurrent writers are a brief overlap at a handover.
        """
        if not values:
            return []
        stamp = _now(now)
        table = _table(NotificationState)
        with self._session(write=True) as s:
            conn = s.connection()
            query = select(table.c.key, table.c.value.cast(Text)).where(table.c.key.in_(list(values)))
            stored = _json_values(conn.execute(query))
            changed = sorted(k for k, v in values.items() if k not in stored or stored[k] != v)
            if not changed:
                return []
            dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            upsert = dialect_insert(table)
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["key"],
                    set_={"value": upsert.excluded.value, "updated_at": upsert.excluded.updated_at},
                ),
                [{"key": k, "value": values[k], "updated_at": stamp} for k in changed],
            )
            return changed


def _json_values(rows: Iterable[Any]) -> dict[str, Any]:
    """(key, JSON text) rows as a mapping; a value that is not JSON (edited by hand in SQLite)
    counts as absent, so it is rewritten instead of failing every read."""
    out: dict[str, Any] = {}
    for key, text in rows:
        try:
            out[str(key)] = json.loads(text)
        except (TypeError, ValueError):
            continue
    return out
