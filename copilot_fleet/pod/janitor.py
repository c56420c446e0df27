"""The janitor: remove sessions nobody has touched for a TTL from a `session-state/` directory, never an attached one.

The same code runs as the Kubernetes CronJob (against the shared volume) and for local fleets:

    python -m copilot_fleet.pod.janitor --session-state DIR --ttl 7d [--redis-url-file F] [--dry-run] [--json]
    python -m copilot_fleet.pod.janitor --store-scope SCOPE [--store-scope ...] --ttl 7d --redis-url-file F

In store mode (`--store-scope`, the session store of fleet:sessionState.mode store) there is no directory: each
scope's sessions idle longer than the TTL are deleted from the store (copilot_fleet.sessionstore.admin.cleanup),
each under a lease the janitor takes itself, so a leased (attached, or being attached) session is skipped, and one
modified since the listing is kept. The lease store is then required: it is the store.

What it removes, per session directory `DIR/<id>/` whose age exceeds the TTL:
- the directory (renamed into `DIR/.copilot-fleet-janitor/` first, so the CLI sees it vanish at once, then deleted);
- its `DIR/.session-operation-locks/<id>.lock` (the CLI leaves it behind, also after its own delete).
And, with no session directory at all: orphan `.session-operation-locks/<id>.lock` files older than a grace period.

Age is measured from the newest of: `events.jsonl` mtime (every turn appends to it), `workspace.yaml` mtime, its
`updated_at`, and the directory's own mtime (changes when a CLI attaches and creates its `inuse.*` files). Taking
the newest is the conservative choice: a clock or parse problem keeps a session, it never deletes one.

What protects an attached session, checked in this order, each after the age check:
1. the fleet client's lease (with `--redis-url-file`): the janitor takes `copilot-fleet:lease:<id>` itself, exactly
   as a FleetClient would, and holds it while deleting. A held lease means attached: skipped. While the janitor
   holds it no FleetClient can attach the session. A lease store that cannot be reached stops the run before
   anything is deleted (fail closed), exit status 1.
2. the CLI's own in-use lock: while a CLI has a session attached (from its creation, or from the first turn after a
   resume) it holds an exclusive `flock` on `DIR/<id>/inuse.<pid>.hold`. The janitor tries a non-blocking flock on
   each such file; if a CLI holds one, the session is attached: skipped. (A crashed CLI's lock dies with it.)
3. the age is read again under the lease, so a turn that landed between the scan and the lease keeps the session.
A session that a CLI resumed but has not sent a turn to yet leaves no trace on disk: only the lease covers it,
which is why fleets with shared storage always run the janitor with the lease store.

The CLI's per-replica `session-store.db` (a search index, not the history) keeps its rows for removed sessions;
the CLI tolerates that, and the rows go when the replica's home is recycled.

Links are never followed. Anything that can run a shell command in a session (a tool run) can write to the session
volume, so every name inside it is untrusted: the janitor works through directory file descriptors opened with
O_NOFOLLOW, moves and deletes by name relative to them, and never reads or removes what a symbolic link points to.
A link where it expects its own trash or lock directory is reported as an error and removed (only the link).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import fnmatch
import json
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from copilot_fleet.argtypes import seconds_between, secret_from_file_or_env
from copilot_fleet.sessiondir import EVENTS, INUSE_HOLD_GLOB, LOCKS_DIR, WORKSPACE, is_session_id, operation_lock

if TYPE_CHECKING:
    from copilot_fleet.client.lease import LeaseManager

TRASH_DIR = ".copilot-fleet-janitor"
REDIS_URL_ENV = "COPILOT_FLEET_REDIS_URL"
# Orphan lock files younger than this may belong to a create in progress: leave them.
DEFAULT_LOCK_GRACE = 600

Action = Literal["removed", "would-remove", "kept", "skipped", "error"]


def _check_ttl(ttl_seconds: int) -> None:
    if ttl_seconds < 60:
        raise ValueError(f"ttl must be at least 60 seconds so a live conversation is never raced, got {ttl_seconds}")


@dataclass(frozen=True)
class Item:
    """What happened to one session directory or lock file, and why."""

    kind: Literal["session", "lock"]
    name: str  # the session id (or the lock file's session id)
    action: Action
    reason: str
    age_seconds: float | None = None


@dataclass
class Report:
    state_dir: str
    ttl_seconds: int
    dry_run: bool
    leased: bool  # whether the lease store was consulted
    items: list[Item] = field(default_factory=list)
    fatal: str | None = None  # set when the run stopped before finishing (nothing deleted after it)
    seconds: float = 0.0

    def add(self, item: Item) -> None:
        self.items.append(item)

    def count(self, action: Action, kind: str | None = None) -> int:
        return sum(1 for i in self.items if i.action == action and (kind is None or i.kind == kind))

    @property
    def ok(self) -> bool:
        return self.fatal is None and self.count("error") == 0

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        done: Action = "would-remove" if self.dry_run else "removed"
        text = (f"janitor {self.state_dir}: {verb} {self.count(done, 'session')} session(s) and "
                f"{self.count(done, 'lock')} lock file(s); kept {self.count('kept')} younger than "
                f"{_human(self.ttl_seconds)}; skipped {self.count('skipped')} attached/in use; "
                f"{self.count('error')} error(s); lease check {'on' if self.leased else 'OFF'}; "
                f"{self.seconds:.2f} s")
        return text + (f"; STOPPED: {self.fatal}" if self.fatal else "")

    def lines(self, verbose: bool = False) -> list[str]:
        out = []
        for i in self.items:
            if i.action == "kept" and not verbose:
                continue
            age = f" age {_human(i.age_seconds)}" if i.age_seconds is not None else ""
            out.append(f"{i.action:12} {i.kind:7} {i.name}{age}: {i.reason}")
        out.append(self.summary())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _mtime(name: str, dir_fd: int) -> float | None:
    """The mtime of `name` itself (a link's own, never its target's)."""
    st = _lstat(name, dir_fd)
    return None if st is None else st.st_mtime


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int | None:
    """A directory fd for `name`, or None if it is missing, not a directory, or a symbolic link."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None


