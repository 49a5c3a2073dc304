"""The source cache: what a blob parses and validates to is reused by every later load while
the blob is unchanged, and the cross-object rules rerun only for the objects whose reads
changed (issue 17). A load through the cache must equal a cold load, diagnostic for diagnostic
and object for object: each test compares the two on real commits of real repositories."""

from __future__ import annotations

import copy
import json
import pickle
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.objects import DesiredState
from gitorch.source import crosschecks, desired, manifests, validation
from gitorch.source.blobcache import BlobCache, CacheLimits
from gitorch.source.git import open_repository
from gitorch.source.validation import FileResult, load_desired
from tests.conftest import EXAMPLES
from tests.gitrepo import GitRepo
from tests.samples import CONFIG, NAMESPACE, SECRET, deployment

INVALID = sorted((Path(__file__).parent / "data" / "invalid").glob("*.yaml"))
BASE = {"base/ns.yaml": NAMESPACE, "base/config.yaml": CONFIG, "base/secret.yaml": SECRET.format(password="pw")}


def fingerprint(state: DesiredState) -> tuple[Any, ...]:
    """Everything a load yields that a person or the planner reads, positions included."""
    return (
        state.revision,
        state.files,
        [(d.format(), d.severity) for d in state.diagnostics],
        [
            (str(k), o.path, o.document.index, json.dumps(o.body), o.document.position("/metadata/name"))
            for k, o in state.objects.items()
        ],
    )


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files validation parses, in order."""
    seen: list[str] = []
    real = validation.parse_documents

    def counting(path: str, text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        seen.append(path)
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(validation, "parse_documents", counting)
    return seen


def test_a_changed_blob_is_revalidated_an_unchanged_one_is_not(repo: GitRepo, parses: list[str]) -> None:
    cache: BlobCache[FileResult] = BlobCache()
    first = repo.commit("base", {**BASE, "app/web.yaml": deployment()})
    source = open_repository(repo.path)
    state = load_desired(source.snapshot(first), cache)
    assert state.ok and sorted(parses) == sorted([*BASE, "app/web.yaml"])
    parses.clear()
    broken = repo.commit("break web", {"app/web.yaml": deployment().replace("replicas: 3", "replicas: many")})
    state = load_desired(source.snapshot(broken), cache)
    assert parses == ["app/web.yaml"]  # the changed file only
    assert state.diagnostics[0].format().startswith("app/web.yaml:7:13: /spec/replicas: expected integer")
    assert fingerprint(state) == fingerprint(load_desired(source.snapshot(broken), None))
    # Back to the first commit: every blob is cached, nothing is parsed, and the state is the same.
    cold = fingerprint(load_desired(source.snapshot(first), None))
    parses.clear()
    assert fingerprint(load_desired(source.snapshot(first), cache)) == cold
    assert parses == []
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.entries) == (5, 7, 5)  # 4 files, 1 changed, 3 loads


def test_desired_load_uses_the_process_cache(repo: GitRepo, parses: list[str]) -> None:
    """`desired.load` (what plan, validate and serve call) goes through validation.FILE_CACHE."""
    validation.FILE_CACHE.clear()
    base = repo.commit("base", {**BASE, "app/web.yaml": deployment()})
    head = repo.commit("scale", {"app/web.yaml": deployment(replicas=5)})
    source = open_repository(repo.path)
    desired.load(source, base)
    parses.clear()
    state = desired.load(source, head)
    assert parses == ["app/web.yaml"] and state.ok


def test_the_same_blob_at_another_path_is_parsed_for_that_path(repo: GitRepo, parses: list[str]) -> None:
    """Diagnostics name the file, so the cache key holds the path beside the blob id."""
    cache: BlobCache[FileResult] = BlobCache()
    bad = deployment().replace("replicas: 3", "replicas: many")
    first = repo.commit("base", {**BASE, "a/web.yaml": bad})
    source = open_repository(repo.path)
    load_desired(source.snapshot(first), cache)
    repo.move("a/web.yaml", "b/web.yaml")
    moved = repo.commit("move")
    parses.clear()
    state = load_desired(source.snapshot(moved), cache)
    assert parses == ["b/web.yaml"]
    assert state.diagnostics[0].path == "b/web.yaml"


# --- cached loads equal cold loads ------------------------------------------------------------


def _config(ns: str, i: int, key: str = "token") -> str:
    """What app-i reads, in a file of its own: its ConfigMap and its Secret."""
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-{i}-config, namespace: {ns}}}
data: {{GREETING: hello-{i}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-{i}-secret, namespace: {ns}}}
stringData: {{{key}: not-a-real-token-{i}}}
"""


