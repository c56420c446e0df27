"""Strict schema validation of Kubernetes objects against the OpenAPI schemas kubernetes-validate bundles, with each
kind's schema loaded and compiled once (schema_check)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from copilot_fleet.errors import FleetError
from copilot_fleet.render import schema_check

DEFAULT_K8S_VERSION = "1.33"


def object_id(doc: Mapping[str, Any]) -> str:
    """`Kind/name`, how errors name an object."""
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# Custom resources the platforms create on purpose; kubernetes-validate ships schemas for built-in kinds only.
# Any other kind without a schema is an error.
CUSTOM_RESOURCES_WITHOUT_SCHEMA = frozenset({("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass")})

class UnknownKubernetesVersion(FleetError, ValueError):
    """A Kubernetes version without a bundled schema (the message names the versions there are)."""


class SchemaValidator:
    """`kubernetes_validate.validate(doc, version, strict=True)`, with each schema loaded once.

    The library re-reads a 1.4 MB definitions file on every call (about 11 ms); a per-user fleet of 1000 users has
    thousands of objects. This builds the same Draft 2020-12 validator from the same bundled schema files, once per
    kind, and reports every error of an object rather than the first.

    Each kind's schema is also compiled once into a yes/no check (`schema_check`, about 20 times faster than
    jsonschema's walk): an object it passes has no schema error; any other object goes through jsonschema, which
    gives the messages. A kind whose schema the compiler does not support is checked by jsonschema alone.
    """

    def __init__(self, version: str = DEFAULT_K8S_VERSION, strict: bool = True) -> None:
        from kubernetes_validate import utils as kv

        self._kv = kv
        latest = kv.major_minor(kv.latest_version())
        try:
            wanted = kv.Version(kv.major_minor(version.removeprefix("v")))
        except ValueError:  # not a version at all ('abc')
            wanted = None
        supported = [v for v in kv.all_versions() if wanted is not None and kv.Version(kv.major_minor(v)) <= wanted]
        if not supported or wanted is None or wanted > kv.Version(latest):
            first = kv.major_minor(kv.all_versions()[0])
            raise UnknownKubernetesVersion(f"Kubernetes version {version!r} has no bundled schema: use {first} to "
                                           f"{latest}")
        self.version = kv.major_minor(supported[-1])
        self._dir = f"v{supported[-1]}-local" + ("-strict" if strict else "")
        self._validators: dict[tuple[str, str], Any] = {}
        self._definitions: Any = None
        self._compiler: schema_check.SchemaCompiler | None = None
        self._checks: dict[tuple[str, str], schema_check.Check | None] = {}

    def _validator(self, kind: str, api_version: str) -> Any:
        import re

        import jsonschema
        from referencing import Registry, Resource

        key = (kind, api_version)
        if key not in self._validators:
            kv = self._kv
            api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            try:
                schema = kv.schema_contents(f"kubernetes-json-schema/{self._dir}/{kind.lower()}-{api}.json",
                                            self.version)
            except FileNotFoundError:
                raise kv.SchemaNotFoundError(version=self.version, kind=kind, api_version=api_version) from None
            if self._definitions is None:
                self._definitions = Resource.from_contents(
                    kv.schema_contents(f"kubernetes-json-schema/{self._dir}/_definitions.json", self.version))
            registry = self._definitions @ (Resource.from_contents(schema) @ Registry())
            self._validators[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
            self._checks[key] = self._compile(schema)
        return self._validators[key]

    def _compile(self, schema: Mapping[str, Any]) -> schema_check.Check | None:
        try:
            if self._compiler is None:
                self._compiler = schema_check.SchemaCompiler({})
                self._compiler.add(self._definitions.contents)
            return self._compiler.compile(self._compiler.add(schema))
        except schema_check.Unsupported:
            return None  # jsonschema alone for this kind

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """One line per schema error: `Kind/name: field.path: message`."""
        where = object_id(doc)
        try:
            validator = self._validator(str(doc.get("kind")), str(doc.get("apiVersion")))
        except self._kv.SchemaNotFoundError:
            if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_RESOURCES_WITHOUT_SCHEMA:
                return []
            return [f"{where}: no Kubernetes {self.version} schema for apiVersion {doc.get('apiVersion')!r} "
                    f"kind {doc.get('kind')!r}"]
        check = self._checks.get((str(doc.get("kind")), str(doc.get("apiVersion"))))
        if check is not None and check(doc):
            return []
        found = []
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            found.append(f"{where}: {field_path(err.absolute_path) or '(object)'}: {_short(err.message)}")
        return found


def field_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."
