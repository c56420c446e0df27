"""A name from stack config ends up in paths, supervisord program names, Unix user names and Kubernetes objects.
The checks anchored with `$`, which also matches before a final line break: `alice\n` passed as a user id (its
token file `secrets/token-alice\n`, its program `[program:copilot-user-alice\n-0]`, a supervisord.conf that no
longer parses)."""

from __future__ import annotations

from typing import Any

import pytest

from copilot_fleet.spec import ConfigError, RawConfig, load_spec


def _spec(**values: Any) -> Any:
    return load_spec(RawConfig(values={"platform": "local", **values}, secret_keys=frozenset(), stack="t"))


@pytest.mark.parametrize("values", [
    {"isolation": "per-user", "users": [{"id": "alice\n"}]},
    {"isolation": "shared-cli", "namespace": "fleet\n"},
], ids=["user id", "namespace"])
def test_a_name_with_a_trailing_line_break_is_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        _spec(**values)


def test_the_same_names_without_it_pass() -> None:
    assert _spec(isolation="per-user", users=[{"id": "alice"}]).users[0].id == "alice"
    _spec(isolation="shared-cli", namespace="fleet")