def _read_small(name: str, dir_fd: int, limit: int = 65536) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a FIFO or device planted under this name must not block or be read
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _updated_at(text: str | None) -> float | None:
    """`updated_at` from workspace.yaml's text as unix seconds, None if absent or unparseable."""
    if text is None:
        return None
    # A flat `key: value` file written by the CLI; read just that key (yaml parsing would turn a bad file into an
    # exception, and this must never stop a run).
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "updated_at":
            raw = value.strip().strip("'\"")
            try:
                parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    return None


def _last_activity_at(name: str, parent_fd: int) -> float | None:
    """Unix time of the newest sign of life of the session directory `name` in `parent_fd` (None if it vanished
    or is not a real directory)."""
    fd = _open_dir(name, parent_fd)
    if fd is None:
        return None
    try:
        candidates = [
            os.fstat(fd).st_mtime,
            _mtime(EVENTS, fd),
            _mtime(WORKSPACE, fd),
            _updated_at(_read_small(WORKSPACE, fd)),
        ]
    finally:
        os.close(fd)
    known = [c for c in candidates if c is not None]
    return max(known) if known else None


def last_activity(session_dir: Path) -> float | None:
    """Unix time of the newest sign of life of a session directory (None if it vanished)."""
    parent = _open_dir(session_dir.parent)
    if parent is None:
        return None
    try:
        return _last_activity_at(session_dir.name, parent)
    finally:
        os.close(parent)


