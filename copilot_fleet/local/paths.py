"""The state directory of a local stack, `<project>/.fleet/<stack>/`, and how it is written.

```
.fleet/                       0700  (gitignored)
  .locks/<stack>.lock               flock: one up/down/status-changing command per stack at a time
  <stack>/                    0700
    fleet.json                0600  what runs: names, kinds, ports, homes, users (status reads it, no secrets)
    target.json               0600  the target (secrets included), written once the fleet is ready
    supervisord.json          0600  PID and start time of supervisord: how `down` finds the fleet
    secrets/                  0700  connection-token, token-<user>, redis-password, model-api-key (0600 each)
    config/                   0700  supervisord.conf, haproxy.cfg, janitor-redis-url (0600: they hold secrets)
    logs/                     0700  one log per process, supervisord.log
    drain/                          <server>: a drained server (out of HAProxy's rotation and target.json)
    run/                      0700  supervisor.sock, haproxy.sock (moved under /tmp when the path is too long)
    servers/<name>/           0700  each server's own COPILOT_HOME (config, logs, session-store.db)
      session-state -> ../../session-state     shared patterns: only session-state/ is shared
    session-state/            0700  shared patterns: the one session-state/ every replica sees
    work/<server>/            0700  each server's own working directory (a session's cwd), as in a pod
    otel/                     0700  <server>.jsonl: each CLI server's OpenTelemetry spans and metrics
    redis/                    0700  redis.conf (0600, holds the password) and Redis' append-only files
```

The last five (`servers`, `session-state`, `work`, `otel`, `redis`) are what the servers themselves use. When `up`
runs as root, the servers run as unprivileged users (accounts.py), which must reach them although the project may
sit below a directory they cannot enter (root's home is 0700): they then live in the fleet's data directory,
`/var/lib/copilot-fleet/fleets/<fleet id>/`, and the state directory holds links of the same names to them. There
the directories they pass through are 0711 (root's, enter but not list) and each server's own directories belong
to its user, 0700.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.stacknames import check_stack_name

FLEET_DIR = ".fleet"
# Root-run fleets: what their unprivileged servers must reach (data directories, the CLI's execute-only copy).
MACHINE_DIR = Path("/var/lib/copilot-fleet")
# What the servers use, in the data root: linked from the state directory when the data root is elsewhere.
DATA_DIRS = ("servers", "session-state", "work", "otel", "redis")
# sun_path holds 108 bytes; keep socket paths well below it.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class StatePaths:
    project_dir: Path
    stack: str

    def __post_init__(self) -> None:
        check_stack_name(self.stack)  # every path below is built from it: never `.`, `..` or a `/`

    @property
    def fleet_dir(self) -> Path:
        return self.project_dir / FLEET_DIR

    @property
    def root(self) -> Path:
        return self.fleet_dir / self.stack

    @property
    def lock_file(self) -> Path:
        # Outside the state dir, so `down --purge` can remove the dir while holding the lock; in a directory whose
        # name no stack can have, so that a stack called `x.lock` cannot collide with stack `x`'s lock.
        return self.fleet_dir / ".locks" / f"{self.stack}.lock"

    @property
    def manifest(self) -> Path:
        return self.root / "fleet.json"

    @property
    def target_file(self) -> Path:
        return self.root / "target.json"

    @property
    def supervisor_record(self) -> Path:
        return self.root / "supervisord.json"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def fleet_id(self) -> str:
        """8 hex digits naming this fleet on the machine (its data directory, its Unix users)."""
        return hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]

    @property
    def data_root(self) -> Path:
        """Where the servers' own directories live: the state directory, or for a fleet started as root (whose
        servers run as unprivileged users) its data directory under /var/lib/copilot-fleet/fleets/."""
        return MACHINE_DIR / "fleets" / self.fleet_id if os.geteuid() == 0 else self.root

    @property
    def servers_dir(self) -> Path:
        return self.data_root / "servers"

    @property
    def shared_session_state(self) -> Path:
        return self.data_root / "session-state"

    @property
    def work_dir(self) -> Path:
        return self.data_root / "work"

    @property
    def redis_dir(self) -> Path:
        return self.data_root / "redis"

    @property
    def supervisord_conf(self) -> Path:
        return self.config_dir / "supervisord.conf"

    @property
    def tasks_conf(self) -> Path:
        return self.config_dir / "tasks.conf"

    @property
    def redis_conf(self) -> Path:
        """In Redis' own directory: Redis reads it as its own user, who may read nothing else of the fleet."""
        return self.redis_dir / "redis.conf"

    @property
    def haproxy_cfg(self) -> Path:
        return self.config_dir / "haproxy.cfg"

    @property
    def run_dir(self) -> Path:
        """Where the unix sockets live: run/ in the state dir, or a per-stack dir under /tmp if that path is too
        long for a socket address."""
        local = self.root / "run"
        if len(str(local / "supervisor.sock")) <= _MAX_SOCKET_PATH:
            return local
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"copilot-fleet-{os.getuid()}-{digest}"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def haproxy_socket(self) -> Path:
        return self.run_dir / "haproxy.sock"

    @property
    def supervisord_pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    def server_home(self, name: str) -> Path:
        return self.servers_dir / name

    def server_work_dir(self, name: str) -> Path:
        """A CLI server's working directory: its own, as each pod's is (files a session's tools write stay with
        the server that ran the turn; only session-state/ moves with a session)."""
        return self.work_dir / name

    @property
    def otel_dir(self) -> Path:
        return self.data_root / "otel"

    def otel_file(self, name: str) -> Path:
        """A CLI server's OpenTelemetry file exporter output (JSON lines)."""
        return self.otel_dir / f"{name}.jsonl"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def secret_file(self, name: str) -> Path:
        return self.secrets_dir / name

    def display(self, path: Path) -> str:
        """A path relative to the project when it is inside it: shorter messages."""
        try:
            return str(path.relative_to(self.project_dir))
        except ValueError:
            return str(path)


