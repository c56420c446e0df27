"""Mocked runs of the Pulumi program for the Kubernetes tests.

Every run goes through `copilot_fleet.render.run_program`, which sets the mocks and config afresh for that run
(its own thread and Pulumi runtime), so nothing leaks between tests or test modules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.render import ProgramRun, RecordingMocks, manifests, run_program
from copilot_fleet.target import Target, parse_target

PROJECT_DIR = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/copilot-cli:1.0.102"

# Recognisable secret values: no manifest may contain them.
GITHUB_TOKEN = "ghp_TESTSECRET_fleet_token_0001"
API_KEY = "sk-TESTSECRET-provider-key-0002"
REDIS_URL = "rediss://:TESTSECRET-redis-pw-0003@redis.example.com:6380/0"
USER_TOKENS = {"alice": "ghp_TESTSECRET_alice_0004", "bob-smith": "ghp_TESTSECRET_bob_0005",
               "carol": "ghp_TESTSECRET_carol_0006"}
ALL_SECRETS = (GITHUB_TOKEN, API_KEY, REDIS_URL, "TESTSECRET-redis-pw-0003", *USER_TOKENS.values())

# A minimal valid fleet per pattern (fleet: keys without the prefix) and which of its keys are secrets.
BASE: dict[str, tuple[dict[str, Any], set[str]]] = {
    "shared-cli": ({
        "isolation": "shared-cli", "platform": "kubernetes", "image": IMAGE, "replicas": 3,
        "namespace": "fleet-a", "githubToken": GITHUB_TOKEN, "storage": {"storageClass": "nfs-client"},
    }, {"githubToken"}),
    "shared-session": ({
        "isolation": "shared-session", "platform": "kubernetes", "image": IMAGE, "replicas": 2,
        "namespace": "fleet-b",
        "provider": {"type": "openai", "baseUrl": "https://models.example.com/v1", "apiKey": API_KEY,
                     "model": "gpt-4.1"},
        "redis": {"mode": "external", "url": REDIS_URL},
        "loadBalancer": {"serviceType": "LoadBalancer", "sessionAffinity": "ClientIP",
                         "sourceRanges": ["203.0.113.0/24"], "tls": {"terminatedBy": "the edge's TLS proxy"}},
        "storage": {"storageClass": "nfs-client"},
    }, {"provider", "redis"}),
    "per-user": ({
        "isolation": "per-user", "platform": "kubernetes", "image": IMAGE, "namespace": "fleet-c",
        "users": [{"id": u, "githubToken": t} for u, t in USER_TOKENS.items()],
        "storage": {"accessMode": "ReadWriteOnce", "size": "5Gi"},
    }, {"users"}),
}


def engine_config(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"fleet:{k}": v for k, v in values.items()}


@dataclass
class Fleet:
    """One mocked run: registrations, manifests (unmasked unless asked) and outputs."""

    run: ProgramRun
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"no {kind}/{name}; have {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    @property
    def outputs(self) -> dict[str, Any]:
        return self.run.outputs

    def target(self) -> Target:
        return parse_target(json.dumps(self.run.outputs), source="stack outputs")

    def dump(self) -> str:
        return json.dumps(self.objects, sort_keys=True)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


@pytest.fixture
def make_fleet() -> Callable[..., Fleet]:
    """make_fleet("shared-cli", replicas=1, ...) or make_fleet(values=..., secret_keys=...)."""

    def make(pattern: str | None = None, *, values: Mapping[str, Any] | None = None,
             secret_keys: set[str] | None = None, mask: bool = False, program: Any = None,
             stack: str = "test", **overrides: Any) -> Fleet:
        if values is None:
            assert pattern is not None
            base, keys = BASE[pattern]
            values = deep_merge(base, overrides)
            secret_keys = keys if secret_keys is None else secret_keys
        run = run_program(engine_config(values), {f"fleet:{k}" for k in secret_keys or ()}, stack=stack,
                          program=program)
        return Fleet(run, manifests(run, mask=mask))

    return make


@pytest.fixture
def recording_mocks() -> Iterator[RecordingMocks]:
    yield RecordingMocks()


# --- small readers of manifests (tests get them through the `kube` fixture: conftest is not importable) -------

class Kube:
    IMAGE = IMAGE
    GITHUB_TOKEN = GITHUB_TOKEN
    API_KEY = API_KEY
    REDIS_URL = REDIS_URL
    USER_TOKENS = USER_TOKENS
    ALL_SECRETS = ALL_SECRETS
    BASE = BASE
    PROJECT_DIR = PROJECT_DIR

    @staticmethod
    def engine_config(values: Mapping[str, Any]) -> dict[str, Any]:
        return engine_config(values)

    @staticmethod
    def pod_template(doc: Mapping[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "CronJob":
            return doc["spec"]["jobTemplate"]["spec"]["template"]
        return doc["spec"]["template"]

    @staticmethod
    def containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        return Kube.pod_template(doc)["spec"]["containers"]

    @staticmethod
    def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in container.get("env", [])}

    @staticmethod
    def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
        """matchLabels semantics: every selector label present with the same value."""
        return all(labels.get(k) == v for k, v in selector.items())

    @staticmethod
    def workloads(fleet: Fleet) -> list[dict[str, Any]]:
        return fleet.of_kind("StatefulSet") + fleet.of_kind("CronJob")

    @staticmethod
    def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
        return deep_merge(base, override)


@pytest.fixture
def kube() -> type[Kube]:
    return Kube
