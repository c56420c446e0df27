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
import struct
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


# Ports below 1024 (fleet:local.replicaBasePort < 1024, root only). Any user may bind a free port above 1023, so a
# tool run that kills its own server could take the server's port and be sent the connection token by HAProxy's
# check and by every client. Below 1024 only a process with CAP_NET_BIND_SERVICE may bind: the CLI gets it as a file
# capability on a copy of its own, and loses it in whatever it executes (a tool run's shell has no file capability,
# and the CLI gets no inheritable or ambient capability to pass on). Each CLI user reaches the copy through a
# directory of root's whose group is that user's own, so no other user of the machine can run it:
#
#     <sealed copy's dir>/lowports/                 0711 root
#     <sealed copy's dir>/lowports/.capable/        0700 root   copilot: 0711, security.capability = net_bind_service+ep
#     <sealed copy's dir>/lowports/<user>/          0710 root:<user's group>
#     <sealed copy's dir>/lowports/<user>/copilot   a hard link to .capable/copilot

LOW_PORTS_DIR = "lowports"
_CAP_NET_BIND_SERVICE = 10
# struct vfs_cap_data, revision 2 (linux/capability.h): magic with the "effective" flag, then permitted and
# inheritable for capabilities 0-31, then for 32-63. Written as an xattr directly: no setcap (libcap2-bin) needed.
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_FLAGS_EFFECTIVE = 0x1
BIND_CAPABILITY = struct.pack("<5I", _VFS_CAP_REVISION_2 | _VFS_CAP_FLAGS_EFFECTIVE,
                              1 << _CAP_NET_BIND_SERVICE, 0, 0, 0)


def low_ports_copy(sealed_copilot: Path, user: str) -> Path:
    """The CLI that `user`'s servers run when they listen below 1024 (made by grant_low_ports)."""
    return sealed_copilot.parent / LOW_PORTS_DIR / user / "copilot"


def _capability(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return None


def is_low_ports_copy(path: Path) -> bool:
    """True for a path made by low_ports_copy."""
    return len(path.parents) > 3 and path.parents[1].name == LOW_PORTS_DIR and path.name == "copilot"


def grant_low_ports(copy: Path, user: str, gid: int) -> Path:
    """Make `copy` (a `low_ports_copy(sealed, user)`): runnable by `user` (group `gid`) and root only."""
    sealed_copilot = copy.parents[2] / "copilot"
    if copy != low_ports_copy(sealed_copilot, user):
        raise LocalFleetError(f"{copy} is not where the CLI of {user} that may bind ports below 1024 is kept")
    if not is_execute_only(sealed_copilot):
        raise LocalFleetError(f"fleet:local.replicaBasePort below 1024 needs the CLI binary; {sealed_copilot} is a "
                              "script (a file capability on it would not reach the CLI it starts)")
    root = sealed_copilot.parent / LOW_PORTS_DIR
    with open(CLI_DIR / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _traversable(root)
        capable_dir = root / ".capable"
        capable_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(capable_dir, 0o700)
        capable = capable_dir / "copilot"
        if _capability(capable) != BIND_CAPABILITY:
            partial = capable_dir / ".copilot.partial"
            shutil.copyfile(sealed_copilot, partial)
            os.chmod(partial, 0o711)
            try:
                os.setxattr(partial, "security.capability", BIND_CAPABILITY)
            except OSError as exc:
                partial.unlink()
                raise LocalFleetError(f"cannot give {capable} the capability to bind ports below 1024 ({exc}); the "
                                      f"file system of {CLI_DIR} must keep security.* extended attributes") from exc
            os.replace(partial, capable)
        user_dir = root / user
        if user_dir.is_symlink() or (user_dir.exists() and not user_dir.is_dir()):
            raise LocalFleetError(f"{user_dir} is not a directory copilot-fleet made; remove it")
        user_dir.mkdir(mode=0o710, exist_ok=True)
        os.chown(user_dir, 0, gid, follow_symlinks=False)
        os.chmod(user_dir, 0o710, follow_symlinks=False)
        link = user_dir / "copilot"
        if not (link.exists() and os.path.samestat(link.lstat(), capable.lstat())):
            staged = user_dir / ".copilot.link"
            staged.unlink(missing_ok=True)
            os.link(capable, staged)
            os.replace(staged, link)
    return link


def revoke_low_ports(user: str) -> None:
    """Remove `user`'s way to the capable CLI of every copy (when the user is deleted: its group id may be reused)."""
    if not CLI_DIR.is_dir():
        return
    for copy in CLI_DIR.iterdir():
        user_dir = copy / LOW_PORTS_DIR / user
        if copy.is_dir() and not copy.is_symlink() and user_dir.is_dir() and not user_dir.is_symlink():
            shutil.rmtree(user_dir)
