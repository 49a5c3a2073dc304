"""Validation: manifests to a DesiredState, checked against `schemas/` and cross-object rules.

The only module that imports jsonschema. Each error names `file:line:col`, the JSON pointer
of the field, what is wrong and, where it helps, how to fix it. Secret values never appear.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.resources
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
from referencing import Registry, Resource

from gitorch import __version__
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
from gitorch.source import kustomize, sops
from gitorch.source.blobcache import BlobCache
from gitorch.source.crosschecks import Memo, cross_check, internal_error, suggest
from gitorch.source.fastschema import Check, compile_schemas, pattern_matches
from gitorch.source.git import Snapshot, SourceFile
from gitorch.source.manifests import LIMITS, SCALARS_VERSION, Document, ReadOnlyDict, ReadOnlyList, parse_documents
from gitorch.source.no_effect import no_effect_fields


def _schema_dir() -> Path:
    """The JSON Schemas: inside an installed wheel (setup.py copies the top-level schemas/ into
    gitorch/schemas/ of the build), else the checkout's schemas/ (an editable install)."""
    packaged = importlib.resources.files("gitorch") / "schemas"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


SCHEMA_DIR = _schema_dir()
SCHEMA_BASE = "https://gitorch.dev/schemas/"
_T = TypeVar("_T")