def _app(ns: str, i: int, replicas: int = 2, selector: str = "", labels: str = "") -> str:
    node_selector = f"\n      nodeSelector: {{{selector}}}" if selector else ""
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app-{i}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: app-{i}}}
  template:
    metadata:
      labels: {{app: app-{i}{labels}}}
    spec:{node_selector}
      volumes:
        - name: config
          configMap: {{name: app-{i}-config}}
      containers:
        - name: web
          command: ["python3", "-m", "http.server", "8080"]
          envFrom:
            - configMapRef: {{name: app-{i}-config}}
          env:
            - name: TOKEN
              valueFrom:
                secretKeyRef: {{name: app-{i}-secret, key: token}}
          volumeMounts:
            - {{name: config, mountPath: /etc/app}}
"""


def _service(ns: str, i: int, app: str) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  selector: {{app: {app}}}
  ports:
    - {{port: 80, targetPort: 8080}}
"""


def _node(i: int, zone: str) -> str:
    return f"""\
apiVersion: gitorch.dev/v1
kind: Node
metadata:
  name: node-{i}
  labels: {{zone: {zone}}}
spec:
  address: 10.0.0.{10 + i}
"""


def _world() -> dict[str, str]:
    files = {"ns/a.yaml": NAMESPACE.replace("shop", "ns-a"), "ns/b.yaml": NAMESPACE.replace("shop", "ns-b")}
    for i in range(8):
        ns = "ns-a" if i % 2 else "ns-b"
        files[f"apps/app-{i}.yaml"] = _app(ns, i, selector="zone: z1" if i % 3 == 0 else "")
        files[f"config/app-{i}.yaml"] = _config(ns, i)
        files[f"services/svc-{i}.yaml"] = _service(ns, i, f"app-{i}")
    for i in range(3):
        files[f"nodes/node-{i}.yaml"] = _node(i, f"z{i}")
    return files


def _edits(rng: random.Random) -> Iterator[Callable[[dict[str, str]], None]]:
    """Changes a commit may make; each reaches what another object's rules read."""

    def app_edit(**kw: Any) -> Callable[[dict[str, str]], None]:
        i = rng.randrange(8)
        return lambda f: f.__setitem__(f"apps/app-{i}.yaml", _app("ns-a" if i % 2 else "ns-b", i, **kw))

    i, j = rng.randrange(8), rng.randrange(8)
    yield app_edit(replicas=rng.randrange(1, 9))
    ns = "ns-a" if i % 2 else "ns-b"
    yield lambda f: f.__setitem__(f"config/app-{i}.yaml", _config(ns, i, rng.choice(["token", "tokn", "pass"])))
    yield lambda f: f.pop(f"config/app-{i}.yaml", None)  # its references dangle; suggestions name the others
    yield lambda f: f.__setitem__(f"config/app-{i}.yaml", _config(ns, i))
    yield app_edit(selector=rng.choice(["zone: z1", "zone: z9", ""]))  # nodeSelector matching a Node or none
    yield app_edit(labels=rng.choice(["", ", tier: web"]))
    yield lambda f: f.__setitem__(f"services/svc-{i}.yaml", _service("ns-a" if i % 2 else "ns-b", i, f"app-{j}"))
    yield lambda f: f.__setitem__(f"nodes/node-{i % 3}.yaml", _node(i % 3, rng.choice(["z0", "z1", "z2", "z9"])))
    yield lambda f: f.pop(f"nodes/node-{i % 3}.yaml", None)
    yield lambda f: f.pop("ns/a.yaml", None)  # every object in ns-a loses its namespace
    yield lambda f: f.__setitem__("ns/a.yaml", NAMESPACE.replace("shop", "ns-a"))
    yield lambda f: f.pop(f"apps/app-{i}.yaml", None)  # services and references lose their targets
    yield lambda f: f.__setitem__(f"moved/app-{i}.yaml", f.pop(f"apps/app-{i}.yaml", _app("ns-b", i)))
    yield lambda f: f.__setitem__(f"copy/app-{j}.yaml", f.get(f"apps/app-{j}.yaml", ""))  # duplicate objects
    near = CONFIG.replace("web-config", f"app-{j}-confg").replace("shop", "ns-a" if j % 2 else "ns-b")
    yield lambda f: f.__setitem__(f"near/{j}.yaml", near)  # a name a suggestion may now offer
    yield lambda f: f.pop(f"near/{j}.yaml", None)
    yield lambda f: f.__setitem__(f"apps/app-{i}.yaml", f.get(f"apps/app-{i}.yaml", "")[:150] + "\n  bad: [")
    yield lambda f: f.__setitem__(f"apps/app-{i}.yaml", _app("ns-b", i).replace("replicas: 2", "replicas: two"))


