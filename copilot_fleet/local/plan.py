"""Topology -> the processes of a local fleet and the target it hands out. Pure: starts nothing, writes nothing.

The topology has already decided who gets which server and what is shared; this module only translates that
onto 127.0.0.1: ports from `fleet:local`, one COPILOT_HOME per server, the shared session-state/ link, and the
environment and command line of each program.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

import copilot_fleet
from copilot_fleet.local.accounts import FleetAccounts, plan_accounts
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.secrets import (
    CONNECTION_TOKEN,
    MODEL_API_KEY,
    REDIS_PASSWORD,
    FleetSecrets,
    store_password_name,
    user_token_name,
)
from copilot_fleet.local.tools import Tools
from copilot_fleet.target import ProviderTarget, SessionStateTarget, Target
from copilot_fleet.topology import CliGroup, Topology

Kind = Literal["cli", "redis", "haproxy", "model"]
Probe = Literal["jsonrpc", "redis", "http"]
HOST = "127.0.0.1"
MODEL_PROGRAM = "model"
REDIS_PROGRAM = "redis"
HAPROXY_PROGRAM = "haproxy"
HAPROXY_BACKEND = "copilot-cli"

# supervisord starts lower priorities first and stops them last: the model and Redis outlive the CLIs that use
# them, and HAProxy stops taking connections before the CLIs go.
_PRIORITY: dict[Kind, int] = {"model": 10, "redis": 10, "cli": 20, "haproxy": 30}


@dataclass(frozen=True)
class Service:
    """One supervised process as `status` and the probes see it (no secrets: this goes into fleet.json)."""

    name: str
    kind: Kind
    port: int
    port_key: str  # the stack key that sets the port, for messages
    probe: Probe
    log: str
    token_secret: str | None = None  # the secret file holding the connection token a JSON-RPC probe sends
    password_secret: str | None = None  # the secret file holding the Redis password
    home: str | None = None  # COPILOT_HOME of a CLI server
    session_state: str | None = None  # where that server's sessions live on disk
    shared_session_state: bool = False
    group: str | None = None
    user: str | None = None
    run_as: str | None = None  # the Unix user it runs as; None: the user who ran `up` (not root)
    # Store mode: the CLI runs under its session store provider, which writes this file once it registered (the
    # server is ready only then) and reads and writes this store scope.
    ready_file: str | None = None
    store_scope: str | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class Program:
    """How supervisord runs a service."""

    service: Service
    command: tuple[str, ...]
    directory: Path
    env: dict[str, str] = field(default_factory=dict)
    # supervisord starts it as this user (`user=`). Programs that must read a root-only file or bind first
    # (HAProxy, the test model) start as root and drop to `service.run_as` themselves.
    supervisor_user: str | None = None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def priority(self) -> int:
        return _PRIORITY[self.service.kind]

    @property
    def executable(self) -> Path:
        """The CLI binary a CLI program runs: its command, or in store mode the provider's `--cli`."""
        command = list(self.command)
        if "--cli" in command and self.service.ready_file is not None:
            return Path(command[command.index("--cli") + 1])
        return Path(command[0])


@dataclass(frozen=True)
class Task:
    """A supervised helper without a probe, not in fleet.json: the janitor, the recycler, the inspector guard."""

    name: str
    command: tuple[str, ...]
    directory: Path
    log: str
    env: dict[str, str] = field(default_factory=dict)
    priority: int = 40  # supervisord's start order: helpers start last and stop first, unless they must not


JANITOR_EVERY_SECONDS = 900  # the Kubernetes CronJob's default schedule, */15
# Store mode: how long the provider lets its CLI finish its turns after SIGTERM; below supervisord's stopwaitsecs
# (config_files.STOP_WAIT_SECONDS), so the provider, not supervisord, decides when the CLI is killed.
PROVIDER_STOP_GRACE_SECONDS = 8


