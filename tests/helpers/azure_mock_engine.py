"""The mock engine for the Azure platform tests (the fixtures are in tests/azure/conftest.py).

Runs programs through the project's offline harness (`copilot_fleet.render.run_program`: a fresh Pulumi runtime
per run) with mocks that also answer what Azure would (`copilot_fleet.components.azure.offline`): ARM ids, names,
the Redis host, identity ids, the OIDC issuer, and the invokes (client config, kubeconfig, Redis and storage keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from copilot_fleet import render
from copilot_fleet.components.azure import offline

PROJECT_DIR = Path(__file__).resolve().parents[2]
AZURE_STACKS = ("azure-shared-cli", "azure-shared-session", "azure-per-user")


class AzureRecordingMocks(render.RecordingMocks):
    """The render's recording mocks, plus Azure's answers."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, state = super().new_resource(args)
        answer = offline.resource_state(args.typ, args.name, args.inputs)
        return answer if answer is not None else (rid, state)

    # RecordingMocks.call is annotated `tuple[dict, None]`; the SDK's mock monitor iterates the failures, so a list.
    def call(  # type: ignore[override]
            self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        result = offline.invoke_result(args.token, args.args)
        if result is None:
            raise NotImplementedError(f"no offline answer for invoke {args.token}")
        return result, []


def is_secret(value: Any) -> bool:
    return render.is_wrapped_secret(value)


def clear(value: Any) -> Any:
    """Inputs with secret wrappers removed and their values kept (for asserting on values)."""
    return render.plain(value, mask=False)


@dataclass(frozen=True)
class Run:
    """One mocked run: every registration, the outputs, which outputs are secret."""

    registrations: list[render.Registration]
    outputs: dict[str, Any]
    secret_outputs: frozenset[str]

    def of_type(self, typ: str) -> list[render.Registration]:
        return sorted((r for r in self.registrations if r.typ == typ), key=lambda r: r.name)

    def one(self, typ: str) -> render.Registration:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]

    def manifests(self, mask: bool = False) -> list[dict[str, Any]]:
        return render.manifests(render.ProgramRun(self.registrations, self.outputs, self.secret_outputs), mask)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests() if m.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.kind(kind) if m["metadata"]["name"] == name]
        assert found, f"no {kind}/{name}; have {[m['metadata']['name'] for m in self.kind(kind)]}"
        return found[0]
