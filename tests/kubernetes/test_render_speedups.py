"""The render's speed-ups change no byte: the mock monitor's input reader against the SDK's deserialiser, and the
manifest YAML writer (libyaml, remembered scalar tags, a direct representer) against PyYAML's pure-Python dumper."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi.runtime import rpc

from copilot_fleet import render
from copilot_fleet.render import mock_engine, yaml_emitter

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _struct(value: dict[str, Any]) -> Any:
    return asyncio.run(rpc.serialize_properties(value, {}))


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types, and dictionaries in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("inputs", [
    {"metadata": {"name": "x", "labels": {"b": "1", "a": "2"}}, "spec": {"replicas": 3, "ratio": 0.5,
                                                                          "on": True, "off": False}},
    {"list": [1, None, "a", [], {}], "empty": {}, "none": None, "nested": {"n": None, "deeper": [{"k": None}]}},
    {"stringData": rpc.wrap_rpc_secret({"token": "s3cret"}), "kind": "Secret"},
    {"outer": {"inner": rpc.wrap_rpc_secret("s3cret"), "plain": "p"}},
    {"unknown": rpc.UNKNOWN, "other": "x"},
    {"list": ["a", rpc.wrap_rpc_secret("b")]},
])
def test_monitor_reads_inputs_as_the_sdk_does(inputs: dict[str, Any]) -> None:
    struct = _struct(inputs)
    assert _same(mock_engine.deserialize_inputs(struct), rpc.deserialize_properties(struct))


def _reference_yaml(doc: Any) -> str:
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, yaml_emitter._represent_str)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=True, default_flow_style=False, width=120)


def test_manifest_yaml_is_pyyamls_byte_for_byte(example_project: Path,
                                                example_stack_kinds: dict[str, tuple[str, str]]) -> None:
    docs: list[Any] = []
    for stack, (platform, _) in example_stack_kinds.items():
        if platform in ("kubernetes", "azure"):
            values, secret, project = render.stack_config(example_project, stack)
            run = render.run_program(values, secret, stack=stack, project=project, preview=True)
            docs += render.manifests(run) + render.manifests(run, mask=False)
    shared = {"a": 1}
    docs.append({
        "strings": ["", "true", "True", "yes", "no", "null", "~", "1", "1.0", "0x1F", "1e3", "-", ":", "a: b", "#x",
                    "*", "&a", "!t", "@", "`", "'q'", '"q"', " lead", "trail ", "tab\there", "ünïcödé", "\u2028",
                    "line\nbreak", "trailing newline\n", "x" * 300, " ".join(["word"] * 60), "2026-11-21",
                    "12:30:00", "=", "<<", "?", "%", "{a}", "[a]", "a,b", "0.0.0.0/0"],
        "numbers": [0, -1, 10**20, 1.5, 2.0, float("inf"), -0.0],
        "flags": [True, False, None],
        "keys": {"": 1, "true": 2, "1": 3, "b": {}, "a": []},
        "aliases": [shared, shared],
        "tuple": (1, 2),
    })
    docs.append({"aliases": [shared, shared], "plain": "ascii only", "n": 1.5})  # libyaml's emitter
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + [" "] * 8 + ["\n", "\t", " \n", "\u00e9", "\u2028", "\x85"]
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 40, 99, 100, 101, 127, 128, 300))))
        docs.append({"value": text, "list": [text], "keys": {text: 1, "k": {text: [text]}}})
    for doc in docs:
        assert render.to_yaml(doc) == _reference_yaml(doc), doc


def test_a_render_left_to_the_collector_is_the_same_render() -> None:
    values, secret, project = render.stack_config(PROJECT_DIR, "k8s-per-user")
    timings: dict[str, float] = {}
    kept = render.render_config(values, secret, stack="k8s-per-user", project=project, collect=False,
                                timings=timings)
    assert kept == render.render_stack(PROJECT_DIR, "k8s-per-user")
    assert set(timings) == {"program", "program_cpu", "manifests", "validation"}
    assert kept.registrations > len(kept.objects)  # components and generated tokens too
