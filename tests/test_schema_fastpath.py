"""The compiled schema checks (source/fastschema.py) agree with jsonschema on every document.

Validation trusts a compiled check that says "valid" and skips jsonschema, so one that passes a
document jsonschema refuses would let an invalid manifest through. Each seed document (the
examples, the test samples, the invalid cases) is changed at every field it has, in every way
below, and both checkers must give the same answer on each result; then thousands of random
deeper changes. Documents jsonschema refuses keep their diagnostics from jsonschema.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitorch.model.objects import KINDS
from gitorch.source.fastschema import compile_schemas, equal, unique
from gitorch.source.manifests import parse_documents
from gitorch.source.validation import SCHEMA_DIR, _Validators, _validators
from tests.conftest import EXAMPLES
from tests.samples import CONFIG, NAMESPACE, SECRET, deployment

TEXTS = {
    **{p.relative_to(EXAMPLES).as_posix(): p.read_text() for p in sorted(EXAMPLES.rglob("*.yaml"))},
    **{f"invalid/{p.name}": p.read_text() for p in sorted((Path(__file__).parent / "data" / "invalid").glob("*.yaml"))},
    "samples.yaml": "---\n".join([NAMESPACE, CONFIG, SECRET.format(password="pw"), deployment()]),
}
SEEDS = [
    (path, doc.body)
    for path, text in TEXTS.items()
    for doc in parse_documents(path, text)[0]
    if isinstance(doc.body, dict) and isinstance(doc.body.get("kind"), str) and doc.body["kind"] in KINDS
]
ODD = [None, True, False, 0, -1, 3, 1.5, 2.0, 2**40, "", "x", "web\n", "10.0.0.1", "a" * 300, [], ["x"], {}, {"x": 1}]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _variants(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`body` changed at each of its fields: deleted, replaced by each odd value, and (mappings)
    given an unknown field and a field known elsewhere."""
    for path in list(_paths(body))[1:]:
        for change in ["delete", "add", "known", *range(len(ODD))]:
            out = copy.deepcopy(body)
            parent = out
            for token in path[:-1]:
                parent = parent[token]
            last = path[-1]
            if change == "delete":
                if not isinstance(parent, dict):
                    continue
                del parent[last]
            elif change in ("add", "known"):
                if not isinstance(parent[last], dict):
                    continue
                parent[last]["zz" if change == "add" else "name"] = "x"
            else:
                assert isinstance(change, int)
                parent[last] = copy.deepcopy(ODD[change])
            yield out


def _agree(kind: str, body: Any) -> tuple[bool, bool]:
    validators = _validators()
    return validators.fast[kind](body), validators.by_kind[kind].is_valid(body)


def test_every_kind_is_compiled() -> None:
    assert set(_validators().fast) == set(KINDS)


def test_a_kind_is_compiled_when_first_asked_for() -> None:
    """A command that reads a few kinds (`gitorch nodes`: Node, Cluster) compiles only those."""
    validators = _Validators(SCHEMA_DIR)
    node = next(body for _, body in SEEDS if body["kind"] == "Node")
    assert validators.fast["Node"](node) and validators.by_kind["Node"].is_valid(node)
    assert not validators.fast["Node"]({**node, "spec": {"address": 7}})
    built = {k for per_kind in (validators.fast, validators.by_kind) for k in per_kind._built}  # type: ignore[attr-defined]
    assert built == {"Node"}
    assert validators.fast.get("NoSuchKind") is None


@pytest.mark.parametrize(("path", "body"), SEEDS, ids=[f"{p}:{b['kind']}" for p, b in SEEDS])
def test_agrees_with_jsonschema_on_every_field_changed(path: str, body: dict[str, Any]) -> None:
    kind = body["kind"]
    fast, slow = _agree(kind, body)
    assert fast == slow
    disagree = []
    for variant in _variants(body):
        fast, slow = _agree(kind, variant)
        if fast != slow:
            disagree.append((fast, slow, variant))
    assert not disagree, disagree[:3]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(6 if depth < 3 else 4)
    if roll < 3:
        return rng.choice(ODD[:13])
    if roll == 3:
        return rng.choice(["Always", "ClusterIP", "TCP", "RollingUpdate", "app", "80", "500m", "1Gi"])
    if roll == 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["name", "port", "x", "key", "value"]): _random_value(rng, depth + 1) for _ in range(2)}


def test_agrees_with_jsonschema_on_random_changes() -> None:
    rng = random.Random(19)
    tried = valid = 0
    for _ in range(3000):
        _, body = rng.choice(SEEDS)
        out = copy.deepcopy(body)
        for _ in range(rng.randrange(1, 4)):
            path = rng.choice(list(_paths(out))[1:])
            parent = out
            for token in path[:-1]:
                parent = parent[token]
            parent[path[-1]] = _random_value(rng)
        fast, slow = _agree(body["kind"], out)
        assert fast == slow, out
        tried, valid = tried + 1, valid + slow
    assert 0 < valid < tried


def test_equality_and_uniqueness_keep_true_apart_from_one() -> None:
    assert equal(1, 1.0) and not equal(True, 1) and not equal([0], [False]) and equal({"a": [1]}, {"a": [1.0]})
    assert unique(["a", "b"]) and not unique(["a", "a"]) and unique([1, True]) and not unique([{"a": 1}, {"a": 1}])


def test_a_schema_with_an_unimplemented_keyword_is_left_to_jsonschema() -> None:
    keywords = {"type", "contains", "$ref", "properties"}
    checks = compile_schemas(
        {
            "plain": {"type": "object", "properties": {"a": {"type": "string"}}},
            "contains": {"type": "array", "contains": {"type": "string"}},
            "ref": {"properties": {"a": {"$ref": "#/x"}}},
            "annotated": {"type": "string", "x-hint": "ignored", "description": "ignored"},
        },
        keywords,
    )
    assert set(checks) == {"plain", "annotated"}
    assert checks["plain"]({"a": "x"}) and not checks["plain"]({"a": 1}) and checks["annotated"]("s")
