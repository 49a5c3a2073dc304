"""Manifests: YAML text to plain values, keeping the line and column of every node.

The only module that imports ruamel.yaml. ruamel's C parser (libyaml) turns text into
events, and `_Composer` builds plain values from them in one pass, without recursion,
with a tree of positions beside them so any JSON pointer can be located later.

Everything read from Git is untrusted, so composing enforces `Limits` (file size,
documents per file, nesting depth, alias expansion) and stops at the first one exceeded
with a diagnostic at its line: a 600-byte "billion laughs" file or a file nested 100,000
levels deep costs milliseconds, not hours and gigabytes. Writing YAML uses ruamel's
round-trip dumper.
"""

from __future__ import annotations

import copy
import io
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml import events as ev
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.representer import RoundTripRepresenter

from gitorch.model.diagnostics import Diagnostic, Severity, escape_token, split_pointer
from gitorch.model.documents import Position

try:  # the C parser ships in ruamel.yaml.clib; fall back to the pure parser without it
    import _ruamel_yaml
    from _ruamel_yaml import CParser as _CParser

    _HAVE_C = True
except ImportError:  # pragma: no cover - exercised only where the clib wheel is missing
    _HAVE_C = False


# Events as the composer reads them: the C parser's arguments, kept as they are passed. The C
# parser builds each event by calling the class its module names (ruamel.yaml.events'), whose
# three chained Python __init__s cost more than composing the event; an exception class keeps
# its positional arguments in `args` without running any Python code. `_light_events` points
# the C parser at these once, at import, after checking that it passes what they expect.
class _Event(BaseException):
    __slots__ = ()


class _Scalar(_Event):  # anchor, tag, implicit, value, start_mark, end_mark, style
    __slots__ = ()


class _MappingStart(_Event):  # anchor, tag, implicit, start_mark, end_mark, flow_style
    __slots__ = ()


class _SequenceStart(_Event):  # as _MappingStart
    __slots__ = ()


class _MappingEnd(_Event):  # start_mark, end_mark
    __slots__ = ()


class _SequenceEnd(_Event):  # start_mark, end_mark
    __slots__ = ()


class _Alias(_Event):  # anchor, start_mark, end_mark
    __slots__ = ()


class _DocumentStart(_Event):  # start_mark, end_mark, explicit, version, tags
    __slots__ = ()


class _DocumentEnd(_Event):  # start_mark, end_mark, explicit
    __slots__ = ()


class _Other(_Event):  # stream start and end
    __slots__ = ()


_LIGHT: dict[str, type[_Event]] = {
    "ScalarEvent": _Scalar,
    "MappingStartEvent": _MappingStart,
    "SequenceStartEvent": _SequenceStart,
    "MappingEndEvent": _MappingEnd,
    "SequenceEndEvent": _SequenceEnd,
    "AliasEvent": _Alias,
    "DocumentStartEvent": _DocumentStart,
    "DocumentEndEvent": _DocumentEnd,
    "StreamStartEvent": _Other,
    "StreamEndEvent": _Other,
}


def _light(e: Any) -> _Event:
    """ruamel's own event as the composer reads it (the pure parser's, or the C parser's when
    its module could not be pointed at the light classes)."""
    cls = type(e)
    if cls is ev.ScalarEvent:
        return _Scalar(e.anchor, e.ctag, e.implicit, e.value, e.start_mark, e.end_mark, e.style)
    if cls is ev.MappingStartEvent or cls is ev.SequenceStartEvent:
        light = _MappingStart if cls is ev.MappingStartEvent else _SequenceStart
        return light(e.anchor, e.ctag, e.implicit, e.start_mark, e.end_mark, e.flow_style)
    if cls is ev.AliasEvent:
        return _Alias(e.anchor, e.start_mark, e.end_mark)
    if cls is ev.DocumentStartEvent:
        return _DocumentStart(e.start_mark, e.end_mark, e.explicit, None, None)
    named = _LIGHT.get(cls.__name__, _Other)
    return named(e.start_mark, e.end_mark)


