"""The Unix users a local fleet's programs run as, when `up` runs as root.

A session's tool run is untrusted code, and it runs as the CLI server's user. As root it could read every secret of
the fleet and every other user's history. So when `up` runs as root, each program gets a system user of its own
and only what it needs:

    cf-<fleet>-cli          the shared CLI replicas (shared-cli, shared-session): one user, as they share one
                            session volume, which the OS cannot split inside one server anyway
    cf-<fleet>-u<i>-<user>  per-user: the CLI server of fleet user <user> (index <i>), one Unix user each
    cf-<fleet>-redis        redis-server: its config (with the password) and its data
    cf-<fleet>-lb           HAProxy, after it read its config and bound its port (HAProxy drops privileges itself)
    cf-<fleet>-model        the test model, after it read its key and bound its port (it drops privileges itself)

`<fleet>` is 8 hex digits of a hash of the state directory's path, so two projects' `local` stacks get different
users. Each user is a system account with its own group, no home and no login shell, and carries a comment
`copilot-fleet <fleet> <stack> <role>`: `up` reuses a user with that comment and refuses a name some other account
already has; `down --purge` deletes the fleet's users. supervisord, the janitor and the recycler stay root: they
manage the others (the janitor removes files the CLI user made and reads the lease store's password, which no CLI
user may read; it never follows a link).

Not root: every program runs as the user who ran `up`, the OS keeps nothing apart, and `up` and `status` say so.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.pod import procfs

MAX_NAME = 32  # useradd's limit
NOLOGIN = "/usr/sbin/nologin"
_RETRIES = 5  # useradd/userdel fail while another one holds /etc/passwd's lock (exit status 10 or 1)


def privileged() -> bool:
    """True when this process can create users and hand programs to them (root)."""
    return os.geteuid() == 0


@dataclass(frozen=True)
class FleetAccounts:
    """The Unix user of each role, decided from the fleet's id and users; nothing on the system yet."""

    fleet_id: str  # 8 hex digits
    stack: str
    cli: dict[str, str] = field(default_factory=dict)  # CLI group name -> user name
    redis: str | None = None
    lb: str | None = None
    model: str | None = None

    def comment(self, role: str) -> str:
        return f"copilot-fleet {self.fleet_id} {self.stack} {role}"

    def all(self) -> dict[str, str]:
        """user name -> role, for creating and deleting them."""
        roles = {name: f"cli {group}" for group, name in self.cli.items()}
        for role in ("redis", "lb", "model"):
            if (name := getattr(self, role)) is not None:
                roles[name] = role
        return roles


def _name(fleet_id: str, role: str) -> str:
    return f"cf-{fleet_id}-{role}"[:MAX_NAME]


def user_role(index: int, user: str) -> str:
    """`u<index>-<user>`: lower case, characters useradd takes, cut to fit; the index keeps it unique."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-") or "user"
    return f"u{index}-{cleaned}"


def plan_accounts(fleet_id: str, stack: str, cli_groups: list[tuple[str, str | None]], *, redis: bool, lb: bool,
                  model: bool) -> FleetAccounts:
    """The users of a fleet: `cli_groups` is (group name, fleet user or None for the shared replicas)."""
    cli: dict[str, str] = {}
    index = 0
    for group, user in cli_groups:
        if user is None:
            cli[group] = _name(fleet_id, "cli")
        else:
            cli[group] = _name(fleet_id, user_role(index, user))
            index += 1
    return FleetAccounts(fleet_id=fleet_id, stack=stack, cli=cli, redis=_name(fleet_id, "redis") if redis else None,
                         lb=_name(fleet_id, "lb") if lb else None, model=_name(fleet_id, "model") if model else None)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def lookup(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _owned_by_fleet(name: str, accounts: FleetAccounts) -> bool:
    try:
        gecos = pwd.getpwnam(name).pw_gecos
    except KeyError:
        return False
    return gecos.startswith(f"copilot-fleet {accounts.fleet_id} ")


def _run(argv: list[str], what: str) -> None:
    """useradd/userdel, retried while another one holds the password file's lock."""
    for attempt in range(_RETRIES):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode == 0:
            return
        locked = "lock" in proc.stderr.lower()
        if not locked or attempt == _RETRIES - 1:
            raise LocalFleetError(f"{what} failed (`{' '.join(argv)}`, exit {proc.returncode}): "
                                  f"{proc.stderr.strip()[-400:]}")
        time.sleep(0.2 * (attempt + 1))


