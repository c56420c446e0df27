"""The Copilot CLI as the fleet's unprivileged users run it: an execute-only copy, and a runtime cache they can read.

Why a copy: Linux makes a process non-dumpable when it executes a file its user cannot read. A non-dumpable process
keeps its `/proc/<pid>/environ` (and memory) from every other process of the same user. The CLI gets its
connection token through its environment (CLI 1.0.102 takes it from nowhere else, and deletes it from
`process.env` at start, which does not change what `/proc/<pid>/environ` shows). Measured here: a tool run as the
CLI's own user read the token from `/proc/<cli>/environ` when the binary was readable, and got "Permission denied"
when it was a root-owned 0711 copy; the CLI works the same either way.

Why here: the unprivileged users must reach the binary and the 235 MB runtime the CLI unpacks into its cache, and the
project may sit below a directory they cannot enter (root's home is 0700). One copy per CLI build and machine:

    /var/lib/copilot-fleet/cli/<version>-<build key>/copilot   0711 root   (execute-only)
    /var/lib/copilot-fleet/cli/<version>-<build key>/cache/    0755 root   COPILOT_CACHE_HOME, unpacked once

The build key is a hash of the source binary's device, inode, size and mtime: a reinstalled CLI gets a new copy.
The CLI, run as another user, cannot write its in-use markers into the root-owned cache; measured: it runs anyway.
Nothing removes old copies (several fleets may share one): `rm -r /var/lib/copilot-fleet/cli` when no fleet runs.

A `$COPILOT_CLI_PATH` that is a script (a wrapper) cannot be made execute-only (its interpreter must read it), and
what it executes is not this copy: it is copied readable, and `up` says that the CLI's environment is then open to
its tool runs (`is_execute_only`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import MACHINE_DIR

CLI_DIR = MACHINE_DIR / "cli"


@dataclass(frozen=True)
class SealedCli:
    copilot: Path
    cache_home: Path


def _build_key(source: Path, binary: bool) -> str:
    """The binary's identity on disk (hashing 190 MB would cost a second per `up`); a script's content (small, and
    the same script made again is the same copy)."""
    if not binary:
        return "script-" + hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    st = source.stat()
    return hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _traversable(path: Path) -> None:
    path.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(path, 0o711)


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def is_execute_only(path: Path) -> bool:
    """True for a copy made here that its users can execute but not read (so its processes are non-dumpable)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return path.is_relative_to(CLI_DIR) and st.st_uid == 0 and (st.st_mode & 0o777) == 0o711


def _unpacked(cache: Path) -> bool:
    return any(cache.glob("pkg/*/*/.extraction-complete"))


def seal(source: Path, version: str) -> SealedCli:
    """The execute-only copy of `source` and its unpacked cache, made once (concurrent `up`s wait for each other)."""
    _traversable(MACHINE_DIR)
    _traversable(CLI_DIR)
    binary = _is_binary(source)
    home = CLI_DIR / f"{version}-{_build_key(source, binary)}"
    sealed = SealedCli(copilot=home / "copilot", cache_home=home / "cache")
    with open(CLI_DIR / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if sealed.copilot.is_file() and (_unpacked(sealed.cache_home) or not binary):
            return sealed
        _traversable(home)
        if not sealed.copilot.is_file():
            partial = home / ".copilot.partial"
            shutil.copyfile(source, partial)
            os.chmod(partial, 0o711 if binary else 0o755)
            os.replace(partial, sealed.copilot)
        # Unpack as root, readable by everyone (no secret in it); the servers only read it.
        proc = subprocess.run([str(sealed.copilot), "--version"], capture_output=True, text=True, timeout=300,
                              check=False, stdin=subprocess.DEVNULL, umask=0o022,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                                   "COPILOT_CACHE_HOME": str(sealed.cache_home), "COPILOT_AUTO_UPDATE": "false"})
        if proc.returncode != 0 or (binary and not _unpacked(sealed.cache_home)):
            raise LocalFleetError(f"could not prepare the CLI copy in {home} ({sealed.copilot} --version exited "
                                  f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()[-400:]}")
        sealed.cache_home.mkdir(mode=0o755, exist_ok=True)
        os.chmod(sealed.cache_home, 0o755)
    return sealed
