"""Bad input against a live fleet: each a clear, typed error, nothing changed on disk, no secret in the message.

Session ids that break the CLI's rules, ids naming another user, malformed or truncated target files, a wrong or
missing connection token, a wrong Redis password or a Redis that is not there. The whole `session-state/` tree is
snapshotted before and after every case (paths, sizes, modification times, modes).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from copilot_fleet.client import (
    AccessDenied,
    ClientPool,
    FleetClient,
    InvalidSessionId,
    LeaseUnavailable,
    ReplicaUnavailable,
    new_session_id,
)
from copilot_fleet.pod.ports import free_port
from copilot_fleet.target import Target, TargetError, load_target
from faults.fleet_under_test import FleetUnderTest
from faults.measure import ScenarioResult
from faults.sessions import SMALL, call_timeout, reply_watching, snapshot_tree, tree_changes

BAD_SESSION_IDS = {
    "empty": "",
    "space": "has space",
    "slash-traversal": "../../etc/passwd",
    "dot": "u-5-alice-x.y-1795280000-0badcafe",
    "colon": "alice:review",
    "at-sign": "alice@example.com",
    "too-long": "u-5-alice-" + "p" * 200 + "-1795280000-0badcafe",
    "non-ascii": "u-5-alïce-review-1795280000-0badcafe",
    "not-fleet-format": "alice-task-123",
    "newline": "u-5-alice-review-1795280000-0badcafe\n",
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    run: Callable[[], Awaitable[Any]]
    expect: type[BaseException]
    mentions: tuple[str, ...] = ()


def secret_values(fleet: FleetUnderTest) -> list[str]:
    """Every secret of the fleet: files under secrets/ and what the target carries."""
    out = [p.read_text().strip() for p in fleet.paths.secrets_dir.iterdir() if p.is_file()]
    out += fleet.target.secret_values().values()
    return sorted({s for s in out if len(s) >= 8})


async def bad_input(fleet: FleetUnderTest, workdir: Path) -> ScenarioResult:
    r = ScenarioResult("bad-input", "Bad input against a live fleet", run_unit="cases")
    r.target("wrong_error", max=0, meaning="cases that did not raise the expected typed error naming the problem")
    r.target("changed_on_disk", max=0, meaning="cases after which the session-state tree differed")
    r.target("secret_in_message", max=0, meaning="error messages that contain a token, password or key")
    target = fleet.target
    secrets = secret_values(fleet)
    workdir.mkdir(parents=True, exist_ok=True)
    async with ClientPool() as pool:
        alice = FleetClient(target, user="alice", pool=pool, call_timeout=call_timeout())
        mallory = FleetClient(target, user="mallory", pool=pool, call_timeout=call_timeout())
        s = await alice.create_session("private", **SMALL)
        await reply_watching(s, "remember: alicesecret")
        await s.close()
        alices = s.session_id

        cases: list[Case] = []
        for label, bad in BAD_SESSION_IDS.items():
            cases.append(Case(f"resume id {label}", "session id",
                              functools.partial(mallory.resume_session, bad, **SMALL), InvalidSessionId))
        cases.append(Case("delete id with a slash", "session id",
                          lambda: mallory.delete_session("a/b"), InvalidSessionId, ("'/'",)))
        cases += [
            Case("resume another user's session", "ownership",
                 lambda: mallory.resume_session(alices, **SMALL), AccessDenied, ("another user",)),
            Case("delete another user's session", "ownership",
                 lambda: mallory.delete_session(alices), AccessDenied, ("another user",)),
            Case("a made-up id naming alice", "ownership",
                 lambda: mallory.resume_session(new_session_id("alice", "forged"), **SMALL), AccessDenied),
            Case("a shared-session id on a shared-cli fleet", "ownership",
                 lambda: mallory.resume_session("s-team", **SMALL), AccessDenied),
            Case("a user id that breaks the rules", "ownership",
                 _async(lambda: FleetClient(target, user="Mallory Smith", pool=pool)), InvalidSessionId, ("user",)),
        ]
        cases += _target_file_cases(fleet, workdir)
        cases += _credential_cases(fleet, pool)

        for case in cases:
            before = snapshot_tree(fleet.session_state)
            started = time.monotonic()
            try:
                result = await case.run()
            except Exception as exc:  # noqa: BLE001 - classified below
                r.time("error", time.monotonic() - started, "until the bad input was refused")
                r.error(exc)
                text = str(exc)
                ok = isinstance(exc, case.expect) and all(m.lower() in text.lower() for m in case.mentions)
                if not ok:
                    r.bump("wrong_error")
                r.check(f"{case.kind}: {case.name} -> {case.expect.__name__}", ok,
                        f"{type(exc).__name__}: {text[:200]}")
                if any(secret in text for secret in secrets):
                    r.bump("secret_in_message")
                    r.check(f"{case.name}: no secret in the message", False, "a secret value appears in it")
            else:
                r.bump("wrong_error")
                r.check(f"{case.kind}: {case.name} -> {case.expect.__name__}", False, f"no error: {result!r:.200}")
                close = getattr(result, "close", None)
                if close is not None:
                    await close()
            r.runs += 1
            changes = tree_changes(before, snapshot_tree(fleet.session_state))
            if changes:
                r.bump("changed_on_disk")
                r.check(f"{case.name}: nothing changed on disk", False, "; ".join(changes[:5]))
        # Alice's session is untouched by all of it.
        again = await alice.resume_session(alices, **SMALL)
        r.check("alice's session still has its history", "alicesecret" in (await reply_watching(again, "recall") or ""))
        await again.close()
        await alice.delete_session(alices)
        await alice.aclose()
        await mallory.aclose()
    r.failures = r.targets["wrong_error"].value + r.targets["changed_on_disk"].value
    return r.finish()


def _async(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return fn()
    return run


def _target_file_cases(fleet: FleetUnderTest, workdir: Path) -> list[Case]:
    good = json.loads(fleet.paths.target_file.read_text())
    text = json.dumps(good, indent=2)
    files: dict[str, tuple[str, tuple[str, ...]]] = {
        "truncated": (text[: len(text) // 2], ("not valid JSON",)),
        "empty": ("", ("not valid JSON",)),
        "not an object": ("[1, 2]", ("expected a JSON object",)),
        "missing platform": (json.dumps({k: v for k, v in good.items() if k != "platform"}), ("platform",)),
        "replica not host:port": (json.dumps({**good, "replicas": ["127.0.0.1"]}), ("replicas", "host:port")),
        "unknown isolation": (json.dumps({**good, "isolation": "shared"}), ("isolation",)),
        "provider with an unknown key": (json.dumps({**good, "provider": {**good["provider"], "apikey": "x"}}),
                                         ("provider",)),
    }
    cases = []
    for label, (body, mentions) in files.items():
        path = workdir / f"target-{label.replace(' ', '-')}.json"
        path.write_text(body)
        cases.append(Case(f"target file: {label}", "target file", _async(functools.partial(load_target, path)),
                          TargetError, (str(path), *mentions)))
    missing = workdir / "no-such-target.json"
    cases.append(Case("target file: missing", "target file", _async(lambda: load_target(missing)), TargetError,
                      ("cannot read",)))
    truncated = workdir / "target-truncated.json"
    cases.append(Case("copilot-fleet target --from a truncated file", "target file",
                      _async(lambda: _target_command(fleet, truncated)), _CommandFailed,
                      ("not valid JSON", str(truncated))))
    return cases


class _CommandFailed(RuntimeError):
    """`copilot-fleet` exited non-zero; the message is its stderr."""


def fleet_command() -> list[str]:
    """`copilot-fleet` as installed next to this interpreter (the console script users run), else `-m`."""
    script = Path(sys.executable).parent / "copilot-fleet"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "copilot_fleet.cli"]


def _target_command(fleet: FleetUnderTest, path: Path) -> str:
    proc = subprocess.run([*fleet_command(), "--project-dir", str(fleet.dir), "target", "--from", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        if "Traceback" in proc.stderr:
            raise RuntimeError(f"exit {proc.returncode} with a traceback: {proc.stderr.strip()[-300:]}")
        raise _CommandFailed(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _credential_cases(fleet: FleetUnderTest, pool: ClientPool) -> list[Case]:
    target = fleet.target
    assert target.redis_url is not None
    url = urlsplit(target.redis_url.get_secret_value())
    wrong_password = urlunsplit(url._replace(netloc=f":not-the-password@{url.hostname}:{url.port}"))
    nobody = urlunsplit(url._replace(netloc=f":x@127.0.0.1:{free_port()}"))

    def with_(**update: Any) -> Target:
        return target.model_copy(update=update)

    async def create(t: Target, user: str) -> Any:
        async with FleetClient(t, user=user, pool=pool, call_timeout=call_timeout()) as fc:
            return await fc.create_session("bad", **SMALL)

    return [
        Case("wrong connection token", "credentials",
             lambda: create(with_(connection_token=SecretStr("not-the-token")), "tok1"), ReplicaUnavailable,
             ("connection token",)),
        Case("no connection token", "credentials", lambda: create(with_(connection_token=None), "tok2"),
             ReplicaUnavailable, ("connection token",)),
        Case("wrong Redis password", "credentials",
             lambda: create(with_(redis_url=SecretStr(wrong_password)), "pw1"), LeaseUnavailable,
             (f"{url.hostname}:{url.port}",)),
        Case("Redis not there", "credentials", lambda: create(with_(redis_url=SecretStr(nobody)), "pw2"),
             LeaseUnavailable, ("lease store",)),
        Case("shared-cli target without a Redis URL", "credentials",
             lambda: create(with_(redis_url=None), "pw3"), LeaseUnavailable, ("redis_url",)),
    ]
