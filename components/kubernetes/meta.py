"""Names, labels and cluster DNS addresses of the fleet's Kubernetes objects: plain functions of the topology.

Every object gets an explicit name (mocks and renders do no auto-naming, and stable names are what the target's
addresses are built from) in `spec.namespace`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from copilot_fleet.spec import FleetSpec
from copilot_fleet.topology import CliGroup

PART_OF = "copilot-fleet"
MANAGED_BY = "pulumi"

# Label keys of our own, beside the app.kubernetes.io/* recommended ones.
GROUP_LABEL = "copilot-fleet/group"
USER_LABEL = "copilot-fleet/user"

# Component names (app.kubernetes.io/component).
CLI = "cli"
LEASE_STORE = "lease-store"
JANITOR = "janitor"

HEADLESS_SERVICE = "copilot-cli-headless"  # governs every CLI StatefulSet of the fleet: per-pod DNS names
SERVICE_ACCOUNT = "copilot-cli"
REDIS = "copilot-redis"
REDIS_PORT = 6379
SHARED_JANITOR = "copilot-session-janitor"
DEFAULT_DENY_POLICY = "copilot-fleet-default-deny"

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


def label_value(value: str) -> str:
    """A valid label value (at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = _LABEL_VALUE_BAD.sub("-", value)[:63]
    return cleaned.strip("._-") or "default"


@dataclass(frozen=True)
class FleetMeta:
    """Labels and names for one fleet (one stack)."""

    spec: FleetSpec

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @cached_property
    def users_with_token(self) -> frozenset[str]:
        """Users who brought their own GitHub token (a set: per-user fleets have thousands of users)."""
        return frozenset(u.id for u in self.spec.users if u.github_token is not None)

    @property
    def instance(self) -> str:
        return label_value(self.spec.stack or self.spec.namespace)

    def selector(self, component: str, group: CliGroup | None = None) -> dict[str, str]:
        """The stable labels a selector may match: never change them on a live fleet."""
        labels = {
            "app.kubernetes.io/name": _APP_NAMES[component],
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/component": component,
        }
        if group is not None:
            labels[GROUP_LABEL] = group.name
            if group.user is not None:
                labels[USER_LABEL] = group.user
        return labels

    def labels(self, component: str | None = None, group: CliGroup | None = None) -> dict[str, str]:
        """Every label of an object: the selector labels plus part-of and managed-by."""
        base = self.selector(component, group) if component else {"app.kubernetes.io/instance": self.instance}
        return {**base, "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": MANAGED_BY}

    def fleet_pods(self) -> dict[str, str]:
        """Matches every pod of this fleet (CLI servers, Redis, janitors): the default-deny policy's selector."""
        return {"app.kubernetes.io/instance": self.instance, "app.kubernetes.io/part-of": PART_OF}

    def metadata(self, name: str, component: str | None = None, group: CliGroup | None = None,
                 namespaced: bool = True) -> dict[str, object]:
        meta: dict[str, object] = {"name": name, "labels": self.labels(component, group)}
        if namespaced:
            meta["namespace"] = self.namespace
        return meta

    # --- per-group names ---------------------------------------------------------------------------------------

    @staticmethod
    def credentials_secret(group: CliGroup) -> str:
        return f"{group.name}-credentials"

    @staticmethod
    def ingress_policy(group: CliGroup) -> str:
        return f"{group.name}-ingress"

    @staticmethod
    def janitor(group: CliGroup) -> str:
        # CronJob names stay within 52 characters (the Job controller appends 11); user ids have at most 40.
        return SHARED_JANITOR if group.user is None else f"janitor-{group.user}"

    # --- cluster DNS ---------------------------------------------------------------------------------------------

    def service_address(self, service: str, port: int) -> str:
        return f"{service}.{self.namespace}.svc.cluster.local:{port}"

    def pod_address(self, pod: str, port: int) -> str:
        """A StatefulSet pod's own DNS name through the governing headless Service."""
        return f"{pod}.{HEADLESS_SERVICE}.{self.namespace}.svc.cluster.local:{port}"

    def group_service_address(self, group: CliGroup) -> str:
        return self.service_address(group.name, self.spec.port)

    def replica_addresses(self, group: CliGroup) -> list[str]:
        return [self.pod_address(pod, self.spec.port) for pod in group.replica_names()]


_APP_NAMES = {CLI: "copilot-cli", LEASE_STORE: "redis", JANITOR: "session-janitor"}