@dataclass(frozen=True)
class FleetPlan:
    stack: str
    isolation: str
    paths: StatePaths
    programs: tuple[Program, ...]
    target: Target
    balance: Literal["roundrobin", "source"] | None  # None: no load balancer (per-user)
    uses_test_model: bool
    tasks: tuple[Task, ...] = ()
    accounts: FleetAccounts | None = None  # None: every program runs as the user who ran `up` (not root)
    # Store mode: the store scopes (one Redis ACL user each) and how Redis flushes its append-only file.
    store_scopes: tuple[str, ...] = ()
    appendfsync: str = "everysec"

    @property
    def store_mode(self) -> bool:
        return self.target.store_mode

    @property
    def redis_url_file(self) -> Path:
        """The lease store URL for the janitor, 0600 (it holds the password)."""
        return self.paths.config_dir / "janitor-redis-url"

    @property
    def services(self) -> list[Service]:
        return [p.service for p in self.programs]

    def program(self, name: str) -> Program:
        return next(p for p in self.programs if p.name == name)

    @property
    def cli_programs(self) -> list[Program]:
        return [p for p in self.programs if p.service.kind == "cli"]

    def manifest(self) -> dict[str, object]:
        return {
            "stack": self.stack,
            "isolation": self.isolation,
            "balance": self.balance,
            "uses_test_model": self.uses_test_model,
            "isolated": self.accounts is not None,
            "unix_users": sorted(self.accounts.all()) if self.accounts is not None else [],
            "fleet_id": self.accounts.fleet_id if self.accounts is not None else None,
            "session_state": self.target.session_state.mode,
            "store_scopes": list(self.store_scopes),
            "services": [asdict(s) for s in self.services],
        }


def load_manifest(text: str) -> tuple[dict[str, object], list[Service]]:
    doc = json.loads(text)
    return doc, [Service(**s) for s in doc["services"]]


def secret_names(topology: Topology) -> list[str]:
    """The secrets this fleet generates."""
    spec = topology.spec
    names: list[str] = []
    if topology.shares_session_state:
        names.append(CONNECTION_TOKEN)
    else:
        names += [user_token_name(g.token_key) for g in topology.groups]
    if topology.lease_store is not None:
        names.append(REDIS_PASSWORD)
    names += [store_password_name(scope) for scope in store_scopes(topology)]
    if spec.provider is None:
        names.append(MODEL_API_KEY)
    return names


def store_scopes(topology: Topology) -> tuple[str, ...]:
    """The store scopes of a store-mode fleet, one per CLI group (none in volume mode)."""
    return tuple(g.store_scope for g in topology.groups if g.store_scope is not None)


@dataclass(frozen=True)
class StackCredentials:
    """Credentials from stack config, decrypted: provider API key and GitHub tokens (shared, per user)."""

    provider_api_key: str | None = None
    github_token: str | None = None
    user_github_tokens: dict[str, str] = field(default_factory=dict)


def _secret(value: str | None) -> SecretStr | None:
    return None if value is None else SecretStr(value)


def fleet_accounts(topology: Topology, paths: StatePaths) -> FleetAccounts:
    """The Unix users this fleet's programs run as when `up` runs as root (accounts.py)."""
    return plan_accounts(paths.fleet_id, topology.spec.stack, [(g.name, g.user) for g in topology.groups],
                         redis=topology.lease_store is not None, lb=topology.load_balanced,
                         model=topology.spec.provider is None)


