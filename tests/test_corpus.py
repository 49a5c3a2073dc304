"""The compatibility corpus (issue 10): public manifests, as their authors wrote them (see each
source's SOURCE.md for where they come from and their license), validated as a new user would.

Each unit (a plain file, or a folder with a kustomization, built as kustomize would) is loaded
on its own; every document's outcome is `accepted` or the reason it is refused, as a short
category naming the issue that owns it. tests/data/corpus/expected.json holds the outcomes;
a change in any of them fails this test (an improvement too: update the file, and the README's
table, with GITORCH_CORPUS_UPDATE=1)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from gitorch.model.diagnostics import Severity
from gitorch.source import desired
from gitorch.source.git import open_repository
from gitorch.source.kustomize import FILE_NAMES
from gitorch.source.manifests import parse_documents
from tests.gitrepo import GitRepo

CORPUS = Path(__file__).parent / "data" / "corpus"
EXPECTED = CORPUS / "expected.json"

# First matching pattern of a document's first error -> the reason shown (and the issue owning it).
REASONS = [
    (r"no LoadBalancer address pool", "LoadBalancer: no address pool in the corpus's cluster"),
    (r"does not support Ingress", "Ingress kind (issue 11)"),
    (r"does not support ReplicationController", "ReplicationController: use a Deployment"),
    (r"does not support HorizontalPodAutoscaler", "HorizontalPodAutoscaler kind (issue 14)"),
    (r"does not support (\w+)", r"\1 kind not supported"),
]


def units() -> list[tuple[str, Path, list[Path]]]:
    """(name, root, files) per unit: each top kustomization folder, and each other YAML file."""
    out: list[tuple[str, Path, list[Path]]] = []
    for source in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        folders = sorted({p.parent for p in source.rglob("*") if p.name in FILE_NAMES})
        for folder in folders:
            out.append((str(folder.relative_to(CORPUS)), source, [p for p in folder.rglob("*") if p.is_file()]))
        for path in sorted(source.rglob("*.yaml")):
            if not any(folder in path.parents for folder in folders):
                out.append((str(path.relative_to(CORPUS)), source, [path]))
    return out


def outcomes(repo: GitRepo, root: Path, files: list[Path]) -> dict[str, str]:
    """Per document, `Kind/name`: accepted, or why not."""
    written = {str(f.relative_to(root)): f.read_text() for f in files}
    repo.commit("unit", written)
    state = desired.load(open_repository(repo.path), None)
    docs: dict[tuple[str, int], str] = {}  # (path, first line) -> Kind/name
    for path, text in written.items():
        if not path.endswith((".yaml", ".yml")) or Path(path).name in FILE_NAMES:
            continue
        parsed, _ = parse_documents(path, text)
        for d in parsed:
            if isinstance(d.body, dict) and d.body.get("kind"):
                name = (d.body.get("metadata") or {}).get("name") or (d.body.get("metadata") or {}).get("generateName")
                docs[(path, d.position("").line)] = f"{d.body['kind']}/{name}"
    result = dict.fromkeys(docs.values(), "accepted")
    for diag in state.diagnostics:
        if diag.severity is not Severity.ERROR:
            continue
        starts = [(p, line) for (p, line) in docs if p == diag.path and line <= diag.line]
        if not starts:
            continue
        key = docs[max(starts, key=lambda s: s[1])]
        if result[key] == "accepted":
            result[key] = reason(diag.message)
    return result


def reason(message: str) -> str:
    for pattern, label in REASONS:
        found = re.search(pattern, message)
        if found:
            return found.expand(label)
    return "other: " + message[:80]


def test_the_corpus_outcomes_are_as_recorded(tmp_path: Path) -> None:
    got: dict[str, dict[str, str]] = {}
    for i, (name, root, files) in enumerate(units()):
        got[name] = outcomes(GitRepo(tmp_path / f"unit{i}"), root, files)
    if os.environ.get("GITORCH_CORPUS_UPDATE"):
        EXPECTED.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    want = json.loads(EXPECTED.read_text())
    assert got == want
    counts = Counter(v for unit in got.values() for v in unit.values())
    total = sum(counts.values())
    assert total >= 40 and counts["accepted"] >= 1, counts
