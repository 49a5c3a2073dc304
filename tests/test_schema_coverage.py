"""Nothing accepted and ignored: every property of every schema is read by the code that gives
it effect, or listed in gitorch.source.no_effect.NO_EFFECT with its reason, and `validate`
warns where a manifest sets a listed one.

"Read by the code that gives it effect" is checked as: the property's name is a string
literal in one of the modules that act on manifests (reconcile, the node agent, DNS, the
server, node endpoints, selectors, and the cross-object checks that make `optional` matter).
Only leaf properties are checked; an object property counts through its children.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gitorch.model.diagnostics import Severity
from gitorch.source.git import SourceFile
from gitorch.source.no_effect import NO_EFFECT, REQUIRED, schema_properties
from gitorch.source.validation import SCHEMA_DIR, _check_file

ROOT = Path(__file__).resolve().parents[1]
CONSUMERS = (
    "gitorch/reconcile/*.py",
    "gitorch/nodes/agent.py",
    "gitorch/nodes/endpoints.py",
    "gitorch/dns/*.py",
    "gitorch/server/*.py",
    "gitorch/model/selectors.py",
    "gitorch/model/routes.py",
    "gitorch/model/admission.py",
    "gitorch/model/volumes.py",
    "gitorch/source/crosschecks.py",
    "gitorch/source/grants.py",
)


def _consumer_strings() -> set[str]:
    out: set[str] = set()
    for pattern in CONSUMERS:
        for f in sorted(ROOT.glob(pattern)):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out.add(node.value)
    return out


def test_walker_resolves_refs_into_defs() -> None:
    props = list(schema_properties(SCHEMA_DIR))
    paths = {(p.schema, p.path): p.location for p in props}
    # deployment.json -> podTemplateSpec -> podSpec -> container (all in defs.json)
    pull = ("spec", "template", "spec", "containers", "[]", "imagePullPolicy")
    assert paths[("deployment.json", pull)] == "container.imagePullPolicy"
    # cronjob.json -> jobSpec ($ref) -> ttlSecondsAfterFinished
    ttl = ("spec", "jobTemplate", "spec", "ttlSecondsAfterFinished")
    assert paths[("cronjob.json", ttl)] == "jobSpec.ttlSecondsAfterFinished"
    assert len({p.schema for p in props}) == len(list(SCHEMA_DIR.glob("*.json"))) - 1  # all but defs.json


def test_every_schema_property_has_effect_or_is_listed() -> None:
    props = list(schema_properties(SCHEMA_DIR))
    locations = {p.location for p in props}
    parents = {loc.rsplit(".", 1)[0] for loc in locations}
    strings = _consumer_strings()
    unused = sorted(
        f"{p.schema}: {p.location}"
        for p in props
        if p.location not in parents  # leaves only
        and p.location not in NO_EFFECT
        and p.path[-1] not in strings
    )
    assert not unused, "accepted and ignored (use it, refuse it, or list it in NO_EFFECT):\n" + "\n".join(
        sorted(set(unused))
    )


def test_no_effect_table_is_honest() -> None:
    locations = {p.location for p in schema_properties(SCHEMA_DIR)}
    assert not sorted(set(NO_EFFECT) - locations), "NO_EFFECT names fields no schema has"
    assert REQUIRED.issubset(NO_EFFECT)
    for location, reason in NO_EFFECT.items():
        assert "no effect" in reason and len(reason) > 25, location


_DOC = b"""\
apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  ttlSecondsAfterFinished: 60
  template:
    spec:
      restartPolicy: Never
      subdomain: workers
      containers:
        - name: a
          image: busybox
          imagePullPolicy: Always
        - name: b
          image: busybox
          imagePullPolicy: IfNotPresent
          volumeMounts:
            - name: scratch
              mountPath: /x
              subPath: data
      volumes:
        - name: scratch
          emptyDir: {}
"""


def test_validate_warns_once_per_no_effect_field_with_line_and_reason() -> None:
    result = _check_file(SourceFile("jobs/once.yaml", "blob-no-effect", _DOC), None)
    warnings = [d for d in result.diagnostics if d.severity is Severity.WARNING]
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    assert not errors, [d.format() for d in errors]
    got = sorted((d.line, d.pointer) for d in warnings)
    # ttlSecondsAfterFinished, imagePullPolicy and subPath have an effect: no warning for them.
    assert got == [(10, "/spec/template/spec/subdomain")]
    pull = warnings[0]
    assert pull.hint == NO_EFFECT["podSpec.subdomain"]
    assert pull.format().startswith("jobs/once.yaml:10:")
    assert "warning: field has no effect" in pull.format()


def test_required_no_effect_fields_do_not_warn() -> None:
    doc = b"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
"""
    result = _check_file(SourceFile("data.yaml", "blob-pvc", doc), None)
    assert not result.diagnostics, [d.format() for d in result.diagnostics]