def _light_events() -> bool:
    """Point the C parser at the light event classes, if it passes what they expect; else leave
    it as it is (its events are converted one by one)."""
    if not _HAVE_C or any(not isinstance(getattr(_ruamel_yaml, n, None), type) for n in _LIGHT):
        return False
    saved = {n: getattr(_ruamel_yaml, n) for n in _LIGHT}
    try:
        for n, light in _LIGHT.items():
            setattr(_ruamel_yaml, n, light)
        parser = _CParser("a: &x [1, 'b']\nc: *x\n")
        try:
            got = []
            while (e := parser.get_event()) is not None:
                got.append((type(e).__name__, e.args))
        finally:
            parser.dispose()
        shapes = [(name, len(args)) for name, args in got]
        ok = shapes == [
            ("_Other", 3), ("_DocumentStart", 5), ("_MappingStart", 6), ("_Scalar", 7), ("_SequenceStart", 6),
            ("_Scalar", 7), ("_Scalar", 7), ("_SequenceEnd", 2), ("_Scalar", 7), ("_Alias", 3), ("_MappingEnd", 2),
            ("_DocumentEnd", 3), ("_Other", 2),
        ] and got[3][1][3] == "a" and got[4][1][0] == "x" and got[6][1][3] == "b" and got[6][1][2] == (False, True)
    except Exception:
        ok = False
    if not ok:  # pragma: no cover - a clib that calls its events otherwise
        for n, cls in saved.items():
            setattr(_ruamel_yaml, n, cls)
    return ok


_LIGHT_EVENTS = _light_events()


@dataclass(frozen=True)
class Limits:
    """Bounds on what one manifest file may ask of the parser (see README, Validation)."""

    file_bytes: int = 4 * 2**20
    """Largest file read; the Kubernetes API refuses requests over 3 MiB and ConfigMaps over 1 MiB."""
    documents: int = 1_000
    """YAML documents (`---`) in one file."""
    depth: int = 64
    """Nesting of mappings and sequences, aliases expanded; Kubernetes objects need about 15."""
    alias_nodes: int = 100_000
    """Nodes that aliases to mappings and sequences may add to one document once expanded."""


LIMITS = Limits()

_STR = "tag:yaml.org,2002:str"
_MERGE = "<<"
_INT64 = 2**63

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
_MAYBE_SPECIAL = frozenset("0123456789+-.~tTfFnNyYoO")
_NUMERIC_START = frozenset("0123456789+-.~")

# Kubernetes reads YAML with go-yaml v2 (through sigs.k8s.io/yaml), which resolves plain scalars
# as YAML 1.1 does: these words are booleans, and integers are Go's (strconv.ParseInt base 0 once
# underscores are removed): 0644 octal, 0b101 binary, 0X1F, -0x1f, 1_000. gitorch reads them as
# Kubernetes does, with a warning (`_Yaml11`) that names the unambiguous form. Sexagesimal `1:30`
# and timestamps stay strings there too, as in YAML 1.2.
_TRUES_11 = frozenset(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"))
_FALSES_11 = frozenset(("n", "N", "no", "No", "NO", "off", "Off", "OFF"))
# A plain scalar starting with a letter is a string unless it is one of these words (numbers,
# .inf and ~ start otherwise): the composer's fast path for words.
_WORDS = frozenset(w for w in (*_NULLS, *_TRUES, *_FALSES, *_TRUES_11, *_FALSES_11) if w and w[0] not in _NUMERIC_START)
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]+|[0-9]+)\Z")
SCALARS_VERSION = 2
"""Bumped when how scalars are read changes (2: YAML 1.1 as Kubernetes): part of the source cache's key."""

# Where a value is written: (line, column, children), children being None for a scalar,
# {key: (key line, key column, child)} for a mapping and [child, ...] for a sequence.
_Where = tuple[int, int, Any]


def _read_only(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"this {type(self).__name__} is read-only: parsed manifests are shared between loads "
        "(the source cache); change a copy (copy.deepcopy gives plain values)"
    )


class ReadOnlyDict(dict[str, Any]):
    """A mapping composed from YAML and shared between loads: it reads as a dict, changing it
    raises TypeError, and its copies (copy, deepcopy, pickle, dict(...), {**d}) are plain dicts."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class ReadOnlyList(list[Any]):
    """A sequence composed from YAML and shared between loads; see ReadOnlyDict."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(v, memo) for v in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


_dict_set = dict.__setitem__
_list_append = list.append


