"""Validation: manifests to a DesiredState, checked against `schemas/` and cross-object rules.

The only module that imports jsonschema. Each error names `file:line:col`, the JSON pointer
of the field, what is wrong and, where it helps, how to fix it. Secret values never appear.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from gitorch.model import selectors
from gitorch.model.diagnostics import Diagnostic, Severity, escape_token, pointer
from gitorch.model.errors import GitorchError
from gitorch.model.objects import (
    DEFAULT_NAMESPACE,
    HIDDEN,
    KINDS,
    SENSITIVE_FIELDS,
    DesiredState,
    Object,
    ObjectKey,
    is_sensitive,
)
from gitorch.model.quantities import QuantityError, parse_quantity
from gitorch.source.fastschema import Check, compile_schemas, pattern_matches
from gitorch.source.git import Snapshot
from gitorch.source.manifests import Document, parse_documents


def _schema_dir() -> Path:
    """The JSON Schemas: inside an installed wheel (setup.py copies the top-level schemas/ into
    gitorch/schemas/ of the build), else the checkout's schemas/ (an editable install)."""
    packaged = importlib.resources.files("gitorch") / "schemas"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


SCHEMA_DIR = _schema_dir()
SCHEMA_BASE = "https://gitorch.dev/schemas/"


@dataclass(frozen=True)
class _Validators:
    by_kind: dict[str, jsonschema.protocols.Validator]
    fast: dict[str, Check]  # compiled validity checks (fastschema); jsonschema says why one fails
    digest: str  # of the schemas' contents: cached results are valid for these schemas only


@cache
def _validators(schema_dir: Path = SCHEMA_DIR) -> _Validators:
    if not schema_dir.is_dir():
        raise GitorchError(f"{schema_dir}: schemas folder missing (reinstall gitorch)")
    resources = []
    schemas: dict[str, dict[str, Any]] = {}
    digest = hashlib.sha256()
    for file in sorted(schema_dir.glob("*.json")):
        raw = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + raw + b"\0")
        contents = json.loads(raw)
        uri = contents.get("$id", SCHEMA_BASE + file.name)
        resources.append((uri, Resource.from_contents(contents)))
        schemas[file.name] = contents
    registry: Registry[Any] = Registry().with_resources(resources)
    by_kind: dict[str, jsonschema.protocols.Validator] = {}
    for info in KINDS.values():
        schema = schemas.get(info.schema)
        if schema is None:
            raise GitorchError(f"{schema_dir / info.schema}: schema for {info.kind} missing")
        schema = _inline_refs(schema, registry.resolver(base_uri=schema.get("$id", "")), ())
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls = jsonschema.validators.extend(cls, {"pattern": _pattern})
        by_kind[info.kind] = cls(schema, registry=registry)
    keywords = {k for v in by_kind.values() for k in type(v).VALIDATORS}
    fast = compile_schemas({kind: v.schema for kind, v in by_kind.items()}, keywords)
    return _Validators(by_kind, fast, digest.hexdigest())


