"""A JSON Schema (draft 2020-12) compiled to Python: whether a document is valid, fast and exactly.

Purely computational, no side effects. jsonschema walks a schema anew for every document,
which made up most of a cold validation; a compiled check answers "valid?" about ten times
faster. It decides validity only: validation.py asks it first and lets jsonschema explain
what is wrong with the few documents it refuses, so diagnostics stay jsonschema's. It must
therefore agree with jsonschema on every document (tests/test_schema_fastpath.py compares
them on the examples and thousands of mutations of them); a schema using a keyword it does
not implement is not compiled, and jsonschema alone checks that kind.
"""

from __future__ import annotations

import itertools
import json
import numbers
import re
from collections.abc import Callable, Mapping, Sequence, Set
from functools import cache
from typing import Any

Check = Callable[[Any], bool]


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not implement."""


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern with ECMA-262's `$`, the end of the text: Python's `$` also
    matches before a final newline, which would let `name: "web\\n"` pass as a DNS name."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            ch = r"\Z"
        out.append(ch)
        i += 1
    return re.compile("".join(out))


def pattern_matches(pattern: str, instance: str, max_length: Any) -> bool:
    """gitorch's `pattern`: ECMA's `$`, and a string over its schema's maxLength is left to
    maxLength to report, so a regex never runs on megabytes of text."""
    if isinstance(max_length, int) and len(instance) > max_length:
        return True
    return ecma_regex(pattern).search(instance) is not None


# --- jsonschema's equality (jsonschema._utils), which keeps True apart from 1 -------------


_TRUE, _FALSE = object(), object()


def _unbool(value: Any) -> Any:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    return value


def equal(one: Any, two: Any) -> bool:
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(equal(i, j) for i, j in zip(one, two, strict=True))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(k in two and equal(v, two[k]) for k, v in one.items())
    return bool(_unbool(one) == _unbool(two))


def unique(items: list[Any]) -> bool:
    """jsonschema's `uniq`, step for step (sorted neighbours, else pairwise)."""
    if all(isinstance(i, str) for i in items):
        return len(set(items)) == len(items)
    try:
        ordered = sorted(_unbool(i) for i in items)
        return not any(equal(i, j) for i, j in itertools.pairwise(ordered))
    except (NotImplementedError, TypeError):
        seen: list[Any] = []
        for e in items:
            e = _unbool(e)
            if any(equal(i, e) for i in seen):
                return False
            seen.append(e)
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _in_enum(value: Any, strings: frozenset[str], options: tuple[Any, ...]) -> bool:
    if isinstance(value, str):
        return value in strings  # a string equals only a string
    return any(equal(o, value) for o in options)


