"""Manifests: YAML text to plain values, keeping the line and column of every node.

The only module that imports ruamel.yaml. Parsing uses ruamel's C parser to compose node
trees (marks included) and converts them here, which is several times faster than the
round-trip loader; the node tree is kept so any JSON pointer can be located later.
Writing YAML uses ruamel's round-trip dumper.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import BaseResolver

from gitorch.model.diagnostics import Diagnostic, escape_token, split_pointer
from gitorch.model.documents import Position

try:  # the C parser ships in ruamel.yaml.clib; fall back to the pure parser without it
    from _ruamel_yaml import CParser as _Parser

    _HAVE_C = True
except ImportError:  # pragma: no cover - exercised only where the clib wheel is missing
    _HAVE_C = False

_PLAIN = "!gitorch/plain"
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "<<"

# YAML 1.2 core schema, the resolution ruamel uses by default: `yes`/`no`/`on` stay strings.
_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_TRUES = frozenset(("true", "True", "TRUE"))
_FALSES = frozenset(("false", "False", "FALSE"))
_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")


@dataclass
class Document:
    """One YAML document of a file: its plain value and the node tree it came from."""

    path: str
    index: int
    body: Any
    node: Node | None = field(default=None, repr=False, compare=False)

    def position(self, ptr: str, *, key: bool = False) -> Position:
        """Where `ptr` is written: its value, or with `key=True` its mapping key.

        A pointer that does not exist (a missing field) resolves to its nearest ancestor.
        """
        node = self.node
        if node is None:
            return Position(0, 0)
        best = _mark(node)
        for token in split_pointer(ptr):
            found: tuple[Node, Node] | None = None
            if isinstance(node, MappingNode):
                for k, v in _mapping_pairs(node):
                    if isinstance(k, ScalarNode) and k.value == token:
                        found = (k, v)
                if found is None:
                    return best
                best = _mark(found[0]) if key else _mark(found[1])
                node = found[1]
            elif isinstance(node, SequenceNode):
                if not token.isdigit() or int(token) >= len(node.value):
                    return best
                node = node.value[int(token)]
                best = _mark(node)
            else:
                return best
        return best


class _Resolver(BaseResolver):
    """Marks plain scalars so their type is resolved once, here, instead of by regex tables."""

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        if kind is SequenceNode:
            return _SEQ
        return _MAP


if _HAVE_C:

    class _CParser(_Parser, _Resolver):
        def __init__(self, text: str) -> None:
            _Parser.__init__(self, text)
            _Resolver.__init__(self)


def _mark(node: Node) -> Position:
    m = node.start_mark
    return Position(m.line + 1, m.column + 1)


def _mapping_pairs(node: MappingNode) -> Iterator[tuple[Node, Node]]:
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == _MERGE and _tag(k) == _PLAIN:
            sources = v.value if isinstance(v, SequenceNode) else [v]
            for src in sources:
                if isinstance(src, MappingNode):
                    yield from _mapping_pairs(src)
            continue
        yield k, v


class _ConvertError(Exception):
    """A value that cannot be converted; `tokens` is filled in, innermost first, on the
    way up, so the happy path never builds JSON pointers."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.tokens: list[str] = []

    @property
    def ptr(self) -> str:
        return "".join("/" + escape_token(t) for t in reversed(self.tokens))


def _tag(node: Node) -> str:
    # `node.tag` builds a string through ruamel's Tag on every access; resolved tags
    # (the common case) keep the whole tag in `suffix`.
    ctag = node.ctag
    return str(ctag.suffix) if ctag.handle is None else str(ctag)


_MAYBE_SPECIAL = frozenset("0123456789+-.~tTfFnN")