def ensure(accounts: FleetAccounts) -> dict[str, Account]:
    """Create the fleet's users that do not exist yet (idempotent); every name -> its Account. A name held by an
    account copilot-fleet did not make for this fleet is refused: its files would become the fleet's."""
    useradd = shutil.which("useradd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    made: dict[str, Account] = {}
    for name, role in accounts.all().items():
        if lookup(name) is not None and not _owned_by_fleet(name, accounts):
            raise LocalFleetError(f"the Unix user {name} exists but was not made by copilot-fleet for this fleet "
                                  f"(its comment is not '{accounts.comment(role)}'); nothing was started. Remove "
                                  "it or move the project (the user names derive from the state directory's path)")
        if lookup(name) is None:
            if useradd is None:
                raise LocalFleetError("useradd was not found (Debian package passwd): copilot-fleet runs each server "
                                      "as a user of its own when started as root")
            _run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                  "--shell", NOLOGIN, "--comment", accounts.comment(role), name], f"creating the Unix user {name}")
        account = lookup(name)
        assert account is not None, name
        made[name] = account
    return made


def of_stack(fleet_id: str, stack: str) -> list[str]:
    """The users on this machine whose comment marks them as this fleet's and this stack's: what `down --purge`
    removes when the state directory that listed them is gone (deleted by hand)."""
    mark = f"copilot-fleet {fleet_id} {stack} "
    return sorted(entry.pw_name for entry in pwd.getpwall() if entry.pw_gecos.startswith(mark))


def _uids(pid: int) -> set[int]:
    """Real, effective, saved and file-system uid of a process (empty when it is gone)."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    except (OSError, StopIteration):
        return set()
    return {int(u) for u in line.split()[1:]}


def processes_of(uids: set[int]) -> list[int]:
    """Live processes running as any of `uids` (by any of their uids)."""
    return [pid for pid in procfs.all_pids() if _uids(pid) & uids and procfs.is_alive(pid)]


def stop_processes(names: list[str], fleet_id: str, rounds: int = 20) -> list[str]:
    """SIGKILL every process that runs as one of the fleet's users (only users whose comment marks them as this
    fleet's); returns what was stopped, described. supervisord's session is not enough: a session's tool run can
    leave its server's session (`setsid`, and the CLI's shell tool starts each command in a session of its own), so
    it would outlive `down`, hold the fleet's ports for the next `up` (whose probes then hand it the connection
    token) and keep `userdel` from removing its user. Each user's processes are signalled by a helper running as
    that user (`kill -9 -1`: every process of the user at once, so none can fork past a scan); bounded rounds for
    what is forked meanwhile."""
    accounts = {name: a for name in names if (a := lookup(name)) is not None
                and pwd.getpwnam(name).pw_gecos.startswith(f"copilot-fleet {fleet_id} ")}
    uids = {a.uid for a in accounts.values()}
    if not uids:
        return []
    stopped = {pid: procfs.describe(pid) for pid in processes_of(uids)}
    for _ in range(rounds):
        if not processes_of(uids):
            return list(stopped.values())
        for account in accounts.values():
            subprocess.run(["/bin/sh", "-c", "kill -9 -1"], user=account.uid, group=account.gid, extra_groups=[],
                           env={"PATH": "/usr/bin:/bin"}, cwd="/", stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, check=False)
        deadline = time.monotonic() + 5.0
        while (left := processes_of(uids)) and time.monotonic() < deadline:
            stopped.update({pid: procfs.describe(pid) for pid in left if pid not in stopped})
            time.sleep(0.02)
    left = processes_of(uids)
    if left:
        raise LocalFleetError("processes of the fleet's users could not be stopped: "
                              + ", ".join(procfs.describe(p) for p in left))
    return list(stopped.values())


def remove(names: list[str], fleet_id: str) -> list[str]:
    """Delete the fleet's users (only those whose comment marks them as this fleet's); returns the names deleted.
    Their processes must be gone (userdel refuses a user that still runs something)."""
    userdel = shutil.which("userdel", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    deleted = []
    for name in names:
        try:
            gecos = pwd.getpwnam(name).pw_gecos
        except KeyError:
            continue
        if not gecos.startswith(f"copilot-fleet {fleet_id} ") or userdel is None:
            continue
        _run([userdel, name], f"deleting the Unix user {name}")
        deleted.append(name)
    return deleted
