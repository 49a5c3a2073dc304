"""YAML parsing with positions (gitorch.source.manifests)."""

from __future__ import annotations

import pytest

from gitorch.source.manifests import Position, dump_documents, parse_documents


def test_values_use_yaml_1_2_core_types() -> None:
    docs, diags = parse_documents(
        "a.yaml",
        "i: 42\nf: 1.5\nb: true\nn: ~\ns: '42'\nyes_is_text: 'yes'\nhex: 0x1f\nempty:\n",
    )
    assert diags == []  # YAML 1.1's readings (yes, 0644) are in tests/test_yaml11.py
    body = docs[0].body
    assert body["i"] == 42 and isinstance(body["i"], int)
    assert body["f"] == 1.5
    assert body["b"] is True
    assert body["n"] is None and body["empty"] is None
    assert body["s"] == "42"
    assert body["yes_is_text"] == "yes"
    assert body["hex"] == 31


def test_positions_of_values_and_keys() -> None:
    text = (
        "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: x\n"
    )
    docs, _ = parse_documents("d.yaml", text)
    doc = docs[0]
    assert doc.position("/spec/template/spec/containers/0/image") == Position(7, 18)
    assert doc.position("/spec/template/spec/containers/0/image", key=True) == Position(7, 11)
    # A missing field resolves to its nearest ancestor.
    assert doc.position("/spec/template/missing", key=True) == Position(3, 3)


def test_multi_document_files_keep_their_own_lines() -> None:
    docs, diags = parse_documents("m.yaml", "kind: A\n---\nkind: B\nx: 1\n---\n")
    assert diags == []
    assert [d.body for d in docs] == [{"kind": "A"}, {"kind": "B", "x": 1}, None]
    assert docs[1].position("/x") == Position(4, 4)


def test_anchors_aliases_and_merge_keys() -> None:
    docs, _ = parse_documents("a.yaml", "base: &b {cpu: 1m, mem: 2Mi}\nc:\n  <<: *b\n  mem: 4Mi\nd: *b\n")
    body = docs[0].body
    assert body["c"] == {"cpu": "1m", "mem": "4Mi"}
    assert body["d"] == {"cpu": "1m", "mem": "2Mi"}
    # A merged key is located where its mapping wrote it; a key written here wins wherever it is.
    assert docs[0].position("/c/cpu") == Position(1, 16)
    assert docs[0].position("/c/mem") == Position(4, 8)


def test_merge_of_several_mappings_keeps_the_first() -> None:
    docs, diags = parse_documents("m.yaml", "a: &a {x: 1}\nb: &b {x: 2, y: 3}\nc: {<<: [*a, *b], z: 4}\n")
    assert diags == []
    assert docs[0].body["c"] == {"x": 1, "y": 3, "z": 4}


def test_scalar_anchors_as_values_and_keys() -> None:
    docs, diags = parse_documents("s.yaml", "a: &v hello\nb: *v\nc: [*v]\n*v : 2\n")
    assert diags == []
    assert docs[0].body == {"a": "hello", "b": "hello", "c": ["hello"], "hello": 2}


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        pytest.param("a: [1,\nb: 2", 3, 1, "YAML syntax error", id="unclosed-flow"),
        pytest.param("a: 1\n  b: 2\n", 2, 4, "YAML syntax error", id="bad-indent"),
        pytest.param("a: 1\nb: 2\na: 3\n", 3, 1, "duplicate key 'a'", id="duplicate-key"),
        pytest.param("a: !!int x\n", 1, 4, "not a valid !!int", id="bad-tag-value"),
        pytest.param("a: !custom x\n", 1, 4, "unsupported YAML tag", id="unknown-tag"),
        pytest.param("a:\n  b: .nan\n", 2, 6, "not a finite number", id="nan"),
        pytest.param("a: -.inf\n", 1, 4, "not a finite number", id="minus-inf"),
        pytest.param("a: 1e400\n", 1, 4, "not a finite number", id="float-overflow"),
        pytest.param("a: !!float nan\n", 1, 4, "not a finite number", id="tagged-nan"),
        pytest.param("a: 9223372036854775808\n", 1, 4, "out of range", id="int64-overflow"),
        pytest.param("a: 1" + "0" * 5000 + "\n", 1, 4, "out of range", id="5000-digits"),
        pytest.param("a: *nowhere\n", 1, 4, "undefined alias *nowhere", id="undefined-alias"),
        pytest.param("? [a, b]\n: 1\n", 1, 3, "a mapping key must be a plain string", id="complex-key"),
        pytest.param("a: &x [1]\nb: {<<: *x}\n", 1, 4, "a merge key (<<) needs a mapping", id="merge-of-list"),
    ],
)
def test_errors_point_at_the_problem(text: str, line: int, col: int, message: str) -> None:
    _, diags = parse_documents("bad.yaml", text)
    assert len(diags) == 1
    d = diags[0]
    assert (d.line, d.column) == (line, col), d.format()
    assert message in d.message
    assert d.format().startswith(f"bad.yaml:{line}:{col}: ")


def test_not_utf8_is_an_error_not_a_crash() -> None:
    _, diags = parse_documents("bin.yaml", b"\xff\xfe\x00a: 1")
    assert diags and "not UTF-8" in diags[0].message


def test_dump_round_trips() -> None:
    text = dump_documents([{"a": 1, "b": {"c": ["x", "y"]}}, {"kind": "Node"}], header="generated")
    assert text.startswith("# generated\n")
    docs, diags = parse_documents("out.yaml", text)
    assert diags == []
    assert [d.body for d in docs] == [{"a": 1, "b": {"c": ["x", "y"]}}, {"kind": "Node"}]


def test_the_composers_fast_path_for_words_reads_scalars_as_scalar_does() -> None:
    """The composer reads most plain words without _scalar; each reading, as a key and as a
    value, must be _scalar's (with a YAML 1.1 reading, the value Kubernetes reads)."""
    from gitorch.source import manifests

    words = [
        *sorted(manifests._WORDS),
        "name", "namespace", "nginx", "true1", "yesno", "Nope", "off-by-one", "t", "f", "o", "tRUE", "nULL",
        "0644", "1_000", "0x1F", "-1", ".5", "~", "1e3", "0o17", "007", "+12", "_1", "a_1", "z",
    ]
    for word in words:
        try:
            expected = manifests._scalar(word, None)
        except manifests._Yaml11 as exc:
            expected = exc.value
        docs, _ = manifests.parse_documents("w.yaml", f"value: {word}\nlist: [{word}]\n{word}: key\n")
        body = docs[0].body
        assert body["value"] == expected and type(body["value"]) is type(expected), word
        assert body["list"] == [expected], word
        key = expected if isinstance(expected, str) else word
        assert body[key] == "key", word
