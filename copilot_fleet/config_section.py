"""The base of every stack config object: camelCase keys, unknown keys refused, frozen values.

Shared by `copilot_fleet.spec` (the fleet's own keys) and `copilot_fleet.spec_kubernetes` (the Kubernetes keys
passed through to pods and Services), so that both read and refuse config the same way.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel


class Section(BaseModel):
    """Stack config objects: camelCase keys, unknown keys refused, numbers coerced to strings where a string is
    expected (Pulumi hands `1.0` back as a number)."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, coerce_numbers_to_str=True, frozen=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `true` as 1: `fleet:replicas: true` would deploy one replica.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (int, float) or any(a in (int, float) for a in get_args(annotation)):
                raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value