def make_private_dir(path: Path) -> Path:
    """mkdir -p with mode 0700 on every directory this creates, and on `path` itself even if it existed.

    `path` itself must not be a link: in a fleet started as root some of these directories sit in a server's own
    home (a per-user server's session-state/), where a session's tool run can put a link, and `up` (root) would
    otherwise chmod whatever it points to (`/usr`, `/etc`). The mode is set through a descriptor opened without
    following a link, so a link swapped in after the check changes nothing either."""
    if path.is_symlink():
        raise LocalFleetError(f"{path} is a link (to {os.readlink(path)}), where a directory of the fleet's own "
                              "belongs; nothing was changed through it. Remove the link (or run down --purge)")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LocalFleetError(f"{path} is not a directory of the fleet's own (a link was put in its place?); "
                              f"nothing was changed through it: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def make_socket_dir(path: Path) -> Path:
    """The directory of the fleet's unix sockets and supervisord's pid file. Under /tmp (a long project path) its
    name is predictable, so another local user could have made it first, or put a link there: supervisord (root)
    would then write its pid file through the owner's links and keep its sockets where that user can swap them.
    It must be a real directory of this process's user; anything else is refused."""
    with suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        what = "a link" if stat.S_ISLNK(st.st_mode) else f"owned by uid {st.st_uid}"
        raise LocalFleetError(f"{path} (the fleet's socket directory) is {what}, not a directory of this user's: "
                              "someone else made it first; nothing was started. Remove it, or move the project to "
                              "a shorter path (the sockets then live in the state directory)")
    return make_private_dir(path)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (no moment where it exists with a wider mode)."""
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def stack_lock(paths: StatePaths, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Serialise commands that change one stack's fleet (two `up`s at once would start two supervisords).
    `on_wait` is called once if another command holds the lock.

    The lock file lives only as long as the stack's state directory: a command that ends with no state directory
    (`down --purge`, an `up` refused before it wrote anything) removes it while still holding it. A command that
    was waiting on that file then holds a lock on a file no longer at the path, which excludes nobody: so after
    every acquisition the locked file is compared with the one at the path (device and inode), and on a mismatch
    the lock is taken again on the file that is there now."""
    make_private_dir(paths.fleet_dir)
    make_private_dir(paths.lock_file.parent)
    waited = False
    while True:
        fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _is_file_at(fd, paths.lock_file):
            break
        os.close(fd)  # closing releases the flock
    try:
        yield
    finally:
        try:
            if not paths.root.exists():
                # Nothing of the stack is left: neither is its lock. Removed while held, so no command can be
                # inside the lock on this file; those waiting on it will see it is gone and lock afresh.
                paths.lock_file.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def started_state(project_dir: Path, stack: str) -> StatePaths:
    """The state of a fleet that was started here, for commands that act on one (status, drain, ...). A stack that
    does not exist gets the error that lists the stacks there are; one never started, the hint to start it."""
    from copilot_fleet.stackfile import stack_file

    paths = StatePaths(project_dir, stack)
    if paths.root.is_dir():
        return paths  # its stack file may be gone: the fleet can still be looked at and stopped
    stack_file(project_dir, stack)  # StackNotFound, naming the stacks there are
    raise LocalFleetError(f"fleet {stack} has never been started here (no {paths.display(paths.root)}); start it "
                          f"with `copilot-fleet up --stack {stack}`")
