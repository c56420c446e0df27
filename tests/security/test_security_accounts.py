"""Who each program of a local fleet runs as: the plan and config files (pure), the Unix users `up` makes and
refuses (root), and a fleet started without root, which says that it is not isolated."""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.local import accounts
from copilot_fleet.local.config_files import haproxy_cfg, supervisord_conf, tasks_conf
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.plan import build_plan, fleet_accounts, secret_names
from copilot_fleet.local.secrets import FleetSecrets, generate
from copilot_fleet.local.tools import Tools
from copilot_fleet.pod import procfs
from copilot_fleet.spec import RawConfig, load_spec
from copilot_fleet.topology import build_topology

TOOLS = Tools(copilot=Path("/opt/copilot"), copilot_version="x", cache_home=Path("/cache"),
              redis_server=Path("/usr/bin/redis-server"), haproxy=Path("/usr/sbin/haproxy"),
              python=Path("/venv/bin/python"))
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="makes Unix users: needs root")


def _plan(tmp_path: Path, **values: Any) -> tuple[Any, FleetSecrets]:
    spec = load_spec(RawConfig(values={"platform": "local", **values}, secret_keys=frozenset(), stack="t"))
    topology = build_topology(spec)
    paths = StatePaths(tmp_path, "t")
    secrets = FleetSecrets(values={n: generate() for n in secret_names(topology)})
    return build_plan(topology, paths, TOOLS, secrets, None, fleet_accounts(topology, paths)), secrets