def _scalar(node: ScalarNode) -> Any:
    value: str = node.value
    tag = _tag(node)
    if tag == _STR:
        return value
    if tag == _PLAIN:
        # Most plain scalars are words; only these first characters can start another type.
        if value and value[0] not in _MAYBE_SPECIAL:
            return value
        if value in _NULLS:
            return None
        if value in _TRUES:
            return True
        if value in _FALSES:
            return False
        if _INT.match(value):
            return int(value)
        if _FLOAT.match(value):
            return float(value)
        if _OCT.match(value):
            return int(value[2:], 8)
        if _HEX.match(value):
            return int(value[2:], 16)
        if _INF.match(value):
            return -math.inf if value.startswith("-") else math.inf
        if _NAN.match(value):
            return math.nan
        return value
    short = tag.rsplit(":", 1)[-1]
    try:
        if short == "int":
            return int(value, 0)
        if short == "float":
            return float(value)
        if short == "bool":
            if value in _TRUES or value in _FALSES:
                return value in _TRUES
            raise ValueError(value)
        if short == "null":
            return None
        if short in ("binary", "timestamp"):
            return value
    except ValueError as exc:
        raise _ConvertError(node, f"{value!r} is not a valid !!{short}") from exc
    raise _ConvertError(node, f"unsupported YAML tag {tag!r}")


def _convert(node: Node, seen: dict[int, Any]) -> Any:
    if isinstance(node, ScalarNode):
        return _scalar(node)
    cached = seen.get(id(node))
    if cached is not None:  # an alias: share the converted value
        return cached
    if isinstance(node, SequenceNode):
        items: list[Any] = []
        seen[id(node)] = items
        for i, child in enumerate(node.value):
            try:
                items.append(_convert(child, seen))
            except _ConvertError as exc:
                exc.tokens.append(str(i))
                raise
        return items
    if isinstance(node, MappingNode):
        out: dict[str, Any] = {}
        seen[id(node)] = out
        explicit: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, ScalarNode):
                raise _ConvertError(k, "a mapping key must be a plain string")
            if k.value == _MERGE and _tag(k) == _PLAIN:
                sources = v.value if isinstance(v, SequenceNode) else [v]
                for src in sources:
                    merged = _convert(src, seen)
                    if not isinstance(merged, dict):
                        raise _ConvertError(v, "a merge key (<<) needs a mapping")
                    for mk, mv in merged.items():
                        if mk not in explicit:
                            out[mk] = mv
                continue
            key = _scalar(k)
            if not isinstance(key, str):
                key = k.value  # Kubernetes object keys are strings: `80: x` means "80"
            if key in explicit:
                dup = _ConvertError(k, f"duplicate key {key!r} in this mapping")
                dup.tokens.append(key)
                raise dup
            explicit.add(key)
            try:
                out[key] = _convert(v, seen)
            except _ConvertError as exc:
                exc.tokens.append(key)
                raise
        return out
    raise _ConvertError(node, f"unsupported YAML node {type(node).__name__}")


def _compose_all(text: str) -> Iterator[Node]:
    if _HAVE_C:
        parser = _CParser(text)
        try:
            while parser.check_node():
                yield parser.get_node()
        finally:
            parser.dispose()
        return
    yaml = YAML(typ="safe", pure=True)  # pragma: no cover
    yield from yaml.compose_all(text)  # pragma: no cover


def parse_documents(path: str, text: str | bytes) -> tuple[list[Document], list[Diagnostic]]:
    """Parse every document of one file; a syntax error becomes a diagnostic at its mark."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [], [Diagnostic(path, 0, 0, "", f"not UTF-8 text ({exc.reason})")]
    docs: list[Document] = []
    index = 0
    try:
        for node in _compose_all(text):
            try:
                body = _convert(node, {})
            except _ConvertError as exc:
                pos = _mark(exc.node)
                return docs, [Diagnostic(path, pos.line, pos.column, exc.ptr, str(exc))]
            docs.append(Document(path, index, body, node))
            index += 1
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        problem = exc.problem or "invalid YAML"
        context = f" {exc.context}" if exc.context else ""
        return docs, [
            Diagnostic(
                path,
                line,
                col,
                "",
                f"YAML syntax error{context}: {problem}",
                hint="check indentation and that brackets and quotes are closed",
            )
        ]
    except YAMLError as exc:
        return docs, [Diagnostic(path, 0, 0, "", f"YAML error: {exc}")]
    return docs, []


def dump_documents(bodies: list[Any], header: str = "") -> str:
    """Write plain values as a multi-document YAML file (block style, keys in given order)."""
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.width = 4096  # keep long values (host keys) on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    if header:
        buf.write("".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()))
    yaml.dump_all(bodies, buf)
    return buf.getvalue()


def load_plain(text: str) -> Any:
    """Load one small YAML document (e.g. `gitorch.yaml`) without positions."""
    yaml = YAML(typ="safe", pure=True)
    return yaml.load(text)