class _Positions:
    """Where the parts of one file's documents are written, composed again on first use: a
    position is asked only for a diagnostic, and the tree of them costs more than the values
    (the cyclic GC scans every node of it). Composing the same text gives the same documents."""

    __slots__ = ("_limits", "_text", "_wheres")
    _lock = threading.Lock()  # one for all: composing positions is rare (a diagnostic's)

    def __init__(self, text: str, limits: Limits) -> None:
        self._text: str | None = text
        self._limits = limits
        self._wheres: list[_Where] | None = None

    def of(self, index: int) -> _Where | None:
        with self._lock:
            if self._wheres is None:
                wheres: list[_Where] = []
                try:
                    for _, where in _Composer(self._limits).documents(_events(self._text or "")):
                        wheres.append(where)
                except Exception:
                    pass  # as in the first pass: the documents before the error are kept
                self._wheres, self._text = wheres, None
            return self._wheres[index] if index < len(self._wheres) else None


@dataclass(frozen=True, slots=True)
class Origin:
    """A built document's part `at` (a JSON pointer) as written at `ptr` in `doc`; `whole`: the
    part's every value is reported at `ptr` itself (an inline patch: a string in a kustomization)."""

    at: str
    doc: Document
    ptr: str
    whole: bool = False


def _exists(body: Any, ptr: str) -> bool:
    for token in split_pointer(ptr):
        if isinstance(body, dict) and token in body:
            body = body[token]
        elif isinstance(body, list) and token.isdigit() and int(token) < len(body):
            body = body[int(token)]
        else:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document of a file: its plain value and where each of its parts is written
    (`where`, or composed on demand by `positions`)."""

    path: str
    index: int
    body: Any
    where: _Where | None = field(default=None, repr=False, compare=False)
    positions: _Positions | None = field(default=None, repr=False, compare=False)
    encrypted: bool = field(default=False, compare=False)
    """Decrypted from SOPS's format (source/sops.py) on load."""
    exposed: tuple[str, ...] = field(default=(), compare=False)
    """Of an encrypted document: pointers to the values under data and stringData that the file's
    SOPS rules left in plaintext (a Secret under secrets.requireEncryption may have none)."""
    origins: tuple[Origin, ...] = field(default=(), repr=False, compare=False)
    """Parts of a built document written elsewhere (a kustomize patch, an item a merge moved),
    most specific first: `locate` reports them there."""

    def locate(self, ptr: str, *, key: bool = False) -> tuple[str, Position]:
        """The file and position `ptr` is written at: a patch's file for a value a patch set,
        else this document's own (`position`)."""
        for origin in self.origins:
            if ptr != origin.at and not ptr.startswith(origin.at + "/"):
                continue
            if origin.whole:
                return origin.doc.path, origin.doc.position(origin.ptr)
            there = origin.ptr + ptr[len(origin.at):]
            if _exists(origin.doc.body, there):
                return origin.doc.path, origin.doc.position(there, key=key)
        return self.path, self.position(ptr, key=key)

    def position(self, ptr: str, *, key: bool = False) -> Position:
        """Where `ptr` is written: its value, or with `key=True` its mapping key.

        A pointer that does not exist (a missing field) resolves to its nearest ancestor.
        """
        here = self.where
        if here is None and self.positions is not None:
            here = self.positions.of(self.index)
        if here is None:
            return Position(0, 0)
        best = Position(here[0], here[1])
        for token in split_pointer(ptr):
            children = here[2]
            if isinstance(children, dict):
                found = children.get(token)
                if found is None:
                    return best
                here = found[2]
                best = Position(found[0], found[1]) if key else Position(here[0], here[1])
            elif isinstance(children, list):
                if not token.isdigit() or int(token) >= len(children):
                    return best
                here = children[int(token)]
                best = Position(here[0], here[1])
            else:
                return best
        return best


