"""A local fleet to break: a throwaway project with free ports, started with `copilot-fleet up` and stopped by PID.

The fleet runs exactly as users run it (the `copilot-fleet` command as a subprocess, supervisord, the real CLI,
redis-server, HAProxy, the test model), on 127.0.0.1 only. With `private_mounts` (root and `unshare` needed) `up`
runs in a private mount namespace: supervisord and every server live in it, so the storage faults can mount a
read-only bind or a tiny tmpfs over the shared `session-state/` (`nsenter`) without any other process on the
machine seeing it, and nothing is left mounted once the fleet's processes are gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from copilot_fleet.errors import FleetError
from copilot_fleet.local import probes
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.supervisor import Supervisor, read_record
from copilot_fleet.pod import procfs
from copilot_fleet.pod.ports import free_port_block
from copilot_fleet.target import Target, load_target

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the fault suite is not installed
PROJECT_CLI = ROOT / ".tools/npm/node_modules/@github/copilot-linux-x64/copilot"
PROJECT_CACHE = ROOT / ".tools/copilot-cache"



class FleetFault(FleetError, RuntimeError):
    """The fleet under test could not be started, reached or restored."""


def fleet_env(**overrides: str | None) -> dict[str, str]:
    """The environment for `copilot-fleet`: the project's CLI and its warm runtime cache unless set already."""
    env = dict(os.environ)
    if PROJECT_CLI.is_file():
        env.setdefault("COPILOT_CLI_PATH", str(PROJECT_CLI))
        env.setdefault("COPILOT_CACHE_HOME", str(PROJECT_CACHE))
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def private_mounts_available() -> str | None:
    """None if `up` can run in a private mount namespace here, else why not."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace and mounts); run as root or skip the storage faults"
    for tool in ("unshare", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                          text=True, timeout=10, check=False)
    if proc.returncode != 0:
        return f"unshare --mount failed here: {proc.stderr.strip()}"
    return None


def write_project(where: Path) -> None:
    """A minimal Pulumi project directory: Pulumi.yaml and stacks/."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (where / "stacks").mkdir(exist_ok=True)


def write_stack(project_dir: Path, stack: str, fleet: Mapping[str, Any]) -> Path:
    path = project_dir / "stacks" / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"fleet:{k}": v for k, v in fleet.items()}}))
    return path


