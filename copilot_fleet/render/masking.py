"""Secret masking: a registration's inputs as the Kubernetes object it stands for, with every secret value (Pulumi
secret inputs, and all of a Secret's data) replaced by `<secret>` in the same shape, so a masked object still
validates. Nothing that leaves the render package is unmasked unless a caller asks (`mask=False`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi.runtime.rpc import _special_secret_sig, _special_sig_key

from copilot_fleet.render.mock_engine import ProgramRun, Registration

SECRET_MASK = "<secret>"


def is_wrapped_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(_special_sig_key) == _special_secret_sig


def _masked(value: Any) -> Any:
    """The same shape with every scalar replaced by the mask (so a masked Secret still validates)."""
    if is_wrapped_secret(value):
        return _masked(value.get("value"))
    if isinstance(value, Mapping):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return SECRET_MASK


def plain(value: Any, mask: bool = True) -> Any:
    """Inputs as a manifest: secret wrappers removed (their contents masked when `mask`), whole floats as ints."""
    if is_wrapped_secret(value):
        return _masked(value.get("value")) if mask else plain(value.get("value"), mask)
    if isinstance(value, Mapping):
        return {k: plain(v, mask) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [plain(v, mask) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_manifest(reg: Registration, mask: bool = True) -> dict[str, Any]:
    """The Kubernetes object a registration stands for (its inputs are the object: apiVersion, kind, metadata, ...)."""
    doc: dict[str, Any] = plain(reg.inputs, mask)
    if mask and doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
        # A Secret's data is secret whether or not the program marked it so.
        for key in ("data", "stringData"):
            if key in doc:
                doc[key] = _masked(doc[key])
    return doc


def _sort_key(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return (str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def manifests(run: ProgramRun, mask: bool = True) -> list[dict[str, Any]]:
    return sorted((to_manifest(r, mask) for r in run.kubernetes), key=_sort_key)


def masked_outputs(run: ProgramRun) -> dict[str, Any]:
    return {k: (_masked(v) if k in run.secret_outputs else v) for k, v in run.outputs.items()}