def _pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not pattern_matches(pattern, instance, schema.get("maxLength")):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _inline_refs(node: Any, resolver: Any, stack: tuple[str, ...]) -> Any:
    """Replace `$ref`s by what they point to: jsonschema resolves a `$ref` on every use,
    which made up most of validation time. Recursive references are left in place."""
    if isinstance(node, list):
        return [_inline_refs(n, resolver, stack) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref not in stack:
        resolved = resolver.lookup(ref)
        target = _inline_refs(resolved.contents, resolved.resolver, (*stack, ref))
        siblings = {k: _inline_refs(v, resolver, stack) for k, v in node.items() if k != "$ref"}
        if isinstance(target, dict) and not (set(siblings) & set(target)) and "$id" not in target:
            return {**target, **siblings}
        return {"allOf": [target], **siblings}
    return {
        k: (v if k in ("const", "enum", "default", "examples") else _inline_refs(v, resolver, stack))
        for k, v in node.items()
    }


def schema_for(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind (for `gitorch explain` and editors)."""
    return dict(_validators().by_kind[kind].schema)


# --- per-document checks -------------------------------------------------------------


_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _describe_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


# Characters a terminal may act on that json.dumps leaves as they are: DEL, C1 controls,
# bidirectional overrides and line separators.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _show(value: Any, sensitive: bool) -> str:
    if sensitive:
        return HIDDEN
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _is_sensitive(kind: str, path: list[str | int]) -> bool:
    """Whether a diagnostic at `path` must not quote the value there: a Secret's values are
    masked whole, in whatever shape (a string, a list, a number where a map belongs)."""
    return is_sensitive(kind, path)


def _hint_of(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    return str(schema.get("x-hint", ""))


_QUOTED = re.compile(r"'([^']*)'")


def _translate(doc: Document, kind: str, error: jsonschema.ValidationError) -> Iterator[Diagnostic]:
    """One jsonschema error as diagnostics a person can act on."""
    path = list(error.absolute_path)
    ptr = pointer(*path)
    sensitive = _is_sensitive(kind, path)
    keyword = error.validator
    hint = _hint_of(error)
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance

    def at(p: str, message: str, hint: str = hint, key: bool = False) -> Diagnostic:
        pos = doc.position(p, key=key)
        return Diagnostic(doc.path, pos.line, pos.column, p, message, hint)

    if keyword in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        known = set(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        if keyword == "unevaluatedProperties":
            extras = [n for n in _QUOTED.findall(error.message) if n in instance]
        else:
            extras = [n for n in instance if n not in known and not any(p.search(n) for p in patterns)]
        if not extras and schema.get(keyword) is not False:
            # The extra properties exist but their values are wrong; report those.
            for sub in error.context or []:
                yield from _translate(doc, kind, sub)
            return
        for name in extras:
            child = ptr + "/" + escape_token(name)
            if name == "status":
                yield at(child, "`status` is owned by the cluster, not Git", "delete it", key=True)
                continue
            fix = _suggest(name, known) or (
                f"supported fields here: {', '.join(sorted(known))}" if known else "delete it"
            )
            yield at(child, f"unknown field {name!r}: gitorch does not support it", fix, key=True)
        return
    if keyword == "required":
        missing = [r for r in error.validator_value if isinstance(instance, dict) and r not in instance]
        for name in missing:
            yield at(ptr, f"missing required field {name!r}", hint, key=bool(path))
        return
    if keyword == "type":
        want = error.validator_value
        wants = want if isinstance(want, list) else [want]
        yield at(
            ptr,
            f"expected {' or '.join(wants)}, got {_describe_type(instance)}"
            + ("" if sensitive else f" {_show(instance, False)}"),
        )
        return
    if keyword == "enum":
        options = [str(o) for o in error.validator_value]
        fix = hint or (_suggest(str(instance), options) if isinstance(instance, str) else "")
        yield at(ptr, f"{_show(instance, sensitive)} is not one of: {', '.join(options)}", fix)
        return
    if keyword == "const":
        yield at(ptr, f"must be {_show(error.validator_value, False)}, not {_show(instance, sensitive)}")
        return
    if keyword in ("oneOf", "anyOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None and best.validator not in ("oneOf", "anyOf"):
            inner = list(_translate(doc, kind, best))
            if inner:
                yield from inner
                return
        yield at(ptr, f"{_show(instance, sensitive)} matches none of the allowed forms")
        return
    if keyword == "pattern":
        what = f"a valid {schema['title']}" if schema.get("title") else "valid"
        yield at(ptr, f"{_show(instance, sensitive)} is not {what}", hint)
        return
    if keyword == "not" and error.validator_value in ({}, True) and path:
        # `not: {}` marks a field that must be absent (e.g. `status`).
        yield at(ptr, f"field {path[-1]!r} is not allowed here", hint or "delete it", key=True)
        return
    if keyword == "not" and isinstance(instance, dict):
        forbidden = error.validator_value.get("required") if isinstance(error.validator_value, dict) else None
        if isinstance(forbidden, list) and len(forbidden) == 1:
            child = ptr + "/" + escape_token(forbidden[0])
            yield at(child, f"field {forbidden[0]!r} is not allowed here", hint or "delete it", key=True)
            return
        yield at(ptr, "this combination of fields is not allowed", hint or str(schema.get("description", "")))
        return
    message = error.message
    if sensitive:
        message = f"{HIDDEN} fails the `{keyword}` rule"
    yield at(ptr, message, hint)


def _internal(
    path: str, line: int, column: int, ptr: str, what: str, exc: BaseException, sensitive: bool
) -> Diagnostic:
    """An unexpected exception as a diagnostic: the input is reported, never a traceback."""
    detail = type(exc).__name__ if sensitive else f"{type(exc).__name__}: {str(exc)[:200]}"
    return Diagnostic(path, line, column, ptr, f"internal error checking {what}: {detail}; please report")


def _check_document(doc: Document) -> tuple[Object | None, list[Diagnostic]]:
    try:
        return _check_document_body(doc)
    except Exception as exc:  # validation never raises: the bug becomes this document's error
        body = doc.body if isinstance(doc.body, dict) else {}
        kind, meta = body.get("kind"), body.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        pos = doc.position("")
        sensitive = not isinstance(kind, str) or kind in SENSITIVE_FIELDS
        return None, [_internal(doc.path, pos.line, pos.column, "", f"{kind}/{name}", exc, sensitive)]


def _fast_valid(check: Check | None, body: Any) -> bool:
    """Whether the compiled check passes `body`; when in doubt (none, or it fails), False,
    and jsonschema decides."""
    if check is None:
        return False
    try:
        return check(body)
    except Exception:
        return False


def _check_document_body(doc: Document) -> tuple[Object | None, list[Diagnostic]]:
    body = doc.body
    if body is None:
        return None, []  # an empty document (a trailing `---`) is allowed
    pos = doc.position("")
    if not isinstance(body, dict):
        return None, [
            Diagnostic(
                doc.path, pos.line, pos.column, "", f"expected a Kubernetes-style object, got {_describe_type(body)}"
            )
        ]
    kind = body.get("kind")
    api = body.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        p = doc.position("", key=True)
        return None, [Diagnostic(doc.path, p.line, p.column, "/kind", "missing `kind`", f"one of: {', '.join(KINDS)}")]
    info = KINDS.get(kind)
    if info is None:
        p = doc.position("/kind")
        fix = _suggest(kind, KINDS) or f"supported kinds: {', '.join(KINDS)}"
        return None, [Diagnostic(doc.path, p.line, p.column, "/kind", f"unknown kind {kind!r}", fix)]
    if api != info.api_version:
        p = doc.position("/apiVersion")
        return None, [
            Diagnostic(
                doc.path,
                p.line,
                p.column,
                "/apiVersion",
                f"{kind} needs apiVersion {info.api_version!r}, not {api!r}",
                f"apiVersion: {info.api_version}",
            )
        ]
    validators = _validators()
    diags: list[Diagnostic] = []
    if not _fast_valid(validators.fast.get(kind), body):
        for error in validators.by_kind[kind].iter_errors(body):
            diags.extend(_translate(doc, kind, error))
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None, sorted(set(diags))
    namespace = ""
    if info.namespaced:
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        namespace = ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE
    return Object(ObjectKey(kind, namespace, name), body, doc), sorted(set(diags))


# One checked document: its object (None when it has none) and whether it passed its schema.
_Checked = tuple[Object | None, Document, bool]

# Parsing and per-document checks depend only on (path, content): cache them by blob.
_CACHE: dict[tuple[str, str], tuple[list[_Checked], list[Diagnostic]]] = {}
_CACHE_LIMIT = 200_000


def _check_file(path: str, blob: str, data: bytes) -> tuple[list[_Checked], list[Diagnostic]]:
    key = (path, blob)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        docs, diags = parse_documents(path, data)
    except Exception as exc:  # the parser's limits should make this unreachable; never crash on input
        return [], [_internal(path, 0, 0, "", "this file", exc, True)]
    if diags:
        diags = _masked_parse_errors(data, diags)
    out: list[_Checked] = []
    for doc in docs:
        obj, d = _check_document(doc)
        out.append((obj, doc, not any(x.severity is Severity.ERROR for x in d)))
        diags.extend(d)
    if len(_CACHE) > _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = (out, diags)
    return out, diags


# Read from the text, as the document did not parse: its own `kind: Secret` line.
_SECRET_KIND = re.compile(r"^kind:[ \t]*(['\"]?)Secret\1[ \t]*(#.*)?$", re.MULTILINE)
_QUOTED_TEXT = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_ANY_SENSITIVE_FIELD = frozenset(f for fields in SENSITIVE_FIELDS.values() for f in fields)


def _masked_parse_errors(data: bytes, diags: list[Diagnostic]) -> list[Diagnostic]:
    """Parse errors quote what they could not read, which in a Secret may be a value: mask every
    quoted text of those in a document that says `kind: Secret`, and under `data`/`stringData`
    whatever the kind (a document that does not parse has no kind yet)."""
    lines = data.decode("utf-8", "replace").split("\n")
    out = []
    for d in diags:
        first = d.pointer.split("/")[1] if d.pointer.startswith("/") else ""
        if first in _ANY_SENSITIVE_FIELD or _SECRET_KIND.search(_document_text(lines, d.line)):
            d = replace(d, message=_QUOTED_TEXT.sub(HIDDEN, d.message), hint=_QUOTED_TEXT.sub(HIDDEN, d.hint))
        out.append(d)
    return out


def _document_text(lines: list[str], line: int) -> str:
    """The YAML document holding 1-based `line` (the whole file when the line is unknown)."""
    if line <= 0 or line > len(lines):
        return "\n".join(lines)
    start, end = line - 1, line
    while start > 0 and not lines[start].startswith(("---", "...")):
        start -= 1
    while end < len(lines) and not lines[end].startswith(("---", "...")):
        end += 1
    return "\n".join(lines[start:end])


def load_desired(snapshot: Snapshot) -> DesiredState:
    """Parse, schema-check and cross-check one commit's manifests. Changes no process-global
    state: batch commands may pause the cyclic GC around it (cli.commands.batch_gc)."""
    return _load_desired(snapshot)


def _load_desired(snapshot: Snapshot) -> DesiredState:
    diags: list[Diagnostic] = list(snapshot.diagnostics)
    objects: dict[ObjectKey, Object] = {}
    invalid: set[ObjectKey] = set()
    for f in snapshot.files:
        checked, d = _check_file(f.path, f.blob, f.data)
        diags.extend(d)
        for obj, doc, valid in checked:
            if obj is None:
                continue
            first = objects.get(obj.key)
            if first is not None:
                p = doc.position("/metadata/name")
                where = first.document.position("/metadata/name")
                diags.append(
                    Diagnostic(
                        doc.path,
                        p.line,
                        p.column,
                        "/metadata/name",
                        f"duplicate object: {obj.key} is already defined",
                        f"first defined at {first.path}:{where.line}:{where.column}; rename or remove one",
                    )
                )
                continue
            objects[obj.key] = obj
            if not valid:
                invalid.add(obj.key)
    diags.extend(cross_check(objects, invalid))
    diags.sort(key=lambda d: (d.path, d.line, d.column, d.pointer, d.message))
    return DesiredState(snapshot.revision, objects, diags, files=len(snapshot.files))


# --- cross-object rules ----------------------------------------------------------------


def _diag(
    obj: Object, ptr: str, message: str, hint: str = "", *, warning: bool = False, key: bool = False
) -> Diagnostic:
    pos = obj.document.position(ptr, key=key)
    return Diagnostic(
        obj.path,
        pos.line,
        pos.column,
        ptr,
        message,
        hint,
        Severity.WARNING if warning else Severity.ERROR,
    )


def _map(value: Any) -> dict[str, Any]:
    """`value` when it is a mapping, else an empty one: cross checks read any shape safely."""
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def pod_template(obj: Object) -> tuple[str, dict[str, Any]] | None:
    """The pointer and body of a workload's pod template."""
    spec = obj.spec
    if obj.key.kind == "CronJob":
        tmpl = _map(_map(spec.get("jobTemplate")).get("spec")).get("template")
        return ("/spec/jobTemplate/spec/template", tmpl) if isinstance(tmpl, dict) else None
    tmpl = spec.get("template")
    return ("/spec/template", tmpl) if isinstance(tmpl, dict) else None


def _containers(tmpl_ptr: str, tmpl: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    pod = _map(tmpl.get("spec"))
    for field in ("initContainers", "containers"):
        for i, c in enumerate(_seq(pod.get(field))):
            if isinstance(c, dict):
                yield f"{tmpl_ptr}/spec/{field}/{i}", c


def _guarded(obj: Object, check: Callable[[], list[Diagnostic]]) -> list[Diagnostic]:
    """One object's checks; an unexpected exception is that object's error, never the commit's."""
    try:
        return check()
    except Exception as exc:
        pos = obj.document.position("/metadata/name")
        what = f"{obj.key.kind}/{obj.key.name}"
        sensitive = obj.key.kind in SENSITIVE_FIELDS
        return [_internal(obj.path, pos.line, pos.column, "/metadata/name", what, exc, sensitive)]


def cross_check(objects: dict[ObjectKey, Object], invalid: Set[ObjectKey] = frozenset()) -> list[Diagnostic]:
    """Rules that need more than one object (and a few single-object rules schemas cannot say).

    Objects in `invalid` failed their schema check: they still count as targets of references,
    but their own rules are skipped, as their shapes may be anything."""
    out: list[Diagnostic] = []
    namespaces = {k.name for k in objects if k.kind == "Namespace"} | {DEFAULT_NAMESPACE}
    ordered = sorted(objects.values(), key=lambda o: o.key)
    nodes = [o for o in ordered if o.key.kind == "Node" and o.key not in invalid]
    clusters = [o for o in ordered if o.key.kind == "Cluster"]
    for extra in clusters[1:]:
        out.append(
            _diag(
                extra,
                "/metadata/name",
                f"a second Cluster ({extra.key.name}); a repository describes one cluster",
                f"keep only {clusters[0].key.name!r} (in {clusters[0].path})",
            )
        )
    for c in clusters:
        if c.key not in invalid:
            out.extend(_guarded(c, functools.partial(_check_cluster, c)))
    out.extend(_check_nodes(nodes))
    # (namespace, label, value) -> labels of the pod templates carrying it, so a Service's
    # selector is checked against a few candidates instead of every workload.
    pod_labels: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for obj in ordered:
        if KINDS[obj.key.kind].workload and obj.key not in invalid:
            found = pod_template(obj)
            labels = _map(found[1].get("metadata")).get("labels") if found else None
            if isinstance(labels, dict):
                for k, v in labels.items():
                    pod_labels.setdefault((obj.key.namespace, k, str(v)), []).append(labels)
    for obj in ordered:
        if obj.key.namespace and obj.key.namespace not in namespaces:
            out.append(
                _diag(
                    obj,
                    "/metadata/namespace",
                    f"namespace {obj.key.namespace!r} does not exist",
                    f"add a Namespace named {obj.key.namespace!r}, or fix the name",
                )
            )
        if obj.key in invalid:
            continue
        if obj.key.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            out.extend(_guarded(obj, functools.partial(_check_workload, obj, objects, nodes)))
        elif obj.key.kind == "Service":
            out.extend(_guarded(obj, functools.partial(_check_service, obj, pod_labels)))
    return out


def _check_cluster(c: Object) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    nets = {}
    for field in ("podCIDR", "serviceCIDR"):
        value = c.spec.get(field)
        if isinstance(value, str):
            try:
                nets[field] = ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                out.append(
                    _diag(
                        c,
                        f"/spec/{field}",
                        f"{value!r} is not a valid CIDR: {exc}",
                        "a network such as 10.244.0.0/16 (host bits zero)",
                    )
                )
    if len(nets) == 2 and nets["podCIDR"].overlaps(nets["serviceCIDR"]):
        out.append(
            _diag(
                c,
                "/spec/serviceCIDR",
                "serviceCIDR overlaps podCIDR",
                "pick networks that do not overlap, e.g. 10.244.0.0/16 and 10.96.0.0/12",
            )
        )
    return out


def _check_nodes(nodes: list[Object]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: dict[tuple[str, int], Object] = {}
    for n in nodes:
        addr = n.spec.get("address")
        port = n.spec.get("port", 22)
        if not isinstance(addr, str) or not isinstance(port, int):
            continue
        first = seen.get((addr, port))
        if first is not None:
            out.append(
                _diag(
                    n,
                    "/spec/address",
                    f"address {addr}:{port} is already used by Node {first.key.name}",
                    "each Node needs its own address (or port)",
                )
            )
        else:
            seen[(addr, port)] = n
    return out


def _check_selector(obj: Object, selector: dict[str, Any], labels: dict[str, str], ptr: str) -> list[Diagnostic]:
    if selectors.matches(selector, labels):
        return []
    return [
        _diag(
            obj,
            ptr,
            f"selector {selectors.describe(selector)} does not match the template labels "
            f"{', '.join(f'{k}={v}' for k, v in sorted(labels.items())) or '(none)'}",
            "make spec.template.metadata.labels include every label the selector asks for",
        )
    ]


def _check_workload(obj: Object, objects: dict[ObjectKey, Object], nodes: list[Object]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    found = pod_template(obj)
    if found is None:
        return out
    tptr, tmpl = found
    labels = _map(tmpl.get("metadata")).get("labels") or {}
    selector = obj.spec.get("selector")
    if isinstance(selector, dict) and isinstance(labels, dict):
        out.extend(_check_selector(obj, selector, labels, "/spec/selector"))
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            out.append(
                _diag(
                    obj,
                    "/spec/selector",
                    "an empty selector would select every pod in the namespace",
                    "select on the template's labels, e.g. matchLabels: {app: NAME}",
                )
            )
    pod = _map(tmpl.get("spec"))
    ns = obj.key.namespace
    # Volumes: every mount names a volume; every referenced object exists.
    volume_names: set[str] = set()
    for i, vol in enumerate(_seq(pod.get("volumes"))):
        if not isinstance(vol, dict):
            continue
        vptr = f"{tptr}/spec/volumes/{i}"
        if vol.get("name") in volume_names:
            out.append(_diag(obj, f"{vptr}/name", f"duplicate volume name {vol.get('name')!r}"))
        volume_names.add(str(vol.get("name")))
        if isinstance(vol.get("configMap"), dict):
            out.extend(
                _ref(
                    obj,
                    objects,
                    "ConfigMap",
                    ns,
                    vol["configMap"].get("name"),
                    f"{vptr}/configMap/name",
                    optional=bool(vol["configMap"].get("optional")),
                )
            )
        if isinstance(vol.get("secret"), dict):
            out.extend(
                _ref(
                    obj,
                    objects,
                    "Secret",
                    ns,
                    vol["secret"].get("secretName"),
                    f"{vptr}/secret/secretName",
                    optional=bool(vol["secret"].get("optional")),
                )
            )
        if isinstance(vol.get("persistentVolumeClaim"), dict):
            out.extend(
                _ref(
                    obj,
                    objects,
                    "PersistentVolumeClaim",
                    ns,
                    vol["persistentVolumeClaim"].get("claimName"),
                    f"{vptr}/persistentVolumeClaim/claimName",
                )
            )
    if obj.key.kind == "StatefulSet":
        for t in _seq(obj.spec.get("volumeClaimTemplates")):
            if isinstance(t, dict):
                volume_names.add(str(_map(t.get("metadata")).get("name")))
        service = obj.spec.get("serviceName")
        if isinstance(service, str) and ObjectKey("Service", ns, service) not in objects:
            out.append(
                _diag(
                    obj,
                    "/spec/serviceName",
                    f"Service {ns}/{service} does not exist",
                    "add a headless Service (clusterIP: None) with that name so pods get DNS names",
                    warning=True,
                )
            )
    container_names: set[str] = set()
    for cptr, c in _containers(tptr, tmpl):
        cname = c.get("name")
        if cname in container_names:
            out.append(_diag(obj, f"{cptr}/name", f"duplicate container name {cname!r}"))
        container_names.add(str(cname))
        for j, m in enumerate(_seq(c.get("volumeMounts"))):
            if isinstance(m, dict) and m.get("name") not in volume_names:
                out.append(
                    _diag(
                        obj,
                        f"{cptr}/volumeMounts/{j}/name",
                        f"volume {m.get('name')!r} is not defined",
                        _suggest(str(m.get("name")), volume_names) or "add it under spec.volumes",
                    )
                )
        for j, env in enumerate(_seq(c.get("env"))):
            source = _map(_map(env).get("valueFrom"))
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = source.get(field)
                if isinstance(ref, dict):
                    out.extend(
                        _ref(
                            obj,
                            objects,
                            kind,
                            ns,
                            ref.get("name"),
                            f"{cptr}/env/{j}/valueFrom/{field}/name",
                            optional=bool(ref.get("optional")),
                            key=ref.get("key"),
                            key_ptr=f"{cptr}/env/{j}/valueFrom/{field}/key",
                        )
                    )
        for j, src in enumerate(_seq(c.get("envFrom"))):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = _map(src).get(field)
                if isinstance(ref, dict):
                    out.extend(
                        _ref(
                            obj,
                            objects,
                            kind,
                            ns,
                            ref.get("name"),
                            f"{cptr}/envFrom/{j}/{field}/name",
                            optional=bool(ref.get("optional")),
                        )
                    )
        out.extend(_check_resources(obj, cptr, c))
        ports = [str(p["name"]) for p in _seq(c.get("ports")) if isinstance(p, dict) and p.get("name")]
        for dup in sorted({p for p in ports if ports.count(p) > 1}):
            out.append(_diag(obj, f"{cptr}/ports", f"duplicate port name {dup!r} in container {cname!r}"))
    node_selector = pod.get("nodeSelector")
    if (
        isinstance(node_selector, dict)
        and node_selector
        and nodes
        and not any(selectors.map_matches(node_selector, n.labels) for n in nodes)
    ):
        out.append(
            _diag(
                obj,
                f"{tptr}/spec/nodeSelector",
                f"no Node has the labels {', '.join(f'{k}={v}' for k, v in sorted(node_selector.items()))}",
                "its pods will stay Pending until a Node has them",
                warning=True,
            )
        )
    return out


def _check_resources(obj: Object, cptr: str, c: dict[str, Any]) -> list[Diagnostic]:
    res = _map(c.get("resources"))
    requests, limits = _map(res.get("requests")), _map(res.get("limits"))
    out: list[Diagnostic] = []
    for name, limit in limits.items():
        if name not in requests:
            continue
        try:
            if parse_quantity(requests[name]) > parse_quantity(limit):
                out.append(
                    _diag(
                        obj,
                        f"{cptr}/resources/requests/{escape_token(name)}",
                        f"request {requests[name]} is above the limit {limit}",
                        "a request must be less than or equal to its limit",
                    )
                )
        except QuantityError:
            pass  # the schema already reported it
    return out


def _ref(
    obj: Object,
    objects: dict[ObjectKey, Object],
    kind: str,
    ns: str,
    name: Any,
    ptr: str,
    *,
    optional: bool = False,
    key: Any = None,
    key_ptr: str = "",
) -> list[Diagnostic]:
    if not isinstance(name, str) or optional:
        return []
    target = objects.get(ObjectKey(kind, ns, name))
    if target is None:
        others = [k.name for k in objects if k.kind == kind and k.namespace == ns]
        fix = _suggest(name, others) or f"add a {kind} named {name!r} in namespace {ns!r}"
        return [_diag(obj, ptr, f"{kind} {ns}/{name} does not exist", fix)]
    if isinstance(key, str):
        keys: set[str] = set()
        for field in ("data", "stringData", "binaryData"):
            value = target.body.get(field)
            if isinstance(value, dict):
                keys.update(value)
        if key not in keys:
            fix = _suggest(key, keys) or f"keys in {kind} {name}: {', '.join(sorted(keys)) or '(none)'}"
            return [_diag(obj, key_ptr, f"{kind} {ns}/{name} has no key {key!r}", fix)]
    return []


def _check_service(svc: Object, pod_labels: dict[tuple[str, str, str], list[dict[str, str]]]) -> list[Diagnostic]:
    spec = svc.spec
    if spec.get("type") == "ExternalName":
        return []
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not selector:
        return [
            _diag(
                svc,
                "/spec",
                "this Service has no selector, so it selects no pods",
                "add spec.selector matching a workload's pod labels",
                warning=True,
                key=True,
            )
        ]
    first_key, first_value = next(iter(selector.items()))
    candidates = pod_labels.get((svc.key.namespace, first_key, str(first_value)), [])
    if any(selectors.map_matches(selector, labels) for labels in candidates):
        return []
    return [
        _diag(
            svc,
            "/spec/selector",
            f"selector {', '.join(f'{k}={v}' for k, v in sorted(selector.items()))} matches no workload's pods "
            f"in namespace {svc.key.namespace!r}",
            "check the labels in the workload's spec.template.metadata.labels",
            warning=True,
        )
    ]
