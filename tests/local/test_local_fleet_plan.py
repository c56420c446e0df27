"""The local fleet's plan and config files, without starting anything (fast; not marked `fleet`)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from copilot_fleet.local.config_files import haproxy_cfg, health_check_request, redis_conf, supervisord_conf
from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.plan import StackCredentials, build_plan, secret_names
from copilot_fleet.local.secrets import FleetSecrets, generate
from copilot_fleet.local.tools import Tools
from copilot_fleet.spec import OFFLINE_SECRET, ConfigError, RawConfig, load_spec
from copilot_fleet.topology import build_topology


def _spec(secret_keys: frozenset[str] = frozenset(), **values: Any) -> Any:
    return load_spec(RawConfig(values={"platform": "local", **values}, secret_keys=secret_keys, stack="t"))


def _plan(tmp_path: Path, **values: Any) -> tuple[Any, FleetSecrets, Tools]:
    creds = values.pop("creds", None)
    spec = _spec(frozenset({"provider"}) if "provider" in values else frozenset(), **values)
    topology = build_topology(spec)
    secrets = FleetSecrets(values={n: generate() for n in secret_names(topology)})
    tools = Tools(copilot=Path("/opt/copilot"), copilot_version="x", cache_home=Path("/cache"),
                  redis_server=Path("/usr/bin/redis-server"), haproxy=Path("/usr/sbin/haproxy"),
                  python=Path("/venv/bin/python"))
    return build_plan(topology, StatePaths(tmp_path, "t"), tools, secrets, creds), secrets, tools


def test_shared_cli_plan_ports_target_and_roundrobin(tmp_path: Path) -> None:
    plan, secrets, tools = _plan(tmp_path, isolation="shared-cli", replicas=3)
    names = [p.name for p in plan.programs]
    assert names == ["model", "copilot-cli-0", "copilot-cli-1", "copilot-cli-2", "redis", "haproxy"]
    assert [p.service.port for p in plan.cli_programs] == [4401, 4402, 4403]
    assert plan.target.endpoint == "127.0.0.1:4321"
    assert plan.target.replicas == ["127.0.0.1:4401", "127.0.0.1:4402", "127.0.0.1:4403"]
    assert plan.target.token_for() == secrets.get("connection-token")
    assert plan.target.redis_url is not None
    assert plan.target.redis_url.get_secret_value() == f"redis://:{secrets.get('redis-password')}@127.0.0.1:6390/0"
    assert plan.target.provider is not None and plan.target.provider.base_url == "http://127.0.0.1:18080/v1"
    assert plan.target.provider.to_sdk()["api_key"] == secrets.get("model-api-key")
    cfg = haproxy_cfg(plan, secrets)
    assert "balance roundrobin" in cfg and "balance source" not in cfg
    assert "server copilot-cli-2 127.0.0.1:4403" in cfg
    assert "check inter 1s fall 2 rise 1" in cfg
    # The health check is the JSON-RPC `connect` with the fleet's token, hex-encoded.
    assert health_check_request(secrets.get("connection-token")).hex() in cfg
    # Each replica: own COPILOT_HOME, the fleet token in its environment, never on its command line.
    for program in plan.cli_programs:
        assert program.env["COPILOT_HOME"] == str(plan.paths.servers_dir / program.name)
        assert program.env["COPILOT_CONNECTION_TOKEN"] == secrets.get("connection-token")
        assert program.env["COPILOT_CACHE_HOME"] == "/cache"
        assert "--host" not in program.command  # binds 127.0.0.1 by default
        assert program.command[-2:] == ("--session-idle-timeout", "1800")
        assert "COPILOT_PROVIDER_BASE_URL" not in program.env  # test model: clients pass the provider


def test_client_ip_affinity_is_sticky_by_source(tmp_path: Path) -> None:
    plan, secrets, _ = _plan(tmp_path, isolation="shared-session", loadBalancer={"sessionAffinity": "ClientIP"})
    cfg = haproxy_cfg(plan, secrets)
    assert "balance source" in cfg and "hash-type consistent" in cfg


def test_per_user_plan_has_no_balancer_and_no_redis(tmp_path: Path) -> None:
    plan, secrets, _ = _plan(tmp_path, isolation="per-user", users=[{"id": "alice"}, {"id": "bob-smith"}],
                             local={"replicaBasePort": 5000, "modelPort": 5100})
    assert [p.name for p in plan.programs] == ["model", "copilot-user-alice-0", "copilot-user-bob-smith-0"]
    assert plan.balance is None
    assert plan.target.users == {"alice": "127.0.0.1:5000", "bob-smith": "127.0.0.1:5001"}
    assert plan.target.endpoint is None and plan.target.redis_url is None and plan.target.connection_token is None
    alice, bob = plan.cli_programs
    assert alice.env["COPILOT_CONNECTION_TOKEN"] == secrets.get("token-alice")
    assert bob.env["COPILOT_CONNECTION_TOKEN"] == secrets.get("token-bob-smith")
    assert alice.env["COPILOT_CONNECTION_TOKEN"] != bob.env["COPILOT_CONNECTION_TOKEN"]
    assert alice.service.session_state != bob.service.session_state
    assert not alice.service.shared_session_state
    assert alice.directory != bob.directory  # each user's working directory is their own


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"isolation": "per-user", "users": [{"id": "a"}, {"id": "b"}],
          "local": {"replicaBasePort": 5000, "modelPort": 5001}},
         r"fleet:local.modelPort 5001 falls in the CLI servers' ports 5000..5001 \(fleet:local.replicaBasePort and "
         r"2 users\)"),
        ({"isolation": "shared-cli", "replicas": 3, "local": {"replicaBasePort": 6388, "redisPort": 6390}},
         r"fleet:local.redisPort 6390 falls in the CLI servers' ports 6388..6390 \(fleet:local.replicaBasePort and "
         r"3 replicas\)"),
        ({"isolation": "shared-session", "local": {"endpointPort": 7000, "modelPort": 7000}},
         r"fleet:local.modelPort 7000 is also fleet:local.endpointPort"),
        ({"isolation": "per-user", "users": [{"id": "a"}, {"id": "b"}], "local": {"replicaBasePort": 65535}},
         r"fleet:local.replicaBasePort: 65535 leaves no room for 2 CLI servers \(the last would get port 65536"),
    ],
    ids=["per-user-model-in-user-ports", "redis-in-replica-ports", "two-named-ports", "past-65535"],
)
def test_local_port_clashes_are_refused_with_the_config(values: dict[str, Any], named: str) -> None:
    """Refused by config validation, naming the keys, before any program is looked for or started."""
    with pytest.raises(ConfigError, match=named):
        _spec(**values)


def test_a_real_provider_frees_the_model_port(tmp_path: Path) -> None:
    """No test model runs with a real provider, so its port may be anything."""
    plan, _, _ = _plan(tmp_path, isolation="per-user", users=[{"id": "a"}, {"id": "b"}],
                       local={"replicaBasePort": 5000, "modelPort": 5001},
                       provider={"baseUrl": "https://models.example.com/v1", "apiKey": OFFLINE_SECRET})
    assert plan.target.users == {"a": "127.0.0.1:5000", "b": "127.0.0.1:5001"}


def test_real_provider_goes_to_every_server_and_the_target(tmp_path: Path) -> None:
    creds = StackCredentials(provider_api_key="sk-real")
    plan, _, _ = _plan(tmp_path, isolation="shared-cli", creds=creds,
                       provider={"baseUrl": "https://models.example.com/v1", "apiKey": OFFLINE_SECRET,
                                 "model": "gpt-5", "wireApi": "responses"})
    assert "model" not in [p.name for p in plan.programs]  # no test model
    assert "model-api-key" not in secret_names(build_topology(_spec(frozenset({"provider"}), isolation="shared-cli",
                                               provider={"baseUrl": "https://m.example/v1"})))
    assert plan.target.provider is not None
    assert plan.target.provider.to_sdk() == {"type": "openai", "base_url": "https://models.example.com/v1",
                                             "api_key": "sk-real", "wire_api": "responses"}
    assert plan.target.model == "gpt-5"
    env = plan.cli_programs[0].env
    assert env["COPILOT_PROVIDER_BASE_URL"] == "https://models.example.com/v1"
    assert env["COPILOT_PROVIDER_API_KEY"] == "sk-real" and env["COPILOT_PROVIDER_WIRE_API"] == "responses"
    assert env["COPILOT_MODEL"] == "gpt-5"


def test_supervisord_conf_keeps_secrets_out_of_command_lines(tmp_path: Path) -> None:
    plan, secrets, tools = _plan(tmp_path, isolation="shared-cli", replicas=2)
    text = supervisord_conf(plan, tools)
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    programs = [s for s in parser.sections() if s.startswith("program:")]
    assert programs == [f"program:{p.name}" for p in plan.programs]
    for section in programs:
        command = parser.get(section, "command")
        for value in secrets.values.values():
            assert value not in command
        assert shlex.split(command)  # parses as supervisord will parse it
        assert parser.get(section, "autorestart") == "true"
        assert parser.get(section, "stopasgroup") == "true" and parser.get(section, "killasgroup") == "true"
    assert secrets.get("connection-token") in parser.get("program:copilot-cli-0", "environment")
    assert parser.get("supervisord", "nodaemon") == "true"
    assert parser.get("unix_http_server", "chmod") == "0700"
    redis = redis_conf(plan, secrets)
    assert f'requirepass "{secrets.get("redis-password")}"' in redis
    assert "bind 127.0.0.1" in redis and "protected-mode yes" in redis and "appendonly yes" in redis
    redis_cmd = parser.get("program:redis", "command")
    assert shlex.split(redis_cmd)[1].endswith("redis/redis.conf")


def test_a_percent_sign_survives_supervisord_expansion(tmp_path: Path) -> None:
    odd = tmp_path / "100%"
    plan, _, tools = _plan(odd, isolation="shared-cli")
    assert "100%%" in supervisord_conf(plan, tools)


@pytest.mark.skipif(shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None, reason="haproxy not installed")
def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    plan, secrets, _ = _plan(tmp_path, isolation="shared-session", loadBalancer={"sessionAffinity": "ClientIP"})
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_cfg(plan, secrets))
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    assert haproxy is not None
    proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stack_secret_from_config_is_used_as_is_when_plain(tmp_path: Path) -> None:
    from copilot_fleet.local.secrets import resolve_stack_secret

    assert resolve_stack_secret(tmp_path, "t", "provider.apiKey", SecretStr("sk-plain")) == "sk-plain"


def test_encrypted_stack_secret_without_pulumi_says_what_to_do(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from copilot_fleet.local.secrets import resolve_stack_secret

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(LocalFleetError, match=r"fleet:provider.apiKey is encrypted .* only the Pulumi CLI"):
        resolve_stack_secret(tmp_path, "t", "provider.apiKey", SecretStr(OFFLINE_SECRET))


def test_the_projects_local_stacks_can_run_side_by_side(tmp_path: Path, example_project: Path,
                                                        example_stack_kinds: dict[str, tuple[str, str]]) -> None:
    from copilot_fleet.stackfile import load_stack_spec

    local = [s for s, (platform, _) in example_stack_kinds.items() if platform == "local"]
    assert {"local", "local-shared-session", "local-per-user"} <= set(local)
    used: dict[int, str] = {}
    for stack in local:
        topology = build_topology(load_stack_spec(example_project, stack))
        secrets = FleetSecrets(values={n: generate() for n in secret_names(topology)})
        tools = Tools(copilot=Path("/c"), copilot_version="x", cache_home=Path("/cache"),
                      redis_server=Path("/r"), haproxy=Path("/h"), python=Path("/p"))
        plan = build_plan(topology, StatePaths(tmp_path, stack), tools, secrets)
        for service in plan.services:
            assert service.port not in used, f"{stack} {service.name} and {used.get(service.port)} share a port"
            used[service.port] = f"{stack} {service.name}"


# --- store mode (fleet:sessionState.mode store) -------------------------------------------------------------------

def test_store_mode_runs_each_cli_under_its_provider_with_the_url_only_in_its_environment(tmp_path: Path) -> None:
    plan, secrets, _ = _plan(tmp_path, isolation="shared-cli", replicas=2, sessionState={"mode": "store"})
    assert plan.target.store_mode and plan.store_scopes == ("shared",)
    assert plan.target.session_state.server_ids == {"127.0.0.1:4401": "127.0.0.1:4401",
                                                     "127.0.0.1:4402": "127.0.0.1:4402"}
    password = secrets.get("store-password-shared")
    for program in plan.cli_programs:
        command = list(program.command)
        assert command[1:3] == ["-m", "copilot_fleet.sessionstore"]
        assert command[command.index("--server-id") + 1] == program.service.address
        assert command[command.index("--scope") + 1] == "shared"
        assert command[command.index("--cli") + 1] == "/opt/copilot" == str(program.executable)
        assert program.service.ready_file is not None and program.service.session_state is None
        url = program.env["COPILOT_FLEET_STORE_REDIS_URL"]
        assert url == f"redis://copilot-store-shared:{password}@127.0.0.1:6390/0"
        assert password not in " ".join(command)
    conf = redis_conf(plan, secrets)
    assert "maxmemory-policy noeviction" in conf and "appendfsync everysec" in conf.split("# Session store")[1]
    assert "user copilot-store-shared on resetchannels ~copilot-fleet:store:shared:*" in conf
    assert password not in conf  # the ACL line holds its SHA-256 only
    janitor = next(t for t in plan.tasks if t.name == "janitor")
    assert "--store-scope" in janitor.command and "--session-state" not in janitor.command


def test_per_user_store_mode_has_redis_a_scope_and_an_acl_user_per_user(tmp_path: Path) -> None:
    plan, secrets, _ = _plan(tmp_path, isolation="per-user", users=[{"id": "alice"}, {"id": "bob-smith"}],
                             sessionState={"mode": "store", "appendfsync": "always"})
    assert [p.name for p in plan.programs if p.service.kind == "redis"] == ["redis"]
    assert plan.target.redis_url is not None and plan.balance is None
    assert plan.target.session_state.user_scopes == {"alice": "alice", "bob-smith": "bob-smith"}
    for program in plan.cli_programs:
        user = program.service.user
        assert user is not None
        assert program.env["COPILOT_FLEET_STORE_REDIS_URL"].startswith(f"redis://copilot-store-{user}:")
    conf = redis_conf(plan, secrets)
    assert "~copilot-fleet:store:alice:* %R~copilot-fleet:lease:u-5-alice-*" in conf
    assert "~copilot-fleet:store:bob-smith:* %R~copilot-fleet:lease:u-9-bob-smith-*" in conf
    assert conf.split("# Session store")[1].count("appendfsync always") == 1


def test_store_supervisord_conf_keeps_the_store_url_off_command_lines(tmp_path: Path) -> None:
    plan, secrets, tools = _plan(tmp_path, isolation="shared-session", sessionState={"mode": "store"})
    conf = configparser.RawConfigParser()
    conf.read_string(supervisord_conf(plan, tools))
    for program in plan.cli_programs:
        section = conf[f"program:{program.name}"]
        assert secrets.get("store-password-shared") not in section["command"]
        assert "COPILOT_FLEET_STORE_REDIS_URL" in section["environment"]
        assert section["stopasgroup"] == section["killasgroup"] == "true"


def test_quickstart_counts_the_store_modes_redis_port_per_user_too() -> None:
    from copilot_fleet.local.quickstart import ports_of

    volume = ports_of(_spec(isolation="per-user", users=[{"id": "a"}]))
    store = ports_of(_spec(isolation="per-user", users=[{"id": "a"}], sessionState={"mode": "store"}))
    assert "fleet:local.redisPort" not in volume.values()
    assert store[6390] == "fleet:local.redisPort"


def test_recycle_measures_a_store_mode_servers_cli_not_its_provider(tmp_path: Path) -> None:
    """The supervised process of a store-mode server is its provider; the memory and sessions are its CLI's."""
    import json

    from copilot_fleet.local.operate import _cli_pid

    plan, _, _ = _plan(tmp_path, isolation="shared-cli", sessionState={"mode": "store"})
    service = plan.cli_programs[0].service
    assert service.ready_file is not None
    assert _cli_pid(service) is None  # not registered yet
    Path(service.ready_file).parent.mkdir(parents=True, exist_ok=True)
    Path(service.ready_file).write_text(json.dumps({"pid": 10, "cli_pid": 11, "port": service.port}))
    assert _cli_pid(service) == 11
    volume, _, _ = _plan(tmp_path, isolation="shared-cli")
    assert _cli_pid(volume.cli_programs[0].service) is None
