"""The fault suite's own parts, without a fleet: figures, the history check, recall parsing, snapshots, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copilot_fleet.client import rank_replicas
from faults import report
from faults.bad_config import CASES, local_values, merged
from faults.history import check_history, turn_contents
from faults.kill import users_by_primary
from faults.measure import ScenarioResult, median, percentile
from faults.sessions import recalled_words, snapshot_tree, tree_changes


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 95) == 19.0
    assert percentile(values, 50) == 10.0
    assert percentile(values, 100) == 20.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 95) is None and median([]) is None
    assert median([1.0, 2.0, 10.0]) == 2.0
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_targets_decide_ok_and_the_summary_names_misses() -> None:
    r = ScenarioResult("x", "X")
    r.target("lost", max=0)
    r.target("kills", min=3)
    r.bump("kills", 3)
    r.bump("informative", 2)
    r.time("resume", 0.5)
    assert r.ok and r.counts == {"informative": 2}
    r.bump("lost")
    assert not r.ok and set(r.missed_targets) == {"lost"}
    assert "lost = 1 (target 0)  <-- missed" in r.summary()
    r2 = ScenarioResult("y", "Y")
    r2.check("something", False, "because")
    assert not r2.ok and "FAILED something: because" in r2.summary()
    assert json.loads(json.dumps(r.to_dict()))["stats"]["resume"]["median"] == 0.5


def _event(eid: str, parent: str | None, kind: str = "user.message", **data: object) -> str:
    return json.dumps({"type": kind, "id": eid, "parentId": parent, "data": data})


def test_history_chain_forks_second_start_and_torn_lines(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    good = [_event("a", None, "session.start", sessionId="s1"), _event("b", "a", content="remember: x"),
            _event("c", "b", "assistant.message")]
    f.write_text("\n".join(good) + "\n")
    h = check_history(f, "s1")
    assert h.coherent and h.events == 3 and h.forks == 0
    assert turn_contents(f) == ["remember: x"]

    # A second writer appends from its own stale view: the chain breaks.
    f.write_text("\n".join([*good, _event("d", "b", content="remember: y")]) + "\n")
    assert check_history(f, "s1").forks == 1 and not check_history(f, "s1").coherent
    # create_session on an existing id starts a second history.
    f.write_text("\n".join([*good, _event("e", None, "session.start", sessionId="s1")]) + "\n")
    assert check_history(f, "s1").starts == 2 and not check_history(f, "s1").coherent
    # A torn last line (crash, full disk) is dropped by the CLI on resume: tolerated.
    f.write_text("\n".join(good) + "\n" + '{"type":"session.shutdown","id":"z","par')
    h = check_history(f, "s1")
    assert h.coherent and h.torn_tail
    # ... but not when more events follow it.
    f.write_text("\n".join([*good[:2], '{"type":"x",', good[2]]) + "\n")
    assert check_history(f, "s1").torn_inside == 1 and not check_history(f, "s1").coherent
    assert not check_history(f, "other").coherent  # session.start names another session
    assert check_history(tmp_path / "missing.jsonl").missing


def test_recalled_words() -> None:
    assert recalled_words("[copilot-fleet test model] recalled: a, b-1, c.d") == ["a", "b-1", "c.d"]
    assert recalled_words("[copilot-fleet test model] recalled: (nothing)") == []
    assert recalled_words("[copilot-fleet test model] remembered: a") is None
    assert recalled_words(None) is None


def test_snapshot_sees_added_removed_and_changed_files(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "events.jsonl").write_text("x")
    (tmp_path / "s2").mkdir()
    before = snapshot_tree(tmp_path)
    assert tree_changes(before, snapshot_tree(tmp_path)) == []
    (tmp_path / "s1" / "events.jsonl").write_text("xy")
    (tmp_path / "s2").rmdir()
    (tmp_path / "s3").mkdir()
    assert tree_changes(before, snapshot_tree(tmp_path)) == ["+ s3", "- s2", "~ s1/events.jsonl"]


def test_users_spread_over_their_first_choice_replicas() -> None:
    replicas = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    buckets = users_by_primary(replicas, 2, "u")
    assert all(len(users) == 2 for users in buckets.values())
    for address, users in buckets.items():
        assert all(rank_replicas(u, replicas)[0] == address for u in users)


def test_the_invalid_config_table_is_wide_and_varied() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == {"type", "range", "unknown key", "enum", "missing or plain secret",
                                       "contradiction", "file"}
    assert all(c.key for c in CASES)
    # Ports of a case are moved onto the free block, keeping the case's overlap.
    clash = next(c for c in CASES if c.id == "local-ports-overlap")
    values = local_values(clash, 20000)
    assert values["local"]["modelPort"] == values["local"]["endpointPort"] == 20020
    assert merged({"a": {"b": 1, "c": 2}}, {"a": {"b": "__drop__"}}) == {"a": {"c": 2}}


def test_report_replaces_only_its_block(tmp_path: Path) -> None:
    r = ScenarioResult("sigkill", "SIGKILL a CLI replica in the middle of a turn", run_unit="kills", runs=3)
    r.target("lost_turns", max=0, meaning="completed turns missing")
    r.time("resume", 0.25, "kill until attached elsewhere")
    r.time("resume", 1.5)
    skipped = ScenarioResult("storage", "session-state read-only or full", skipped="not root")
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Reliability\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## Findings\nkept\n")
    report.write(doc, [r, skipped], report.RunInfo(command="benchmarks/reliability.py"))
    text = doc.read_text()
    assert text.startswith("# Reliability\n\nintro") and text.endswith("## Findings\nkept\n")
    assert "old" not in text
    assert "| lost_turns | 0 | 0 | completed turns missing |" in text
    assert "| resume | 875 ms | 1.50 s | 2 | kill until attached elsewhere |" in text
    assert "Skipped: not root" in text


def test_store_scenarios_have_their_own_block(tmp_path: Path) -> None:
    fleet = ScenarioResult("sigkill", "SIGKILL a CLI replica in the middle of a turn", runs=1)
    store = ScenarioResult("store-full", "Store mode: Redis full (maxmemory, noeviction)", runs=1)
    store.target("lost_turns", max=0, meaning="completed turns missing after space was freed")
    doc = tmp_path / "reliability.md"
    doc.write_text(f"intro\n{report.BEGIN}\nvolume figures\n{report.END}\nmiddle\n"
                   f"{report.STORE_BEGIN}\nold store figures\n{report.STORE_END}\nend\n")
    report.write(doc, [store], report.RunInfo(command="benchmarks/reliability.py --only store-full"))
    text = doc.read_text()
    assert "volume figures" in text and "old store figures" not in text
    assert "| lost_turns | 0 | 0 | completed turns missing after space was freed |" in text
    assert text.index(report.STORE_BEGIN) > text.index("middle") and text.endswith("end\n")
    report.write(doc, [fleet], report.RunInfo(command="benchmarks/reliability.py --only sigkill"))
    text = doc.read_text()
    assert "volume figures" not in text and "| lost_turns | 0 | 0 | completed turns missing after" in text
