"""Fuzzing validate and plan: no input, however malformed, makes them raise (issues 18 and 19).

Hypothesis generates raw YAML text and mutations of the manifests in examples/repo and the
tests' samples: wrong types at every field, random YAML scalars, deep nesting, aliases,
unicode and control characters. Each case is validated as a commit is (`load_desired` on a
snapshot holding it beside the examples) and planned against the examples (`diff_states`
and every renderer). The example budget is fixed and derandomized, so a run is repeatable;
the session's summary says how many cases ran and how many failed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitorch.model.diagnostics import Diagnostic
from gitorch.model.objects import DesiredState
from gitorch.model.revisions import Revision
from gitorch.source.diffs import diff_states
from gitorch.source.git import Snapshot, SourceFile
from gitorch.source.manifests import dump_documents, parse_documents
from gitorch.source.rendering import PlanReport, plan_json, plan_markdown, plan_text
from gitorch.source.validation import load_desired
from tests.conftest import EXAMPLES
from tests.samples import CONFIG, NAMESPACE, SECRET, deployment

EXAMPLES_PER_PROPERTY = 300
FUZZ = settings(
    max_examples=EXAMPLES_PER_PROPERTY,
    derandomize=True,  # the same cases on every run: a failure here is reproducible
    deadline=None,  # tests never assert on time
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the autouse state-dir fixture; cases share nothing
    ],
)


@dataclass
class _Tally:
    """Cases run and failed in this session, printed in pytest's summary."""

    cases: int = 0
    failures: int = 0

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"fuzz: {self.cases} cases tried, {self.failures} failures")


TALLY = _Tally()


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.is_registered(TALLY):
        request.config.pluginmanager.register(TALLY, "gitorch-fuzz-tally")


# --- the seeds: every example and sample manifest ---------------------------------------

BASE_FILES: dict[str, bytes] = {
    p.relative_to(EXAMPLES).as_posix(): p.read_bytes()
    for p in sorted(EXAMPLES.rglob("*.y*ml"))
    if p.name != "gitorch.yaml"
}
SAMPLES = {
    "samples/namespace.yaml": NAMESPACE,
    "samples/config.yaml": CONFIG,
    "samples/secret.yaml": SECRET.format(password="hunter2"),
    "samples/deployment.yaml": deployment(),
    **{f"invalid/{p.name}": p.read_text() for p in sorted((Path(__file__).parent / "data" / "invalid").glob("*.yaml"))},
}
SEEDS: list[tuple[str, int, Any]] = []
for _path, _text in {**{k: v.decode() for k, v in BASE_FILES.items()}, **SAMPLES}.items():
    _docs, _ = parse_documents(_path, _text)
    SEEDS.extend((_path, d.index, d.body) for d in _docs if isinstance(d.body, dict))
SEED_TEXTS = [text for text in {**{k: v.decode() for k, v in BASE_FILES.items()}, **SAMPLES}.values()]


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


# Field names the manifests use, so generated mappings reach deep into the schemas.
KEYS = sorted({k for _, _, body in SEEDS for k in _keys(body)})


def _snapshot(files: dict[str, bytes]) -> Snapshot:
    rev = Revision(hashlib.sha1(b"".join(files.values())).hexdigest(), "fuzz <f@x>", "fuzz", "2026-01-01T00:00:00Z")
    return Snapshot(
        rev, "", tuple(SourceFile(p, hashlib.sha1(p.encode() + b"\0" + d).hexdigest(), d) for p, d in files.items())
    )


BASE_STATE: DesiredState = load_desired(_snapshot(BASE_FILES))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _validate_and_plan(files: dict[str, bytes]) -> DesiredState:
    """What `gitorch validate` and `gitorch plan` do with a commit, minus Git: any exception fails."""
    TALLY.cases += 1
    try:
        state = load_desired(_snapshot(files))
        for d in state.diagnostics:
            assert isinstance(d, Diagnostic)
            line = d.format()
            assert not _CONTROL.search(line), f"a diagnostic is one printable line: {line!r}"
            json.dumps(d.to_json(), allow_nan=False)
        report = PlanReport(BASE_STATE.revision, state.revision, diff_states(BASE_STATE, state), state.diagnostics)
        plan_text(report)
        plan_markdown(report)
        json.loads(plan_json(report), parse_constant=_no_constant)
        return state
    except BaseException:
        TALLY.failures += 1
        raise


# --- strategies -------------------------------------------------------------------------

ODD_STRINGS = [
    "",
    "0",
    "-1",
    "1e3",
    "500m",
    "128Mi",
    "-1Gi",
    "true",
    "null",
    "~",
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "-",
    "--privileged",
    "/",
    "//",
    "/a:/b",
    "a:b",
    "..",
    "../etc",
    "\x00",
    "a\x00b",
    "web\n",
    "\r\n",
    "\t",
    "\u202e",
    "\x85",
    "\x9b",
    "\ufeff",
    "\U0001f600",
    "é",
    "*",
    "&",
    "<<",
    "0x1f",
    "0o17",
    "Deployment",
    "v1",
    "apps/v1",
    "default",
    "shop",
    "web",
    "x" * 300,
    "NaN",
    "None",
    "[]",
    "{}",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.sampled_from(ODD_STRINGS))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEY, children, max_size=4),
    max_leaves=16,
)


