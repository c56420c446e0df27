"""`copilot-fleet verify` against real local fleets of all three isolation patterns (what CI runs).

Each pattern: the full suite passes, with the checks that apply to it passed and the others skipped naming the
pattern, no session left behind, well under a minute. Then what must fail does: a wrong connection token, a
malformed target (nothing runs), and a run cut off by its deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from copilot_fleet.cli import main
from copilot_fleet.pod import procfs

ROOT = Path(__file__).resolve().parents[2]

# Check functions of smoke_tests/ by where they apply.
EVERY_PATTERN = {
    "test_persistent_session_lifecycle", "test_ephemeral_session", "test_resume_without_provider_is_actionable",
    "test_connection_token_required", "test_connection_without_nagle", "test_a_tool_call_is_denied_by_default",
    "test_processes_running", "test_ports_on_loopback_only", "test_state_modes", "test_cli_not_logging_debug",
    "test_no_secrets_in_process_arguments",
}
SHARED = {"test_other_users_session_refused_before_server_call", "test_attached_session_is_leased",
          "test_redis_requires_auth"}
ONLY = {
    "per-user": {"test_user_token_opens_only_own_server", "test_per_user_sessions_invisible_to_others"},
    "shared-cli": SHARED,
    "shared-session": SHARED | {"test_shared_session_one_writer"},
}
KUBERNETES = {"test_pods_running", "test_session_state_mounted_and_writable", "test_cli_process",
              "test_store_mode_pods_keep_no_session_state"}
STORE = {"test_no_session_state_on_any_server", "test_resume_where_the_lease_is_not_bound_is_fenced"}
ALL_CHECKS = EVERY_PATTERN | KUBERNETES | STORE | set().union(*ONLY.values())
VOLUME_PATTERNS = ["shared-cli", "shared-session", "per-user"]


def _function(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def verify(capsys: pytest.CaptureFixture[str], tmp_path: Path, project_dir: Path,
           *args: str) -> tuple[int, dict[str, Any] | None, str, str]:
    """`copilot-fleet --project-dir DIR verify ARGS --json FILE` in this process: (exit status, report, out, err)."""
    report_file = tmp_path / "report.json"
    code = main(["--project-dir", str(project_dir), "verify", *args, "--json", str(report_file)])
    out, err = capsys.readouterr()
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return code, report, out, err


def test_verify_passes(running_fleet, capsys, tmp_path) -> None:
    fleet = running_fleet
    code, report, out, err = verify(capsys, tmp_path, fleet.project.dir, "--stack", fleet.stack)
    assert report is not None, f"no report written; stdout:\n{out}\nstderr:\n{err}"
    failed = [(c["label"], c["message"]) for c in report["checks"] if c["outcome"] == "failed"]
    assert code == 0 and not failed, f"verify failed on {fleet.isolation}: {failed}\n{out}\n{err}"

    outcomes: dict[str, set[str]] = {}
    for check in report["checks"]:
        outcomes.setdefault(_function(check["nodeid"]), set()).add(check["outcome"])
    assert set(outcomes) == ALL_CHECKS, f"unexpected set of checks: {sorted(set(outcomes) ^ ALL_CHECKS)}"
    applies = EVERY_PATTERN | ONLY[fleet.isolation] | (STORE if fleet.store else set())
    mode = "store" if fleet.store else "volume"
    for name, seen in outcomes.items():
        expected = "passed" if name in applies else "skipped"
        assert seen == {expected}, f"{name} on {fleet.isolation} ({mode} mode): {seen}, expected {expected}"

    target = fleet.target_document
    servers = (1 if "endpoint" in target else 0) + len(target.get("replicas", [])) + len(target.get("users", {}))
    token_checks = [c for c in report["checks"] if _function(c["nodeid"]) == "test_connection_token_required"]
    assert len(token_checks) == servers, f"{len(token_checks)} token checks for {servers} servers"
    nagle_checks = [c for c in report["checks"] if _function(c["nodeid"]) == "test_connection_without_nagle"]
    assert len(nagle_checks) == servers, f"{len(nagle_checks)} TCP_NODELAY checks for {servers} servers"

    for check in report["checks"]:
        if _function(check["nodeid"]) in STORE and check["outcome"] == "skipped":
            assert "store mode only" in check["message"], check
        elif check["outcome"] == "skipped" and _function(check["nodeid"]) not in KUBERNETES:
            assert fleet.isolation in check["message"] and "only" in check["message"], check
        if _function(check["nodeid"]) in KUBERNETES:
            assert "kubernetes and azure platform only" in check["message"], check

    # The printed report: a header naming the stack, one line per check, and the totals with the time.
    assert out.splitlines()[0].startswith(f"copilot-fleet verify: stack {fleet.stack} ")
    assert re.search(r"^  PASS  persistent session: .*\d+\.\d s$", out, re.MULTILINE), out
    assert re.search(r"^  SKIP  ", out, re.MULTILINE) and "        skipped: applies to " in out
    counts = report["counts"]
    assert f"OK: {counts['passed']} passed, 0 failed, {counts['skipped']} skipped in " in out.splitlines()[-1]
    assert report["seconds"] < 60, f"verify took {report['seconds']:.1f} s on {fleet.isolation}"

    left = fleet.session_dirs()
    assert not left, f"verify left sessions on disk: {[p.name for p in left]}"
    if fleet.store:
        assert fleet.store_sessions() == [], "verify left sessions in the session store"


def _with_wrong_tokens(document: dict[str, Any]) -> dict[str, Any]:
    out = dict(document)
    if "connection_token" in out:
        out["connection_token"] = "wrong-" + out["connection_token"]
    if "user_tokens" in out:
        out["user_tokens"] = {u: "wrong-" + t for u, t in out["user_tokens"].items()}
    return out


@pytest.mark.parametrize("running_fleet", VOLUME_PATTERNS, indirect=True)  # tokens: the same in store mode
def test_verify_wrong_token_fails(running_fleet, capsys, tmp_path) -> None:
    fleet = running_fleet
    bad = tmp_path / "wrong-token.json"
    bad.write_text(json.dumps(_with_wrong_tokens(fleet.target_document)))
    code, report, out, _ = verify(capsys, tmp_path, fleet.project.dir, "--target", str(bad),
                                  "--fleet-state", str(fleet.paths.root))
    assert code == 1
    assert report is not None and not report["ok"]
    token_checks = [c for c in report["checks"] if _function(c["nodeid"]) == "test_connection_token_required"]
    assert token_checks and all(c["outcome"] == "failed" for c in token_checks)
    assert all("refused its own token" in c["message"] and "AUTHENTICATION_FAILED" in c["message"]
               for c in token_checks), token_checks
    assert "FAIL  connection tokens" in out and out.splitlines()[-1].startswith("FAILED: ")
    assert not fleet.session_dirs(), "a failed run left sessions on disk"


@pytest.mark.parametrize("running_fleet", ["shared-cli"], indirect=True)
def test_pytest_directly(running_fleet) -> None:
    """A user's own CI runs the suite with plain pytest and a target file."""
    fleet = running_fleet
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "smoke_tests"), "--target", str(fleet.paths.target_file),
         "--fleet-state", str(fleet.paths.root), "-q", "-p", "no:cacheprovider", "-k", "token or host", "-rs"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed", proc.stdout)


