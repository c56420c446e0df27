"""Check 8 for local fleets: the host, through pytest-testinfra's `local://` backend.

Needs `--fleet-state DIR` (the fleet's `.fleet/<stack>/`; `copilot-fleet verify` passes it for local stacks):
its `fleet.json` says which services run on which ports, `supervisord.json` which process supervises them,
`secrets/` which values must never show up where other users can read them.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.applies(platform=("local",))

LOOPBACK = "127.0.0.1"
DEBUG_LEVELS = ("debug", "all")  # --log-level values that write prompts and request bodies to disk
DEBUG_LINE = re.compile(r"^\S+ \[DEBUG\]", re.MULTILINE)  # the CLI's log line format: `<time> [LEVEL] ...`


@pytest.fixture(scope="module")
def state(fleet_state: Path | None) -> Path:
    if fleet_state is None:
        pytest.skip("host checks need --fleet-state DIR (the local fleet's .fleet/<stack>/); "
                    "copilot-fleet verify passes it for local stacks")
    return fleet_state


@pytest.fixture(scope="module")
def host() -> Any:
    import testinfra

    return testinfra.get_host("local://")


@pytest.fixture(scope="module")
def services(state: Path) -> list[dict[str, Any]]:
    manifest = state / "fleet.json"
    assert manifest.is_file(), f"{manifest} is missing: not a local fleet's state directory"
    return json.loads(manifest.read_text())["services"]


@pytest.fixture(scope="module")
def supervised(host: Any, state: Path) -> dict[str, Any]:
    """supervisord and its children: {"supervisord": process, "children": [processes]}."""
    record = state / "supervisord.json"
    assert record.is_file(), f"{record} is missing: the fleet is not running (copilot-fleet up)"
    pid = json.loads(record.read_text())["pid"]
    found = host.process.filter(pid=pid)
    assert found, f"supervisord (pid {pid} from {record}) is not running"
    return {"supervisord": found[0], "children": host.process.filter(ppid=pid)}


def _matches(service: dict[str, Any], proc: Any) -> bool:
    args = proc.args.split()
    port = str(service["port"])
    if service["kind"] == "cli" and service.get("ready_file"):
        # Store mode: supervisord runs the session store provider, which runs the CLI as its child.
        return "copilot_fleet.sessionstore" in args and port in args and "--port" in args
    if service["kind"] == "cli":
        return "--headless" in args and port in args and "--port" in args
    if service["kind"] == "redis":
        # Redis retitles itself `redis-server 127.0.0.1:PORT`; before that its args name the config file.
        return proc.comm == "redis-server" and (proc.args.endswith(f":{port}") or ".conf" in proc.args)
    if service["kind"] == "haproxy":
        return proc.comm == "haproxy"
    if service["kind"] == "model":
        return "copilot_fleet.testmodel" in args and port in args
    return False


def test_processes_running(host, services, supervised) -> None:
    """host: supervisord and every service (CLIs, Redis, HAProxy, model) running"""
    sup, children = supervised["supervisord"], supervised["children"]
    assert "supervisord" in sup.args, f"pid {sup.pid} is not supervisord: {sup.args[:120]}"
    missing = [s["name"] for s in services if not any(_matches(s, p) for p in children)]
    assert not missing, (f"not running under supervisord: {missing}; its children are "
                         f"{[p.args[:80] for p in children]}")
    providers = [p for p in children if "copilot_fleet.sessionstore" in p.args.split()]
    grandchildren = [c for provider in providers for c in host.process.filter(ppid=provider.pid)]
    clis = [p for p in children + grandchildren if "--headless" in p.args.split()]
    expected = sum(1 for s in services if s["kind"] == "cli")
    assert len(clis) == expected, f"{len(clis)} CLI server processes run, the fleet has {expected}"
    for provider in providers:  # store mode: each provider runs exactly its one CLI
        own = [c for c in grandchildren if c.ppid == provider.pid and "--headless" in c.args.split()]
        assert len(own) == 1, f"session store provider {provider.pid} runs {len(own)} CLI servers, not 1"


def _target_addresses(target) -> list[tuple[str, str]]:
    out = [("endpoint", target.endpoint)] if target.endpoint else []
    out += [("replica", a) for a in target.replicas]
    out += [(f"user {u}", a) for u, a in target.users.items()]
    if target.redis_url is not None:
        url = urlsplit(target.redis_url.get_secret_value())
        out.append(("redis", f"{url.hostname}:{url.port or 6379}"))
    if target.provider is not None:
        url = urlsplit(target.provider.base_url)
        if url.hostname in (LOOPBACK, "localhost"):
            out.append(("model", f"{url.hostname}:{url.port or 80}"))
    return out


def test_ports_on_loopback_only(host, target, services, supervised) -> None:
    """host: ports bound on 127.0.0.1 where the target says, nowhere else"""
    for role, address in _target_addresses(target):
        hostname, _, port = address.rpartition(":")
        assert hostname == LOOPBACK, f"the target's {role} address {address} is not on {LOOPBACK}"
        assert host.socket(f"tcp://{LOOPBACK}:{port}").is_listening, f"nothing listens on {role} {address}"
    for service in services:
        port = service["port"]
        assert host.socket(f"tcp://{LOOPBACK}:{port}").is_listening, f"{service['name']}: {LOOPBACK}:{port} unbound"
        for wildcard in (f"tcp://0.0.0.0:{port}", f"tcp://:::{port}"):
            assert not host.socket(wildcard).is_listening, f"{service['name']} listens on all interfaces ({wildcard})"
    # Any listening socket of any fleet process (not only the expected ports) must be on loopback.
    pids = {supervised["supervisord"].pid} | {p.pid for p in supervised["children"]}
    listing = host.check_output("ss -Htlnp")
    exposed = []
    for line in listing.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        fields = line.split()
        local = fields[3] if len(fields) > 3 else ""
        if owners & pids and not local.startswith((f"{LOOPBACK}:", "[::1]:")):
            exposed.append(line.strip())
    assert not exposed, f"fleet processes listen beyond loopback: {exposed}"


def _mode(host: Any, path: Path) -> int:
    return stat.S_IMODE(host.file(str(path)).mode)


def test_state_modes(host, state) -> None:
    """host: state directories 0700, secret files 0600"""
    wrong = []
    dirs = [state, *(p for p in state.iterdir() if p.is_dir() and not p.is_symlink())]
    dirs += [p for sub in ("servers", "work") for p in (state / sub).glob("*") if p.is_dir() and not p.is_symlink()]
    for d in dirs:
        if _mode(host, d) != 0o700:
            wrong.append(f"{d} is {_mode(host, d):04o}, expected 0700")
    secret_files = [state / "target.json", *(state / "secrets").glob("*"), *(state / "config").glob("*")]
    assert (state / "secrets").is_dir() and any((state / "secrets").iterdir()), f"no secrets under {state}/secrets"
    for f in secret_files:
        if f.is_file() and _mode(host, f) != 0o600:
            wrong.append(f"{f} is {_mode(host, f):04o}, expected 0600")
    assert not wrong, "; ".join(wrong)


@pytest.mark.applies(isolation=("shared-cli", "shared-session"))
def test_redis_requires_auth(host, target, services) -> None:
    """host: Redis refuses clients without the password (NOAUTH)"""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    redis_service = next((s for s in services if s["kind"] == "redis"), None)
    assert redis_service is not None, "the fleet has no Redis service, but its pattern needs the lease store"
    port = redis_service["port"]
    if host.exists("redis-cli"):
        answer = host.run(f"redis-cli -h {LOOPBACK} -p {port} PING")
        assert "NOAUTH" in answer.stdout + answer.stderr, f"redis-cli PING without a password got {answer.stdout!r}"
    # RESP2 and no retries: a plain PING, answered NOAUTH at once (RESP3's HELLO is retried for seconds).
    with pytest.raises(redis.exceptions.AuthenticationError, match="(?i)authentication required"):
        redis.Redis(host=LOOPBACK, port=port, socket_timeout=5, protocol=2, retry=Retry(NoBackoff(), 0)).ping()
    assert target.redis_url is not None
    authed = redis.Redis.from_url(target.redis_url.get_secret_value(), socket_timeout=5)
    try:
        assert authed.ping() is True
    finally:
        authed.close()


def test_cli_not_logging_debug(host, services, supervised) -> None:
    """host: no CLI at --log-level debug/all, no debug lines in logs"""
    for proc in supervised["children"]:
        args = proc.args.split()
        if "--headless" not in args:
            continue
        level = args[args.index("--log-level") + 1] if "--log-level" in args[:-1] else None
        assert level not in DEBUG_LEVELS, f"CLI pid {proc.pid} runs with --log-level {level}: prompts go to disk"
    logs: list[Path] = []
    for service in services:
        if service["kind"] != "cli":
            continue
        logs.append(Path(service["log"]))
        logs += sorted(Path(service["home"], "logs").glob("*.log"))
    assert logs, "found no CLI logs to inspect"
    noisy = [str(p) for p in logs if p.is_file() and DEBUG_LINE.search(host.file(str(p)).content_string)]
    assert not noisy, f"debug lines (full prompts and request bodies) in {noisy}"


def _secret_values(state: Path, target) -> dict[str, str]:
    values = {f"secrets/{p.name}": p.read_text().strip() for p in (state / "secrets").glob("*") if p.is_file()}
    values = {k: v for k, v in values.items() if len(v) >= 8}  # short values would match by chance
    return {**values, **target.secret_values()}


def test_no_secrets_in_process_arguments(host, state, target) -> None:
    """host: no secret in any process's arguments"""
    secrets = _secret_values(state, target)
    assert secrets, "found no secrets to look for"
    leaks = [f"{name} in pid {proc.pid} ({proc.comm})"
             for proc in host.process.filter() for name, value in secrets.items() if value in proc.args]
    assert not leaks, "secrets visible to every user of this machine (ps): " + "; ".join(leaks)