def build_plan(topology: Topology, paths: StatePaths, tools: Tools, secrets: FleetSecrets,
               creds: StackCredentials | None = None, accounts: FleetAccounts | None = None) -> FleetPlan:
    """Every program of the fleet with its command, environment, port and Unix user, and the target. `accounts`:
    the users to run as (`up` as root); None runs everything as the current user."""
    creds = creds or StackCredentials()
    spec = topology.spec
    local = spec.local
    uses_test_model = spec.provider is None
    shared = topology.shares_session_state
    programs: list[Program] = []

    if uses_test_model:
        provider = ProviderTarget(type="openai", base_url=f"http://{HOST}:{local.model_port}/v1",
                                  api_key=SecretStr(secrets.get(MODEL_API_KEY)))
        programs.append(_model_program(paths, tools, local.model_port, accounts.model if accounts else None))
    else:
        assert spec.provider is not None
        provider = ProviderTarget(type=spec.provider.type, base_url=spec.provider.base_url,
                                  api_key=_secret(creds.provider_api_key), wire_api=spec.provider.wire_api)

    index = 0
    for group in topology.groups:
        for replica in group.replica_names():
            port = local.replica_base_port + index
            key = "fleet:local.replicaBasePort" + (f" (+{index})" if index else "")
            run_as = accounts.cli[group.name] if accounts else None
            programs.append(_cli_program(topology, group, replica, port, key, paths, tools, secrets, creds, run_as))
            index += 1
    redis_url = (f"redis://:{secrets.get(REDIS_PASSWORD)}@{HOST}:{local.redis_port}/0"
                 if topology.lease_store is not None else None)

    if topology.lease_store is not None:
        programs.append(_redis_program(paths, tools, local.redis_port, accounts.redis if accounts else None))
    if topology.load_balanced:
        programs.append(_haproxy_program(paths, tools, local.endpoint_port, accounts.lb if accounts else None))

    clis = [p.service for p in programs if p.service.kind == "cli"]
    target = Target(
        stack=spec.stack,
        platform="local",
        isolation=spec.isolation,
        endpoint=f"{HOST}:{local.endpoint_port}" if topology.load_balanced else None,
        replicas=[s.address for s in clis] if shared else [],
        users={s.user: s.address for s in clis if s.user is not None},
        connection_token=_secret(secrets.get(CONNECTION_TOKEN)) if shared else None,
        user_tokens={g.user: SecretStr(secrets.get(user_token_name(g.token_key))) for g in topology.groups if g.user},
        redis_url=_secret(redis_url),
        provider=provider,
        model=spec.session_model,
        session_state=_session_state_target(topology, clis),
    )
    balance: Literal["roundrobin", "source"] | None = None
    if topology.load_balanced:
        balance = "source" if spec.load_balancer.session_affinity == "ClientIP" else "roundrobin"
    tasks = (_inspector_guard_tasks(paths, tools, accounts) + _janitor_tasks(topology, paths, tools, programs)
             + _recycler_tasks(topology, paths, tools))
    return FleetPlan(stack=spec.stack, isolation=spec.isolation, paths=paths, programs=tuple(programs),
                     target=target, balance=balance, uses_test_model=uses_test_model, tasks=tasks, accounts=accounts,
                     store_scopes=store_scopes(topology), appendfsync=spec.session_state.appendfsync)


def _session_state_target(topology: Topology, clis: list[Service]) -> SessionStateTarget:
    """What a client needs in store mode: each user's scope and each server's id (its address, as listed)."""
    if not topology.store_mode:
        return SessionStateTarget()
    return SessionStateTarget(mode="store",
                              user_scopes={s.user: s.store_scope for s in clis if s.user and s.store_scope},
                              server_ids={s.address: s.address for s in clis})


# The provider's own environment variable for its store URL (copilot_fleet.sessionstore.__main__.REDIS_URL_ENV); every
# COPILOT_FLEET_STORE_* variable is removed from the CLI's environment.
STORE_URL_ENV = "COPILOT_FLEET_STORE_REDIS_URL"


def _store_url(redis_port: int, scope: str, secrets: FleetSecrets) -> str:
    """The URL a scope's providers reach the store with: the scope's own Redis ACL user (sessionstore.acl)."""
    from copilot_fleet.sessionstore.acl import acl_user_name

    return f"redis://{acl_user_name(scope)}:{secrets.get(store_password_name(scope))}@{HOST}:{redis_port}/0"


