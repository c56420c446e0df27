"""How stack config mistakes are worded: every key as `pulumi config set --path` spells it (`fleet:users[1].id`),
"did you mean" for a misspelt key at any depth, both bounds of a range, and keys set outside the `fleet:`
namespace that were meant for it.

The functions take the root model (`FleetSpec`) as an argument, so this module does not import the spec.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

NAMESPACE = "fleet"

Loc = Sequence[int | str]


def config_key(loc: Loc, namespace: str = NAMESPACE) -> str:
    """`("users", 1, "id")` -> `fleet:users[1].id`, the form `pulumi config set --path` takes."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"{namespace}:{text}"


def known_keys(model: type[BaseModel]) -> list[str]:
    """The keys a config object accepts, as spelled in stack config (aliases), excluded fields left out."""
    return sorted(info.alias or name for name, info in model.model_fields.items() if not info.exclude)


def close_key(key: str, known: Iterable[str]) -> str | None:
    """The known key `key` was probably meant to be: the same letters in another case, else the closest spelling."""
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation can hold: Optional, unions, Annotated and list/dict element types opened up."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def _model_of(annotation: Any, index: bool) -> type[BaseModel] | None:
    for candidate in _unwrap(annotation):
        if index and get_origin(candidate) in (list, tuple):
            candidate = get_args(candidate)[0] if get_args(candidate) else None
            found = _model_of(candidate, index=False)
            if found is not None:
                return found
        elif not index and isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The config object a location points into (`("storage",)` -> StorageSpec); None if it is not one."""
    model: type[BaseModel] | None = root
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            model = _model_of(annotation, index=True)
            annotation = model
            continue
        if model is None:
            return None
        info = _field(model, part)
        if info is None:
            return None
        annotation = info.annotation
        model = _model_of(annotation, index=False)
    return model


def field_at(root: type[BaseModel], loc: Loc) -> FieldInfo | None:
    parts = list(loc)
    while parts and isinstance(parts[-1], int):
        parts.pop()
    if not parts:
        return None
    parent = model_at(root, parts[:-1])
    return _field(parent, str(parts[-1])) if parent is not None else None


def _constraints(info: FieldInfo) -> list[Any]:
    found = list(info.metadata)
    for candidate in _unwrap_annotated(info.annotation):
        found.extend(candidate)
    return found


def _unwrap_annotated(annotation: Any) -> list[list[Any]]:
    """Metadata of every Annotated inside an annotation (`Annotated[int, Field(ge=1)] | None`)."""
    out: list[list[Any]] = []
    origin = get_origin(annotation)
    if origin is Annotated:
        args = get_args(annotation)
        meta: list[Any] = []
        for extra in args[1:]:
            meta.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
        out.append(meta)
        out.extend(_unwrap_annotated(args[0]))
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            out.extend(_unwrap_annotated(arg))
    return out


def range_text(info: FieldInfo) -> str | None:
    """`from 1 to 50`, `more than 0 and less than 1`: both bounds of a numeric field, or None without any."""
    lower: tuple[str, Any] | None = None
    upper: tuple[str, Any] | None = None
    for c in _constraints(info):
        if isinstance(c, annotated_types.Ge):
            lower = ("at least", c.ge)
        elif isinstance(c, annotated_types.Gt):
            lower = ("more than", c.gt)
        elif isinstance(c, annotated_types.Le):
            upper = ("at most", c.le)
        elif isinstance(c, annotated_types.Lt):
            upper = ("less than", c.lt)
    if lower and upper and lower[0] == "at least" and upper[0] == "at most":
        return f"from {lower[1]} to {upper[1]}"
    parts = [f"{bound[0]} {bound[1]}" for bound in (lower, upper) if bound]
    return " and ".join(parts) if parts else None


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def format_errors(root: type[BaseModel], errors: Iterable[Mapping[str, Any]],
                  is_secret: Any = lambda key: False) -> list[str]:
    """One line per pydantic error, each starting with the key in `pulumi config set --path` form.
    `is_secret(key)`: whether the value at that key must not be echoed."""
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        key = config_key(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            out.append(f"{key}: required but not set")
        elif not loc:  # a model-level check: its messages already name their keys
            out.extend(part.strip() for part in msg.split(" | "))
        elif err["type"] == "extra_forbidden":
            out.append(unknown_key(root, loc))
        else:
            if err["type"] in _RANGE_ERRORS and (info := field_at(root, loc)) is not None:
                msg = f"must be {range_text(info) or msg}"
            got = err.get("input")
            # Our own validators already quote the value ("got 'Bad_'"); a number's digits may appear in a bound.
            quoted = repr(got) in msg if isinstance(got, str) else "got " in msg
            hidden = isinstance(got, Mapping | list) or is_secret(key) or quoted
            shown = "" if hidden else f" (got {got!r})"
            out.append(f"{key}: {msg}{shown}")
    return out


def unknown_key(root: type[BaseModel], loc: Loc) -> str:
    """`fleet:storage.storageclass: unknown key (did you mean fleet:storage.storageClass?); allowed: ...`"""
    parent = model_at(root, loc[:-1])
    if parent is None:
        return f"{config_key(loc)}: unknown key"
    known = known_keys(parent)
    close = close_key(str(loc[-1]), known)
    hint = f" (did you mean {config_key([*loc[:-1], close])}?)" if close else ""
    where = f" in {config_key(loc[:-1])}" if loc[:-1] else ""
    return f"{config_key(loc)}: unknown key{hint}; allowed{where}: {', '.join(known)}"


def foreign_key_problems(root: type[BaseModel], keys: Iterable[str], project: str) -> list[str]:
    """Keys outside `fleet:` that were meant for it: every key in the project's own namespace (what
    `pulumi config set replicas 4` writes, as the program reads nothing from there), and keys of a fleet setting in a
    namespace spelt like `fleet` (`Fleet:`, `fleets:`). Provider namespaces (`kubernetes:namespace`) are left alone."""
    known = known_keys(root)
    out = []
    for full in sorted(keys):
        namespace, sep, key = full.partition(":")
        if not sep or namespace == NAMESPACE:
            continue
        fleet_key = close_key(key, known)
        looks_like_fleet = namespace != project and close_key(namespace, [NAMESPACE]) is not None
        if namespace != project and not (looks_like_fleet and fleet_key is not None):
            continue
        meant = f"fleet:{fleet_key}" if fleet_key is not None else None
        why = (f"the project's own namespace ({project}:) is not read: `pulumi config set {key} ...` writes it"
               if namespace == project else f"namespace {namespace}: is not read")
        fix = (f"set {meant} instead (pulumi config rm {full}; pulumi config set {meant} ...)" if meant else
               f"fleet settings live in the fleet: namespace (allowed: {', '.join(known)})")
        out.append(f"{full}: {why}; {fix}")
    return out
