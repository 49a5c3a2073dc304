"""Field-level diffs and change sets (gitorch.diffs), and how plans render them."""

from __future__ import annotations

from gitorch.source.diffs import HIDDEN, Action, FieldDiff, Op, diff_values, object_diff
from gitorch.source.rendering import field_line


def test_scalar_change_add_and_remove() -> None:
    old = {"spec": {"replicas": 3, "paused": False}}
    new = {"spec": {"replicas": 5, "minReadySeconds": 2}}
    assert diff_values(old, new) == [
        FieldDiff(Op.CHANGE, "spec.replicas", 3, 5),
        FieldDiff(Op.ADD, "spec.minReadySeconds", None, 2),
        FieldDiff(Op.REMOVE, "spec.paused", False, None),
    ]


def test_named_lists_match_by_name_not_position() -> None:
    old = {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}
    new = {"containers": [{"name": "b", "image": "y:2"}, {"name": "a", "image": "x:1"}]}
    diffs = diff_values(old, new)
    assert FieldDiff(Op.CHANGE, "containers[b].image", "y:1", "y:2") in diffs
    assert not any(d.path.startswith("containers[a]") for d in diffs)
    assert diffs[-1].path == "containers (order)"


def test_plain_lists_diff_by_index() -> None:
    assert diff_values({"args": ["a", "b"]}, {"args": ["a", "c", "d"]}) == [
        FieldDiff(Op.CHANGE, "args[1]", "b", "c"),
        FieldDiff(Op.ADD, "args[2]", None, "d"),
    ]


def test_label_keys_with_dots_are_quoted() -> None:
    diffs = diff_values({}, {"labels": {"app.kubernetes.io/name": "web"}})
    assert diffs == [FieldDiff(Op.ADD, 'labels["app.kubernetes.io/name"]', None, "web")]


def test_type_change_is_a_remove_and_an_add() -> None:
    diffs = diff_values({"x": {"a": 1}}, {"x": "flat"})
    assert [d.op for d in diffs] == [Op.REMOVE, Op.ADD]


def test_int_and_bool_are_not_equal() -> None:
    assert diff_values({"x": 1}, {"x": True}) == [FieldDiff(Op.CHANGE, "x", 1, True)]


def test_secret_values_are_masked_in_diffs() -> None:
    old = {"kind": "Secret", "stringData": {"password": "hunter2"}}
    new = {"kind": "Secret", "stringData": {"password": "correct-horse", "token": "abc123"}}
    diffs = object_diff("Secret", old, new)
    text = "\n".join(field_line(d) for d in diffs)
    assert "hunter2" not in text and "correct-horse" not in text and "abc123" not in text
    assert f"~ stringData.password: {HIDDEN!r}".replace("'", '"') in text
    assert "+ stringData.token" in text


def test_action_vocabulary() -> None:
    assert Action.CREATE.symbol == "+" and Action.UPDATE.verb == "will be changed"