def _locked_by_someone(name: str | Path, dir_fd: int | None = None) -> bool | None:
    """True if another process holds a flock on `name`, False if not, None if it could not be tested."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _attached_at(name: str, parent_fd: int) -> str | None:
    fd = _open_dir(name, parent_fd)
    if fd is None:
        return None
    try:
        holds = sorted(e.name for e in os.scandir(fd) if fnmatch.fnmatchcase(e.name, INUSE_HOLD_GLOB))
        for hold in holds:
            if _locked_by_someone(hold, fd) is True:
                return f"a CLI holds its in-use lock ({hold})"
        return None
    finally:
        os.close(fd)


def attached_by_cli(session_dir: Path) -> str | None:
    """Why a CLI has this session attached (its `inuse.<pid>.hold` is flocked), or None."""
    parent = _open_dir(session_dir.parent)
    if parent is None:
        return None
    try:
        return _attached_at(session_dir.name, parent)
    finally:
        os.close(parent)


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove `name` in `dir_fd`: a real directory with everything in it, anything else (a link included) as
    itself. shutil.rmtree with dir_fd works through descriptors and never follows a link inside."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class Janitor:
    """One cleanup pass over one `session-state/` directory. Use `run()`; see the module docstring."""

    def __init__(
        self,
        state_dir: str | Path,
        ttl_seconds: int,
        *,
        leases: LeaseManager | None = None,
        dry_run: bool = False,
        lock_grace_seconds: int = DEFAULT_LOCK_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_ttl(ttl_seconds)
        self.state_dir = Path(state_dir)
        self.ttl = ttl_seconds
        self.leases = leases
        self.dry_run = dry_run
        self.lock_grace = lock_grace_seconds
        self._clock = clock
        self._fd = -1  # the state directory's descriptor while run() runs

    async def run(self) -> Report:
        started = time.monotonic()
        report = Report(str(self.state_dir), self.ttl, self.dry_run, leased=self.leases is not None)
        # The operator names the directory; the directories above it may be reached through links of theirs, but
        # not the directory itself: a per-user server's session-state/ sits in its home, where a session's tool run
        # can put a link to any directory, which this (root) janitor would then clean. Nothing inside is followed.
        state_fd = _open_dir(self.state_dir)
        try:
            if state_fd is None:
                why = ("is a link, not the directory itself (refused: whoever made it chose where the janitor "
                       "deletes)" if self.state_dir.is_symlink() else
                       "is not a directory (the session-state volume is not mounted?)")
                report.fatal = f"{self.state_dir} {why}"
                return report
            if self.leases is not None:
                from copilot_fleet.client.errors import LeaseUnavailable

                try:
                    await self.leases.ping()
                except LeaseUnavailable as exc:
                    report.fatal = f"the lease store cannot be reached, so nothing was deleted: {exc}"
                    return report
            self._fd = state_fd
            self._empty_trash(report)
            names = sorted(e.name for e in os.scandir(state_fd)
                           if is_session_id(e.name) and e.is_dir(follow_symlinks=False))
            for name in names:
                if not await self._session(name, report):
                    return report  # fatal: stop before touching anything else
            self._orphan_locks(report)
            return report
        finally:
            if state_fd is not None:
                os.close(state_fd)
            report.seconds = time.monotonic() - started

    # -- one session -------------------------------------------------------------------------------------------

    async def _session(self, sid: str, report: Report) -> bool:
        """Handle one session directory; False only when the run must stop (lease store failed)."""
        now = self._clock()
        newest = _last_activity_at(sid, self._fd)
        if newest is None:
            return True  # vanished meanwhile (deleted by a CLI)
        age = max(0.0, now - newest)
        if age < self.ttl:
            report.add(Item("session", sid, "kept", f"active within the TTL ({_human(self.ttl)})", age))
            return True
        if self.leases is None:
            self._remove_checked(sid, report)
            return True

        from copilot_fleet.client.errors import FleetClientError, LeaseUnavailable, SessionInUse

        if self.dry_run:
            import redis.exceptions

            # Look, do not take: a dry run must not make a client's attach fail, even for a moment.
            try:
                held = bool(await self.leases.redis.exists(self.leases.key(sid)))
            except redis.exceptions.RedisError as exc:  # fail closed, as acquire does
                report.fatal = f"the lease store failed while checking {sid}: {exc}"
                return False
            if held:
                report.add(Item("session", sid, "skipped", "attached: a client holds its lease", age))
            else:
                self._remove_checked(sid, report)
            return True
        try:
            lease = await self.leases.acquire(sid, wait=0)
        except SessionInUse:
            report.add(Item("session", sid, "skipped", "attached: a client holds its lease", age))
            return True
        except LeaseUnavailable as exc:
            report.fatal = f"the lease store failed while checking {sid}, nothing more deleted: {exc}"
            return False
        except FleetClientError as exc:  # e.g. an id the lease key rules refuse
            report.add(Item("session", sid, "error", f"cannot take its lease: {exc}", age))
            return True
        lease.start_renewing()
        try:
            # In a thread: deleting a large directory on a network share can take a while, and the event loop
            # must stay free to renew the lease meanwhile.
            await asyncio.to_thread(self._remove_checked, sid, report)
        finally:
            await lease.release()
        return True

    def _remove_checked(self, sid: str, report: Report) -> None:
        """Re-check (under the lease, if any) that the session is idle and old, then remove it."""
        newest = _last_activity_at(sid, self._fd)
        if newest is None:
            return
        age = max(0.0, self._clock() - newest)
        if age < self.ttl:
            report.add(Item("session", sid, "kept", "written to while the janitor ran", age))
            return
        why = _attached_at(sid, self._fd)
        if why is not None:
            report.add(Item("session", sid, "skipped", f"attached: {why}", age))
            return
        if self.dry_run:
            report.add(Item("session", sid, "would-remove", f"idle for longer than {_human(self.ttl)}", age))
            return
        trash = self._trash(report)
        if trash is None:
            report.add(Item("session", sid, "error", f"not removed: no safe {TRASH_DIR}/ to move it into", age))
            return
        try:
            self._delete_dir(sid, trash)
        except OSError as exc:
            report.add(Item("session", sid, "error", f"could not remove: {exc.strerror or exc}", age))
            return
        finally:
            os.close(trash)
        report.add(Item("session", sid, "removed", f"idle for longer than {_human(self.ttl)}", age))
        locks = self._locks_dir(report)
        if locks is not None:
            try:
                if _lstat(operation_lock(sid), locks) is not None:
                    self._remove_lock(operation_lock(sid), locks, sid, report, reason="its session was removed")
            finally:
                os.close(locks)

    def _delete_dir(self, sid: str, trash_fd: int) -> None:
        # A rename is atomic: the CLI never sees a half-deleted session. Both names are relative to directory
        # descriptors, so a link swapped in for the session is moved as a link and removed as one.
        moved = f"{sid}.{secrets.token_hex(4)}"
        os.rename(sid, moved, src_dir_fd=self._fd, dst_dir_fd=trash_fd)
        _remove_entry(moved, trash_fd)

    def _own_dir(self, name: str, report: Report, *, create: bool) -> int | None:
        """A descriptor of the janitor's own directory `name` inside the state dir, never through a link. A link
        (or any non-directory) found there was planted: it is reported as an error and removed, itself only."""
        fd = _open_dir(name, self._fd)
        if fd is not None:
            return fd
        st = _lstat(name, self._fd)
        if st is not None:
            try:
                pointed = os.readlink(name, dir_fd=self._fd) if stat.S_ISLNK(st.st_mode) else None
            except OSError:
                pointed = None
            what = f"a symbolic link to {pointed!r}" if pointed is not None else "not a directory"
            try:
                os.unlink(name, dir_fd=self._fd)
                done = "removed it (nothing it points to was touched)"
            except OSError as exc:
                done = f"could not remove it: {exc.strerror}"
            report.add(Item("session", name, "error", f"{name} is {what}, not the janitor's directory: refused to "
                                                      f"follow it; {done}"))
        if not create:
            return None
        try:
            # Histories pass through the trash on their way out: private, whatever the process umask.
            os.mkdir(name, 0o700, dir_fd=self._fd)
        except FileExistsError:
            pass
        except OSError as exc:
            report.add(Item("session", name, "error", f"cannot create {name}: {exc.strerror}"))
            return None
        fd = _open_dir(name, self._fd)
        if fd is not None:
            os.fchmod(fd, 0o700)
        return fd

    def _trash(self, report: Report) -> int | None:
        return self._own_dir(TRASH_DIR, report, create=True)

    def _locks_dir(self, report: Report) -> int | None:
        return self._own_dir(LOCKS_DIR, report, create=False)

    def _empty_trash(self, report: Report) -> None:
        if self.dry_run or _lstat(TRASH_DIR, self._fd) is None:
            return
        trash = self._trash(report)
        if trash is None:
            return
        try:
            for leftover in sorted(e.name for e in os.scandir(trash)):
                # From an interrupted earlier run: already invisible to every CLI.
                try:
                    _remove_entry(leftover, trash)
                except OSError as exc:
                    report.add(Item("session", leftover, "error", f"could not empty trash: {exc.strerror}"))
        finally:
            os.close(trash)

    # -- lock files --------------------------------------------------------------------------------------------

    def _orphan_locks(self, report: Report) -> None:
        locks = self._locks_dir(report)
        if locks is None:
            return
        try:
            self._orphan_locks_in(locks, report)
        finally:
            os.close(locks)

    def _orphan_locks_in(self, locks: int, report: Report) -> None:
        now = self._clock()
        for name in sorted(e.name for e in os.scandir(locks) if e.name.endswith(".lock")):
            sid = name[: -len(".lock")]
            if not is_session_id(sid) or _lstat(sid, self._fd) is not None:
                continue
            mtime = _mtime(name, locks)
            if mtime is None:
                continue
            age = max(0.0, now - mtime)
            if age < self.lock_grace:
                report.add(Item("lock", sid, "kept", f"younger than {_human(self.lock_grace)} (a create may be in "
                                                     "progress)", age))
                continue
            if self.dry_run:
                report.add(Item("lock", sid, "would-remove", "orphan: its session directory is gone", age))
                continue
            self._remove_lock(name, locks, sid, report, reason="orphan: its session directory is gone", age=age)

    def _remove_lock(self, name: str, locks: int, sid: str, report: Report, *, reason: str,
                     age: float | None = None) -> None:
        if _locked_by_someone(name, locks) is True:
            report.add(Item("lock", sid, "skipped", "a CLI holds it right now", age))
            return
        try:
            os.unlink(name, dir_fd=locks)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            report.add(Item("lock", sid, "error", f"{LOCKS_DIR}/{name} is a directory, not a lock file: left", age))
            return
        except OSError as exc:
            report.add(Item("lock", sid, "error", f"could not remove: {exc.strerror}", age))
            return
        report.add(Item("lock", sid, "removed", reason, age))


# -- command line ----------------------------------------------------------------------------------------------


def _ttl(value: str) -> int:
    from copilot_fleet.spec import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"{value!r} is too short: at least 60 seconds (the stack's sessionTtl "
                                         "is at least 1h)")
    return seconds


def read_redis_url(path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The lease store URL: the file's content if given, else $COPILOT_FLEET_REDIS_URL, else None."""
    url = secret_from_file_or_env(path, "--redis-url-file", REDIS_URL_ENV, environ)
    if url is None:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("the lease store URL must start with redis://, rediss:// or unix:// "
                         f"(from {path or '$' + REDIS_URL_ENV})")
    return url


