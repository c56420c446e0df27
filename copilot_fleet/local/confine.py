"""Who may touch what in a root-run local fleet: the data directory's modes and owners, and the state directory's
links to it.

Each server's own directories (COPILOT_HOME, the working directory, the session volume, its OpenTelemetry file)
belong to its Unix user, mode 0700; Redis' directory and config (with the password) to the Redis user. The
directories above them are root's, mode 0711: a user can pass through to what is its own, list nothing, and
replace nothing (so no user can swap another's directory for a link). Secrets, configs with secrets, the target
and the logs stay in the state directory, which is root's and 0700: no server's user can enter it.

Nothing here follows a link a server's user could have made: ownership is changed only on paths inside root-owned
directories, without following links.
"""

from __future__ import annotations

import os
from pathlib import Path

from copilot_fleet.local.accounts import Account
from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import DATA_DIRS, MACHINE_DIR
from copilot_fleet.local.plan import FleetPlan

PASS_THROUGH = 0o711  # enter, but neither list nor write


def _pass_through(path: Path) -> None:
    path.mkdir(mode=PASS_THROUGH, parents=True, exist_ok=True)
    os.chown(path, 0, 0, follow_symlinks=False)
    os.chmod(path, PASS_THROUGH, follow_symlinks=False)


def _own(path: Path, account: Account, mode: int) -> None:
    """Hand `path` (a directory or file in a root-owned directory) to `account`."""
    if path.is_symlink():
        raise LocalFleetError(f"{path} is a link; expected a directory or file of the fleet's own: run down --purge")
    os.chown(path, account.uid, account.gid, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)


def apply(plan: FleetPlan, users: dict[str, Account]) -> None:
    """Modes and owners of the data directory (created by `up` as root), then the state directory's links to it."""
    paths = plan.paths
    data = paths.data_root
    for d in (MACHINE_DIR, data.parent, data, paths.servers_dir, paths.work_dir, paths.otel_dir):
        _pass_through(d)
    for program in plan.programs:
        svc = program.service
        if svc.kind == "cli" and svc.run_as is not None and svc.home is not None:
            account = users[svc.run_as]
            _own(Path(svc.home), account, 0o700)
            _own(program.directory, account, 0o700)
            otel = paths.otel_file(svc.name)
            if not otel.exists():
                otel.touch(mode=0o600)
            _own(otel, account, 0o600)
            # Shared: every replica runs as the same user, the volume is theirs. Per-user: inside the user's home
            # (so it may be anything the user put there: never followed).
            if svc.session_state is not None:  # none in store mode
                _own(Path(svc.session_state), account, 0o700)
        elif svc.kind == "redis" and svc.run_as is not None:
            account = users[svc.run_as]
            _own(paths.redis_dir, account, 0o700)
            _own(paths.redis_conf, account, 0o600)
    _link_data_dirs(plan)


def _link_data_dirs(plan: FleetPlan) -> None:
    """`.fleet/<stack>/servers -> /var/lib/copilot-fleet/fleets/<id>/servers` and so on, for people and for
    `copilot-fleet verify --fleet-state`: the state directory reads as it does for a fleet started without root."""
    paths = plan.paths
    for name in DATA_DIRS:
        target = paths.data_root / name
        link = paths.root / name
        if not target.exists():
            continue
        if link.is_symlink():
            if Path(os.readlink(link)) == target:
                continue
            link.unlink()
        elif link.exists():
            raise LocalFleetError(f"{link} is a directory of an earlier run of this fleet that was not started as "
                                  f"root; its data would be hidden behind {target}. Move what you need out of it, "
                                  f"or run `copilot-fleet down --stack {plan.stack} --purge`, then up again")
        link.symlink_to(target)
