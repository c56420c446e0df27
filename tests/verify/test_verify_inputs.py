"""`copilot-fleet verify` with bad input (nothing runs), the report's logic, and the history check of the
shared-session smoke test. No fleet needed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.cli import main
from copilot_fleet.pod.ports import free_port
from copilot_fleet.verify import CheckResult, VerifyReport

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "stack": "x", "platform": "local", "isolation": "shared-cli", "endpoint": "127.0.0.1:4321",
    "replicas": ["127.0.0.1:4401"], "connection_token": "t" * 20, "redis_url": "redis://:p@127.0.0.1:6390/0",
}


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], target_text: str) -> tuple[int, str, str, Path]:
    target = tmp_path / "target.json"
    target.write_text(target_text)
    report = tmp_path / "report.json"
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(target), "--json", str(report)])
    out, err = capsys.readouterr()
    return code, out, err, report


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (json.dumps(GOOD)[:40], "not valid JSON"),  # truncated
        ("", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "isolation"}), "isolation"),
        (json.dumps({**GOOD, "isolation": "shared"}), "isolation"),
        (json.dumps({**GOOD, "replicas": ["no-port-here"]}), "'no-port-here' is not host:port"),
    ],
    ids=["truncated", "empty", "not-an-object", "missing-isolation", "bad-isolation", "bad-replica"],
)
def test_malformed_target_runs_nothing(tmp_path, capsys, text: str, named: str) -> None:
    code, out, err, report = _run(tmp_path, capsys, text)
    assert code == 1
    assert "the target file cannot be used" in err and named in err, err
    assert " at at " not in err  # json's own message may end in "at"; the position follows a colon
    if named.endswith("host:port"):
        assert "replicas" in err
    assert str(tmp_path / "target.json") in err  # names the file
    assert out == "" and not report.exists(), "something ran despite the bad target"


def test_missing_target_file(tmp_path, capsys) -> None:
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(tmp_path / "nope.json")])
    _, err = capsys.readouterr()
    assert code == 1 and "cannot read target file" in err and "nope.json" in err


def test_unknown_stack(capsys) -> None:
    code = main(["--project-dir", str(ROOT), "verify", "--stack", "no-such-stack"])
    _, err = capsys.readouterr()
    assert code == 1 and "no-such-stack" in err and "stacks here:" in err


def test_stack_never_started(tmp_path, capsys) -> None:
    from tests.helpers.local_fleet import Project

    project = Project.create(tmp_path / "project")
    project.local_stack("idle", "shared-cli")
    code = main(["--project-dir", str(project.dir), "verify", "--stack", "idle"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "has never been started" in err and "copilot-fleet up --stack idle" in err


def test_stack_and_target_are_exclusive(tmp_path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["verify", "--stack", "local", "--target", str(tmp_path / "t.json")])
    assert exited.value.code == 2


def test_suite_without_target_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "the smoke tests need --target FILE" in proc.stderr


def test_verify_command_imports_cheaply() -> None:
    code = ("import sys, copilot_fleet.commands.verify; "
            "print(sorted(m for m in ('pytest', 'copilot', 'redis', 'copilot_fleet.verify') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


# --- the report ----------------------------------------------------------------------------------------------------

def _check(outcome: str, message: str = "") -> CheckResult:
    return CheckResult(nodeid=f"smoke_tests/t.py::test_{outcome}", label=f"a {outcome} check", outcome=outcome,  # type: ignore[arg-type]
                       seconds=1.25, message=message)


def test_report_ok_only_when_nothing_failed() -> None:
    good = VerifyReport(target="t", checks=[_check("passed"), _check("skipped", "applies to per-user only")],
                        pytest_exit=0, seconds=3.0)
    assert good.ok
    assert not VerifyReport(target="t", checks=[_check("passed"), _check("failed", "boom")], pytest_exit=1).ok
    assert not VerifyReport(target="t", checks=[], pytest_exit=5).ok  # nothing ran is not a pass
    assert not VerifyReport(target="t", checks=[_check("passed")], pytest_exit=0, problem="stopped").ok


def test_report_lines() -> None:
    assert _check("passed").line().startswith("  PASS  a passed check")
    assert _check("passed").line().endswith("1.2 s")
    skipped = _check("skipped", "applies to per-user only; this target is shared-cli").line()
    assert skipped.splitlines() == ["  SKIP  a skipped check",
                                    "        skipped: applies to per-user only; this target is shared-cli"]
    failed = _check("failed", "AssertionError: it broke").line()
    assert failed.startswith("  FAIL  a failed check") and failed.endswith("        AssertionError: it broke")
    report = VerifyReport(target="stack x", checks=[_check("passed"), _check("failed", "x")], pytest_exit=1,
                          seconds=4.56)
    assert report.render().splitlines()[-1] == "FAILED: 1 passed, 1 failed, 0 skipped in 4.6 s"
    assert report.to_dict()["counts"] == {"passed": 1, "failed": 1, "skipped": 0}


# --- the shared-session history check -------------------------------------------------------------------------------

def _history_problems() -> Any:
    spec = importlib.util.spec_from_file_location("smoke_shared_session", ROOT / "smoke_tests/test_shared_session.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.history_problems


def _events(*spec: tuple[str, str]) -> list[dict[str, Any]]:
    """('start', _), ('user', text), ('answer', text of the user turn it answers)."""
    out: list[dict[str, Any]] = []
    for kind, text in spec:
        if kind == "start":
            out.append({"type": "session.start", "data": {}})
        elif kind == "user":
            out.append({"type": "user.message", "data": {"content": text, "messageId": f"id-{text}"}})
        else:
            out.append({"type": "assistant.message", "data": {"content": "ok", "originatingMessageId": f"id-{text}"}})
    return out


def test_history_check_accepts_one_conversation() -> None:
    problems = _history_problems()
    events = _events(("start", ""), ("user", "a"), ("answer", "a"), ("user", "b"), ("answer", "b"))
    assert problems(events, ["a", "b"]) == []


@pytest.mark.parametrize(
    ("events", "sent", "says"),
    [
        (_events(("start", ""), ("user", "a"), ("answer", "a"), ("start", ""), ("user", "b"), ("answer", "b")),
         ["a", "b"], "2 session.start"),
        (_events(("start", ""), ("user", "b"), ("answer", "b"), ("user", "a"), ("answer", "a")), ["a", "b"],
         "differ from those sent"),
        (_events(("start", ""), ("user", "a"), ("user", "b"), ("answer", "a"), ("answer", "b")), ["a", "b"],
         "before the previous one was answered"),
        (_events(("start", ""), ("user", "a"), ("answer", "x")), ["a"], "interleaved"),
    ],
    ids=["forked", "reordered", "overlapping-turns", "foreign-answer"],
)
def test_history_check_finds_damage(events, sent, says) -> None:
    found = _history_problems()(events, sent)
    assert any(says in p for p in found), found


def test_target_secret_values_name_every_secret_it_carries() -> None:
    from copilot_fleet.target import parse_target

    doc: dict[str, Any] = {**GOOD, "isolation": "per-user", "replicas": [], "users": {"alice": "127.0.0.1:4501"},
           "user_tokens": {"alice": "a" * 20}, "redis_url": "redis://:hunter2hunter2@127.0.0.1:6390/0",
           "provider": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-" + "k" * 20}}
    values = parse_target(json.dumps(doc), "t.json").secret_values()
    assert values == {"connection_token": "t" * 20, "user_tokens.alice": "a" * 20,
                      "redis password": "hunter2hunter2", "provider api_key": "sk-" + "k" * 20}
    assert "redis password" not in parse_target(json.dumps({**doc, "redis_url": "redis://:short@h:1/0"}),
                                                "t.json").secret_values()


def test_a_redacted_target_shows_no_secret_and_is_refused_as_a_target() -> None:
    """`copilot-fleet target` prints this unless --show-secrets: every secret of secret_values() replaced, the rest
    (addresses, the Redis host) kept; read back as a target, it is refused naming the fields, not sent to a server
    as a token."""
    from copilot_fleet.target import REDACTED, TargetError, parse_target

    doc: dict[str, Any] = {**GOOD, "isolation": "per-user", "replicas": [], "users": {"alice": "127.0.0.1:4501"},
           "user_tokens": {"alice": "a" * 20}, "redis_url": "redis://:hunter2hunter2@127.0.0.1:6390/0",
           "provider": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-" + "k" * 20}}
    target = parse_target(json.dumps(doc), "t.json")
    shown = json.dumps(target.redacted_json_dict())
    assert not [name for name, value in target.secret_values(min_length=1).items() if value in shown]
    redacted = json.loads(shown)
    assert redacted["users"] == doc["users"] and redacted["redis_url"] == f"redis://:{REDACTED}@127.0.0.1:6390/0"
    assert redacted["provider"]["base_url"] == doc["provider"]["base_url"]
    with pytest.raises(TargetError, match=r"connection_token, user_tokens.alice, redis_url, provider.api_key "
                                          r"redacted .*--show-secrets"):
        parse_target(shown, "copy.json")


def test_a_deployed_stack_without_pulumi_names_verifys_own_option(tmp_path, capsys, monkeypatch) -> None:
    """verify takes a target file as --target (only `copilot-fleet target` has --from)."""
    from tests.helpers.local_fleet import Project

    project = Project.create(tmp_path / "project")
    project.write_stack("prod", {"isolation": "shared-cli", "platform": "kubernetes"})
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code = main(["--project-dir", str(project.dir), "verify", "--stack", "prod"])
    _, err = capsys.readouterr()
    assert code == 1 and "Pulumi CLI is not on PATH" in err
    assert "--target FILE" in err and "--from" not in err, err


def test_a_server_that_cannot_be_reached_is_not_called_a_token_refusal(tmp_path, capsys) -> None:
    """Nothing listens at the replica's address: the token check says the connection failed and that the token was
    never checked, not that the server refused its own token."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    doc = {**GOOD, "endpoint": None, "replicas": [dead]}
    target = tmp_path / "t.json"
    target.write_text(json.dumps(doc))
    report = tmp_path / "r.json"
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(target), "-k", "connection_token_required",
                 "--json", str(report)])
    out, err = capsys.readouterr()
    checks = json.loads(report.read_text())["checks"]
    (check,) = [c for c in checks if c["outcome"] != "skipped"] or [out + err]
    assert code == 1 and check["outcome"] == "failed"
    assert f"no connection to {dead}" in check["message"] and "Connection refused" in check["message"]
    assert "the token was never checked" in check["message"] and "refused its own token" not in check["message"]