def _janitor_tasks(topology: Topology, paths: StatePaths, tools: Tools, programs: list[Program]) -> tuple[Task, ...]:
    """The same janitor as the Kubernetes CronJob, every 15 minutes under supervisord: one for the shared
    session-state/ (with the lease store, required), one per server of a per-user fleet (no leases there). Each also
    keeps its servers' per-start CLI logs to the newest few (cli_logs.py)."""
    env = _python_task_env()
    base = (str(tools.python), "-m", "copilot_fleet.pod.janitor", "--ttl", f"{topology.spec.session_ttl}s",
            "--every", str(JANITOR_EVERY_SECONDS))
    clis = [p for p in programs if p.service.kind == "cli"]
    if topology.store_mode:
        # One janitor for the whole store: every scope, with the admin credential (under each session's lease).
        scopes = tuple(arg for scope in store_scopes(topology) for arg in ("--store-scope", scope))
        logs = tuple(arg for p in clis for arg in ("--cli-logs", str(Path(str(p.service.home)) / "logs")))
        return (Task(name="janitor", command=(*base, *scopes, "--redis-url-file",
                                              str(paths.config_dir / "janitor-redis-url"), "--require-leases", *logs),
                     directory=paths.root, log=str(paths.log_file("janitor")), env=env),)
    if topology.shares_session_state:
        leases: tuple[str, ...] = ()
        if topology.lease_store is not None:
            leases = ("--redis-url-file", str(paths.config_dir / "janitor-redis-url"), "--require-leases")
        logs = tuple(arg for p in clis for arg in ("--cli-logs", str(Path(str(p.service.home)) / "logs")))
        return (Task(name="janitor", command=(*base, "--session-state", str(paths.shared_session_state), *leases,
                                              *logs),
                     directory=paths.root, log=str(paths.log_file("janitor")), env=env),)
    return tuple(Task(name=f"janitor-{p.name}", directory=paths.root, log=str(paths.log_file(f"janitor-{p.name}")),
                      command=(*base, "--session-state", str(p.service.session_state),
                               "--cli-logs", str(Path(str(p.service.home)) / "logs")), env=env)
                 for p in clis)


INSPECTOR_GUARD = "inspector-guard"


def _inspector_guard_tasks(paths: StatePaths, tools: Tools, accounts: FleetAccounts | None) -> tuple[Task, ...]:
    """Started as root: hold Node's inspector port before any CLI starts, so that a tool run cannot open its
    server's debugger with SIGUSR1 (copilot_fleet/pod/inspector_guard.py). It stays root: the tool runs, which
    have the CLI users, cannot stop it. Not root: every program runs as one user, and nothing is kept apart."""
    if accounts is None:
        return ()
    command = (str(tools.python), "-m", "copilot_fleet.pod.inspector_guard")
    return (Task(name=INSPECTOR_GUARD, command=command, directory=paths.root,
                 log=str(paths.log_file(INSPECTOR_GUARD)), env=_python_task_env(), priority=1),)


def _recycler_tasks(topology: Topology, paths: StatePaths, tools: Tools) -> tuple[Task, ...]:
    """With fleet:recycle bounds: `copilot-fleet recycle --every` under supervisord, so a server past a bound is
    drained and restarted without an operator (Kubernetes does the same through its probes)."""
    bounds = topology.spec.recycle
    if not bounds.bounded:
        return ()
    command = (str(tools.python), "-m", "copilot_fleet.cli", "--project-dir", str(paths.project_dir), "recycle",
               "--stack", paths.stack, "--every", str(bounds.check_every))
    return (Task(name="recycler", command=command, directory=paths.root, log=str(paths.log_file("recycler")),
                 env=_python_task_env()),)