class _ComposeError(Exception):
    """A problem at a line and column; `ptr` is the JSON pointer of the value it concerns."""

    def __init__(self, line: int, column: int, ptr: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.line, self.column, self.ptr, self.hint = line, column, ptr, hint


class _Yaml11(Exception):
    """A plain scalar that Kubernetes (YAML 1.1) reads differently from YAML 1.2: `value` is
    Kubernetes' reading, which gitorch keeps, and the message says how to write it unambiguously."""

    def __init__(self, value: Any, message: str, hint: str) -> None:
        super().__init__(message)
        self.value, self.hint = value, hint


def _yaml11(value: str) -> None:
    """Raise _Yaml11 when Kubernetes reads the plain scalar `value` otherwise than YAML 1.2."""
    if value in _TRUES_11 or value in _FALSES_11:
        b = value in _TRUES_11
        word = "true" if b else "false"
        raise _Yaml11(
            b,
            f"{value!r} is read as the boolean {word!r}, as Kubernetes does (YAML 1.1)",
            f"write {word}, or quote it if you mean a string",
        )
    if (value.isdigit() and (value[0] != "0" or len(value) == 1)) or len(value) > 80:
        return  # the common case: a decimal number, read alike
    plain = value.replace("_", "")
    if not plain:
        return
    if _GO_INT.match(plain):
        digits = plain.lstrip("+-")
        sign = -1 if plain[0] == "-" else 1
        if digits[:2] in ("0x", "0X"):
            n, base = int(digits[2:], 16), "hexadecimal"
        elif digits[:2] in ("0o", "0O"):
            n, base = int(digits[2:], 8), "octal"
        elif digits[:2] in ("0b", "0B"):
            n, base = int(digits[2:], 2), "binary"
        elif len(digits) > 1 and digits[0] == "0" and "8" not in digits and "9" not in digits:
            n, base = int(digits[1:], 8), "octal"
        else:
            n, base = int(digits), "decimal"
        n = _number(value, sign * n)
        if "_" not in value and n == _yaml12_int(value):
            return  # read alike: 1.2 reads 007 as 7 too
        plain_form = f"{'-' if sign < 0 else ''}0o{abs(n):o}" if base == "octal" else ""
        forms = " or ".join(repr(f) for f in (plain_form, str(n)) if f)
        raise _Yaml11(
            n,
            f"{value!r} is read as the {base} number {str(n)!r}, as Kubernetes does (YAML 1.1)",
            f"write {forms}, or quote it if you mean a string",
        )
    if "_" in value and _FLOAT.match(plain):
        f = _finite(value, float(plain))
        raise _Yaml11(
            f,
            f"{value!r} is read as the number {str(f)!r}, as Kubernetes does (YAML 1.1)",
            f"write {str(f)!r}, or quote it if you mean a string",
        )


def _yaml12_int(value: str) -> int | None:
    if _INT.match(value):
        return int(value)
    if _OCT.match(value):
        return int(value[2:], 8)
    if _HEX.match(value):
        return int(value[2:], 16)
    return None


class _BadScalar(ValueError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _number(value: str, n: int) -> int:
    if not -_INT64 <= n < _INT64:
        raise _BadScalar(
            f"{value[:40]!r} is out of range: Kubernetes numbers are 64-bit", "quote it to make it a string"
        )
    return n


def _finite(value: str, f: float) -> float:
    if not math.isfinite(f):
        raise _BadScalar(
            f"{value[:40]!r} is not a finite number: JSON and Kubernetes have no NaN or infinity",
            "use a finite number, or quote it to make it a string",
        )
    return f


def _scalar(value: str, tag: str | None) -> Any:
    """A scalar's value: `tag` None means plain (resolved by the YAML 1.2 core schema)."""
    if tag is None:
        # Most plain scalars are words; only these first characters can start another type.
        if not value or value[0] not in _MAYBE_SPECIAL:
            return value or None
        if value in _NULLS:
            return None
        if value in _TRUES:
            return True
        if value in _FALSES:
            return False
        if len(value) > 40 and (_INT.match(value) or _HEX.match(value) or _OCT.match(value)):
            raise _BadScalar(f"{value[:40] + '...'!r} is out of range: Kubernetes numbers are 64-bit")
        _yaml11(value)
        if _INT.match(value):
            return _number(value, int(value))
        if _FLOAT.match(value):
            return _finite(value, float(value))
        if _OCT.match(value):
            return _number(value, int(value[2:], 8))
        if _HEX.match(value):
            return _number(value, int(value[2:], 16))
        if _INF.match(value) or _NAN.match(value):
            return _finite(value, float(value.replace(".", "", 1)))
        return value
    if tag == _STR:
        return value
    short = tag.rsplit(":", 1)[-1] if tag.startswith("tag:yaml.org,2002:") else ""
    try:
        if short == "int":
            if len(value) > 40:
                raise ValueError(value)
            return _number(value, int(value, 0))
        if short == "float":
            return _finite(value, float(value))
        if short == "bool":
            if value in _TRUES or value in _FALSES:
                return value in _TRUES
            raise ValueError(value)
        if short == "null":
            return None
        if short in ("binary", "timestamp"):
            return value
    except _BadScalar:
        raise
    except ValueError as exc:
        raise _BadScalar(f"{value[:40]!r} is not a valid !!{short}") from exc
    raise _BadScalar(f"unsupported YAML tag {tag!r}")


@dataclass(slots=True)
class _Anchored:
    value: Any
    where: _Where
    size: int  # nodes once aliases are expanded
    height: int  # nesting levels once aliases are expanded (0 for a scalar)
    key: str | None  # the scalar as a mapping key; None for collections


class _Frame:
    """A mapping or sequence being composed."""

    __slots__ = (
        "anchor", "children", "explicit", "height", "is_map", "key", "key_at", "merge", "size", "value", "where",
    )

    def __init__(
        self, value: dict[str, Any] | list[Any], line: int, column: int, anchor: str | None, positions: bool
    ) -> None:
        self.value: Any = value  # a dict when is_map, else a list
        self.is_map = isinstance(value, dict)
        self.children: Any = None  # the same kind as value, with positions
        self.where: _Where = _NOWHERE
        if positions:
            self.children = {} if self.is_map else []
            self.where = (line, column, self.children)
        self.anchor = anchor
        self.size = 1
        self.height = 1
        self.key: str | None = None  # a mapping's key waiting for its value
        self.key_at = (0, 0)
        self.merge = False  # the waiting key is `<<`
        self.explicit: set[str] = set()


_NOWHERE: _Where = (0, 0, None)  # composed without positions


class _Composer:
    """Events of one YAML stream to (value, where) per document, within `limits`. Without
    `positions` every where is (0, 0, None) and no tree of them is built: the cyclic GC's scans
    of that tree made up half of a cold validation."""

    def __init__(self, limits: Limits, positions: bool = True, read_only: bool = False) -> None:
        self.limits = limits
        self.positions = positions
        self.mapping: type[dict[str, Any]] = ReadOnlyDict if read_only else dict
        self.sequence: type[list[Any]] = ReadOnlyList if read_only else list
        self.warnings: list[_ComposeError] = []  # scalars read as Kubernetes reads YAML 1.1

    def documents(self, events: Iterator[_Event]) -> Iterator[tuple[Any, _Where]]:
        # The hot loop of a cold validation (a few hundred thousand events for 10,000 objects):
        # the common cases (a plain word as a key or value, a value added to a mapping or a
        # list) are written out here rather than through _scalar, _key and _add.
        limits = self.limits
        positions = self.positions
        stack: list[_Frame] = []
        anchors: dict[str, _Anchored] = {}
        open_anchors: set[str] = set()
        root: tuple[Any, _Where] | None = None
        count = 0
        added = 0  # nodes added by aliases in this document
        numeric, words = _NUMERIC_START, _WORDS
        for e in events:
            cls = type(e)
            if cls is _Scalar:
                anchor, tag, implicit, text, mark = e.args[:5]
                if tag is None or tag == "!":
                    tag = None if implicit[0] else _STR
                top = stack[-1] if stack else None
                if top is not None and top.key is None and top.is_map:
                    line, column = mark.line + 1, mark.column + 1
                    merge = False
                    if tag is None and text and text[0] not in numeric and text not in words:
                        key = text  # a plain word
                        merge = text == _MERGE
                    else:
                        try:
                            key = _scalar(text, tag)
                        except _BadScalar as exc:
                            raise self._error(stack, line, column, str(exc), exc.hint) from exc
                        except _Yaml11:
                            key = text  # kept as written, as `80: x` is
                        if not isinstance(key, str):
                            key = text  # Kubernetes object keys are strings: `80: x` means "80"
                    if not merge and key in top.explicit:
                        top.key = key
                        raise self._error(stack, line, column, f"duplicate key {key!r} in this mapping")
                    top.key, top.merge = key, merge
                    if positions:
                        top.key_at = (line, column)
                    if anchor is not None:
                        anchors[anchor] = _Anchored(key, (line, column, None) if positions else _NOWHERE, 1, 0, key)
                    continue
                if tag is None and text and text[0] not in numeric and text not in words:
                    value: Any = text  # a plain word
                else:
                    try:
                        value = _scalar(text, tag)
                    except _BadScalar as exc:
                        raise self._error(stack, mark.line + 1, mark.column + 1, str(exc), exc.hint) from exc
                    except _Yaml11 as exc:
                        value = exc.value
                        self.warnings.append(self._error(stack, mark.line + 1, mark.column + 1, str(exc), exc.hint))
                where: _Where = (mark.line + 1, mark.column + 1, None) if positions else _NOWHERE
                if anchor is not None:
                    anchors[anchor] = _Anchored(value, where, 1, 0, text if value is None else str(value))
                if top is None:
                    root = (value, where)
                elif top.is_map and not top.merge:
                    key = top.key
                    top.size += 1
                    top.explicit.add(key)  # type: ignore[arg-type]
                    _dict_set(top.value, key, value)
                    if positions:
                        top.children[key] = (top.key_at[0], top.key_at[1], where)
                    top.key = None
                elif not top.is_map:
                    top.size += 1
                    _list_append(top.value, value)
                    if positions:
                        top.children.append(where)
                else:
                    self._add(stack, top, value, where, 1, 0)
            elif cls is _MappingStart or cls is _SequenceStart:
                anchor, mark = e.args[0], e.args[3]
                line, column = mark.line + 1, mark.column + 1
                top = stack[-1] if stack else None
                if top is not None and top.key is None and top.is_map:
                    raise self._error(stack, line, column, "a mapping key must be a plain string")
                if len(stack) >= limits.depth:
                    raise self._error(
                        stack,
                        line,
                        column,
                        f"nested more than {limits.depth} levels deep",
                        "Kubernetes objects need about 15 levels; is this file generated by mistake?",
                    )
                if anchor is not None:
                    open_anchors.add(anchor)
                value = self.mapping() if cls is _MappingStart else self.sequence()
                stack.append(_Frame(value, line, column, anchor, positions))
            elif cls is _MappingEnd or cls is _SequenceEnd:
                done = stack.pop()
                if done.anchor is not None:
                    open_anchors.discard(done.anchor)
                    anchors[done.anchor] = _Anchored(done.value, done.where, done.size, done.height, None)
                if stack:
                    self._add(stack, stack[-1], done.value, done.where, done.size, done.height)
                else:
                    root = (done.value, done.where)
            elif cls is _Alias:
                name, mark = e.args[0], e.args[1]
                line, column = mark.line + 1, mark.column + 1
                target = anchors.get(name)
                if target is None:
                    if name in open_anchors:
                        raise self._error(
                            stack,
                            line,
                            column,
                            f"alias *{name} refers to a node that contains it",
                            "a self-referencing structure has no JSON form; copy the values instead",
                        )
                    raise self._error(
                        stack, line, column, f"undefined alias *{name}", f"define the anchor &{name} before using it"
                    )
                top = stack[-1] if stack else None
                if top is not None and top.key is None and top.is_map:
                    if target.key is None:
                        raise self._error(stack, line, column, "a mapping key must be a plain string")
                    self._key(stack, top, target.key, False, line, column)
                    continue
                if target.height:
                    added += target.size
                    if added > limits.alias_nodes:
                        raise self._error(
                            stack,
                            line,
                            column,
                            f"aliases expand this document by more than {limits.alias_nodes:,} nodes",
                            "an alias to a mapping or list copies it; write the values out, or alias less",
                        )
                    if len(stack) + target.height > limits.depth:
                        raise self._error(
                            stack,
                            line,
                            column,
                            f"alias *{name} nests this document more than {limits.depth} levels deep",
                        )
                if top is None:
                    root = (target.value, target.where)
                else:
                    self._add(stack, top, target.value, target.where, target.size, target.height)
            elif cls is _DocumentStart:
                count += 1
                if count > limits.documents:
                    mark = e.args[0]
                    raise _ComposeError(
                        mark.line + 1,
                        mark.column + 1,
                        "",
                        f"more than {limits.documents:,} YAML documents in one file",
                        "split it into several files",
                    )
                anchors.clear()
                added = 0
                root = None
            elif cls is _DocumentEnd:
                if root is not None:
                    yield root
                root = None

    def _key(self, stack: list[_Frame], top: _Frame, key: str, merge: bool, line: int, column: int) -> None:
        if not merge and key in top.explicit:
            top.key = key
            raise self._error(stack, line, column, f"duplicate key {key!r} in this mapping")
        top.key, top.key_at, top.merge = key, (line, column), merge

    def _add(self, stack: list[_Frame], top: _Frame, value: Any, where: _Where, size: int, height: int) -> None:
        top.size += size
        if height >= top.height:
            top.height = height + 1
        if not top.is_map:
            _list_append(top.value, value)
            if top.children is not None:
                top.children.append(where)
            return
        key = top.key
        assert key is not None
        children: dict[str, Any] | None = top.children
        if top.merge:
            if isinstance(value, dict):
                sources = [(value, where)]
            elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
                children_of = where[2] if where[2] is not None else [where] * len(value)  # no positions
                sources = list(zip(value, children_of, strict=True))
            else:
                raise self._error(stack, where[0], where[1], "a merge key (<<) needs a mapping or a list of them")
            merged: set[str] = set()
            for src, src_where in sources:
                for k, v in src.items():
                    # Keys written in this mapping win, then the first mapping merged.
                    if k not in top.explicit and k not in merged:
                        _dict_set(top.value, k, v)
                        if children is not None:
                            children[k] = src_where[2][k]
                        merged.add(k)
        else:
            top.explicit.add(key)
            _dict_set(top.value, key, value)
            if children is not None:
                children[key] = (top.key_at[0], top.key_at[1], where)
        top.key = None
        top.merge = False

    @staticmethod
    def _error(stack: list[_Frame], line: int, column: int, message: str, hint: str = "") -> _ComposeError:
        tokens: list[str | int] = []
        for frame in stack:
            if isinstance(frame.value, list):
                tokens.append(len(frame.value))
            elif frame.key is not None:
                tokens.append(frame.key)
        return _ComposeError(line, column, "".join("/" + escape_token(t) for t in tokens), message, hint)


def _events(text: str) -> Iterator[_Event]:
    if _HAVE_C:
        parser = _CParser(text)
        get = parser.get_event
        try:
            if _LIGHT_EVENTS:
                while (event := get()) is not None:  # None after the stream's end
                    yield event
            else:  # pragma: no cover - a clib whose events could not be made light
                while (event := get()) is not None:
                    yield _light(event)
        finally:
            parser.dispose()
        return
    for event in YAML(typ="safe", pure=True).parse(text):  # pragma: no cover
        yield _light(event)


def parse_documents(
    path: str, text: str | bytes, limits: Limits = LIMITS, *, positions: bool = True, read_only: bool = False
) -> tuple[list[Document], list[Diagnostic]]:
    """Parse every document of one file; a syntax error or a limit exceeded becomes a
    diagnostic at its mark, and the documents before it are kept.

    `positions=False` composes positions only when one is asked for (the documents keep the
    text); `read_only=True` composes ReadOnlyDict and ReadOnlyList values, to be shared."""
    if len(text) > limits.file_bytes:
        return [], [
            Diagnostic(
                path,
                0,
                0,
                "",
                f"file is {len(text):,} bytes; the limit is {limits.file_bytes:,}",
                "split it into several files",
            )
        ]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw: bytes = exc.object
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - raw.rfind(b"\n", 0, exc.start)
            return [], [
                Diagnostic(path, line, column, "", f"not UTF-8 text ({exc.reason})", "save the file as UTF-8")
            ]
    docs: list[Document] = []
    lazy = None if positions else _Positions(text, limits)
    composer = _Composer(limits, positions, read_only)
    try:
        for body, where in composer.documents(_events(text)):
            docs.append(Document(path, len(docs), body, where if lazy is None else None, lazy))
    except _ComposeError as exc:
        return docs, [*_warnings(path, composer), Diagnostic(path, exc.line, exc.column, exc.ptr, str(exc), exc.hint)]
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
                _one_line(f"YAML syntax error{context}: {problem}"),
                hint="check indentation and that brackets and quotes are closed",
            )
        ]
    except ReaderError as exc:
        line, col = _line_column(text, exc.position)
        what = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        return docs, [
            Diagnostic(
                path,
                line,
                col,
                "",
                f"character {what} is not allowed in YAML ({_one_line(str(exc.reason))})",
                'write it as an escape in a double-quoted string, e.g. "\\u0007"',
            )
        ]
    except YAMLError as exc:
        return docs, [Diagnostic(path, 0, 0, "", _one_line(f"YAML error: {exc}"))]
    return docs, _warnings(path, composer)


