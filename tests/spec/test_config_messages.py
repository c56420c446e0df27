"""Config mistakes are refused with a message a user can act on: the key as `pulumi config set --path` spells it,
the key they meant, both bounds of a range; and a fleet setting set outside `fleet:` is refused, not ignored."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from copilot_fleet import cli, render
from copilot_fleet.spec import ConfigError, RawConfig, load_spec
from copilot_fleet.stackfile import load_stack_spec

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"isolation": "shared-cli", "platform": "local"}


def problems(values: Mapping[str, object], other_keys: frozenset[str] = frozenset(),
             project: str = "copilot-fleet") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_spec(RawConfig(values=values, stack="t", other_keys=other_keys, project=project))
    return info.value.problems


def project_with(tmp_path: Path, config: dict[str, object] | str) -> Path:
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks").mkdir()
    text = config if isinstance(config, str) else yaml.safe_dump({"config": config})
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text(text)
    return tmp_path


def test_list_items_are_named_as_pulumi_config_set_path_takes_them() -> None:
    (line,) = problems({"isolation": "per-user", "platform": "local", "users": [{"id": "ok"}, {"id": "Bad_"}]})
    assert line.startswith("fleet:users[1].id: "), line
    (line,) = problems({"isolation": "per-user", "platform": "local", "users": [{"id": "ok", "name": "x"}]})
    assert line.startswith("fleet:users[0].name: unknown key"), line


@pytest.mark.parametrize(("values", "key", "meant"), [
    ({"storage": {"storageclass": "nfs"}}, "fleet:storage.storageclass", "fleet:storage.storageClass"),
    ({"local": {"redisPrt": 6390}}, "fleet:local.redisPrt", "fleet:local.redisPort"),
    ({"resources": {"limits": {"cpu": "1", "memory": "1Gi", "memroy": "2Gi"}}}, "fleet:resources.limits.memroy",
     "fleet:resources.limits.memory"),
    ({"Replicas": 3}, "fleet:Replicas", "fleet:replicas"),
])
def test_unknown_keys_at_any_depth_get_a_did_you_mean(values: dict[str, object], key: str, meant: str) -> None:
    (line,) = problems({**SHARED, **values})
    assert line.startswith(f"{key}: unknown key (did you mean {meant}?)"), line


def test_unknown_nested_keys_list_what_that_object_allows() -> None:
    (line,) = problems({**SHARED, "storage": {"flavour": "fast"}})
    assert "did you mean" not in line
    assert line.endswith("allowed in fleet:storage: accessMode, homeSize, homeStorageClass, persistentHome, size, "
                         "storageClass"), line


@pytest.mark.parametrize(("values", "key", "bounds"), [
    ({"replicas": 0}, "fleet:replicas", "must be from 1 to 50 (got 0)"),
    ({"replicas": 51}, "fleet:replicas", "must be from 1 to 50 (got 51)"),
    ({"port": 80}, "fleet:port", "must be from 1024 to 65535 (got 80)"),
    ({"recycle": {"maxRssMb": 10}}, "fleet:recycle.maxRssMb", "must be from 64 to 65536 (got 10)"),
    ({"recycle": {"checkEvery": "5s"}}, "fleet:recycle.checkEvery", "must be from 10 to 86400"),
    ({"infiniteSessions": {"bufferExhaustionThreshold": 2}}, "fleet:infiniteSessions.bufferExhaustionThreshold",
     "must be more than 0 and at most 1 (got 2)"),
    ({"infiniteSessions": {"backgroundCompactionThreshold": 0}},
     "fleet:infiniteSessions.backgroundCompactionThreshold", "must be more than 0 and less than 1 (got 0)"),
])
def test_a_value_out_of_range_names_both_bounds(values: dict[str, object], key: str, bounds: str) -> None:
    (line,) = problems({**SHARED, **values})
    assert line.startswith(f"{key}: {bounds}"), line


def test_a_fleet_key_in_the_projects_namespace_is_refused_naming_the_key_meant(tmp_path: Path) -> None:
    """`pulumi config set replicas 4` in project copilot-fleet writes `copilot-fleet:replicas`; the program reads
    only `fleet:`, so it would render 2 replicas and exit 0."""
    project = project_with(tmp_path, {"fleet:isolation": "shared-cli", "fleet:platform": "local",
                                      "copilot-fleet:replicas": 4})
    with pytest.raises(ConfigError) as info:
        load_stack_spec(project, "dev")
    (line,) = info.value.problems
    assert line.startswith("copilot-fleet:replicas: ") and "set fleet:replicas instead" in line, line


def test_other_namespaces_are_left_to_their_providers() -> None:
    """`kubernetes:namespace` and `azure-native:location` configure Pulumi providers: not fleet mistakes."""
    keys = frozenset({"kubernetes:namespace", "azure-native:location", "pulumi:tags", "random:x"})
    spec = load_spec(RawConfig(values=SHARED, stack="t", other_keys=keys, project="copilot-fleet"))
    assert spec.replicas == 2


def test_a_namespace_spelt_like_fleet_is_refused() -> None:
    lines = problems(SHARED, other_keys=frozenset({"Fleet:replicas", "fleets:storage"}))
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines] == ["Fleet:replicas", "fleets:storage"]
    assert all("set fleet:" in line for line in lines), lines


def test_any_key_of_the_projects_namespace_is_refused() -> None:
    (line,) = problems(SHARED, other_keys=frozenset({"copilot-fleet:colour"}))
    assert line.startswith("copilot-fleet:colour: ") and "fleet settings live in the fleet: namespace" in line


def test_the_pulumi_program_refuses_it_too() -> None:
    """Under the engine (here the mock engine) the same check runs before anything is registered."""
    config = {"fleet:isolation": "shared-cli", "fleet:platform": "kubernetes",
              "fleet:image": "registry.example.com/copilot-cli:1.0.102", "fleet:githubToken": "t",
              "copilot-fleet:replicas": "4"}
    mocks = render.RecordingMocks()
    with pytest.raises(ConfigError, match=r"copilot-fleet:replicas: .*set fleet:replicas instead"):
        render.run_program(config, {"fleet:githubToken"}, stack="dev", project="copilot-fleet", mocks=mocks)
    assert mocks.registrations == []


def test_a_yaml_syntax_error_exits_2_as_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = project_with(tmp_path, "config:\n  fleet:isolation: [unclosed\n")
    for command in (["up", "--stack", "dev"], ["render", "--stack", "dev"]):
        assert cli.main(["--project-dir", str(project), *command]) == 2
        err = capsys.readouterr().err
        assert "Pulumi.dev.yaml: not valid YAML" in err and "Traceback" not in err
