"""`copilot-fleet sessions list | delete` against real CLIs: every user's sessions, attached ones refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from copilot_fleet.cli import main
from copilot_fleet.client import ClientPool, FleetClient

if TYPE_CHECKING:
    from copilot import ProviderConfig

    from tests.helpers.ops_fleet import OpsFleet

pytestmark = pytest.mark.fleet


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _make_sessions(fleet: OpsFleet, target_users: dict[str, int], small: dict[str, Any]) -> dict[str, list[str]]:
    made: dict[str, list[str]] = {}
    async with ClientPool() as pool:
        for user, count in target_users.items():
            async with FleetClient(fleet.target(), user=user, pool=pool) as client:
                for i in range(count):
                    async with await client.create_session(f"cmd{i}", **small) as s:
                        await s.reply(f"remember: {user}{i}")
                        made.setdefault(user, []).append(s.session_id)
    return made


def test_list_shows_every_users_sessions_with_owner(ops_fleet: OpsFleet, capsys: pytest.CaptureFixture[str]) -> None:
    made = asyncio.run(_make_sessions(ops_fleet, {"carol-smith": 2, "dave": 1}, ops_fleet.small))
    target_file = ops_fleet.target_file(ops_fleet.target(), "list-target.json")

    code, out, _ = run(capsys, "sessions", "list", "--target", str(target_file), "--json")
    assert code == 0
    rows = {r["session_id"]: r for r in json.loads(out)}
    for user, ids in made.items():
        for sid in ids:
            assert rows[sid]["owner"] == user  # "carol-smith", dash and all
            assert rows[sid]["kind"] == "user" and rows[sid]["attached"] is False

    code, out, _ = run(capsys, "sessions", "list", "--target", str(target_file), "--owner", "dave")
    assert code == 0
    assert made["dave"][0] in out and made["carol-smith"][0] not in out
    assert out.splitlines()[0].split() == ["SESSION", "OWNER", "CREATED", "MODIFIED", "IDLE", "ATTACHED"]


def test_delete_refuses_a_session_another_client_holds(ops_fleet: OpsFleet,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    made = asyncio.run(_make_sessions(ops_fleet, {"erin": 2}, ops_fleet.small))
    held_id, free_id = made["erin"]
    target = ops_fleet.target()
    target_file = ops_fleet.target_file(target, "delete-target.json")

    async def scenario() -> tuple[tuple[int, str, str], ...]:
        async with FleetClient(target, user="erin") as holder:
            held = await holder.resume_session(held_id, **ops_fleet.small)  # another client has it attached
            listed = await asyncio.to_thread(run, capsys, "sessions", "list", "--target", str(target_file))
            dry = await asyncio.to_thread(run, capsys, "sessions", "delete", "--target", str(target_file),
                                          "--older-than", "0s", "--owner", "erin", "--dry-run")
            real = await asyncio.to_thread(run, capsys, "sessions", "delete", "--target", str(target_file),
                                           "--older-than", "0s", "--owner", "erin")
            reply = await held.reply("recall") or ""
            await held.close()
        return listed, dry, real, (0, reply, "")

    listed, dry, real, (_, reply, _) = asyncio.run(scenario())
    held_line = next(line for line in listed[1].splitlines() if line.startswith(held_id))
    assert "yes (a client holds its lease)" in held_line

    assert dry[0] == 0 and f"would-delete {free_id}" in dry[1] and f"refused      {held_id}" in dry[1]
    code, out, _ = real
    assert code == 0
    assert f"deleted      {free_id}" in out
    assert f"refused      {held_id}: attached: a client holds its lease" in out
    assert "refused 1 (attached, unverifiable or another owner's)" in out
    assert "recalled: erin0" in reply, "the attached session kept working, history intact"

    remaining = {r["session_id"] for r in json.loads(run(capsys, "sessions", "list", "--target",
                                                         str(target_file), "--json")[1])}
    assert held_id in remaining and free_id not in remaining


def test_delete_keeps_sessions_younger_than_the_duration(ops_fleet: OpsFleet,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    made = asyncio.run(_make_sessions(ops_fleet, {"frank": 1}, ops_fleet.small))
    target_file = ops_fleet.target_file(ops_fleet.target(), "young-target.json")
    code, out, _ = run(capsys, "sessions", "delete", "--target", str(target_file), "--older-than", "1h",
                       "--owner", "frank")
    assert code == 0 and made["frank"][0] not in out and "deleted 0 session(s) idle longer than 1.0h" in out


def test_per_user_fleet_without_lease_store_refuses_unless_told(ops_fleet: OpsFleet,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    made = asyncio.run(_make_sessions(ops_fleet, {"gina": 1}, ops_fleet.small))
    per_user = ops_fleet.target([], isolation="per-user", redis=False, users={"gina": ops_fleet.a.address},
                                user_tokens={"gina": ops_fleet.token}, connection_token=None)
    target_file = ops_fleet.target_file(per_user, "per-user-target.json")
    code, out, _ = run(capsys, "sessions", "delete", "--target", str(target_file), "--older-than", "0s",
                       "--owner", "gina")
    assert code == 0 and f"refused      {made['gina'][0]}: this fleet has no lease store" in out
    code, out, _ = run(capsys, "sessions", "delete", "--target", str(target_file), "--older-than", "0s",
                       "--owner", "gina", "--unleased")
    assert code == 0 and f"deleted      {made['gina'][0]}" in out


def test_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sessions", "delete", "--target", "x.json", "--older-than", "soon"])
    assert exc.value.code == 2 and "duration" in capsys.readouterr().err
    code, _, err = run(capsys, "sessions", "list", "--target", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read target file" in err


def test_delete_refuses_a_session_a_cli_has_attached_without_a_lease(ops_fleet: OpsFleet,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An application that bypasses the fleet client holds no lease; the CLIs' in-use locks still protect it."""
    from copilot import PermissionHandler

    from copilot_fleet.client import new_session_id
    from copilot_fleet.nodelay import cli_client

    sid = new_session_id("hank", "raw")
    target_file = ops_fleet.target_file(ops_fleet.target(), "raw-target.json")

    async def scenario() -> tuple[int, str, str]:
        raw = cli_client(ops_fleet.a.address, ops_fleet.token)
        await raw.start()
        try:
            provider = cast("ProviderConfig", ops_fleet.model.provider())
            session = await raw.create_session(session_id=sid, name="raw", provider=provider,
                                               on_permission_request=PermissionHandler.approve_all,
                                               **ops_fleet.small)
            await session.send_and_wait("remember: raw", timeout=30)
            result = await asyncio.to_thread(run, capsys, "sessions", "delete", "--target", str(target_file),
                                             "--older-than", "0s", "--owner", "hank")
            await session.disconnect()
            return result
        finally:
            await raw.force_stop()

    code, out, _ = asyncio.run(scenario())
    assert code == 0
    assert f"refused      {sid}: attached: a CLI process other than {ops_fleet.b.address} holds its in-use lock" in out