def _mutate(data: st.DataObject, body: Any) -> Any:
    """One random change somewhere in `body`: replace, delete, add, wrap or nest deeply."""
    root = {"root": copy.deepcopy(body)}
    parent: Any = root
    key: Any = "root"
    while True:
        here = parent[key]
        children = list(here) if isinstance(here, dict) else list(range(len(here))) if isinstance(here, list) else []
        if not children or data.draw(st.integers(0, 3)) == 0:
            break
        parent, key = here, data.draw(st.sampled_from(children))
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "deep", "twice"]))
    if op == "replace":
        parent[key] = data.draw(VALUES)
    elif op == "delete" and isinstance(parent, dict) and key != "root":
        del parent[key]
    elif op == "add" and isinstance(parent[key], dict):
        parent[key][data.draw(KEY)] = data.draw(VALUES)
    elif op == "wrap":
        parent[key] = data.draw(st.sampled_from([[parent[key]], {"x": parent[key]}, str(parent[key])]))
    elif op == "deep":
        deep: Any = parent[key]
        for _ in range(data.draw(st.integers(10, 200))):
            deep = [deep] if data.draw(st.booleans()) else {"a": deep}
        parent[key] = deep
    elif op == "twice":
        return _mutate(data, _mutate(data, root["root"]))
    return root["root"]


def _serialize(data: st.DataObject, bodies: list[Any]) -> str:
    """As YAML block style (ruamel's dumper) or as JSON, which is YAML too."""
    if data.draw(st.booleans()):
        try:
            return dump_documents(bodies)
        except Exception:  # the dumper cannot write every value; JSON can
            pass
    return "\n---\n".join(json.dumps(b, ensure_ascii=data.draw(st.booleans())) for b in bodies)


YAML_FRAGMENTS = [
    "a",
    "kind",
    "apiVersion",
    "metadata",
    "name",
    "spec",
    ":",
    ": ",
    "- ",
    "-",
    "? ",
    "  ",
    "    ",
    "\n",
    "\n---\n",
    "...\n",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&x ",
    "&y ",
    "*x",
    "*y",
    "<<: ",
    "!!str ",
    "!!int ",
    "!!float ",
    "!!binary ",
    "!custom ",
    "'",
    '"',
    "#",
    "|",
    ">",
    "|-\n  ",
    "%YAML 1.2\n",
    "%TAG ! tag:x,2000:\n",
    "\t",
    "\\0",
    "\\x00",
    "\x00",
    "\x85",
    "\ufeff",
    "\u2028",
    "é",
    "~",
    "null",
    ".nan",
    ".inf",
    "1e400",
    "9" * 25,
    "0x",
    "0o9",
]
YAML_TEXT = st.lists(st.one_of(st.sampled_from(YAML_FRAGMENTS), st.text(max_size=5)), max_size=60).map("".join)


def _file_of(path: str) -> dict[str, bytes]:
    return {**BASE_FILES, path: b""} if path in BASE_FILES else dict(BASE_FILES)


# --- properties -------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_mutated_manifests_validate_and_plan(data: st.DataObject) -> None:
    path, _, body = data.draw(st.sampled_from(SEEDS))
    mutated = _mutate(data, body)
    files = _file_of(path)
    files["fuzz/" + path] = _serialize(data, [mutated]).encode("utf-8", "surrogatepass")
    _validate_and_plan(files)


@FUZZ
@given(st.data())
def test_several_mutated_documents_in_one_file(data: st.DataObject) -> None:
    bodies = [_mutate(data, s[2]) for s in data.draw(st.lists(st.sampled_from(SEEDS), min_size=2, max_size=6))]
    files = dict(BASE_FILES)
    files["fuzz.yaml"] = _serialize(data, bodies).encode("utf-8", "surrogatepass")
    _validate_and_plan(files)


@FUZZ
@given(st.one_of(YAML_TEXT, st.text(max_size=200)), st.binary(max_size=64))
def test_raw_yaml_text_validates_and_plans(text: str, raw: bytes) -> None:
    _validate_and_plan({**BASE_FILES, "text.yaml": text.encode("utf-8", "surrogatepass"), "raw.yaml": raw})


@FUZZ
@given(
    st.sampled_from(SEED_TEXTS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 20), YAML_TEXT), max_size=4),
)
def test_edited_example_text_validates_and_plans(text: str, edits: list[tuple[int, int, str]]) -> None:
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut :]
    _validate_and_plan({**BASE_FILES, "edited.yaml": text.encode("utf-8", "surrogatepass")})


ANCHOR = st.sampled_from("abcd")


@st.composite
def _aliased(draw: st.DrawFn) -> str:
    """Documents that define anchors and use them: nested, merged, in keys, self-referencing."""
    lines = []
    for i in range(draw(st.integers(1, 8))):
        name = draw(ANCHOR)
        refs = draw(st.lists(ANCHOR.map(lambda a: f"*{a}"), max_size=12))
        style = draw(st.sampled_from(["seq", "map", "merge", "scalar", "self"]))
        if style == "seq":
            lines.append(f"k{i}: &{name} [{', '.join(refs) or '1'}]")
        elif style == "map":
            lines.append(f"k{i}: &{name} {{{', '.join(f'f{j}: {r}' for j, r in enumerate(refs)) or 'x: 1'}}}")
        elif style == "merge":
            lines.append(f"k{i}: &{name} {{<<: [{', '.join(refs)}], y: 2}}")
        elif style == "scalar":
            lines.append(f"k{i}: &{name} v{i}")
        else:
            lines.append(f"k{i}: &{name} [*{name}]")
    return "\n".join(lines) + "\n"


@FUZZ
@given(_aliased(), st.sampled_from(SEEDS))
def test_anchors_and_aliases_validate_and_plan(text: str, seed: tuple[str, int, Any]) -> None:
    # Once as a document of its own, once spliced into a real manifest's spec.
    manifest = (
        dump_documents([{k: v for k, v in seed[2].items() if k != "spec"}])
        + "spec:\n"
        + "".join(f"  {line}\n" for line in text.splitlines())
    )
    _validate_and_plan({**BASE_FILES, "aliases.yaml": text.encode(), "manifest.yaml": manifest.encode()})