class _PerKind(Mapping[str, _T]):
    """One value per kind, built on first use: a command that reads a few kinds (`gitorch
    nodes`: Node and Cluster) does not inline and compile all the schemas (0.4 s of CPU, a
    third of that command). A kind whose builder gives None is absent."""

    def __init__(self, build: Callable[[str], _T | None]) -> None:
        self._build = build
        self._built: dict[str, _T | None] = {}
        self._lock = threading.Lock()

    def __getitem__(self, kind: str) -> _T:
        if kind not in self._built:
            if kind not in KINDS:
                raise KeyError(kind)
            with self._lock:
                if kind not in self._built:
                    self._built[kind] = self._build(kind)
        value = self._built[kind]
        if value is None:
            raise KeyError(kind)
        return value

    def __iter__(self) -> Iterator[str]:
        return (kind for kind in KINDS if kind in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Validators:
    """The schemas, read once; each kind's validator and compiled check made when first asked."""

    def __init__(self, schema_dir: Path) -> None:
        if not schema_dir.is_dir():
            raise GitorchError(f"{schema_dir}: schemas folder missing (reinstall gitorch)")
        self.schema_dir = schema_dir
        resources = []
        self.schemas: dict[str, dict[str, Any]] = {}
        digest = hashlib.sha256()
        for file in sorted(schema_dir.glob("*.json")):
            raw = file.read_bytes()
            digest.update(file.name.encode() + b"\0" + raw + b"\0")
            contents = json.loads(raw)
            uri = contents.get("$id", SCHEMA_BASE + file.name)
            resources.append((uri, Resource.from_contents(contents)))
            self.schemas[file.name] = contents
        self.registry: Registry[Any] = Registry().with_resources(resources)
        self.digest = digest.hexdigest()  # of the schemas' contents: cached results are valid for these only
        self.by_kind: Mapping[str, jsonschema.protocols.Validator] = _PerKind(self._validator)
        # Compiled validity checks (fastschema); jsonschema says why one fails.
        self.fast: Mapping[str, Check] = _PerKind(self._fast)
        for info in KINDS.values():
            if info.schema not in self.schemas:
                raise GitorchError(f"{schema_dir / info.schema}: schema for {info.kind} missing")

    def _validator(self, kind: str) -> jsonschema.protocols.Validator:
        schema = self.schemas[KINDS[kind].schema]
        schema = _inline_refs(schema, self.registry.resolver(base_uri=schema.get("$id", "")), ())
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls = jsonschema.validators.extend(cls, {"pattern": _pattern})
        return cls(schema, registry=self.registry)

    def _fast(self, kind: str) -> Check | None:
        validator = self.by_kind[kind]
        return compile_schemas({kind: validator.schema}, set(type(validator).VALIDATORS)).get(kind)


@cache
def _validators(schema_dir: Path = SCHEMA_DIR) -> _Validators:
    return _Validators(schema_dir)


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
    out = {}
    for k, v in node.items():
        if k in ("properties", "patternProperties", "dependentSchemas", "$defs") and isinstance(v, dict):
            # Every value is a schema, whatever its name: a property may be called `default`.
            out[k] = {name: _inline_refs(sub, resolver, stack) for name, sub in v.items()}
        else:
            out[k] = v if k in ("const", "enum", "default", "examples") else _inline_refs(v, resolver, stack)
    return out


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
    ReadOnlyDict: "a mapping",
    ReadOnlyList: "a list",
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


def _is_sensitive(kind: str, path: list[str | int]) -> bool:
    """Whether a diagnostic at `path` must not quote the value there: a Secret's values are
    masked whole, in whatever shape (a string, a list, a number where a map belongs)."""
    return is_sensitive(kind, path)


@dataclass(frozen=True)
class _Kubernetes:
    """What Kubernetes itself has, to tell what gitorch lacks from what is misspelt: its built-in
    kinds, and the fields of its types (kubernetes_fields.json, hand-written from the API reference)."""

    kinds: frozenset[str]
    types: dict[str, dict[str, str]]

    def fields(self, kind: str, path: list[str | int]) -> dict[str, str] | None:
        """Kubernetes' fields of the object at `path` in a `kind`, or None when not known."""
        name = kind
        for token in path:
            if isinstance(token, int):
                continue  # a list's items have the list's type
            child = self.types.get(name, {}).get(token)
            if not child:
                return None
            name = child
        return self.types.get(name)


@cache
def _kubernetes() -> _Kubernetes:
    data = json.loads(importlib.resources.files("gitorch.source").joinpath("kubernetes_fields.json").read_text())
    return _Kubernetes(frozenset(data["builtinKinds"]), data["types"])


_KIND_HINTS = {
    "ReplicationController": "use a Deployment, which replaces it in Kubernetes too",
}

# Real Kubernetes fields gitorch lacks whose work can be done another way: say how.
_FIELD_HINTS: dict[str, str] = {}


def _hint_of(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    return str(schema.get("x-hint", ""))


_QUOTED = re.compile(r"'([^']*)'")


# Older versions Kubernetes still reads (or read until lately) whose spec differs from the one
# gitorch reads: what to write instead.
_API_HINTS = {
    ("HorizontalPodAutoscaler", "autoscaling/v1"):
        "apiVersion: autoscaling/v2, and targetCPUUtilizationPercentage: N as metrics: [{type: Resource, "
        "resource: {name: cpu, target: {type: Utilization, averageUtilization: N}}}]",
    ("CronJob", "batch/v1beta1"): "apiVersion: batch/v1 (the same spec; Kubernetes 1.25 removed batch/v1beta1)",
    ("PodDisruptionBudget", "policy/v1beta1"):
        "apiVersion: policy/v1 (an empty selector now selects every pod of the namespace, not none)",
}


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
        path, pos = doc.locate(p, key=key)  # a kustomize patch's file for a value it set
        return Diagnostic(path, pos.line, pos.column, p, message, hint)

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
            if name == "generateName" and path == ["metadata"]:
                yield at(child, "generateName is not supported: an object in Git needs a name of its own",
                         "set metadata.name (a generated one would be a new object on every pass); for a "
                         "task that runs again on each change, use a Job", key=True)
                continue
            real = _kubernetes().fields(kind, path)
            if real is not None and name in real:
                # A real Kubernetes field gitorch lacks: its nearest neighbour is not what was meant.
                parent = str(path[-2]) if len(path) >= 2 else ""
                fix = _FIELD_HINTS.get(f"{parent}.{name}") or _FIELD_HINTS.get(
                    name, "gitorch does not implement it yet; delete it"
                )
                yield at(child, f"field {name!r} is not supported by gitorch", fix, key=True)
                continue
            fix = suggest(name, known) or (
                f"supported fields here: {', '.join(sorted(known))}" if known else "delete it"
            )
            yield at(child, f"unknown field {name!r}: gitorch does not support it", fix, key=True)
        return
    if keyword == "required":
        missing = [r for r in error.validator_value if isinstance(instance, dict) and r not in instance]
        for name in missing:
            if name == "name" and path == ["metadata"] and isinstance(instance, dict) and "generateName" in instance:
                continue  # said once, at generateName
            own = schema.get("properties", {}).get(name, {})  # the field's own hint, else the object's
            yield at(ptr, f"missing required field {name!r}",
                     str(own.get("x-hint") or hint) if isinstance(own, dict) else hint, key=bool(path))
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
        fix = hint or (suggest(str(instance), options) if isinstance(instance, str) else "")
        yield at(ptr, f"{_show(instance, sensitive)} is not one of: {', '.join(options)}", fix)
        return
    if keyword == "const":
        yield at(ptr, f"must be {_show(error.validator_value, False)}, not {_show(instance, sensitive)}")
        return
    if keyword in ("oneOf", "anyOf") and _has_unsupported_field(kind, path, schema, instance):
        return  # e.g. a gRPC probe: its `grpc` is reported, not a missing httpGet as well
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


def _has_unsupported_field(kind: str, path: list[str | int], schema: dict[str, Any], instance: Any) -> bool:
    """Whether `instance` holds a real Kubernetes field that gitorch's schema here lacks."""
    if not isinstance(instance, dict):
        return False
    real = _kubernetes().fields(kind, path)
    known = schema.get("properties", {})
    return real is not None and any(n in real and n not in known for n in instance)


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return ReadOnlyDict((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return ReadOnlyList(_frozen(v) for v in value)
    return value


_SOPS_FIX = "encrypt it again with `gitorch secret encrypt` (or sops) for the controller's age key"


def _open_sops(doc: Document, keyring: sops.Keyring) -> tuple[Document | None, list[Diagnostic]]:
    """A SOPS-encrypted document as the rest of validation sees it: decrypted when `keyring` opens
    it, else (without `required`) with a placeholder per encrypted value, structure checked."""
    pos = doc.position("/sops", key=True)

    def problem(message: str, fix: str = _SOPS_FIX) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(doc.path, pos.line, pos.column, "/sops", message, fix)]

    found = sops.check_structure(doc.body)
    if found:
        return problem("; ".join(found[:5]))
    exposed = tuple(pointer(*path) for path in sops.left_plaintext(doc.body, sops.Rules.of(doc.body["sops"])))
    if keyring.identities:
        try:
            body = _frozen(sops.decrypt_document(doc.body, keyring.identities))
        except sops.SopsError as exc:
            return problem(str(exc))
        return replace(doc, body=body, encrypted=True, exposed=exposed), []
    if keyring.required:
        return problem("encrypted, and the controller has no age key to decrypt it",
                       "run `gitorch secret keygen` on the controller (or set GITORCH_AGE_KEY_FILE) and "
                       "encrypt for its public key")
    return replace(doc, body=_frozen(sops.keyless_view(doc.body)), encrypted=True, exposed=exposed), []


def _check_document(doc: Document, keyring: sops.Keyring = sops.NO_KEYS) -> tuple[Object | None, list[Diagnostic]]:
    try:
        if sops.is_encrypted(doc.body):
            opened, diags = _open_sops(doc, keyring)
            if opened is None:
                return None, diags
            doc = opened
        return _check_document_body(doc)
    except Exception as exc:  # validation never raises: the bug becomes this document's error
        body = doc.body if isinstance(doc.body, dict) else {}
        kind, meta = body.get("kind"), body.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        pos = doc.position("")
        sensitive = not isinstance(kind, str) or kind in SENSITIVE_FIELDS
        return None, [internal_error(doc.path, pos.line, pos.column, "", f"{kind}/{name}", exc, sensitive)]


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
    if not isinstance(body, dict):
        pos = doc.position("")
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
        if kind in _kubernetes().kinds:
            fix = _KIND_HINTS.get(kind, f"supported kinds: {', '.join(KINDS)}")
            return None, [Diagnostic(doc.path, p.line, p.column, "/kind", f"gitorch does not support {kind} yet", fix)]
        fix = suggest(kind, KINDS) or f"supported kinds: {', '.join(KINDS)}"
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
                _API_HINTS.get((kind, str(api)), f"apiVersion: {info.api_version}"),
            )
        ]
    validators = _validators()
    diags: list[Diagnostic] = []
    if not _fast_valid(validators.fast.get(kind), body):
        for error in validators.by_kind[kind].iter_errors(body):
            diags.extend(_translate(doc, kind, error))
    for ptr, reason in no_effect_fields(SCHEMA_DIR, info.schema, body):  # accepted, no effect
        p = doc.position(ptr, key=True)
        diags.append(Diagnostic(doc.path, p.line, p.column, ptr, "field has no effect", reason, Severity.WARNING))
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None, sorted(set(diags))
    namespace = ""
    if info.namespaced:
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        namespace = ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE
    return Object(ObjectKey(kind, namespace, name), body, doc), sorted(set(diags))


# One checked document: its object's key (None when it has none) and whether it passed its schema.
_Checked = tuple[ObjectKey | None, Document, bool]


@dataclass(frozen=True)
class FileResult:
    """What one file parsed and validated to; immutable, as every load that hits shares it
    (bodies are ReadOnlyDict/ReadOnlyList, documents frozen, diagnostics frozen). `memos`,
    one per checked document, keep what its cross-object rules last found (crosschecks)."""

    checked: tuple[_Checked, ...]
    diagnostics: tuple[Diagnostic, ...]
    memos: tuple[Memo, ...] = field(default=(), compare=False, repr=False)


# Parsing and per-document checks depend only on (path, content, schemas, gitorch's code).
FILE_CACHE: BlobCache[FileResult] = BlobCache()
# Estimated memory of a file's result: measured with tracemalloc on bench/plan.py's repository,
# 13.7 bytes per byte of YAML (the text kept for positions included), 17.9 KB per file.
_BYTES_PER_BYTE = 12
_BYTES_PER_FILE = 2_000


def _check_file(f: SourceFile, cache: BlobCache[FileResult] | None,
                keyring: sops.Keyring = sops.NO_KEYS) -> FileResult:
    key = (f.path, f.blob, _validators().digest, __version__, SCALARS_VERSION, keyring.digest)
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    data = f.data
    try:
        docs, diags = parse_documents(f.path, data, positions=False, read_only=True)
    except Exception as exc:  # the parser's limits should make this unreachable; never crash on input
        return FileResult((), (internal_error(f.path, 0, 0, "", "this file", exc, True),))
    if diags:
        diags = _masked_parse_errors(data, diags)
    out: list[_Checked] = []
    for doc in docs:
        obj, d = _check_document(doc, keyring)
        doc = obj.document if obj is not None and isinstance(obj.document, Document) else doc  # decrypted
        out.append((obj.key if obj else None, doc, not any(x.severity is Severity.ERROR for x in d)))
        diags.extend(d)
    result = FileResult(tuple(out), tuple(diags), tuple({} for _ in out))
    if cache is not None:
        cache.put(key, result, _BYTES_PER_FILE + _BYTES_PER_BYTE * len(data))
    return result


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


def _data(f: SourceFile) -> bytes:
    data = f.data
    if len(data) > LIMITS.file_bytes:
        raise ValueError(f"{f.path}: file is {len(data):,} bytes; the limit is {LIMITS.file_bytes:,}")
    return data


def load_desired(snapshot: Snapshot, cache: BlobCache[FileResult] | None = FILE_CACHE,
                 keyring: sops.Keyring = sops.NO_KEYS) -> DesiredState:
    """Parse, schema-check and cross-check one commit's manifests, reusing from `cache` what
    each unchanged blob parsed to (None: parse everything). The cyclic GC waits while it runs
    (see `_gc_waits`); batch commands also freeze what it loaded (cli.commands.batch_gc)."""
    with _gc_waits():
        return _load_desired(snapshot, cache, keyring)


_gc_lock = threading.Lock()
_gc_waiting = [0, False]  # loads running, and whether the GC was enabled when the first began


@contextlib.contextmanager
def _gc_waits() -> Iterator[None]:
    """No cyclic GC while a load runs: a cold load adds a few hundred thousand containers that
    all live on, and the GC's passes over the growing heap cost a sixth of the load (bench/plan.py).
    Garbage cycles made meanwhile, by any thread, wait for the first pass after it (a load takes
    seconds at most). Loads may overlap (serve's and a plan's): the last one out re-enables it."""
    with _gc_lock:
        if _gc_waiting[0] == 0:
            _gc_waiting[1] = gc.isenabled()
            gc.disable()
        _gc_waiting[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_waiting[0] -= 1
            if _gc_waiting[0] == 0 and _gc_waiting[1]:
                gc.enable()


def _load_desired(snapshot: Snapshot, cache: BlobCache[FileResult] | None, keyring: sops.Keyring) -> DesiredState:
    diags: list[Diagnostic] = list(snapshot.diagnostics)
    objects: dict[ObjectKey, Object] = {}
    invalid: set[ObjectKey] = set()
    memos: dict[ObjectKey, Memo] = {}
    results: list[FileResult] = []
    # Folders with a kustomization are built as kustomize builds them; their files are read
    # through it, not on their own.
    names = [f.path for f in (*snapshot.files, *snapshot.others)]
    consumed: set[str] = set()
    if kustomize.kustomization_dirs(set(names)):
        readers: dict[str, Callable[[], bytes]] = {
            f.path: functools.partial(_data, f) for f in (*snapshot.files, *snapshot.others)
        }
        built = kustomize.build_all(readers)
        diags.extend(built.diagnostics)
        consumed = built.consumed
        checked: list[_Checked] = []
        for doc in built.documents:
            obj, d = _check_document(doc, keyring)
            doc = obj.document if obj is not None and isinstance(obj.document, Document) else doc
            checked.append((obj.key if obj else None, doc, not any(x.severity is Severity.ERROR for x in d)))
            diags.extend(d)
        results.append(FileResult(tuple(checked), ()))
    for f in snapshot.files:
        if f.path not in consumed:
            results.append(_check_file(f, cache, keyring))
    for result in results:
        diags.extend(result.diagnostics)
        for i, (key, doc, valid) in enumerate(result.checked):
            if key is None:
                continue
            obj = Object(key, doc.body, doc)  # this load's own; the body is shared, read-only
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
            if result.memos:
                memos[obj.key] = result.memos[i]
            if not valid:
                invalid.add(obj.key)
    diags.extend(cross_check(objects, invalid, memos))
    diags.sort(key=lambda d: (d.path, d.line, d.column, d.pointer, d.message))
    return DesiredState(snapshot.revision, objects, diags, files=len(snapshot.files))
