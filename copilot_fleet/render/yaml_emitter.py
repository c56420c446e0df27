"""The manifests as YAML files: sorted keys, multi-line strings as literal blocks, byte for byte what PyYAML's
SafeDumper writes (through libyaml where that gives the same bytes, about 5 times faster)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

_MARKER = ".copilot-fleet-render"  # marks an output directory as ours, so stale files may be removed from it


def file_name(doc: Mapping[str, Any]) -> str:
    return f"{str(doc.get('kind')).lower()}-{(doc.get('metadata') or {}).get('name')}.yaml"


_RESOLVED: dict[str, str] = {}  # plain scalar -> the tag it resolves to: the same in every document


class _NeedsPythonEmitter(Exception):
    """A scalar that libyaml would write differently from PyYAML's own emitter."""


class _ManifestRepresenter:
    """Multi-line strings (e.g. a SecretProviderClass's `objects`) as literal blocks, readable in review.

    Also two speed-ups over SafeDumper that change no byte: the tag a plain scalar resolves to is remembered, and
    the plain types of a manifest become nodes without SafeRepresenter's per-value dispatch (the same nodes,
    aliases included). `libyaml_safe` (the libyaml dumper) refuses any scalar on which libyaml's emitter and
    PyYAML's differ (found by comparing them on random strings: empty keys, keys over 100 characters, anything
    but printable ASCII on one line, which they quote or fold differently), so that `to_yaml` writes that document
    with PyYAML's.
    """

    libyaml_safe = False

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        # Without path resolvers (SafeDumper has none) a scalar's implicit tag depends on its value alone.
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:  # type: ignore[attr-defined]
            return super().resolve(kind, value, implicit)  # type: ignore[misc]
        if not implicit[0]:
            return self.DEFAULT_SCALAR_TAG  # type: ignore[attr-defined] # BaseResolver.resolve's answer then
        tag = _RESOLVED.get(value)
        if tag is None:
            if len(_RESOLVED) > 100_000:
                _RESOLVED.clear()
            tag = _RESOLVED[value] = super().resolve(kind, value, implicit)  # type: ignore[misc]
        return tag

    def represent_data(self, data: Any) -> Any:
        kind = type(data)
        style = self.default_style  # type: ignore[attr-defined]
        if kind is str:
            if self.libyaml_safe and not (data.isascii() and data.isprintable()):
                raise _NeedsPythonEmitter
            return yaml.ScalarNode(_STR, data, style="|" if "\n" in data else style)
        if kind is dict or kind is list:
            seen = self.represented_objects.get(id(data))  # type: ignore[attr-defined]
            if seen is not None:
                return seen  # the same object twice in one document: an alias, as SafeRepresenter does
            self.object_keeper.append(data)  # type: ignore[attr-defined]
            value: list[Any] = []
            node = (yaml.MappingNode if kind is dict else yaml.SequenceNode)(_MAP if kind is dict else _SEQ, value)
            self.represented_objects[id(data)] = node  # type: ignore[attr-defined]
            best_style = True
            if kind is dict:
                items = list(data.items())
                if self.sort_keys:  # type: ignore[attr-defined]
                    with contextlib.suppress(TypeError):
                        items = sorted(items)
                for k, v in items:
                    if self.libyaml_safe and not (type(k) is str and 0 < len(k) <= 100):
                        raise _NeedsPythonEmitter
                    key_node, value_node = self.represent_data(k), self.represent_data(v)
                    best_style = best_style and _plain(key_node) and _plain(value_node)
                    value.append((key_node, value_node))
            else:
                for item in data:
                    item_node = self.represent_data(item)
                    best_style = best_style and _plain(item_node)
                    value.append(item_node)
            flow = self.default_flow_style  # type: ignore[attr-defined]
            node.flow_style = flow if flow is not None else best_style
            return node
        if kind is int:
            return yaml.ScalarNode(_INT, str(data), style=style)
        if kind is bool:
            return yaml.ScalarNode(_BOOL, "true" if data else "false", style=style)
        if data is None:
            return yaml.ScalarNode(_NULL, "null", style=style)
        if self.libyaml_safe and kind is not float:
            raise _NeedsPythonEmitter
        return super().represent_data(data)  # type: ignore[misc]


_STR, _INT, _BOOL, _NULL = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool",
                            "tag:yaml.org,2002:null")
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _plain(node: Any) -> bool:
    return isinstance(node, yaml.ScalarNode) and not node.style


def _represent_str(dumper: yaml.representer.SafeRepresenter, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _ManifestDumper(_ManifestRepresenter, yaml.SafeDumper):
    pass


_ManifestDumper.add_representer(str, _represent_str)
_LibyamlDumper: Any = None
if hasattr(yaml, "CSafeDumper"):  # PyYAML built with libyaml: its emitter is about 5 times faster
    class _LibyamlManifestDumper(_ManifestRepresenter, yaml.CSafeDumper):
        libyaml_safe = True

    _LibyamlManifestDumper.add_representer(str, _represent_str)
    _LibyamlDumper = _LibyamlManifestDumper


def to_yaml(doc: Mapping[str, Any]) -> str:
    """The object as YAML, keys sorted: byte for byte what PyYAML's SafeDumper writes (libyaml when that is the
    same; tests/kubernetes/test_render_speedups.py compares them)."""
    if _LibyamlDumper is not None:
        try:
            return yaml.dump(doc, Dumper=_LibyamlDumper, sort_keys=True, default_flow_style=False, width=120)
        except _NeedsPythonEmitter:
            pass
    return yaml.dump(doc, Dumper=_ManifestDumper, sort_keys=True, default_flow_style=False, width=120)


def write_manifests(objects: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One sorted YAML file per object. Stale `*.yaml` files of an earlier render into the same directory go."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / _MARKER).exists():
        for old in out_dir.glob("*.yaml"):
            old.unlink()
    (out_dir / _MARKER).write_text("written by copilot-fleet render; *.yaml here is replaced on every render\n")
    written = []
    for doc in objects:
        path = out_dir / file_name(doc)
        path.write_text(to_yaml(doc))
        written.append(path)
    return written