class StoreJanitor:
    """One cleanup pass over store scopes (store mode): copilot_fleet.sessionstore.admin under the fleet's leases."""

    def __init__(self, scopes: Sequence[str], ttl_seconds: int, leases: LeaseManager, *, dry_run: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        _check_ttl(ttl_seconds)
        self.scopes = list(scopes)
        self.ttl = ttl_seconds
        self.leases = leases
        self.dry_run = dry_run
        self._clock = clock

    async def run(self) -> Report:
        from copilot_fleet.client.errors import LeaseUnavailable
        from copilot_fleet.sessionstore import admin
        from copilot_fleet.sessionstore.keys import StoreKeys
        from copilot_fleet.sessionstore.store import StoreUnavailable

        started = time.monotonic()
        report = Report("store scope(s) " + ", ".join(self.scopes), self.ttl, self.dry_run, leased=True)
        now = self._clock()
        try:
            await self.leases.ping()
            for scope in self.scopes:
                keys = StoreKeys(scope)
                if self.dry_run:
                    for row in await admin.list_sessions(self.leases.redis, keys):
                        age = now - row.modified.timestamp() if row.modified is not None else None
                        if age is None or age <= self.ttl:
                            report.add(Item("session", row.session_id, "kept", "younger than the TTL", age))
                        elif row.leased:
                            report.add(Item("session", row.session_id, "skipped", "a client holds its lease", age))
                        else:
                            report.add(Item("session", row.session_id, "would-remove", "idle past the TTL", age))
                    continue
                done = await admin.cleanup(self.leases.redis, keys, self.leases, older_than=self.ttl, now=now)
                report.items += [Item("session", sid, "removed", f"idle past the TTL (scope {scope})")
                                 for sid in done.deleted]
                report.items += [Item("session", sid, "skipped", "a client holds its lease") for sid in
                                 done.skipped_leased]
                report.items += [Item("session", sid, "kept", "modified since it was listed") for sid in
                                 done.skipped_recent]
        except (LeaseUnavailable, StoreUnavailable, redis_errors()) as exc:
            report.fatal = f"the store cannot be reached, so nothing more was deleted: {exc}"
        finally:
            report.seconds = time.monotonic() - started
        return report


def redis_errors() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.RedisError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m copilot_fleet.pod.janitor",
        description="Remove sessions idle for longer than the TTL from a session-state directory, and their "
                    "leftover lock files; never a session that a client holds the lease of or a CLI has attached.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--session-state", metavar="DIR", help="the session-state/ directory")
    where.add_argument("--store-scope", action="append", metavar="SCOPE",
                       help="store mode: a scope of the session store to clean (repeatable); needs the lease store")
    p.add_argument("--ttl", required=True, type=_ttl, help="remove sessions idle longer than this (30m, 24h, 7d)")
    p.add_argument("--redis-url-file", metavar="FILE",
                   help=f"file with the lease store URL (default: ${REDIS_URL_ENV}); without either, only the CLI's "
                        "in-use locks protect attached sessions")
    p.add_argument("--require-leases", action="store_true",
                   help="refuse to run without a lease store (for fleets whose replicas share session-state/)")
    p.add_argument("--lock-grace", type=_ttl, default=DEFAULT_LOCK_GRACE, metavar="DURATION",
                   help="keep orphan lock files younger than this (default 10m)")
    p.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--verbose", action="store_true", help="also list the sessions kept")
    p.add_argument("--every", type=_interval, default=None, metavar="SECONDS",
                   help="run again every SECONDS until SIGTERM/SIGINT (local fleets run it so under supervisord); "
                        "default: run once")
    p.add_argument("--max-runs", type=int, default=None, metavar="N", help="with --every: stop after N runs")
    p.add_argument("--cli-logs", action="append", default=[], metavar="DIR",
                   help="a CLI server's $COPILOT_HOME/logs: keep only its newest per-start logs (repeatable)")
    p.add_argument("--keep-cli-logs", type=_positive_int, default=None, metavar="N",
                   help="with --cli-logs: per-start logs kept per server (default 5)")
    return p