def _commit(repo: GitRepo, message: str, files: dict[str, str]) -> str:
    """A commit holding exactly `files`."""
    for stale in [p for p in repo.path.rglob("*.yaml") if p.relative_to(repo.path).as_posix() not in files]:
        stale.unlink()
    return repo.commit(message, files)


def test_cached_loads_equal_cold_loads_over_a_chain_of_commits(repo: GitRepo) -> None:
    rng = random.Random(17)
    cache: BlobCache[FileResult] = BlobCache()
    files = _world()
    source = None
    for step in range(40):
        if step:
            edits = list(_edits(rng))
            for edit in rng.sample(edits, rng.randrange(1, 4)):
                edit(files)
        oid = _commit(repo, f"step {step}", files)
        source = source or open_repository(repo.path)
        snapshot = source.snapshot(oid)
        cached, cold = load_desired(snapshot, cache), load_desired(snapshot, None)
        assert fingerprint(cached) == fingerprint(cold), f"step {step}"
        # The same commit again, all from the cache, and the older commits' objects still unchanged.
        assert fingerprint(load_desired(snapshot, cache)) == fingerprint(cold)
    assert cache.stats().hits > cache.stats().misses  # most files were not parsed again


def test_examples_and_invalid_cases_cached_equal_cold(repo: GitRepo) -> None:
    """Every invalid case (one after the other, through one cache) and the examples."""
    cache: BlobCache[FileResult] = BlobCache()
    source = open_repository(repo.path)
    for case in INVALID:
        oid = repo.commit(case.stem, {**BASE, "case.yaml": case.read_text()})
        snapshot = source.snapshot(oid)
        assert fingerprint(load_desired(snapshot, cache)) == fingerprint(load_desired(snapshot, None)), case.name
        assert load_desired(snapshot, cache).diagnostics
    examples = open_repository(EXAMPLES).snapshot(None)
    assert fingerprint(load_desired(examples, cache)) == fingerprint(load_desired(examples, None))


# --- incremental cross-object rules -------------------------------------------------------------


