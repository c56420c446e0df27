"""The janitor CronJob: the same `copilot_fleet.pod.janitor` as local fleets, with the lease store URL as a Secret file.

The rendered command is parsed with the janitor's own argument parser (the two cannot drift apart), and run for
real with only what images/cli/Dockerfile installs next to copilot-fleet, against a real redis-server when one is
installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from copilot_fleet.client.lease import LEASE_KEY_PREFIX
from copilot_fleet.pod.janitor import build_parser
from copilot_fleet.pod.ports import free_port
from copilot_fleet.sessiondir import LOCKS_DIR

PROJECT_DIR = Path(__file__).resolve().parents[2]
DOCKERFILE = PROJECT_DIR / "images" / "cli" / "Dockerfile"
JANITOR_SECRET = "copilot-janitor-credentials"
HOUR = 3600


def janitor_pods(fleet, kube) -> dict[str, dict[str, Any]]:
    return {job["metadata"]["name"]: kube.pod_template(job)["spec"] for job in fleet.of_kind("CronJob")}


def lease_store_file(pod: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(the path the janitor reads the Redis URL from, its Secret volume), or None without one."""
    (c,) = pod["containers"]
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    for mount in c["volumeMounts"]:
        if mount["name"] in secret_volumes:
            volume = secret_volumes[mount["name"]]
            (item,) = volume["items"]
            return f"{mount['mountPath']}/{item['path']}", {**volume, "mount": mount}
    return None