def _warnings(path: str, composer: _Composer) -> list[Diagnostic]:
    return [
        Diagnostic(path, w.line, w.column, w.ptr, str(w), w.hint, Severity.WARNING) for w in composer.warnings
    ]


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """A parser's message as one printable line (they may span lines or quote what they read)."""
    text = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _line_column(text: str, position: int) -> tuple[int, int]:
    position = max(0, min(position, len(text)))
    return text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)


def _represent_str(representer: Any, data: str) -> Any:
    """Strings that Kubernetes would read as something else (`y`, `0644`) are quoted; ruamel
    quotes only what YAML 1.2 would."""
    try:
        plain_is_text = _scalar(data, None) == data if data else False
    except (_Yaml11, _BadScalar):
        plain_is_text = False
    if not plain_is_text:
        return representer.represent_scalar(_STR, data, style="'")
    return RoundTripRepresenter.represent_str(representer, data)


def dump_documents(bodies: list[Any], header: str = "") -> str:
    """Write plain values as a multi-document YAML file (block style, keys in given order)."""
    yaml = YAML(typ="rt")
    yaml.representer.add_representer(ReadOnlyDict, RoundTripRepresenter.represent_dict)
    yaml.representer.add_representer(ReadOnlyList, RoundTripRepresenter.represent_list)
    yaml.representer.add_representer(str, _represent_str)
    yaml.default_flow_style = False
    yaml.width = 4096  # keep long values (host keys) on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    if header:
        buf.write("".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()))
    yaml.dump_all(bodies, buf)
    return buf.getvalue()


