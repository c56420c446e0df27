"""Invalid stack configs on the local path (`copilot-fleet up`) and under the Pulumi mock engine: each refused with
a message naming the key, zero resources registered, zero processes started, no state directory written.

tests/kubernetes/test_k8s_invalid_config.py already runs 46 invalid configs through the Pulumi program; this table
runs its own through `up` (the path those tests do not touch) and adds kinds they miss: wrong types (strings,
floats, booleans, null, scalars where objects belong), the `local`, `azure`, `infiniteSessions` and
`resources` sections, enum spellings, unknown nested keys, per-user port clashes, and file-level defects (YAML that
does not parse, a config that is not a mapping, bad stack names). Cases marked `engine` also run through the mock
engine on a Kubernetes base.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copilot_fleet.pod.ports import free_port_block
from faults.fleet_under_test import FleetUnderTest, fleet_env, write_project, write_stack
from faults.measure import ScenarioResult

DROP = "__drop__"
K8S_IMAGE = "registry.example.com/copilot-cli:1.0.102"


@dataclass(frozen=True)
class ConfigCase:
    id: str
    kind: str  # type, range, unknown key, enum, missing or plain secret, contradiction, file
    change: Mapping[str, Any] = field(default_factory=dict)  # merged into the base (DROP removes a key)
    key: str = ""  # what the message must name
    base: str = "shared-cli"  # shared-cli, shared-session, per-user
    raw: str | None = None  # a whole stack file instead of base + change
    stack: str | None = None  # another stack name (file-level cases)
    engine: bool = False  # also run under the Pulumi mock engine (Kubernetes base)
    plain_secrets: bool = False  # the change holds credentials in plain text (not marked secret)
    needs_tools: bool = False  # refused only after the programs are found (the check runs at plan time)


def _ports(**override: Any) -> dict[str, Any]:
    return {"local": {"replicaBasePort": 31401, "endpointPort": 31421, "redisPort": 31431, "modelPort": 31441,
                      **override}}


PROVIDER = {"type": "openai", "baseUrl": "https://models.example.com/v1"}

CASES: tuple[ConfigCase, ...] = (
    # -- wrong types -------------------------------------------------------------------------------------------
    ConfigCase("replicas-string", "type", {"replicas": "two"}, "fleet:replicas", engine=True),
    ConfigCase("replicas-float", "type", {"replicas": 2.5}, "fleet:replicas", engine=True),
    ConfigCase("replicas-bool", "type", {"replicas": True}, "fleet:replicas", engine=True),
    ConfigCase("port-string", "type", _ports(redisPort="six"), "fleet:local.redisPort"),
    ConfigCase("local-not-a-map", "type", {"local": 4321}, "fleet:local"),
    ConfigCase("allow-debug-not-bool", "type", {"allowDebugLogging": "yes please"}, "fleet:allowDebugLogging",
               engine=True),
    ConfigCase("infinite-enabled-not-bool", "type", {"infiniteSessions": {"enabled": "maybe"}},
               "fleet:infiniteSessions.enabled", engine=True),
    ConfigCase("users-not-a-list", "type", {"users": "alice"}, "fleet:users", base="per-user"),
    ConfigCase("client-selector-not-a-map", "type", {"clientSelector": "x"}, "fleet:clientSelector", engine=True),
    ConfigCase("redis-null", "type", {"redis": None}, "fleet:redis", base="shared-session", engine=True),
    # -- out of range ------------------------------------------------------------------------------------------
    ConfigCase("endpoint-port-privileged", "range", _ports(endpointPort=80), "fleet:local.endpointPort"),
    ConfigCase("replica-port-too-high", "range", _ports(replicaBasePort=70000), "fleet:local.replicaBasePort"),
    ConfigCase("replicas-negative", "range", {"replicas": -1}, "fleet:replicas"),
    ConfigCase("ttl-negative", "range", {"sessionTtl": -5}, "fleet:sessionTtl", engine=True),
    ConfigCase("idle-timeout-garbage", "range", {"idleTimeout": "5x"}, "fleet:idleTimeout", engine=True),
    ConfigCase("max-sessions-zero", "range", {"maxSessionsPerReplica": 0}, "fleet:maxSessionsPerReplica",
               engine=True),
    ConfigCase("max-sessions-huge", "range", {"maxSessionsPerReplica": 5000}, "fleet:maxSessionsPerReplica"),
    ConfigCase("compaction-over-one", "range", {"infiniteSessions": {"backgroundCompactionThreshold": 1.5}},
               "fleet:infiniteSessions.backgroundCompactionThreshold", engine=True),
    ConfigCase("azure-node-count-zero", "range", {"azure": {"nodeCount": 0}}, "fleet:azure.nodeCount", engine=True),
    ConfigCase("namespace-too-long", "range", {"namespace": "a" * 64}, "fleet:namespace"),
    ConfigCase("limits-memory-garbage", "range", {"resources": {"limits": {"cpu": "1", "memory": "lots"}}},
               "fleet:resources.limits.memory", engine=True),
    # -- unknown keys ------------------------------------------------------------------------------------------
    ConfigCase("top-level-typo", "unknown key", {"isolaton": "shared-cli"}, "fleet:isolaton"),
    ConfigCase("local-typo", "unknown key", _ports(redisPrt=6390), "fleet:local.redisPrt"),
    ConfigCase("provider-key-typo", "unknown key", {"provider": {**PROVIDER, "apikey": "x"}},
               "fleet:provider.apikey", engine=True),
    ConfigCase("user-item-unknown-key", "unknown key", {"users": [{"id": "alice", "name": "Alice"}]},
               "fleet:users[0].name", base="per-user"),
    # -- values outside an enumeration --------------------------------------------------------------------------
    ConfigCase("isolation-capitalised", "enum", {"isolation": "Shared-CLI"}, "fleet:isolation"),
    ConfigCase("provider-type-unknown", "enum", {"provider": {**PROVIDER, "type": "gemini"}}, "fleet:provider.type",
               engine=True),
    ConfigCase("wire-api-unknown", "enum", {"provider": {**PROVIDER, "wireApi": "grpc"}}, "fleet:provider.wireApi",
               engine=True),
    ConfigCase("redis-mode-none", "enum", {"redis": {"mode": "none"}}, "fleet:redis.mode", base="shared-session",
               engine=True),
    ConfigCase("azure-redis-sku-unknown", "enum", {"azure": {"redisSku": "Free"}}, "fleet:azure.redisSku"),
    # -- missing values and credentials in plain text ------------------------------------------------------------
    ConfigCase("platform-missing", "missing or plain secret", {"platform": DROP}, "fleet:platform"),
    ConfigCase("provider-without-base-url", "missing or plain secret", {"provider": {"type": "openai"}},
               "fleet:provider.baseUrl", engine=True),
    ConfigCase("provider-key-plain", "missing or plain secret", {"provider": {**PROVIDER, "apiKey": "sk-plain"}},
               "fleet:provider.apiKey", plain_secrets=True),
    ConfigCase("github-token-plain", "missing or plain secret", {"githubToken": "ghp_plain"}, "fleet:githubToken",
               plain_secrets=True),
    ConfigCase("redis-external-without-url", "missing or plain secret", {"redis": {"mode": "external"}},
               "fleet:redis.url", base="shared-session"),
    ConfigCase("user-token-plain", "missing or plain secret", {"users": [{"id": "alice", "githubToken": "ghp_x"}]},
               "fleet:users[*].githubToken", base="per-user", plain_secrets=True),
    # -- contradictions ------------------------------------------------------------------------------------------
    ConfigCase("per-user-without-users", "contradiction", {"users": []}, "fleet:users", base="per-user"),
    ConfigCase("per-user-with-replicas", "contradiction", {"replicas": 3}, "fleet:replicas", base="per-user"),
    ConfigCase("per-user-with-redis", "contradiction", {"redis": {"mode": "in-cluster"}}, "fleet:redis",
               base="per-user"),
    ConfigCase("shared-session-with-users", "contradiction", {"users": [{"id": "alice"}]}, "fleet:users",
               base="shared-session"),
    ConfigCase("shared-session-read-write-once", "contradiction", {"storage": {"accessMode": "ReadWriteOnce"}},
               "fleet:storage.accessMode", base="shared-session"),
    ConfigCase("local-ports-overlap", "contradiction", _ports(modelPort=31421), "fleet:local"),
    ConfigCase("replica-range-overlaps-redis", "contradiction", {"replicas": 3, **_ports(replicaBasePort=31429)},
               "fleet:local"),
    ConfigCase("per-user-port-clash", "contradiction", _ports(modelPort=31402), "fleet:local.modelPort",
               base="per-user"),
    ConfigCase("debug-log-without-consent", "contradiction", {"logLevel": "debug"}, "fleet:logLevel"),
    ConfigCase("compaction-above-exhaustion", "contradiction",
               {"infiniteSessions": {"backgroundCompactionThreshold": 0.9, "bufferExhaustionThreshold": 0.5}},
               "backgroundCompactionThreshold", engine=True),
    ConfigCase("cli-version-mismatch", "contradiction", {"cliVersion": "1.0.104"}, "fleet:cliVersion"),
    ConfigCase("image-latest", "contradiction", {"image": "copilot-cli:latest"}, "fleet:image"),
    # -- the stack file itself ---------------------------------------------------------------------------------
    ConfigCase("yaml-malformed", "file", raw="config:\n  fleet:isolation: [unclosed\n", key="not valid YAML"),
    ConfigCase("config-not-a-mapping", "file", raw="config:\n  - fleet:isolation\n", key="'config' must be a mapping"),
    ConfigCase("stack-name-traversal", "file", stack="../evil", key="is not a stack name"),
    ConfigCase("stack-missing", "file", stack="nope", key="no stack 'nope'"),
)

BASES: dict[str, dict[str, Any]] = {
    "shared-cli": {"isolation": "shared-cli", "platform": "local", "replicas": 2},
    "shared-session": {"isolation": "shared-session", "platform": "local", "replicas": 2},
    "per-user": {"isolation": "per-user", "platform": "local", "users": [{"id": "alice"}, {"id": "bob"}]},
}


def merged(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        if value == DROP:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def local_values(case: ConfigCase, base_port: int) -> dict[str, Any]:
    ports = {"local": {"replicaBasePort": base_port, "endpointPort": base_port + 20, "redisPort": base_port + 30,
                       "modelPort": base_port + 40}}
    values = merged(merged(BASES[case.base], ports), case.change)
    if isinstance(case.change.get("local"), Mapping):  # the case's own ports, shifted to free ones
        values["local"] = {k: (v - 31401 + base_port if isinstance(v, int) and 31000 < v < 32000 else v)
                           for k, v in values["local"].items()}
    return values


def engine_values(case: ConfigCase) -> tuple[dict[str, Any], set[str]]:
    isolation = BASES[case.base]["isolation"]
    base = {"isolation": isolation, "platform": "kubernetes", "image": K8S_IMAGE, "githubToken": "ghp_engine",
            # A deployable base: a ReadWriteMany class for shared session state, one user's own volume per-user.
            "storage": {"accessMode": "ReadWriteOnce"} if isolation == "per-user" else {"storageClass": "nfs-client"}}
    values = merged(base, {k: v for k, v in case.change.items() if k != "local"})
    return values, {"githubToken"}


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            out.append(int(entry))
    return out


def _write_case(project: Path, case: ConfigCase, stack: str) -> None:
    if case.raw is not None:
        (project / "stacks" / f"Pulumi.{stack}.yaml").write_text(case.raw)
        return
    values = local_values(case, free_port_block(50))
    if not case.plain_secrets:
        values = _as_secure(values)
    write_stack(project, stack, values)


def _as_secure(values: dict[str, Any]) -> dict[str, Any]:
    """Credentials the way `pulumi config set --secret` stores them (opaque ciphertext)."""
    out = dict(values)
    for key in ("githubToken",):
        if key in out:
            out[key] = {"secure": "v1:ciphertext"}
    return out


# A CLI path that does not exist: config validation must refuse a bad config before `up` looks for programs, and a
# config that wrongly passes validation then fails on this instead of starting a fleet.
NO_CLI = "/nonexistent/copilot-fleet-faults/copilot"


def check_local(case: ConfigCase, workdir: Path, *, subprocess_run: bool) -> tuple[bool, str, list[str]]:
    """Run `up` on the case: returns (refused, message, problems with what it left behind)."""
    from copilot_fleet.local import lifecycle as local_fleet

    env = fleet_env() if case.needs_tools else fleet_env(COPILOT_CLI_PATH=NO_CLI)
    project = workdir / case.id
    write_project(project)
    stack = case.stack or "bad"
    if case.stack is None or case.stack == "nope":
        _write_case(project, case, "bad")
    problems: list[str] = []
    if subprocess_run:
        from faults.bad_input import fleet_command

        proc = subprocess.run([*fleet_command(), "--project-dir", str(project), "up", "--stack", stack,
                               "--timeout", "30"], env=env, capture_output=True, text=True, timeout=120,
                              check=False, stdin=subprocess.DEVNULL)
        refused = proc.returncode in (1, 2)
        message = proc.stderr.strip()
        if "Traceback" in message:
            problems.append("the command printed a traceback")
    else:
        try:
            local_fleet.up(project, stack, env=env, out=io.StringIO(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - any refusal; the message is checked by the caller
            refused, message = True, f"{type(exc).__name__}: {exc}"
        else:
            refused, message = False, "up succeeded"
            local_fleet.down(project, stack, purge=True, out=io.StringIO())
    state = project / ".fleet" / ("bad" if case.stack is None else stack)
    if state.exists():
        problems.append(f"{state} was created")
    left = _processes_mentioning(str(project))
    if left:
        problems.append(f"processes started: {left}")
    if refused and NO_CLI in message:
        refused, message = False, f"accepted by config validation (stopped only by the missing CLI): {message}"
    return refused, message, problems


def check_engine(case: ConfigCase) -> tuple[bool, str, int]:
    """The Pulumi program under recording mocks: (refused, message, resources registered)."""
    from copilot_fleet.render import RecordingMocks, run_program
    from copilot_fleet.spec import ConfigError

    values, secret = engine_values(case)
    mocks = RecordingMocks()
    try:
        run_program({f"fleet:{k}": v for k, v in values.items()}, {f"fleet:{k}" for k in secret}, stack="bad",
                    mocks=mocks)
    except ConfigError as exc:
        return True, str(exc), len(mocks.registrations)
    return False, "the program ran", len(mocks.registrations)


def invalid_configs(workdir: Path, *, subprocess_ids: tuple[str, ...] | None = None, engine: bool = True,
                    cases: tuple[ConfigCase, ...] = CASES) -> ScenarioResult:
    """Every case in-process through `up`; the cases in `subprocess_ids` (None: all) also through the real
    `copilot-fleet up` command; `engine` cases through the mock engine."""
    r = ScenarioResult("bad-config", "Invalid stack configs", run_unit="invalid configs")
    r.target("accepted", max=0, meaning="invalid configs that `up` (or the mock engine) accepted")
    r.target("key_not_named", max=0, meaning="refusals whose message does not name the offending key")
    r.target("left_behind", max=0, meaning="state directories created or processes started by a refused config")
    r.target("tracebacks", max=0, meaning="refusals printed as a Python traceback instead of a message")
    r.target("registered", max=0, meaning="resources registered under the mock engine by a refused config")
    workdir.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, int] = {}
    for case in cases:
        r.runs += 1
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        failed = False
        runs = [("in-process", False)]
        if subprocess_ids is None or case.id in subprocess_ids:
            runs.append(("command", True))
        for how, sub in runs:
            started = time.monotonic()
            refused, message, problems = check_local(case, workdir / how, subprocess_run=sub)
            r.time(f"refusal_{how}", time.monotonic() - started, f"`up` ({how}) until it refused the config")
            r.bump(f"local_{how}")
            if not refused:
                r.bump("accepted")
            elif case.key not in message:
                r.bump("key_not_named")
            if any(p.startswith("the command printed a traceback") for p in problems):
                r.bump("tracebacks")
            if any(not p.startswith("the command printed a traceback") for p in problems):
                r.bump("left_behind")
            ok = refused and case.key in message and not problems
            failed |= not ok
            r.check(f"{case.id} ({how}): refused naming {case.key}", ok, "; ".join(problems) + " " + message[:300])
        if engine and case.engine:
            refused, message, registered = check_engine(case)
            r.bump("engine")
            if not refused:
                r.bump("accepted")
            elif case.key not in message:
                r.bump("key_not_named")
            r.bump("registered", registered)
            ok = refused and case.key in message and registered == 0
            failed |= not ok
            r.check(f"{case.id} (mock engine): refused naming {case.key}, nothing registered", ok,
                    f"{registered} registered; {message[:300]}")
        if failed:
            r.failures += 1
    for kind, n in sorted(kinds.items()):
        r.counts[f"kind: {kind}"] = n
    return r.finish()


def bad_config_while_running(fleet: FleetUnderTest, r: ScenarioResult) -> None:
    """A running fleet's stack file turned invalid: `up` must refuse it and change nothing (same PIDs, same state
    files), and the fleet keeps running."""
    from faults.bad_input import fleet_command
    from faults.sessions import snapshot_tree, tree_changes

    stack_file = fleet.dir / "stacks" / f"Pulumi.{fleet.stack}.yaml"
    original = stack_file.read_text()
    watched = [fleet.paths.config_dir, fleet.paths.secrets_dir]
    files = [fleet.paths.target_file, fleet.paths.manifest, fleet.paths.supervisor_record]
    before = ({str(d): snapshot_tree(d) for d in watched}, {str(f): f.read_bytes() for f in files})
    pids = {name: info.get("pid") for name, info in fleet.supervisor.processes().items()}
    try:
        stack_file.write_text(re.sub(r"fleet:replicas: \d+", "fleet:replicas: 0", original))
        proc = subprocess.run([*fleet_command(), "--project-dir", str(fleet.dir), "up", "--stack", fleet.stack],
                              env=fleet_env(), capture_output=True, text=True, timeout=120, check=False)
    finally:
        stack_file.write_text(original)
    r.runs += 1
    r.bump("local_while_running")
    refused = proc.returncode == 2 and "fleet:replicas" in proc.stderr and "Traceback" not in proc.stderr
    if proc.returncode == 0:
        r.bump("accepted")
    elif "fleet:replicas" not in proc.stderr:
        r.bump("key_not_named")
    after = ({str(d): snapshot_tree(d) for d in watched}, {str(f): f.read_bytes() for f in files})
    changes = [f"{d}: {c}" for d in before[0] for c in tree_changes(before[0][d], after[0][d])]
    changes += [f"{f} changed" for f in before[1] if before[1][f] != after[1][f]]
    pids_after = {name: info.get("pid") for name, info in fleet.supervisor.processes().items()}
    if pids_after != pids:
        changes.append(f"processes changed: {pids} -> {pids_after}")
    if changes:
        r.bump("left_behind")
    ok = refused and not changes
    if not ok:
        r.failures += 1
    r.check("an invalid stack file on a running fleet is refused and changes nothing", ok,
            f"exit {proc.returncode}: {proc.stderr.strip()[:300]}; {'; '.join(changes)[:300]}")