# --- the shape of the job ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["shared-cli", "shared-session", "per-user"])
def test_the_rendered_command_is_what_the_janitors_parser_accepts(make_fleet, kube, pattern):
    fleet = make_fleet(pattern, sessionTtl="36h")
    pods = janitor_pods(fleet, kube)
    assert pods
    for name, pod in pods.items():
        (c,) = pod["containers"]
        command = c["command"]
        assert "args" not in c
        assert command[:3] == ["python3", "-m", "copilot_fleet.pod.janitor"], name
        args = build_parser().parse_args(command[3:])  # exits (SystemExit) on anything it does not accept
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        claim_volume = next(v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        assert args.session_state == mounts[claim_volume]
        assert args.ttl == 36 * HOUR
        assert args.every is None and args.max_runs is None and not args.dry_run  # one pass per Job
        lease = lease_store_file(pod)
        if pattern == "per-user":
            # no lease store in per-user (topology.lease_store is None): no URL file, nothing to require
            assert fleet.run.outputs.get("redis_url") is None
            assert lease is None and args.redis_url_file is None and not args.require_leases
        else:
            assert lease is not None and args.redis_url_file == lease[0]
            assert args.require_leases  # shared session-state/: never delete without the lease check


@pytest.mark.parametrize("pattern", ["shared-cli", "shared-session"])
def test_the_lease_store_url_reaches_the_janitor_only_as_a_secret_file(make_fleet, kube, pattern):
    fleet = make_fleet(pattern)
    redis_url = fleet.outputs["redis_url"]
    secret = fleet.get("Secret", JANITOR_SECRET)
    assert secret["stringData"] == {"redis-url": redis_url}  # the target's URL: in-cluster or external
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "janitor"
    (pod,) = janitor_pods(fleet, kube).values()
    found = lease_store_file(pod)
    assert found is not None
    path, volume = found
    assert volume["secretName"] == JANITOR_SECRET
    assert volume["items"] == [{"key": "redis-url", "path": path.rsplit("/", 1)[1]}]
    assert volume["mount"]["readOnly"] is True
    # readable by the janitor through its group (the kubelet gives secret files to the fsGroup), by nobody else
    mode = volume["defaultMode"]
    assert mode & 0o040 and not mode & 0o007 and not mode & 0o222
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    (c,) = pod["containers"]
    assert redis_url not in json.dumps(c)
    assert all("valueFrom" not in e and "redis" not in e["value"].lower() for e in c.get("env", []))
    # the CLI pods neither mount nor reference it: the agent's tools have no business with the lease store
    for sts in fleet.of_kind("StatefulSet"):
        assert JANITOR_SECRET not in json.dumps(sts)
    masked = make_fleet(pattern, mask=True)
    assert redis_url not in masked.dump()


def test_per_user_janitors_have_no_lease_store(make_fleet, kube):
    fleet = make_fleet("per-user")
    assert JANITOR_SECRET not in fleet.names("Secret")
    for pod in janitor_pods(fleet, kube).values():
        assert not [v for v in pod["volumes"] if "secret" in v]


def test_the_job_keeps_its_limits_and_its_security(make_fleet, kube):
    for pattern in ("shared-cli", "per-user"):
        fleet = make_fleet(pattern)
        for job in fleet.of_kind("CronJob"):
            assert job["spec"]["concurrencyPolicy"] == "Forbid"
            pod = kube.pod_template(job)["spec"]
            (c,) = pod["containers"]
            assert c["image"] == kube.IMAGE
            assert c["resources"] == {"requests": {"cpu": "10m", "memory": "64Mi", "ephemeral-storage": "16Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "64Mi"}}
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
            assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"


# --- the command, run with what the image holds ------------------------------------------------------------------

def image_requirements() -> list[Requirement]:
    """What the Dockerfile's `pip install "/src[EXTRAS]"` brings along: the core dependencies and those extras."""
    installs = re.findall(r'bin/pip install [^\n]*"/src\[([a-z,]+)\]"', DOCKERFILE.read_text())
    assert len(installs) == 1, "the Dockerfile should install copilot-fleet once, as \"/src[extras]\""
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in installs[0].split(","):
        specs += project["optional-dependencies"][extra]
    assert not [s for s in specs if s.startswith("copilot-fleet")], "an extra the image uses pulls in another extra"
    return [Requirement(s) for s in specs]


def image_site(root: Path) -> Path:
    """A directory with only copilot_fleet and the image's requirements (with their own dependencies)."""
    site = root / "site"
    site.mkdir()
    todo, seen = image_requirements(), set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(req.name)
        for raw in dist.requires or []:
            dep = Requirement(raw)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep)
        for top in {f.parts[0] for f in dist.files or []}:
            if top.endswith((".dist-info", ".egg-info")) or top in ("..", "__pycache__") or (site / top).exists():
                continue
            (site / top).symlink_to(str(dist.locate_file(top)))
    (site / "copilot_fleet").symlink_to(PROJECT_DIR / "copilot_fleet")
    return site


def test_the_image_installs_copilot_fleet_as_python3() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY copilot_fleet /src/copilot_fleet" in text
    assert re.search(r'pip install [^\n]*"/src\[pod\]"', text) and "--no-deps" not in text
    # `python3` in the job's command is the venv's, which has copilot-fleet and its requirements
    assert re.search(r"^ENV PATH=/opt/copilot-fleet/bin:\$PATH$", text, re.MULTILINE)


def run_rendered(command: list[str], substitutions: dict[str, str], site: Path,
                 env: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
    """The rendered command, as the image would run it: `python3` without site-packages, only `site` importable."""
    assert command[0] == "python3"
    argv = [sys.executable, "-S", *(substitutions.get(a, a) for a in command[1:])]
    environ = {"PATH": os.environ["PATH"], "HOME": str(site), **{e["name"]: e["value"] for e in env}}
    return subprocess.run(argv, cwd=site, env=environ, capture_output=True, text=True, timeout=60, check=False)


def make_session(state: Path, sid: str, age: float) -> Path:
    d = state / sid
    d.mkdir()
    (d / "workspace.yaml").write_text(f"id: {sid}\n")
    (d / "events.jsonl").write_text('{"type":"session.start"}\n')
    (state / LOCKS_DIR).mkdir(exist_ok=True)
    (state / LOCKS_DIR / f"{sid}.lock").touch()
    then = time.time() - age
    for p in (d / "workspace.yaml", d / "events.jsonl", d):
        os.utime(p, (then, then))
    return d


@pytest.fixture
def shared_job(make_fleet, kube) -> tuple[list[str], dict[str, str], list[dict[str, str]]]:
    """The shared-cli janitor's command, its session mount and URL file paths, and its env."""
    fleet = make_fleet("shared-cli", sessionTtl="1h")
    (pod,) = janitor_pods(fleet, kube).values()
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claim_volume = next(v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    found = lease_store_file(pod)
    assert found is not None
    url_file, _ = found
    return c["command"], {"sessions": mounts[claim_volume], "url": url_file}, c["env"]


def test_the_command_runs_in_the_image_and_fails_closed_without_redis(shared_job, tmp_path):
    command, paths, env = shared_job
    site = image_site(tmp_path)
    state = tmp_path / "session-state"
    state.mkdir()
    old = make_session(state, "old-1", 3 * HOUR)
    url = tmp_path / "redis-url"
    url.write_text(f"redis://:pw@127.0.0.1:{free_port()}/0\n")  # nothing listens there
    url.chmod(0o440)
    done = run_rendered(command, {paths["sessions"]: str(state), paths["url"]: str(url)}, site, env)
    assert done.returncode == 1, done.stderr
    assert "the lease store cannot be reached, so nothing was deleted" in done.stdout
    assert old.exists() and (state / LOCKS_DIR / "old-1.lock").exists()
    # and the Secret file is required: no file, no run (argparse's usage error)
    done = run_rendered(command, {paths["sessions"]: str(state), paths["url"]: str(tmp_path / "missing")}, site, env)
    assert done.returncode == 2 and "cannot read --redis-url-file" in done.stderr
    assert old.exists()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_command_removes_idle_sessions_under_leases_in_the_image(shared_job, tmp_path):
    import redis

    command, paths, env = shared_job
    site = image_site(tmp_path)
    port, password = free_port(), "janitor-test-pw"
    redis_server = shutil.which("redis-server")
    assert redis_server is not None
    server = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        state = tmp_path / "session-state"
        state.mkdir()
        old = make_session(state, "old-1", 3 * HOUR)
        leased = make_session(state, "leased-1", 3 * HOUR)
        young = make_session(state, "young-1", 10 * 60)
        client.set(f"{LEASE_KEY_PREFIX}leased-1", "a-fleet-client", px=60_000)  # a client has it attached
        url = tmp_path / "redis-url"
        url.write_text(f"redis://:{password}@127.0.0.1:{port}/0\n")
        url.chmod(0o440)
        done = run_rendered(command, {paths["sessions"]: str(state), paths["url"]: str(url)}, site, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not old.exists() and not (state / LOCKS_DIR / "old-1.lock").exists()
        assert leased.exists() and young.exists()
        assert client.get(f"{LEASE_KEY_PREFIX}leased-1") == b"a-fleet-client"  # the client's lease untouched
        assert client.get(f"{LEASE_KEY_PREFIX}old-1") is None  # the janitor released its own
        assert "lease check on" in done.stdout and "attached: a client holds its lease" in done.stdout
        assert password not in done.stdout + done.stderr
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
