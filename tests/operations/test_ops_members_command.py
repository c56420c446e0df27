"""`copilot-fleet members list | add | remove`: shared-session membership from the command line, in the store the
fleet client checks (a real redis-server; the CLI servers are those of the operations fleet)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest

from copilot_fleet.cli import main
from copilot_fleet.client import AccessDenied, FleetClient

if TYPE_CHECKING:
    from tests.helpers.ops_fleet import OpsFleet

pytestmark = pytest.mark.fleet


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_members_added_by_the_command_may_join_and_removed_ones_may_not(
        ops_fleet: OpsFleet, capsys: pytest.CaptureFixture[str]) -> None:
    target = ops_fleet.target(isolation="shared-session")
    target_file = str(ops_fleet.target_file(target, "members-target.json"))

    code, out, _ = run(capsys, "members", "add", "--target", target_file, "--session", "design", "kim", "lee-ann")
    assert code == 0 and "s-design: added kim, lee-ann" in out and "2 member(s): kim, lee-ann" in out
    code, out, _ = run(capsys, "members", "add", "--target", target_file, "--session", "s-design", "kim")
    assert code == 0 and "added nobody (already members: kim)" in out  # s-<name> is accepted as the name

    async def join(user: str) -> str:
        async with FleetClient(target, user=user) as fleet, \
                await fleet.join_shared_session("design", **ops_fleet.small) as session:
            return await session.reply("remember: kiwi") or ""

    assert "remembered: kiwi" in asyncio.run(join("lee-ann"))
    code, out, _ = run(capsys, "members", "remove", "--target", target_file, "--session", "design", "lee-ann",
                       "nobody")
    assert code == 0 and "removed lee-ann (not members: nobody)" in out
    with pytest.raises(AccessDenied, match="not a member"):
        asyncio.run(join("lee-ann"))

    code, out, _ = run(capsys, "members", "list", "--target", target_file, "--json")
    assert code == 0 and json.loads(out)["design"] == ["kim"]
    code, out, _ = run(capsys, "members", "list", "--target", target_file, "--session", "design")
    assert code == 0 and out.strip() == "s-design: 1 member(s): kim"

    async def cleanup() -> None:
        async with FleetClient(target, user="kim") as fleet:
            await fleet.delete_session("s-design")

    asyncio.run(cleanup())


def test_members_of_a_fleet_without_shared_sessions_are_refused(ops_fleet: OpsFleet,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    target_file = str(ops_fleet.target_file(ops_fleet.target(isolation="shared-cli"), "no-shared.json"))
    code, _, err = run(capsys, "members", "add", "--target", target_file, "--session", "x", "kim")
    assert code == 1 and "isolation shared-cli: only shared-session fleets have shared sessions" in err


def test_member_names_are_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, named in ((["--session", "a b", "kim"], "shared session name 'a b'"),
                        (["--session", "ok", "Kim/../x"], "user 'Kim/../x'")):
        with pytest.raises(SystemExit) as exc:
            main(["members", "add", "--target", "unused.json", *argv])
        assert exc.value.code == 2 and named in capsys.readouterr().err