def run_cli(project_dir: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 180,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`copilot-fleet --project-dir DIR ARGS...` as a subprocess (optionally behind a command prefix)."""
    return subprocess.run([*prefix, sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(project_dir),
                           *args], env=dict(env) if env is not None else fleet_env(), capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Identity:
    """What must survive a restart of a replica: its port, its COPILOT_HOME and the storage behind it."""

    address: str
    home: str
    session_state: str  # where the home's session-state link resolves to
    state_inode: int

    def differences(self, other: Identity) -> list[str]:
        return [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}"
                for name in ("address", "home", "session_state", "state_inode")
                if getattr(self, name) != getattr(other, name)]


class FleetUnderTest:
    """One local shared-cli or shared-session fleet in `workdir`, for fault runs. Use as a context manager."""

    def __init__(self, workdir: Path, *, stack: str = "faults", isolation: str = "shared-cli", replicas: int = 3,
                 private_mounts: bool = True, extra: Mapping[str, Any] | None = None) -> None:
        self.dir = workdir
        self.stack = stack
        self.isolation = isolation
        self.replica_count = replicas
        self.extra = dict(extra or {})
        why_not = private_mounts_available() if private_mounts else "not asked for"
        self.private_mounts = why_not is None
        self.private_mounts_reason = why_not
        self.paths = StatePaths(workdir, stack)
        self._target: Target | None = None
        self.up_seconds = 0.0

    # -- life cycle --------------------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        write_project(self.dir)
        base = free_port_block(self.replica_count + 3)
        n = self.replica_count
        fleet: dict[str, Any] = {
            "isolation": self.isolation, "platform": "local", "replicas": n,
            "local": {"replicaBasePort": base, "endpointPort": base + n, "redisPort": base + n + 1,
                      "modelPort": base + n + 2},
            **self.extra,
        }
        write_stack(self.dir, self.stack, fleet)
        prefix = ("unshare", "--mount", "--propagation", "private") if self.private_mounts else ()
        began = time.monotonic()
        proc = run_cli(self.dir, "up", "--stack", self.stack, "--timeout", str(int(min(timeout, 3600))),
                       prefix=prefix, timeout=timeout + 60)
        self.up_seconds = time.monotonic() - began
        if proc.returncode != 0:
            self.stop()
            raise FleetFault(f"copilot-fleet up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        self._target = load_target(self.paths.target_file)

    @classmethod
    def attach(cls, workdir: Path, stack: str = "faults") -> FleetUnderTest:
        """A fleet some earlier `start()` left running (for iterating on one scenario)."""
        doc = yaml.safe_load((workdir / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
        fleet = cls(workdir, stack=stack, isolation=doc["fleet:isolation"], replicas=int(doc["fleet:replicas"]),
                    private_mounts=False)
        record = read_record(fleet.paths)
        if record is None or not record.alive():
            raise FleetFault(f"no running fleet {stack} in {workdir}")
        fleet.private_mounts = os.readlink(f"/proc/{record.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        fleet.private_mounts_reason = None if fleet.private_mounts else "attached to a fleet without one"
        fleet._target = load_target(fleet.paths.target_file)
        return fleet

    def stop(self) -> list[int]:
        """`down --purge`; then SIGKILL whatever of the fleet's session `down` left (members of supervisord's
        session only, so a reused PID is never hit). Returns PIDs still alive 10 s later (none expected)."""
        record = read_record(self.paths)
        pids = self.fleet_pids()
        try:
            if self.paths.root.exists():
                run_cli(self.dir, "down", "--stack", self.stack, "--purge", timeout=120)
        finally:
            for pid in pids:
                if record is not None and procfs.session_id(pid) == record.pid and procfs.is_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (alive := [p for p in pids if record is not None and procfs.session_id(p) == record.pid
                         and procfs.is_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive

    def __enter__(self) -> FleetUnderTest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what runs ---------------------------------------------------------------------------------------------

    @property
    def target(self) -> Target:
        if self._target is None:
            raise FleetFault("the fleet is not started")
        return self._target

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.paths)

    def fleet_pids(self) -> list[int]:
        record = read_record(self.paths)
        return procfs.session_members(record.pid) if record else []

    @property
    def anchor_pid(self) -> int:
        """supervisord: the process whose mount namespace the fleet lives in."""
        record = read_record(self.paths)
        if record is None or not record.alive():
            raise FleetFault("the fleet's supervisord is not running")
        return record.pid

    def replica_names(self) -> list[str]:
        return [f"copilot-cli-{i}" for i in range(self.replica_count)]

    def address_of(self, name: str) -> str:
        return self.target.replicas[self.replica_names().index(name)]

    def name_of(self, address: str) -> str:
        return self.replica_names()[self.target.replicas.index(address)]

    def pid(self, name: str) -> int | None:
        info = self.supervisor.processes().get(name, {})
        pid = int(info.get("pid") or 0)
        return pid if pid and info.get("statename") == "RUNNING" else None

    def healthy(self, name: str, timeout: float = 1.5) -> bool:
        """A real JSON-RPC round trip with the fleet's token."""
        return probes.probe_jsonrpc(self.address_of(name), self.target.token_for(), timeout=timeout).ok

    def healthy_replicas(self) -> list[str]:
        return [n for n in self.replica_names() if self.pid(n) and self.healthy(n)]

    def wait_healthy(self, names: Sequence[str] | None = None, timeout: float = 60.0) -> bool:
        wanted = list(names or self.replica_names())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.pid(n) and self.healthy(n) for n in wanted):
                return True
            time.sleep(0.2)
        return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.pid(name)
        if pid is None:
            raise FleetFault(f"{name} is not running")
        os.kill(pid, sig)
        return pid

    # -- identity and storage ----------------------------------------------------------------------------------

    def identity(self, name: str) -> Identity:
        pid = self.pid(name)
        if pid is None:
            raise FleetFault(f"{name} is not running")
        env = procfs.environ(pid) or {}
        home = env.get("COPILOT_HOME", "")
        link = Path(home) / "session-state"
        resolved = os.path.realpath(link)
        return Identity(address=self._listening_address(pid) or "?", home=home, session_state=resolved,
                        state_inode=os.stat(resolved).st_ino)

    def _listening_address(self, pid: int) -> str | None:
        """The 127.0.0.1 port this process listens on (from /proc/net/tcp and its socket inodes)."""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            return None
        try:
            lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ip_hex, port_hex = cols[1].split(":")
                ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
                return f"{ip}:{int(port_hex, 16)}"
        return None

    def view(self, path: Path) -> Path:
        """`path` as the fleet's servers see it (through their mount namespace when it is private)."""
        if not self.private_mounts:
            return path
        return Path(f"/proc/{self.anchor_pid}/root") / path.relative_to("/")

    def in_namespace(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the fleet's mount namespace (mount, umount, dd, ...)."""
        if not self.private_mounts:
            raise FleetFault(f"the fleet has no private mount namespace: {self.private_mounts_reason}")
        proc = subprocess.run(["nsenter", "--target", str(self.anchor_pid), "--mount", "--", *command],
                              capture_output=True, text=True, timeout=30, check=False)
        if check and proc.returncode != 0:
            raise FleetFault(f"{' '.join(command)} failed in the fleet's namespace: {proc.stderr.strip()}")
        return proc

    @property
    def session_state(self) -> Path:
        return self.paths.shared_session_state