def _python_task_env() -> dict[str, str]:
    """Supervised Python helpers import this very copilot_fleet (also from a checkout that is not installed)."""
    return {"PYTHONPATH": str(Path(copilot_fleet.__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}


def _cli_program(topology: Topology, group: CliGroup, name: str, port: int, port_key: str, paths: StatePaths,
                 tools: Tools, secrets: FleetSecrets, creds: StackCredentials, run_as: str | None) -> Program:
    spec = topology.spec
    home = paths.server_home(name)
    shared = group.user is None
    token_secret = CONNECTION_TOKEN if shared else user_token_name(group.token_key)
    idle = ["--session-idle-timeout", str(spec.idle_timeout)] if spec.idle_timeout > 0 else []
    cli_args = ["--log-level", spec.log_level, *idle]  # store mode: the provider adds --host and --port
    command = [str(tools.copilot), "--headless", "--no-auto-update", "--no-auto-login",
               "--log-level", spec.log_level, "--port", str(port), *idle]
    env = {
        "COPILOT_HOME": str(home),
        "COPILOT_CONNECTION_TOKEN": secrets.get(token_secret),
        "COPILOT_AUTO_UPDATE": "false",
        "COPILOT_CACHE_HOME": str(tools.cache_home),
        "NO_COLOR": "1",
        # Monitoring: the CLI's own OpenTelemetry, as JSON lines (spans and metrics) per server. Prompt and reply
        # text stay out (the default; said explicitly so an inherited setting cannot turn it on).
        "COPILOT_OTEL_ENABLED": "true",
        "COPILOT_OTEL_EXPORTER_TYPE": "file",
        "COPILOT_OTEL_FILE_EXPORTER_PATH": str(paths.otel_file(name)),
        "OTEL_SERVICE_NAME": "copilot-fleet-cli",
        "OTEL_RESOURCE_ATTRIBUTES": f"copilot_fleet.stack={spec.stack},copilot_fleet.server={name}",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false",
    }
    if run_as is not None:
        env["HOME"] = str(home)  # the account has none; tool runs see this as their home
    if group.credential == "provider" and spec.provider is not None:
        # Server-wide BYOK: sessions that name no provider use it. Clients still re-supply it on resume.
        env.update(COPILOT_PROVIDER_BASE_URL=spec.provider.base_url, COPILOT_PROVIDER_TYPE=spec.provider.type,
                   COPILOT_PROVIDER_WIRE_API=spec.provider.wire_api, COPILOT_MODEL=spec.session_model)
        if creds.provider_api_key:
            env["COPILOT_PROVIDER_API_KEY"] = creds.provider_api_key
    if group.credential == "user-github-token" and group.user in creds.user_github_tokens:
        env["COPILOT_GITHUB_TOKEN"] = creds.user_github_tokens[group.user]
    elif creds.github_token:
        env["COPILOT_GITHUB_TOKEN"] = creds.github_token
    if group.store_scope is not None:
        env[STORE_URL_ENV] = _store_url(spec.local.redis_port, group.store_scope, secrets)
        return _provider_program(group, name, port, port_key, paths, tools, cli_args, env, run_as, token_secret)
    session_state = paths.shared_session_state if shared else home / "session-state"
    service = Service(name=name, kind="cli", port=port, port_key=port_key, probe="jsonrpc",
                      log=str(paths.log_file(name)), token_secret=token_secret, home=str(home),
                      session_state=str(session_state), shared_session_state=shared, group=group.name,
                      user=group.user, run_as=run_as)
    return Program(service=service, command=tuple(command), directory=paths.server_work_dir(name), env=env,
                   supervisor_user=run_as)


def _provider_program(group: CliGroup, name: str, port: int, port_key: str, paths: StatePaths, tools: Tools,
                      cli_args: list[str], env: dict[str, str], run_as: str | None, token_secret: str) -> Program:
    """Store mode: the supervised program is the session store provider, which starts the CLI as its child.

    It takes the CLI's whole environment and passes it on, except its own store URL (`STORE_URL_ENV`, from the
    scope's secret: in the root-only supervisord.conf, never on a command line). Started as root, it runs as
    root and starts the CLI as the server's own Unix user (`--cli-user`): a tool run, which has the CLI's user,
    can then read neither the provider's /proc entries nor its ready file at any moment, the provider's start
    included (a process of the same user could read its environment in the instant before it makes itself
    non-dumpable). Not root: everything runs as one user, and the provider is non-dumpable from its first
    statement."""
    assert group.store_scope is not None
    address = f"{HOST}:{port}"
    ready = paths.run_dir / f"{name}.ready"
    command = [str(tools.python), "-m", "copilot_fleet.sessionstore", "--cli", str(tools.copilot),
               "--home", str(paths.server_home(name)), "--workdir", str(paths.server_work_dir(name)),
               "--server-id", address, "--scope", group.store_scope, "--host", HOST, "--port", str(port),
               "--ready-file", str(ready), "--stop-grace", str(PROVIDER_STOP_GRACE_SECONDS)]
    if run_as is not None:
        command += ["--cli-user", run_as]
    command += ["--", *cli_args]
    service = Service(name=name, kind="cli", port=port, port_key=port_key, probe="jsonrpc",
                      log=str(paths.log_file(name)), token_secret=token_secret, home=str(paths.server_home(name)),
                      group=group.name, user=group.user, run_as=run_as, ready_file=str(ready),
                      store_scope=group.store_scope)
    return Program(service=service, command=tuple(command), directory=paths.server_work_dir(name),
                   env={**env, **_python_task_env()}, supervisor_user=None)


def _model_program(paths: StatePaths, tools: Tools, port: int, run_as: str | None) -> Program:
    package_root = Path(copilot_fleet.__file__).resolve().parents[1]
    command: tuple[str, ...] = (str(tools.python), "-m", "copilot_fleet.testmodel", "--host", HOST, "--port",
                                str(port), "--api-key-file", str(paths.secret_file(MODEL_API_KEY)))
    if run_as is not None:  # reads its root-only key and binds first, then drops to its own user
        command += ("--run-as", run_as)
    service = Service(name=MODEL_PROGRAM, kind="model", port=port, port_key="fleet:local.modelPort", probe="http",
                      log=str(paths.log_file(MODEL_PROGRAM)), run_as=run_as)
    # The package may not be installed in the interpreter's site-packages (a checkout): make it importable.
    env = {"PYTHONPATH": str(package_root), "PYTHONUNBUFFERED": "1"}
    return Program(service=service, command=command, directory=paths.root, env=env)


def _redis_program(paths: StatePaths, tools: Tools, port: int, run_as: str | None) -> Program:
    assert tools.redis_server is not None
    service = Service(name=REDIS_PROGRAM, kind="redis", port=port, port_key="fleet:local.redisPort", probe="redis",
                      log=str(paths.log_file(REDIS_PROGRAM)), password_secret=REDIS_PASSWORD, run_as=run_as)
    # The password lives in redis.conf (0600, Redis' own), never on the command line.
    return Program(service=service, command=(str(tools.redis_server), str(paths.redis_conf)),
                   directory=paths.redis_dir, supervisor_user=run_as)


def _haproxy_program(paths: StatePaths, tools: Tools, port: int, run_as: str | None) -> Program:
    assert tools.haproxy is not None
    # It reads haproxy.cfg (the health check's token) and binds as root, then drops to `run_as` (its `user`).
    service = Service(name=HAPROXY_PROGRAM, kind="haproxy", port=port, port_key="fleet:local.endpointPort",
                      probe="jsonrpc", log=str(paths.log_file(HAPROXY_PROGRAM)), token_secret=CONNECTION_TOKEN,
                      run_as=run_as)
    # -db: stay in the foreground under supervisord.
    return Program(service=service, command=(str(tools.haproxy), "-db", "-f", str(paths.haproxy_cfg)),
                   directory=paths.root)