@pytest.mark.parametrize("running_fleet", ["shared-session"], indirect=True)
def test_verify_remote_style_target(running_fleet, capsys, tmp_path, monkeypatch) -> None:
    """A target that is not local (as from `pulumi stack output`) and no state dir: the history of the shared
    session is checked through the SDK, local host checks skip, pod checks skip because no cluster is configured."""
    fleet = running_fleet
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps({**fleet.target_document, "platform": "kubernetes"}))
    empty_kubeconfig = tmp_path / "kubeconfig"
    empty_kubeconfig.write_text("")
    monkeypatch.setenv("KUBECONFIG", str(empty_kubeconfig))  # inherited by the verify child: no context
    code, report, out, _ = verify(capsys, tmp_path, fleet.project.dir, "--target", str(remote),
                                  "-k", "shared_session or host or pods")
    assert code == 0, out
    assert report is not None
    by_function = {_function(c["nodeid"]): c for c in report["checks"]}
    assert by_function["test_shared_session_one_writer"]["outcome"] == "passed"
    for name in KUBERNETES:
        assert by_function[name]["outcome"] == "skipped"
        assert "no cluster configured: kubectl" in by_function[name]["message"], by_function[name]
    local_host = [c for c in report["checks"] if "test_host_local" in c["nodeid"]]
    assert local_host and all("local platform only" in c["message"] for c in local_host)
    assert not fleet.session_dirs()


@pytest.mark.parametrize("running_fleet", ["shared-session"], indirect=True)
def test_verify_deadline(running_fleet, capsys, tmp_path) -> None:
    """A run that outlives --timeout is stopped, says so, fails, and still cleans up its sessions."""
    fleet = running_fleet
    code, report, out, _ = verify(capsys, tmp_path, fleet.project.dir, "--stack", fleet.stack,
                                  "--timeout", "5")
    assert code == 1
    assert report is not None and report["timed_out"] and not report["ok"]
    assert "stopped after 5 s" in out
    assert report["seconds"] < 5 + 25, "stopping the run took longer than its grace periods"
    assert not fleet.session_dirs(), "the stopped run left sessions on disk"


CLUSTER_NS = "fleet-ns"