def _positive_int(value: str) -> int:
    from copilot_fleet.argtypes import positive

    return int(positive(int)(value))


_interval = seconds_between(10, 86400)


async def _run(args: argparse.Namespace, redis_url: str | None) -> Report:
    leases = None
    if redis_url is not None:
        from copilot_fleet.client.lease import LeaseManager

        leases = LeaseManager.from_url(redis_url)
    try:
        if args.store_scope:
            assert leases is not None  # main() refuses store scopes without a lease store
            return await StoreJanitor(args.store_scope, args.ttl, leases, dry_run=args.dry_run).run()
        janitor = Janitor(args.session_state, args.ttl, leases=leases, dry_run=args.dry_run,
                          lock_grace_seconds=args.lock_grace)
        return await janitor.run()
    finally:
        if leases is not None:
            await leases.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        redis_url = read_redis_url(args.redis_url_file)
    except ValueError as exc:
        parser.error(str(exc))
    if redis_url is None and args.require_leases:
        parser.error(f"--require-leases: no lease store given (--redis-url-file or ${REDIS_URL_ENV})")
    if redis_url is None and args.store_scope:
        parser.error(f"--store-scope: the session store is in the lease store: give --redis-url-file or "
                     f"${REDIS_URL_ENV}")
    if args.store_scope:
        from copilot_fleet.client.ids import validate_id_part

        for scope in args.store_scope:
            try:
                validate_id_part(scope, "store scope")
            except ValueError as exc:
                parser.error(f"--store-scope: {exc}")
    if args.every is None:
        return 0 if _run_once(args, redis_url) else 1
    return _loop(args, redis_url)


