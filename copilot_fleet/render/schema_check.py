"""A compiled yes/no check of an object against the Kubernetes JSON schemas: the fast path of schema validation.

`jsonschema`'s Draft 2020-12 validator walks every keyword of every subschema for every value, building a
validator object per level (about 0.8 ms for a StatefulSet); a 1000-user fleet has 6000 objects. The schemas that
kubernetes-validate bundles use a handful of keywords (`type`, `properties`, `additionalProperties`, `required`,
`items`, `enum`, `$ref`, `oneOf`; `format` only asserts with a format checker, which we do not pass), so each
kind's schema compiles here once into nested Python closures that answer one question: does jsonschema find no
error at all? Error messages still come from jsonschema: `render.SchemaValidator` asks it whenever this says no.

The closures implement each keyword exactly as jsonschema 4 does for Draft 2020-12 (same type checker: `integer`
accepts an integral float, never a bool; `enum` compares as `jsonschema._utils.equal`), and a schema with any
keyword not implemented here raises `Unsupported` at compile time, so that kind is checked by jsonschema alone.
tests/kubernetes/test_schema_check.py compares the verdicts on mutated manifests of every kind we render.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

from copilot_fleet.errors import FleetError

Check = Callable[[Any], bool]

# Keywords that never make an instance invalid here: annotations, extensions, `$defs` (a place for `$ref`s to point
# to) and `format` (jsonschema asserts formats only when given a format checker, which SchemaValidator does not pass).
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "deprecated", "readOnly",
                          "writeOnly", "format", "$schema", "$defs"})
_IMPLEMENTED = frozenset({"type", "properties", "additionalProperties", "required", "items", "enum", "$ref",
                          "oneOf"})


class Unsupported(FleetError, ValueError):
    """The schema uses something this compiler does not implement: validate with jsonschema instead."""


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Number)


_TYPES: dict[str, Check] = {
    "array": lambda x: isinstance(x, list),
    "boolean": lambda x: isinstance(x, bool),
    "integer": _is_integer,
    "null": lambda x: x is None,
    "number": _is_number,
    "object": lambda x: isinstance(x, dict),
    "string": lambda x: isinstance(x, str),
}


def _always(_: Any) -> bool:
    return True


def _never(_: Any) -> bool:
    return False


class SchemaCompiler:
    """Compiles subschemas of a set of documents (a kind's schema and the shared definitions), each once.

    `documents` maps each document's `$id` to its contents; `$ref`s resolve against the `$id` of the document they
    appear in, to a JSON pointer inside one of these documents.
    """

    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        self._documents = dict(documents)
        self._compiled: dict[tuple[str, int], Check] = {}
        self._keep: list[Any] = []  # the subschemas compiled, kept alive so their ids stay unique

    def add(self, document: Mapping[str, Any]) -> str:
        """Make a document (with its `$id`) known to `$ref`s; returns its `$id`."""
        base = document.get("$id")
        if not isinstance(base, str):
            raise Unsupported("a document without $id")
        self._documents[base] = document
        return base

    def compile(self, base: str) -> Check:
        """The check for the whole document with `$id` `base`."""
        return self._compile(self._documents[base], base, root=True)

    def _compile(self, schema: Any, base: str, root: bool = False) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, Mapping):
            raise Unsupported(f"schema is a {type(schema).__name__}")
        key = (base, id(schema))
        if key in self._compiled:
            return self._compiled[key]
        # A recursive schema refers to itself before it is compiled: hand out a forwarder until it is.
        slot: list[Check] = []
        self._compiled[key] = lambda x: slot[0](x)
        self._keep.append(schema)
        check = self._build(schema, base, root)
        slot.append(check)
        self._compiled[key] = check
        return check

    def _build(self, schema: Mapping[str, Any], base: str, root: bool) -> Check:
        for keyword in schema:
            if keyword in _IMPLEMENTED or keyword in _ANNOTATIONS or keyword.startswith("x-"):
                continue
            if keyword == "$id" and root:
                continue
            raise Unsupported(f"keyword {keyword!r}")
        checks: list[Check] = []
        if "type" in schema:
            checks.append(self._type(schema["type"]))
        if "enum" in schema:
            checks.append(self._enum(schema["enum"]))
        if "properties" in schema or "additionalProperties" in schema:
            checks.append(self._object(schema, base))
        if "required" in schema:
            required = list(schema["required"])
            checks.append(lambda x: not isinstance(x, dict) or all(r in x for r in required))
        if "items" in schema:
            checks.append(self._items(schema["items"], base))
        if "$ref" in schema:
            checks.append(self._ref(schema["$ref"], base))
        if "oneOf" in schema:
            subs = [self._compile(s, base) for s in schema["oneOf"]]
            checks.append(lambda x: sum(1 for s in subs if s(x)) == 1)
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]
        return lambda x: all(c(x) for c in checks)

    @staticmethod
    def _type(types: Any) -> Check:
        names = [types] if isinstance(types, str) else list(types)
        for name in names:
            if name not in _TYPES:
                raise Unsupported(f"type {name!r}")
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            return tests[0]
        if set(names) == {"object", "null"}:
            return lambda x: x is None or isinstance(x, dict)
        if set(names) == {"string", "null"}:
            return lambda x: x is None or isinstance(x, str)
        if set(names) == {"array", "null"}:
            return lambda x: x is None or isinstance(x, list)
        return lambda x: any(t(x) for t in tests)

    @staticmethod
    def _enum(values: Any) -> Check:
        values = list(values)
        if all(isinstance(v, str) for v in values):
            # jsonschema's equal() compares a string with == and anything else with a string is unequal.
            allowed = frozenset(values)
            return lambda x: isinstance(x, str) and x in allowed
        try:
            from jsonschema._utils import equal
        except ImportError as exc:  # a jsonschema without the helper: let jsonschema do it
            raise Unsupported("enum of non-strings") from exc
        return lambda x: any(equal(v, x) for v in values)

    def _object(self, schema: Mapping[str, Any], base: str) -> Check:
        props = {name: self._compile(sub, base) for name, sub in (schema.get("properties") or {}).items()}
        extra = schema.get("additionalProperties", True)
        if extra is True:
            extra_check: Check | None = None
        elif extra is False:
            extra_check = _never
        elif isinstance(extra, Mapping):
            extra_check = self._compile(extra, base)
        else:
            raise Unsupported(f"additionalProperties {extra!r}")

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            for name, value in x.items():
                sub = props.get(name)
                if sub is None:
                    if extra_check is not None and not extra_check(value):
                        return False
                elif not sub(value):
                    return False
            return True

        return check

    def _items(self, items: Any, base: str) -> Check:
        if items is True:
            return _always
        if items is False:
            return lambda x: not isinstance(x, list) or not x
        sub = self._compile(items, base)
        return lambda x: not isinstance(x, list) or all(sub(i) for i in x)

    def _ref(self, ref: str, base: str) -> Check:
        target, fragment = urldefrag(urljoin(base, ref))
        document = self._documents.get(target)
        if document is None:
            raise Unsupported(f"$ref to {target!r}")
        node: Any = document
        if fragment:
            if not fragment.startswith("/"):
                raise Unsupported(f"$ref fragment {fragment!r}")
            for part in fragment[1:].split("/"):
                part = unquote(part).replace("~1", "/").replace("~0", "~")
                if isinstance(node, Mapping) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise Unsupported(f"$ref {ref!r} does not resolve")
            if isinstance(node, Mapping) and "$id" in node:
                raise Unsupported(f"$ref {ref!r} into a subschema with its own $id")
        return self._compile(node, target, root=not fragment)
