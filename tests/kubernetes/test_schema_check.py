"""The compiled schema check (copilot_fleet.render.schema_check) says "valid" exactly when jsonschema finds no error.

SchemaValidator trusts the compiled check's "valid" and asks jsonschema for the messages otherwise, so a wrong
"valid" would hide a schema error. These tests mutate rendered objects of every kind we render (wrong types, nulls,
integral floats, unknown fields, removed fields, extra list items) and compare both verdicts.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet import render
from copilot_fleet.render import schema_check

VALUES: list[Any] = [None, 0, 1, -3, 1.0, 2.5, True, False, "", "x", "RuntimeDefault", "ClusterIP", "Retain", [],
                     [1], ["a"], {}, {"a": 1}, {"name": "x"}]


@pytest.fixture(scope="module")
def objects(example_project: Path, example_stack_kinds: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for stack, (platform, _) in example_stack_kinds.items():
        if platform in ("kubernetes", "azure"):
            out += render.render_stack(example_project, stack).objects
    return out


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _mutate(doc: dict[str, Any], rng: random.Random) -> None:
    path = rng.choice(list(_paths(doc))[1:])
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    op = rng.random()
    if op < 0.6:
        parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    elif op < 0.8:
        del parent[path[-1]]
    else:
        target = parent[path[-1]]
        if isinstance(target, dict):
            target[rng.choice(["bogus", "name", "type", "x-extra"])] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(target, list):
            target.append(copy.deepcopy(rng.choice([*VALUES, target[0] if target else 1])))


def test_every_kind_we_render_compiles(objects: list[dict[str, Any]]) -> None:
    validator = render.SchemaValidator()
    for doc in objects:
        assert validator.errors(doc) == []
    kinds = {(str(d["kind"]), str(d["apiVersion"])) for d in objects}
    compiled = {k for k, check in validator._checks.items() if check is not None}
    # SecretProviderClass has no bundled schema; everything else must take the fast path.
    assert kinds - compiled <= {("SecretProviderClass", "secrets-store.csi.x-k8s.io/v1")}, kinds - compiled


def test_compiled_check_agrees_with_jsonschema_on_mutated_objects(objects: list[dict[str, Any]]) -> None:
    validator = render.SchemaValidator()
    rng = random.Random(20261121)
    compared = invalid = 0
    for _ in range(2500):
        doc = copy.deepcopy(rng.choice(objects))
        for _ in range(rng.choice((1, 1, 2))):
            _mutate(doc, rng)
        key = (str(doc.get("kind")), str(doc.get("apiVersion")))
        try:
            reference = validator._validator(*key)
        except Exception:  # noqa: BLE001 - a mutated kind/apiVersion: no schema, nothing to compare
            continue
        check = validator._checks[key]
        if check is None:
            continue
        valid = not any(True for _ in reference.iter_errors(doc))
        assert check(doc) == valid, (key, doc)
        if isinstance(doc.get("metadata"), dict):  # errors() names the object from its metadata
            assert (validator.errors(doc) == []) == valid
        compared += 1
        invalid += not valid
    assert compared > 1800 and 0.2 < invalid / compared < 0.9, (compared, invalid)


def _check(schema: dict[str, Any]) -> schema_check.Check:
    compiler = schema_check.SchemaCompiler({})
    return compiler.compile(compiler.add({"$id": "https://example.com/s", **schema}))


def test_semantics_follow_jsonschema_draft_2020_12() -> None:
    integer = _check({"type": "integer"})
    assert integer(3) and integer(3.0) and not integer(3.5) and not integer(True) and not integer("3")
    number = _check({"type": ["number", "null"]})
    assert number(1) and number(1.5) and number(None) and not number(False)
    # Quantity: null matches both branches of the oneOf, so it is invalid
    quantity = _check({"oneOf": [{"type": ["string", "null"]}, {"type": ["number", "null"]}]})
    assert quantity("1Gi") and quantity(2) and not quantity(None)
    enum = _check({"type": ["string", "null"], "enum": ["a"]})
    assert enum("a") and not enum("b") and not enum(None)
    closed = _check({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False,
                     "required": ["a"]})
    assert closed({"a": "x"}) and not closed({"a": "x", "b": 1}) and not closed({}) and not closed([])
    items = _check({"type": "array", "items": {"type": "integer"}})
    assert items([1, 2]) and items([]) and not items([1, "2"])
    ref = _check({"$defs": {"n": {"type": "integer"}}, "properties": {"v": {"$ref": "#/$defs/n"}}})
    assert ref({"v": 1}) and not ref({"v": "1"}) and ref("not an object: properties do not apply")
    recursive = _check({"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}},
                                           "additionalProperties": False}}, "$ref": "#/$defs/node"})
    assert recursive({"next": {"next": {}}}) and not recursive({"next": {"other": 1}})


@pytest.mark.parametrize("schema", [
    {"minLength": 1}, {"pattern": "^a"}, {"patternProperties": {"^a": {}}}, {"allOf": [{}]},
    {"$ref": "https://elsewhere.example.com/x.json"}, {"properties": {"a": {"$id": "inner"}}},
])
def test_unsupported_schemas_fall_back_to_jsonschema(schema: dict[str, Any]) -> None:
    with pytest.raises(schema_check.Unsupported):
        _check(schema)
