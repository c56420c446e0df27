"""The Kubernetes keys users expect, passed through to the fleet's pods and Services: where the pods may run
(`nodeSelector`, `tolerations`, `affinity`), what they and the client Services carry (`podAnnotations`,
`serviceAnnotations`) and how nodes pull the images (`imagePullSecrets`, `imagePullCredentials`).

Each is checked here as the API server would check it, so that a mistake stops `pulumi up` before anything is
registered, naming the key as `pulumi config set --path` spells it (`fleet:tolerations[0].operator`), instead of
failing halfway through a deployment. The shapes are Kubernetes' own (camelCase, as in a pod spec).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator

from copilot_fleet.config_section import Section

# Our own annotations and labels: the pod template's secrets checksum rolls the pods when a credential changes.
RESERVED_PREFIX = "copilot-fleet/"
# The API server refuses an object whose annotations are larger than this, all together.
MAX_ANNOTATION_BYTES = 256 * 1024

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a label or annotation key (`[prefix/]name`), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return (f"{key!r}: the part before '/' must be a DNS subdomain (lowercase letters, digits, '-' and '.', "
                "such as example.com)")
    if not _NAME.match(name):
        return (f"{key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter "
                "or digit")
    return None


def _label_value_problem(value: str) -> str | None:
    if _LABEL_VALUE.match(value):
        return None
    return (f"{value!r} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with "
            "a letter or digit")


def _check_qualified_name(key: str) -> str:
    if (problem := qualified_name_problem(key)) is not None:
        raise ValueError(problem)
    return key


def _check_label_value(value: str) -> str:
    if (problem := _label_value_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _check_object_name(name: str) -> str:
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        raise ValueError(f"{name!r} is not a Kubernetes object name: lowercase letters, digits, '-' and '.', "
                         "starting and ending with a letter or digit, at most 253 characters")
    return name


def _check_dns_label(name: str) -> str:
    if not _DNS_LABEL.match(name):
        raise ValueError(f"{name!r} is not a namespace name: lowercase letters, digits and '-', at most 63")
    return name


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    problems = [p for key, value in labels.items()
                for p in (qualified_name_problem(key), _label_value_problem(value)) if p is not None]
    if problems:
        raise ValueError("; ".join(problems))
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    problems = [p for key in annotations if (p := qualified_name_problem(key)) is not None]
    ours = sorted(key for key in annotations if key.startswith(RESERVED_PREFIX))
    if ours:
        problems.append(f"{', '.join(map(repr, ours))}: keys under {RESERVED_PREFIX} are copilot-fleet's own (the "
                        "pod template's copilot-fleet/secrets-checksum rolls the pods when a credential changes)")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATION_BYTES:
        problems.append(f"{size} bytes in all; the API server takes at most {MAX_ANNOTATION_BYTES}")
    if problems:
        raise ValueError("; ".join(problems))
    return annotations


QualifiedName = Annotated[str, AfterValidator(_check_qualified_name)]
LabelValue = Annotated[str, AfterValidator(_check_label_value)]
ObjectName = Annotated[str, AfterValidator(_check_object_name)]
NamespaceName = Annotated[str, AfterValidator(_check_dns_label)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(_check_annotations)]


# --- tolerations ---------------------------------------------------------------------------------------------------

class Toleration(Section):
    """A pod toleration, as in a pod spec."""

    key: QualifiedName | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists matches every value of the key: leave value out (or use Equal)")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists (it then tolerates every taint)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        return self


# --- affinity ------------------------------------------------------------------------------------------------------

class NodeSelectorRequirement(Section):
    key: QualifiedName
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_fit_operator(self) -> NodeSelectorRequirement:
        values = self.values or []
        if self.operator in ("In", "NotIn") and not values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and values:
            raise ValueError(f"operator {self.operator} takes no values")
        if self.operator in ("Gt", "Lt") and (len(values) != 1 or not re.fullmatch(r"-?[0-9]+", values[0])):
            raise ValueError(f"operator {self.operator} takes exactly one value, an integer")
        return self


class NodeFieldRequirement(Section):
    """matchFields: the API supports the node's name only."""

    key: Literal["metadata.name"]
    operator: Literal["In", "NotIn"]
    values: list[str] = Field(min_length=1, max_length=1)


class NodeSelectorTerm(Section):
    match_expressions: list[NodeSelectorRequirement] | None = None
    match_fields: list[NodeFieldRequirement] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> NodeSelectorTerm:
        if not self.match_expressions and not self.match_fields:
            raise ValueError("a node selector term needs matchExpressions or matchFields")
        return self


class NodeSelector(Section):
    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1)


class PreferredSchedulingTerm(Section):
    weight: Annotated[int, Field(ge=1, le=100)]
    preference: NodeSelectorTerm


class NodeAffinity(Section):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = None


class LabelSelectorRequirement(Section):
    key: QualifiedName
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Section):
    match_labels: Labels | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class PodAffinityTerm(Section):
    label_selector: LabelSelector | None = None
    namespaces: list[NamespaceName] | None = None
    namespace_selector: LabelSelector | None = None
    topology_key: QualifiedName


class WeightedPodAffinityTerm(Section):
    weight: Annotated[int, Field(ge=1, le=100)]
    pod_affinity_term: PodAffinityTerm


class PodAffinity(Section):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = None
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = None


class Affinity(Section):
    """A pod's affinity, as in a pod spec (the fields of Kubernetes 1.27)."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None


# --- image pulls ---------------------------------------------------------------------------------------------------

DOCKER_HUB = "docker.io"
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# The key `docker login` writes for Docker Hub, which the kubelet's keyring understands.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_REGISTRY_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


def _check_registry_host(server: str) -> str:
    if not _REGISTRY_HOST.match(server):
        raise ValueError(f"expected a registry host such as registry.example.com or registry.example.com:5000, "
                         f"without a scheme or a path, got {server!r}")
    return server.lower()


RegistryHost = Annotated[str, AfterValidator(_check_registry_host)]


def registry_of(image: str) -> str:
    """The registry an image reference pulls from: its first component when that is a host (it has a '.' or a ':',
    or is localhost), else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return DOCKER_HUB if first.lower() in _DOCKER_HUB_NAMES else first.lower()
    return DOCKER_HUB


def same_registry(server: str, image: str) -> bool:
    wanted = DOCKER_HUB if server in _DOCKER_HUB_NAMES else server
    return registry_of(image) == wanted


def config_key_for(server: str) -> str:
    """The key of the server in a .dockerconfigjson."""
    return DOCKER_HUB_CONFIG_KEY if server in _DOCKER_HUB_NAMES else server


class ImagePullCredentials(Section):
    """A private registry's login: the stack turns it into a kubernetes.io/dockerconfigjson Secret that every pod of
    the fleet names in imagePullSecrets."""

    server: RegistryHost
    username: Annotated[str, Field(min_length=1, max_length=256)]
    password: SecretStr