def as_cluster_target(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The local fleet's target as a Kubernetes stack would export it (cluster DNS names, as
    components/kubernetes names them), and where each object's forward leads: the local fleet's own port."""
    suffix = f"{CLUSTER_NS}.svc.cluster.local"
    doc = {**document, "platform": "kubernetes"}
    forwards: dict[str, str] = {}
    if "endpoint" in document:
        doc["endpoint"] = f"copilot-cli.{suffix}:4321"
        forwards[f"{CLUSTER_NS}/svc/copilot-cli:4321"] = document["endpoint"]
    doc["replicas"] = []
    for i, address in enumerate(document.get("replicas", [])):
        doc["replicas"].append(f"copilot-cli-{i}.copilot-cli-headless.{suffix}:4321")
        forwards[f"{CLUSTER_NS}/pod/copilot-cli-{i}:4321"] = address
    doc["users"] = {}
    for user, address in document.get("users", {}).items():
        doc["users"][user] = f"copilot-user-{user}.{suffix}:4321"
        forwards[f"{CLUSTER_NS}/svc/copilot-user-{user}:4321"] = address
    if "redis_url" in document:
        local_redis = document["redis_url"].split("@", 1)[1].split("/", 1)[0]
        doc["redis_url"] = document["redis_url"].replace(local_redis, f"copilot-redis.{suffix}:6379")
        forwards[f"{CLUSTER_NS}/svc/copilot-redis:6379"] = local_redis
    return doc, forwards


@pytest.mark.parametrize("running_fleet", ["shared-session", "per-user"], indirect=True)
def test_verify_from_outside_the_cluster_through_port_forwards(running_fleet, kubectl_standin, capsys,
                                                               tmp_path) -> None:
    """A Kubernetes target names its servers by cluster DNS, which does not resolve outside the cluster: verify
    sees that, forwards each pod, Service and Redis with `kubectl port-forward` (here the stand-in, leading to the
    local fleet's ports: no API server runs here) and every session check passes through the forwards."""
    fleet = running_fleet
    doc, forwards = as_cluster_target(fleet.target_document)
    kubectl_standin.configure(forwards=forwards)
    target = tmp_path / "cluster-target.json"
    target.write_text(json.dumps(doc))
    code, report, out, err = verify(capsys, tmp_path, fleet.project.dir, "--target", str(target),
                                    "-k", "not test_host_kubernetes")
    assert report is not None, err
    failed = [(c["label"], c["message"]) for c in report["checks"] if c["outcome"] == "failed"]
    assert code == 0 and not failed, f"{failed}\n{out}\n{err}"
    assert "through kubectl port-forward (context standin)" in out.splitlines()[0]
    forwarded = [line for line in out.splitlines() if line.startswith("  forward  ")]
    assert len(forwarded) == len(forwards), out
    assert all(f"({CLUSTER_NS}) -> 127.0.0.1:" in line for line in forwarded), forwarded
    passed = {_function(c["nodeid"]) for c in report["checks"] if c["outcome"] == "passed"}
    assert {"test_persistent_session_lifecycle", "test_ephemeral_session", "test_connection_token_required",
            *ONLY[fleet.isolation]} - {"test_redis_requires_auth"} <= passed, passed
    pids = kubectl_standin.pids()
    assert len(pids) == len(forwards) and not any(procfs.is_alive(p) for p in pids), "forwards left running"
    assert not fleet.session_dirs()


@pytest.mark.parametrize("running_fleet", ["shared-session"], indirect=True)
def test_a_forward_that_dies_fails_the_run_and_says_which(running_fleet, kubectl_standin, capsys,
                                                          tmp_path) -> None:
    """The endpoint's forward ends after its first connection, as kubectl does when its stream to the pod breaks:
    the checks that needed it fail, and the report names the forward and kubectl's last words."""
    fleet = running_fleet
    doc, forwards = as_cluster_target(fleet.target_document)
    endpoint = f"{CLUSTER_NS}/svc/copilot-cli:4321"
    kubectl_standin.configure(forwards=forwards, die_after={endpoint: 1})
    target = tmp_path / "cluster-target.json"
    target.write_text(json.dumps(doc))
    code, report, out, err = verify(capsys, tmp_path, fleet.project.dir, "--target", str(target),
                                    "-k", "ephemeral or connection_token")
    assert code == 1 and report is not None and not report["ok"], out
    assert "kubectl port-forward svc/copilot-cli:4321 in namespace fleet-ns" in report["problem"], report["problem"]
    assert "lost connection to pod" in report["problem"]
    assert "problem: kubectl port-forward svc/copilot-cli:4321" in out
    endpoint_token_check = [c for c in report["checks"] if "connection_token" in c["nodeid"] and "endpoint" in
                            c["nodeid"]]
    assert endpoint_token_check and endpoint_token_check[0]["outcome"] == "failed"
    assert "no connection to 127.0.0.1:" in endpoint_token_check[0]["message"], endpoint_token_check
    assert not fleet.session_dirs()