def test_only_the_rules_that_read_a_changed_object_run_again(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    real = crosschecks._check_workload

    def _check_workload(obj: Any, reads: Any) -> Any:
        runs.append(obj.key.name)
        return real(obj, reads)

    monkeypatch.setattr(crosschecks, "_check_workload", _check_workload)
    cache: BlobCache[FileResult] = BlobCache()
    files = _world()
    source = open_repository(repo.path)
    load_desired(source.snapshot(repo.commit("base", files)), cache)
    assert sorted(runs) == [f"app-{i}" for i in range(8)]
    runs.clear()
    # app-3's Secret, in a file of its own, loses the key its Deployment reads: app-3's rules run again.
    files["config/app-3.yaml"] = _config("ns-a", 3, key="password")
    state = load_desired(source.snapshot(repo.commit("drop key", files)), cache)
    assert runs == ["app-3"]
    assert any("Secret ns-a/app-3-secret has no key 'token'" in d.message for d in state.diagnostics)
    runs.clear()
    # A Node's labels change: the workloads with a nodeSelector read the Nodes; the others do not.
    files["nodes/node-1.yaml"] = _node(1, "z7")
    state = load_desired(source.snapshot(repo.commit("relabel", files)), cache)
    assert sorted(runs) == ["app-0", "app-3", "app-6"]
    assert fingerprint(state) == fingerprint(load_desired(source.snapshot(None), None))
    runs.clear()
    # app-5's ConfigMap and Secret go: its references dangle, and the suggestions read the names left.
    del files["config/app-5.yaml"]
    load_desired(source.snapshot(_commit(repo, "drop config", files)), cache)
    assert runs == ["app-5"]
    runs.clear()
    files["near.yaml"] = CONFIG.replace("web-config", "app-5-confg").replace("shop", "ns-a")
    state = load_desired(source.snapshot(repo.commit("near name", files)), cache)
    assert runs == ["app-5"]
    assert any(d.hint == "did you mean 'app-5-confg'?" for d in state.diagnostics)
    assert fingerprint(state) == fingerprint(load_desired(source.snapshot(None), None))


# --- bounds and sharing --------------------------------------------------------------------------


def test_the_cache_is_bounded_by_entries_and_bytes(repo: GitRepo) -> None:
    files = {f"cm/{i}.yaml": CONFIG.replace("web-config", f"cm-{i}") for i in range(10)}
    snapshot = open_repository(repo.path).snapshot(repo.commit("ten", {**BASE, **files}))
    by_entries: BlobCache[FileResult] = BlobCache(CacheLimits(entries=4))
    assert load_desired(snapshot, by_entries).ok
    stats = by_entries.stats()
    assert stats.entries == 4 and stats.evictions == 9
    # Least recently used out first: the last four files are the ones kept.
    load_desired(snapshot, by_entries)
    assert by_entries.stats().hits == 0  # a scan larger than the cache finds nothing (and still works)
    one = by_entries.stats().bytes // 4
    by_bytes: BlobCache[FileResult] = BlobCache(CacheLimits(bytes=3 * one + one // 2))
    load_desired(snapshot, by_bytes)
    assert by_bytes.stats().entries == 3 and by_bytes.stats().bytes <= 3 * one + one // 2
    too_small: BlobCache[FileResult] = BlobCache(CacheLimits(bytes=one // 2))
    assert fingerprint(load_desired(snapshot, too_small)) == fingerprint(load_desired(snapshot, None))
    assert too_small.stats().entries == 0


def test_lru_keeps_what_was_used_last() -> None:
    cache: BlobCache[str] = BlobCache(CacheLimits(entries=2))
    cache.put("a", "A", 1)
    cache.put("b", "B", 1)
    assert cache.get("a") == "A"  # now b is the least recently used
    cache.put("c", "C", 1)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")


def test_cached_bodies_are_read_only_and_their_copies_plain(repo: GitRepo) -> None:
    """Loads that share a blob share its parsed body: nobody may change it in place."""
    snapshot = open_repository(repo.path).snapshot(repo.commit("base", {**BASE, "app/web.yaml": deployment()}))
    cache: BlobCache[FileResult] = BlobCache()
    one, two = load_desired(snapshot, cache), load_desired(snapshot, cache)
    key = next(k for k in one.objects if k.kind == "Deployment")
    a, b = one.objects[key], two.objects[key]
    assert a.body is b.body and a is not b  # the body is shared, the Object is each load's own
    body = a.body
    containers = body["spec"]["template"]["spec"]["containers"]
    for change in (
        lambda: body.__setitem__("spec", {}),
        lambda: body["spec"].update(replicas=1),
        lambda: body["metadata"].pop("name"),
        lambda: containers.append({}),
        lambda: containers[0]["env"].clear(),
        lambda: containers.sort(),
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    plain = copy.deepcopy(body)
    plain["spec"]["replicas"] = 9
    plain["spec"]["template"]["spec"]["containers"].append({})
    assert type(plain) is dict and body["spec"]["replicas"] == 3
    assert pickle.loads(pickle.dumps(body)) == body and type(pickle.loads(pickle.dumps(body))) is dict
    assert json.loads(json.dumps(body)) == body
    assert manifests.dump_documents([body]) == manifests.dump_documents([plain | {"spec": dict(body["spec"])}])


def test_a_valid_commit_composes_no_positions(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions are composed again, from the text, only for a document with a diagnostic."""
    asked: list[int] = []
    real = manifests._Positions.of

    def of(self: Any, index: int) -> Any:
        asked.append(index)
        return real(self, index)

    monkeypatch.setattr(manifests._Positions, "of", of)
    snapshot = open_repository(repo.path).snapshot(repo.commit("base", _world()))
    state = load_desired(snapshot, None)
    assert state.diagnostics == [] and asked == []
    bad = _world()
    bad["apps/app-1.yaml"] = _app("ns-a", 1).replace("replicas: 2", "replicas: two")
    state = load_desired(open_repository(repo.path).snapshot(repo.commit("bad", bad)), None)
    assert state.diagnostics[0].format().startswith("apps/app-1.yaml:5:13: /spec/replicas") and asked