def _run_once(args: argparse.Namespace, redis_url: str | None) -> bool:
    report = asyncio.run(_run(args, redis_url))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), flush=True)
    else:
        print("\n".join(report.lines(verbose=args.verbose)), flush=True)
    _prune_cli_logs(args)
    return report.ok


def _prune_cli_logs(args: argparse.Namespace) -> None:
    from copilot_fleet import cli_logs

    if args.dry_run:
        return
    for directory in args.cli_logs:
        removed = cli_logs.prune(Path(directory), args.keep_cli_logs or cli_logs.KEEP)
        if removed:
            print(f"removed {len(removed)} old per-start CLI log(s) from {directory}", flush=True)


def _loop(args: argparse.Namespace, redis_url: str | None) -> int:
    """Run every `args.every` seconds until SIGTERM/SIGINT (or --max-runs). A failed run (e.g. the lease store
    is down) is reported and retried at the next interval; the exit status says whether the last run was ok."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runs, ok = 0, True
    while not stop.is_set():
        try:
            ok = _run_once(args, redis_url)
        except Exception as exc:  # noqa: BLE001 - one bad run must not end the loop; it is reported
            print(f"janitor run failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            ok = False
        runs += 1
        if args.max_runs is not None and runs >= args.max_runs:
            break
        stop.wait(args.every)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