def test_delete_by_id_under_the_same_checks(ops_fleet: OpsFleet, capsys: pytest.CaptureFixture[str]) -> None:
    """One session by id: deleted when free; refused when attached or another owner's (with --owner); an id the
    fleet does not have is reported; each of those last three makes the exit status 1: the operator named them."""
    made = asyncio.run(_make_sessions(ops_fleet, {"ivy": 3, "jon": 1}, ops_fleet.small))
    free_id, held_id, other_id = made["ivy"][0], made["ivy"][1], made["jon"][0]
    target = ops_fleet.target()
    target_file = ops_fleet.target_file(target, "by-id-target.json")
    missing = "u-3-ivy-gone-1700000000-0badcafe"

    async def scenario() -> tuple[tuple[int, str, str], ...]:
        async with FleetClient(target, user="ivy") as holder:
            held = await holder.resume_session(held_id, **ops_fleet.small)
            one = await asyncio.to_thread(run, capsys, "sessions", "delete", "--target", str(target_file), free_id)
            many = await asyncio.to_thread(run, capsys, "sessions", "delete", "--target", str(target_file),
                                           "--owner", "ivy", held_id, other_id, missing)
            await held.close()
        return one, many

    (code, out, _), (many_code, many_out, _) = asyncio.run(scenario())
    assert code == 0 and f"deleted      {free_id}" in out and "deleted 1 session(s) of 1 named" in out, out
    assert many_code == 1, many_out
    assert f"refused      {held_id}: attached: a client holds its lease" in many_out
    assert f"refused      {other_id}: belongs to jon, not ivy" in many_out
    assert f"not-found    {missing}: no such session on the fleet" in many_out
    remaining = {r["session_id"] for r in json.loads(run(capsys, "sessions", "list", "--target",
                                                         str(target_file), "--json")[1])}
    assert free_id not in remaining and {held_id, other_id} <= remaining


def test_delete_needs_ids_or_a_duration_and_valid_ids(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "sessions", "delete", "--target", str(tmp_path / "t.json"))
    assert code == 1 and "one or more SESSION_IDs, or --older-than" in err
    code, _, err = run(capsys, "sessions", "delete", "--target", str(tmp_path / "t.json"), "--older-than", "1d",
                       "u-1-a-x-1700000000-0badcafe")
    assert code == 1 and "(not both)" in err
    with pytest.raises(SystemExit) as exc:
        main(["sessions", "delete", "--target", "t.json", "../../etc/passwd"])
    assert exc.value.code == 2 and "session id '../../etc/passwd' contains '.'" in capsys.readouterr().err