def load_plain(text: str | bytes, path: str = "") -> Any:
    """Load one small YAML document (e.g. `gitorch.yaml`) without positions, within `LIMITS`.

    Raises ValueError naming `path:line:col` when it is not valid YAML or holds several documents."""
    docs, diags = parse_documents(path, text)
    diags = [d for d in diags if d.severity is Severity.ERROR]
    if diags:
        d = diags[0]
        where = f"{path}:{d.line}:{d.column}" if d.line else path
        raise ValueError(f"{where}: {d.message}" if where else d.message)
    if len(docs) > 1:
        raise ValueError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0].body if docs else None


_DOCUMENT_START = re.compile(r"^---(?:[ \t].*)?$", re.MULTILINE)


def edit_requests(text: str, index: int, requests: dict[str, dict[str, str]],
                  limits: dict[str, dict[str, str]]) -> str:
    """`text` (a manifest file) with document `index`'s pod template containers' requests (and
    limits) set: {container: {resource: quantity}}. A round-trip edit of that document alone,
    so comments, key order and the other documents stay as they were. ValueError when the
    document is not a workload with those containers."""
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    bounds = sorted({0, *(m.start() for m in _DOCUMENT_START.finditer(text))})
    # Documents of only comments or nothing are not documents (the parser skips them too).
    chunks = [c for c in (text[a:b] for a, b in zip(bounds, [*bounds[1:], len(text)], strict=True))
              if any(ln.strip() and not ln.lstrip().startswith("#") and not _DOCUMENT_START.match(ln)
                     for ln in c.splitlines())]
    if index >= len(chunks):
        raise ValueError(f"the file has no document {index + 1}")
    chunk = chunks[index]
    head = ""
    if chunk.startswith("---"):
        head, _, chunk = chunk.partition("\n")
        head += "\n"
    _, indent, offset = load_yaml_guess_indent(chunk)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    offset = offset or 0
    sequence = indent or 2  # ruamel guesses the sequence indent (dash included) and the dash's offset
    yaml.indent(mapping=max(sequence - offset, 2), sequence=sequence, offset=offset)
    doc = yaml.load(chunk)
    try:
        containers = doc["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError) as exc:
        raise ValueError("the document has no spec.template.spec.containers") from exc
    for c in containers:
        name = c.get("name")
        if name not in requests and name not in limits:
            continue
        if "resources" not in c or c["resources"] is None:
            c["resources"] = CommentedMap()
        res = c["resources"]
        for field_name, values in (("requests", requests.get(name) or {}), ("limits", limits.get(name) or {})):
            if not values:
                continue
            if field_name not in res or res[field_name] is None:
                res[field_name] = CommentedMap()
            for resource, quantity in values.items():
                res[field_name][resource] = quantity
    out = io.StringIO()
    yaml.dump(doc, out)
    edited = out.getvalue()
    where = text.index(chunks[index])
    return text[:where] + head + edited + text[where + len(chunks[index]):]
