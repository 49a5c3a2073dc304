"""The compatibility corpus (issue 10): public manifests, as their authors wrote them (see each
source's SOURCE.md for where they come from and their license), validated as a new user would.

Each unit (a plain file, a folder with a kustomization, built as kustomize would, or the few
files a documentation page applies together, TOGETHER) is loaded on its own, beside CLUSTER (a
new user's repository has a Cluster; ours gives LoadBalancer Services an address pool); every
document's outcome is `accepted` or the reason it is refused, as a short category naming why
or the issue that owns it. tests/data/corpus/expected.json holds the outcomes; a change in any
of them fails this test (an improvement too: update the file with GITORCH_CORPUS_UPDATE=1, and
the README's table, which the test checks against it)."""

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
from gitorch.source.manifests import load_plain, parse_documents
from tests.gitrepo import GitRepo

CORPUS = Path(__file__).parent / "data" / "corpus"
EXPECTED = CORPUS / "expected.json"
README = Path(__file__).parents[1] / "README.md"

# First matching pattern of a document's first error -> the reason shown (and the issue owning it).
REASONS = [
    (r"no LoadBalancer address pool", "LoadBalancer: no address pool in the corpus's cluster"),
    (r"does not support Ingress", "Ingress kind (issue 11)"),
    (r"does not support ReplicationController", "ReplicationController: use a Deployment"),
    (r"does not support HorizontalPodAutoscaler", "HorizontalPodAutoscaler kind (issue 14)"),
    (r"does not support (\w+)", r"\1 kind not supported"),
    (r"generateName is not supported", "generateName: name the object"),
    (r"CronJob needs apiVersion 'batch/v1', not 'batch/v1beta1'",
     "CronJob batch/v1beta1: removed in Kubernetes 1.25 too"),
    (r"HorizontalPodAutoscaler needs apiVersion 'autoscaling/v2', not 'autoscaling/v1'",
     "HorizontalPodAutoscaler autoscaling/v1 (issue 14)"),
    (r"(Secret|ConfigMap|PersistentVolumeClaim) \S+ does not exist",
     r"\1 made outside the example's files (kubectl or a generator)"),
    (r"namespace '(kube-system)' does not exist", r"namespace \1: not built in, declare it"),
    (r"missing required field 'nodeAffinity'|a local volume needs the one node",
     "hostPath PersistentVolume: name its node"),
]

# Files a page of the documentation applies together (one Git folder, for a GitOps user).
TOGETHER = [
    ("kubernetes-website", ["pods/storage/pv-volume.yaml", "pods/storage/pv-claim.yaml", "pods/storage/pv-pod.yaml"]),
    ("kubernetes-website", ["application/mysql/mysql-pv.yaml", "application/mysql/mysql-deployment.yaml"]),
    ("kubernetes-website", ["pods/inject/secret.yaml", "pods/inject/secret-pod.yaml"]),
    ("kubernetes-website", ["configmap/configmap-multikeys.yaml", "pods/pod-configmap-volume.yaml"]),
    ("kubernetes-website", ["application/wordpress/mysql-deployment.yaml",
                            "application/wordpress/wordpress-deployment.yaml"]),
]
CLUSTER = """\
apiVersion: gitorch.dev/v1
kind: Cluster
metadata: {name: corpus}
spec:
  loadBalancer:
    pools: [{name: default, addresses: [10.0.0.200-10.0.0.220]}]
"""


def units() -> list[tuple[str, Path, list[Path]]]:
    """(name, root, files) per unit: each top kustomization folder, and each other YAML file."""
    out: list[tuple[str, Path, list[Path]]] = []
    for source in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        folders = sorted({p.parent for p in source.rglob("*") if p.name in FILE_NAMES})
        for folder in folders:
            out.append((str(folder.relative_to(CORPUS)), source, _reached(folder)))
        grouped = {source / f for name, files in TOGETHER if name == source.name for f in files}
        for name, files in TOGETHER:
            if name == source.name:
                out.append((" + ".join(f"{name}/{f}" for f in files), source, [source / f for f in files]))
        for path in sorted(source.rglob("*.yaml")):
            if not any(folder in path.parents for folder in folders) and path not in grouped:
                out.append((str(path.relative_to(CORPUS)), source, [path]))
    return out


def _reached(folder: Path) -> list[Path]:
    """A kustomization's files, and those of the folders it reaches above itself (`../base`)."""
    files = {p for p in folder.rglob("*") if p.is_file()}
    for name in FILE_NAMES:
        if (folder / name).is_file():
            kust = load_plain((folder / name).read_text()) or {}
            for key in ("resources", "bases", "components"):
                for ref in kust.get(key) or []:
                    target = (folder / str(ref)).resolve()
                    if str(ref).startswith("..") and target.is_dir():
                        files |= set(_reached(target))
                    elif str(ref).startswith("..") and target.is_file():
                        files.add(target)
    return sorted(files)


def outcomes(repo: GitRepo, root: Path, files: list[Path]) -> dict[str, str]:
    """Per document, `Kind/name`: accepted, or why not."""
    written = {str(f.relative_to(root)): f.read_text() for f in files}
    repo.commit("unit", {**written, "corpus-cluster.yaml": CLUSTER})
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
    assert total >= 189 and counts["accepted"] >= 0.95 * total, counts  # the sample, and its target
    assert not [v for v in counts if v.startswith("other:")], counts  # every refusal has a reason


def _readme_rows() -> list[list[str]]:
    text = README.read_text().split("### Compatibility corpus", 1)[1].split("\n#", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| source", "| ---"))]


def test_the_readme_table_is_what_expected_json_records() -> None:
    """Each row names its units' folder as `prefix`; its objects, accepted and refusals (reason
    and count) are those of expected.json, and the total row sums them with the percentage."""
    recorded = json.loads(EXPECTED.read_text())
    rows = _readme_rows()
    assert rows and rows[-1][0] == "total", rows
    covered: set[str] = set()
    for first, objects, accepted, refused in rows[:-1]:
        prefix = re.search(r"`([^`]+)`", first)
        assert prefix, first
        units = [u for u in recorded if u.startswith(prefix.group(1))]
        assert units and not covered & set(units), first
        covered |= set(units)
        outcomes = Counter(v for u in units for v in recorded[u].values())
        assert (int(objects), int(accepted)) == (sum(outcomes.values()), outcomes["accepted"]), first
        for why, n in outcomes.items():
            if why != "accepted":
                assert f"{why} {n}" in refused, (first, why, n)
    assert covered == set(recorded), set(recorded) - covered
    allof = Counter(v for unit in recorded.values() for v in unit.values())
    total = sum(allof.values())
    assert rows[-1][1:3] == [str(total), f"{allof['accepted']} ({100 * allof['accepted'] // total}%)"], rows[-1]
