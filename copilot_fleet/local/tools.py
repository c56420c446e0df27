"""The programs a local fleet runs, found and checked before anything starts.

- The Copilot CLI: $COPILOT_CLI_PATH (as the SDK reads it), else the project's npm install
  (`.tools/npm/node_modules/@github/copilot-linux-x64/copilot`, what scripts/setup.sh installs), else `copilot` on
  PATH. Its `--version` must equal copilot_fleet.CLI_VERSION: the SDK release pins exactly one CLI build.
- redis-server and haproxy (Debian packages), only for the patterns that use them. $COPILOT_FLEET_REDIS_SERVER
  and $COPILOT_FLEET_HAPROXY override where they are looked up.
- supervisord: the `supervisor` package of this Python environment (`python -m supervisor.supervisord`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from copilot_fleet import CLI_VERSION
from copilot_fleet.local.errors import LocalFleetError

NPM_CLI = Path(".tools/npm/node_modules/@github/copilot-linux-x64/copilot")
SETUP_HINT = "bash scripts/setup.sh installs it (npm @github/copilot-linux-x64@" + CLI_VERSION + ")"
APT_HINT = "install it with: apt-get install -y redis-server haproxy"
# Debian puts haproxy in /usr/sbin, which is not on every user's PATH.
_SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_VERSION = re.compile(r"(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class Tools:
    copilot: Path
    copilot_version: str
    cache_home: Path  # COPILOT_CACHE_HOME: where the CLI unpacks its runtime (once, shared by every server)
    redis_server: Path | None
    haproxy: Path | None
    python: Path  # runs supervisord and the test model

    def supervisord_command(self, conf: Path) -> list[str]:
        return [str(self.python), "-m", "supervisor.supervisord", "-c", str(conf)]


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_copilot(project_dir: Path, env: Mapping[str, str]) -> Path:
    explicit = env.get("COPILOT_CLI_PATH")
    if explicit:
        path = Path(explicit)
        if not _executable(path):
            raise LocalFleetError(f"COPILOT_CLI_PATH is {explicit}, which is not an executable file; unset it to use "
                                  f"the project's CLI, or point it at the Copilot CLI {CLI_VERSION} ({SETUP_HINT})")
        return path
    bundled = project_dir / NPM_CLI
    if _executable(bundled):
        return bundled
    on_path = shutil.which("copilot", path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    raise LocalFleetError(f"the Copilot CLI {CLI_VERSION} was not found (looked at $COPILOT_CLI_PATH, {bundled} and "
                          f"PATH): {SETUP_HINT}")


def copilot_cache_home(project_dir: Path, copilot: Path, env: Mapping[str, str]) -> Path:
    """One cache for every server, so the 235 MB runtime unpacks once: $COPILOT_CACHE_HOME, else next to the
    project's npm install (.tools/copilot-cache), else the CLI's own default (~/.cache/copilot)."""
    if env.get("COPILOT_CACHE_HOME"):
        return Path(env["COPILOT_CACHE_HOME"])
    tools_dir = (project_dir / ".tools").resolve()
    if copilot.resolve().is_relative_to(tools_dir):
        return tools_dir / "copilot-cache"
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "copilot"


def check_copilot_version(copilot: Path, cache_home: Path, env: Mapping[str, str]) -> str:
    """`copilot --version` must print CLI_VERSION. The first run also unpacks the runtime into the cache, so the
    servers started afterwards do not race to unpack it."""
    run_env = {k: v for k, v in env.items() if not k.startswith("COPILOT_")}
    run_env.update(COPILOT_CACHE_HOME=str(cache_home), COPILOT_AUTO_UPDATE="false")
    try:
        proc = subprocess.run([str(copilot), "--version"], capture_output=True, text=True, timeout=60,
                              env=run_env, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalFleetError(f"cannot run {copilot} --version: {exc}; {SETUP_HINT}") from exc
    match = _VERSION.search(proc.stdout)
    if proc.returncode != 0 or not match:
        detail = (proc.stderr or proc.stdout).strip()[-300:]
        raise LocalFleetError(f"{copilot} --version failed (exit {proc.returncode}): {detail}; {SETUP_HINT}")
    if match.group(1) != CLI_VERSION:
        raise LocalFleetError(f"{copilot} is Copilot CLI {match.group(1)}, but github-copilot-sdk pins exactly "
                              f"{CLI_VERSION}; {SETUP_HINT}")
    return match.group(1)


def find_system_tool(name: str, override_var: str, env: Mapping[str, str]) -> Path:
    explicit = env.get(override_var)
    if explicit:
        if not _executable(Path(explicit)):
            raise LocalFleetError(f"{override_var} is {explicit}, which is not an executable file; unset it or "
                                  f"{APT_HINT}")
        return Path(explicit)
    search = os.pathsep.join([env.get("PATH", ""), *_SYSTEM_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise LocalFleetError(f"{name} was not found (looked on PATH and in {', '.join(_SYSTEM_DIRS)}): {APT_HINT}")
    return Path(found)


def locate_tools(project_dir: Path, env: Mapping[str, str], *, redis: bool, haproxy: bool) -> Tools:
    """Everything the fleet will run, or a LocalFleetError saying what is missing and how to install it."""
    missing: list[str] = []
    redis_path = haproxy_path = None
    if redis:
        try:
            redis_path = find_system_tool("redis-server", "COPILOT_FLEET_REDIS_SERVER", env)
        except LocalFleetError as exc:
            missing.append(str(exc))
    if haproxy:
        try:
            haproxy_path = find_system_tool("haproxy", "COPILOT_FLEET_HAPROXY", env)
        except LocalFleetError as exc:
            missing.append(str(exc))
    if importlib.util.find_spec("supervisor") is None:
        missing.append(f"the Python package supervisor is not installed in {sys.prefix}: "
                       f"{sys.executable} -m pip install supervisor")
    try:
        copilot = find_copilot(project_dir, env)
        cache_home = copilot_cache_home(project_dir, copilot, env)
        version = check_copilot_version(copilot, cache_home, env)
    except LocalFleetError as exc:
        missing.insert(0, str(exc))
    if missing:
        raise LocalFleetError("cannot start the fleet:\n" + "\n".join(f"  - {m}" for m in missing))
    return Tools(copilot=copilot, copilot_version=version, cache_home=cache_home, redis_server=redis_path,
                 haproxy=haproxy_path, python=Path(sys.executable))
