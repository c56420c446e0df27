"""Offline render: run the Pulumi program under the SDK's mock engine and turn what it registers into validated
Kubernetes manifests, without the Pulumi CLI or a cluster (`copilot-fleet render`).

- `render_stack(project_dir, stack)` reads `stacks/Pulumi.<stack>.yaml`, runs the program, rebuilds each Kubernetes
  object, masks every secret value and validates each object strictly against the Kubernetes OpenAPI schema;
  `write_manifests` writes them as YAML.
- `run_program(config, secret_keys, stack=...)` runs the program alone and returns every registration and the
  resolved stack outputs (the Azure and Kubernetes tests use it).

One job per module: mock_engine (the program under Pulumi's mocks; the only code on private SDK functions),
masking (secret values out of manifests and outputs), schema and schema_check (strict validation), yaml_emitter
(the files). This module puts them together and names the public surface (`__all__`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copilot_fleet.render.masking import SECRET_MASK, is_wrapped_secret, manifests, masked_outputs, plain
from copilot_fleet.render.mock_engine import (
    PROJECT,
    ProgramRun,
    RecordingMocks,
    Registration,
    fewer_collections,
    run_program,
)
from copilot_fleet.render.schema import DEFAULT_K8S_VERSION, SchemaValidator, UnknownKubernetesVersion, object_id
from copilot_fleet.render.yaml_emitter import to_yaml, write_manifests
from copilot_fleet.stackfile import read_stack_config

__all__ = [
    "DEFAULT_K8S_VERSION", "SECRET_MASK", "ProgramRun", "RecordingMocks", "Registration", "RenderResult",
    "SchemaValidator", "UnknownKubernetesVersion", "fewer_collections", "is_wrapped_secret", "manifests",
    "masked_outputs", "object_id", "plain", "render_config", "render_stack", "run_program", "stack_config",
    "to_yaml", "write_manifests",
]


@dataclass
class RenderResult:
    """Masked manifests (sorted), masked target outputs, and one line per schema error (empty: all valid)."""

    stack: str
    k8s_version: str
    objects: list[dict[str, Any]]
    outputs: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    registrations: int = 0  # resources the program registered (every kind, components included)

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.objects:
            if o.get("kind") == kind and o["metadata"].get("name") == name:
                return o
        raise KeyError(f"no {kind}/{name} in the render of {self.stack}")

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(str(o.get("kind")) for o in self.objects).items()))


def stack_config(project_dir: Path, stack: str) -> tuple[dict[str, Any], set[str], str]:
    """A stack file's config, its secret keys, and the project name from Pulumi.yaml."""
    values, secret = read_stack_config(project_dir, stack)
    meta = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    return values, secret, str(meta.get("name") or PROJECT)


def render_stack(project_dir: Path | str, stack: str, k8s_version: str = DEFAULT_K8S_VERSION,
                 collect: bool = True) -> RenderResult:
    """Render one stack file offline. Raises ConfigError for invalid config, StackNotFound for a missing stack."""
    project_dir = Path(project_dir)
    validator = SchemaValidator(k8s_version)  # a bad version fails before the program runs
    values, secret, project = stack_config(project_dir, stack)
    return render_config(values, secret, stack=stack, project=project, validator=validator, collect=collect)


def render_config(config: Mapping[str, Any], secret_keys: Iterable[str], *, stack: str, project: str = PROJECT,
                  validator: SchemaValidator | None = None, collect: bool = True,
                  timings: dict[str, float] | None = None) -> RenderResult:
    """Render a stack's config (`namespace:key -> value`, as `stack_config` reads it): run the program as a
    preview, rebuild the masked manifests, validate each. `collect`: see `run_program`. `timings`, if given,
    receives the seconds of each step (`program`, `manifests`, `validation`) and the program's CPU seconds
    (`program_cpu`; benchmarks/render_scaling.py)."""
    validator = validator or SchemaValidator()
    clock, cpu = time.perf_counter(), time.process_time()
    run = run_program(config, secret_keys, stack=stack, project=project, preview=True,  # a render is a preview
                      collect=collect)
    steps = {"program": time.perf_counter() - clock, "program_cpu": time.process_time() - cpu}
    with fewer_collections(collect=False):  # building dicts: nothing cyclic to free
        clock = time.perf_counter()
        objects = manifests(run)
        steps["manifests"] = time.perf_counter() - clock
        clock = time.perf_counter()
        errors = [e for doc in objects for e in validator.errors(doc)]
        steps["validation"] = time.perf_counter() - clock
    if timings is not None:
        timings.update(steps)
    return RenderResult(stack=stack, k8s_version=validator.version, objects=objects,
                        outputs=masked_outputs(run), errors=errors, registrations=len(run.registrations))