def _sections(conf: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(conf)
    return parser


def test_each_program_of_a_shared_fleet_has_its_user(tmp_path: Path) -> None:
    plan, secrets = _plan(tmp_path, isolation="shared-cli", replicas=2)
    fid = plan.paths.fleet_id
    assert re.fullmatch(r"[0-9a-f]{8}", fid)
    conf = _sections(supervisord_conf(plan, TOOLS))
    # supervisord switches the CLI replicas (one user: they share one volume) and Redis before they start.
    for name in ("copilot-cli-0", "copilot-cli-1"):
        assert conf[f"program:{name}"]["user"] == f"cf-{fid}-cli"
    assert conf["program:redis"]["user"] == f"cf-{fid}-redis"
    # HAProxy and the model read root-only files first, then drop by themselves.
    assert "user" not in conf["program:haproxy"] and "user" not in conf["program:model"]
    cfg = haproxy_cfg(plan, secrets)
    assert f"\n    user cf-{fid}-lb\n    group cf-{fid}-lb\n" in cfg
    assert conf["program:model"]["command"].endswith(f"--run-as cf-{fid}-model")
    # The janitor stays root (it reads the lease store's password and removes what the CLI user made).
    assert "user=" not in tasks_conf(plan)
    assert plan.manifest()["unix_users"] == sorted([f"cf-{fid}-cli", f"cf-{fid}-redis", f"cf-{fid}-lb",
                                                    f"cf-{fid}-model"])
    cli = plan.cli_programs[0]
    assert cli.env["HOME"] == cli.service.home and cli.service.run_as == f"cf-{fid}-cli"


def test_per_user_fleets_get_one_user_per_fleet_user(tmp_path: Path) -> None:
    users = [{"id": "alice"}, {"id": "bob-smith"}, {"id": "abcdefghij-abcdefghij-abcdefghij-abcdef"}]
    plan, _ = _plan(tmp_path, isolation="per-user", users=users)
    names = [p.service.run_as for p in plan.cli_programs]
    assert len(set(names)) == 3 and all(n and len(n) <= accounts.MAX_NAME for n in names)
    assert all(re.fullmatch(r"cf-[0-9a-f]{8}-u[0-9]+-[a-z0-9-]*", n or "") for n in names), names
    assert plan.accounts is not None and plan.accounts.redis is None and plan.accounts.lb is None


def test_two_projects_get_different_users(tmp_path: Path) -> None:
    one, _ = _plan(tmp_path / "a", isolation="shared-cli")
    two, _ = _plan(tmp_path / "b", isolation="shared-cli")
    assert one.cli_programs[0].service.run_as != two.cli_programs[0].service.run_as


@NEEDS_ROOT
def test_a_user_name_taken_by_someone_else_is_refused(tmp_path: Path) -> None:
    project = h.Project.create(tmp_path / "taken")
    project.local_stack("taken", "shared-cli", replicas=1)
    fid = project.paths("taken").fleet_id
    name = f"cf-{fid}-cli"
    subprocess.run(["useradd", "--system", "--no-create-home", "--comment", "somebody else", name], check=True)
    try:
        proc = project.run("up", "--stack", "taken")
        assert proc.returncode == 1, proc.stdout
        assert f"the Unix user {name} exists but was not made by copilot-fleet" in proc.stderr
        assert project.fleet_pids("taken") == []
        down = project.run("down", "--stack", "taken", "--purge")
        assert down.returncode == 0 and pwd.getpwnam(name).pw_gecos == "somebody else"  # left alone
    finally:
        project.teardown("taken")
        subprocess.run(["userdel", name], check=False)
    assert all(not n.startswith(f"cf-{fid}-") for n in (e.pw_name for e in pwd.getpwall()))


@NEEDS_ROOT
def test_down_purge_finds_what_a_fleet_left_after_its_state_directory_was_deleted(tmp_path: Path) -> None:
    """`rm -r .fleet` by hand used to leave a root-run fleet's Unix users and data directory for good: `down`
    names them and `down --purge` removes them, found again by the fleet id (only this stack's, by their comment)."""
    project = h.Project.create(tmp_path / "leftover")
    project.local_stack("leftover", "shared-cli", replicas=1)
    paths = project.paths("leftover")
    planned = accounts.plan_accounts(paths.fleet_id, "leftover", [("copilot-cli", None)], redis=True, lb=False,
                                     model=False)
    other = accounts.plan_accounts(paths.fleet_id, "another", [("copilot-cli", None)], redis=False, lb=False,
                                   model=False)
    made = sorted(accounts.ensure(planned))
    (paths.data_root / "servers").mkdir(parents=True)
    try:
        assert not paths.root.exists() and made
        told = project.run("down", "--stack", "leftover")
        assert told.returncode == 0, told.stderr
        assert all(name in told.stdout for name in made) and "--purge" in told.stdout
        assert all(accounts.lookup(name) for name in made) and paths.data_root.is_dir()  # only named
        purged = project.run("down", "--stack", "leftover", "--purge")
        assert purged.returncode == 0, purged.stderr
        assert [name for name in made if accounts.lookup(name)] == []
        assert not paths.data_root.exists()
        # a user of the same fleet id but another stack is not this stack's to remove
        assert accounts.of_stack(paths.fleet_id, "another") == []
        accounts.ensure(other)
        again = project.run("down", "--stack", "leftover", "--purge")
        assert again.returncode == 0 and all(accounts.lookup(n) for n in other.all())
    finally:
        for name in sorted(set(planned.all()) | set(other.all())):
            subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(paths.data_root, ignore_errors=True)


# --- not root ---------------------------------------------------------------------------------------------------

@pytest.fixture
def outsider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An unprivileged user and a project directory it owns, in a place it can reach."""
    if os.geteuid() != 0:
        pytest.skip("makes a Unix user: needs root")
    name = f"cfsec{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    where = Path("/tmp") / f"copilot-fleet-outsider-{os.getpid()}"
    try:
        where.mkdir(mode=0o755)
        shutil.chown(where, name, name)
        yield name, where
    finally:
        uid = pwd.getpwnam(name).pw_uid
        for pid in procfs.all_pids():  # whatever a failed `down` left of this test's own user, by PID
            if procfs.user_name(pid) in (name, str(uid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["userdel", name], check=False)


def test_without_root_up_and_status_say_the_fleet_is_not_isolated(outsider: tuple[str, Path]) -> None:
    user, where = outsider
    project_dir = where / "project"
    try:
        subprocess.run([sys.executable, "-c", "pass"], user=user, check=True, capture_output=True)
    except (PermissionError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"this Python ({sys.executable}) cannot be run by another user here: {exc}")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = h.fleet_env(HOME=str(where))
        return subprocess.run([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(project_dir), *args],
                              env=env, capture_output=True, text=True, timeout=180, check=False, user=user,
                              group=user, extra_groups=[], cwd=where)

    h.Project.create(project_dir).local_stack("plain", "shared-cli", replicas=1)
    for path in [project_dir, *project_dir.rglob("*")]:
        shutil.chown(path, user, user)
    try:
        up = run("up", "--stack", "plain")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"NOT ISOLATED: `up` did not run as root, so every program and every session's tool runs run as {user}" \
            in up.stdout
        status = run("status", "--stack", "plain")
        assert status.returncode == 0 and "NOT ISOLATED" in status.stdout.splitlines()[0], status.stdout
        rows = [line.split() for line in status.stdout.splitlines()[2:]]
        assert rows and all(row[-1] == user for row in rows), status.stdout  # RUNS AS: all the same user
        assert not Path("/var/lib/copilot-fleet/fleets", StatePaths(project_dir, "plain").fleet_id).exists()
    finally:
        down = run("down", "--stack", "plain", "--purge")
        assert down.returncode == 0, down.stdout + down.stderr