_TYPES = {
    "object": "isinstance(x, dict)",
    "array": "isinstance(x, list)",
    "string": "isinstance(x, str)",
    "boolean": "isinstance(x, bool)",
    "null": "x is None",
    # draft 6 on: 1.0 is an integer; bool is never a number
    "integer": "(isinstance(x, int) and not isinstance(x, bool) or isinstance(x, float) and x.is_integer())",
    "number": "_is_number(x)",
}
# Keywords that assert something about a document; the rest (title, description, x-hint,
# default, $id, $defs, then/else without if, ...) are annotations jsonschema ignores too.
_SUPPORTED = frozenset(
    {
        "type", "const", "enum", "allOf", "anyOf", "oneOf", "not", "if",
        "properties", "additionalProperties", "patternProperties", "required", "propertyNames",
        "minProperties", "maxProperties", "dependentSchemas", "dependentRequired",
        "items", "minItems", "maxItems", "uniqueItems",
        "minLength", "maxLength", "pattern",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip


class _Compiler:
    """Writes one Python function per distinct subschema; identical subschemas (the same
    definition inlined in several kinds) share one function."""

    def __init__(self, keywords: Set[str]) -> None:
        self.keywords = keywords  # what the validator class asserts on (its VALIDATORS)
        self.namespace: dict[str, Any] = {
            "_equal": equal,
            "_unique": unique,
            "_is_number": _is_number,
            "_in_enum": _in_enum,
            "_pattern": pattern_matches,
            "_search": re.search,
        }
        self.constants: dict[str, str] = {}
        self.functions: dict[str, str] = {}  # body -> name
        self.tables: dict[str, str] = {}  # property table -> name
        self.source: list[str] = ["def _true(x):\n    return True\n", "def _false(x):\n    return False\n"]

    def const(self, value: Any) -> str:
        key = json.dumps([type(value).__name__, value], sort_keys=True, default=repr)
        name = self.constants.get(key)
        if name is None:
            name = self.constants[key] = f"c{len(self.constants)}"
            self.namespace[name] = value
        return name

    def function(self, schema: Any) -> str:
        if schema is True:
            return "_true"
        if schema is False:
            return "_false"
        if not isinstance(schema, dict):
            raise Unsupported(f"a schema must be an object or a boolean, not {type(schema).__name__}")
        unknown = sorted(k for k in schema if k in self.keywords and k not in _SUPPORTED)
        if unknown:
            raise Unsupported(f"keyword {unknown[0]!r}")
        lines = self._type(schema) + self._object(schema) + self._array(schema)
        lines += self._string(schema) + self._number(schema) + self._any(schema)
        body = "".join(f"    {line}\n" for line in lines) + "    return True\n"
        name = self.functions.get(body)
        if name is None:
            name = self.functions[body] = f"f{len(self.functions)}"
            self.source.append(f"def {name}(x):\n{body}")
        return name

    def _type(self, schema: dict[str, Any]) -> list[str]:
        t = schema.get("type")
        if t is None:
            return []
        names = [t] if isinstance(t, str) else t
        if not isinstance(names, list) or any(n not in _TYPES for n in names):
            raise Unsupported(f"type {t!r}")
        return [f"if not ({' or '.join(_TYPES[n] for n in names)}): return False"] if names else ["return False"]

    def _object(self, schema: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for word, op in (("minProperties", "<"), ("maxProperties", ">")):
            if word in schema:
                out.append(f"if len(x) {op} {self.const(schema[word])}: return False")
        if "required" in schema:
            out.append(f"for r in {self.const(tuple(schema['required']))}:")
            out.append("    if r not in x: return False")
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        additional = schema.get("additionalProperties", True)
        if not isinstance(props, dict) or not isinstance(patterns, dict):
            raise Unsupported("properties")
        if props or additional is not True:
            checks = {k: self.function(v) for k, v in props.items()}
            out.append("for k, v in x.items():")
            out.append(f"    s = {self.const_functions(checks)}.get(k)")
            out.append("    if s is not None:")
            out.append("        if not s(v): return False")
            if additional is not True:
                out.append("        continue")
                if patterns:  # as jsonschema finds "additional" properties: one joined regex
                    out.append(f"    if _search({self.const('|'.join(patterns))}, k): continue")
                out.append(f"    if not {self.function(additional)}(v): return False")
        for pattern, sub in patterns.items():
            out.append("for k, v in x.items():")
            out.append(f"    if _search({self.const(pattern)}, k) and not {self.function(sub)}(v): return False")
        if "propertyNames" in schema:
            out.append("for k in x:")
            out.append(f"    if not {self.function(schema['propertyNames'])}(k): return False")
        for prop, sub in schema.get("dependentSchemas", {}).items():
            out.append(f"if {self.const(prop)} in x and not {self.function(sub)}(x): return False")
        for prop, needs in schema.get("dependentRequired", {}).items():
            out.append(f"if {self.const(prop)} in x:")
            out.append(f"    for r in {self.const(tuple(needs))}:")
            out.append("        if r not in x: return False")
        return _when("isinstance(x, dict)", out)

    def const_functions(self, checks: dict[str, str]) -> str:
        """A constant mapping of property names to their compiled functions (bound later)."""
        text = f"{{{', '.join(f'{self.const(k)}: {f}' for k, f in checks.items())}}}"
        name = self.tables.get(text)
        if name is None:
            name = self.tables[text] = f"p{len(self.tables)}"
            self.source.append(f"{name} = {text}\n")
        return name

    def _array(self, schema: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for word, op in (("minItems", "<"), ("maxItems", ">")):
            if word in schema:
                out.append(f"if len(x) {op} {self.const(schema[word])}: return False")
        if "items" in schema:
            if schema["items"] is False:
                out.append("if x: return False")
            elif schema["items"] is not True:
                out.append("for v in x:")
                out.append(f"    if not {self.function(schema['items'])}(v): return False")
        if schema.get("uniqueItems"):
            out.append("if not _unique(x): return False")
        return _when("isinstance(x, list)", out)

    def _string(self, schema: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for word, op in (("minLength", "<"), ("maxLength", ">")):
            if word in schema:
                out.append(f"if len(x) {op} {self.const(schema[word])}: return False")
        if "pattern" in schema:
            ecma_regex(schema["pattern"])  # a bad pattern fails here, once, not per document
            limit = self.const(schema.get("maxLength"))
            out.append(f"if not _pattern({self.const(schema['pattern'])}, x, {limit}): return False")
        return _when("isinstance(x, str)", out)

    def _number(self, schema: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for word, op in (("minimum", "<"), ("maximum", ">"), ("exclusiveMinimum", "<="), ("exclusiveMaximum", ">=")):
            if word in schema:
                out.append(f"if x {op} {self.const(schema[word])}: return False")
        return _when("_is_number(x)", out)

    def _any(self, schema: dict[str, Any]) -> list[str]:
        out: list[str] = []
        if "const" in schema:
            out.append(f"if not _equal(x, {self.const(schema['const'])}): return False")
        if "enum" in schema:
            options = list(schema["enum"])
            strings = frozenset(o for o in options if isinstance(o, str))
            out.append(f"if not _in_enum(x, {self.const(strings)}, {self.const(tuple(options))}): return False")
        for sub in schema.get("allOf", []):
            out.append(f"if not {self.function(sub)}(x): return False")
        if "anyOf" in schema:
            out.append(f"if not ({' or '.join(f'{self.function(s)}(x)' for s in schema['anyOf'])}): return False")
        if "oneOf" in schema:
            calls = " + ".join(f"bool({self.function(s)}(x))" for s in schema["oneOf"]) or "0"
            out.append(f"if {calls} != 1: return False")
        if "not" in schema:
            out.append(f"if {self.function(schema['not'])}(x): return False")
        if "if" in schema:
            out.append(f"if {self.function(schema['if'])}(x):")
            out.append(f"    if not {self.function(schema.get('then', True))}(x): return False")
            out.append(f"elif not {self.function(schema.get('else', True))}(x): return False")
        return out


def _when(condition: str, lines: list[str]) -> list[str]:
    return [f"if {condition}:", *(f"    {line}" for line in lines)] if lines else []


def compile_schemas(schemas: Mapping[str, Any], keywords: Set[str]) -> dict[str, Check]:
    """One exact validity check per schema that uses only implemented keywords; `keywords`
    are those the validator class asserts on (any other key is an annotation)."""
    compiler = _Compiler(keywords)
    names: dict[str, str] = {}
    for key, schema in schemas.items():
        try:
            names[key] = compiler.function(schema)
        except (Unsupported, re.error, TypeError, ValueError):
            continue  # jsonschema alone checks this one
    namespace = dict(compiler.namespace)
    exec(compile("".join(compiler.source), "<gitorch compiled schemas>", "exec"), namespace)
    return {key: namespace[name] for key, name in names.items()}
