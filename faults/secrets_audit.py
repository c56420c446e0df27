"""Secrets audit: no token, password or API key in plain text where it does not belong.

Where secrets may be: the 0600 files under `secrets/`, and the 0600 files that must carry them to a program
(target.json, config/supervisord.conf - the CLI servers' environment -, redis/redis.conf - requirepass -,
config/haproxy.cfg - the health check's connection token -, config/janitor-redis-url - the janitor's lease store).
Everything else is searched for every secret value
(byte for byte, binary files included): the rest of the state directory (fleet.json, supervisord.json, every
log: supervisord, each program, each CLI's own logs, the session-state files, each replica's SQLite session store,
Redis' append-only files), the command line of every process on the machine (`/proc/*/cmdline`, what `ps` shows),
and the offline render of Kubernetes stacks (with known secret values, masked). Modes: secret-holding files 0600,
every directory of the state 0700; a root-run fleet's data directory (/var/lib/copilot-fleet/fleets/<id>) is searched
too, where root's passages to the servers' own directories are 0711.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from faults.bad_input import secret_values
from faults.fleet_under_test import FleetUnderTest
from faults.measure import ScenarioResult

ALLOWED_HOLDERS = ("target.json", "config/supervisord.conf", "redis/redis.conf", "config/haproxy.cfg",
                   "config/janitor-redis-url")

# Known values for the render check: none of them may appear in a rendered manifest.
RENDER_SECRETS = {
    "githubToken": "ghp_AUDIT_fleet_token_0001",
    "provider.apiKey": "sk-AUDIT-provider-key-0002",
    "redis.url": "rediss://:AUDIT-redis-pw-0003@redis.example.com:6380/0",
}


def _holders(root: Path, data_root: Path) -> set[Path]:
    return ({root / rel for rel in ALLOWED_HOLDERS} | {data_root / rel for rel in ALLOWED_HOLDERS}
            | set((root / "secrets").glob("*")))


def secrets_audit(fleet: FleetUnderTest, *, render: bool = True,
                  extra_files: list[Path] | None = None) -> ScenarioResult:
    r = ScenarioResult("secrets", "Secrets audit", run_unit="places searched")
    r.target("leaks", max=0, meaning="files or process arguments (outside the secret holders) containing a secret")
    r.target("bad_modes", max=0, meaning="secret holders not 0600, state directories not 0700")
    r.target("render_leaks", max=0, meaning="rendered manifests containing a secret value")
    secrets = [s.encode() for s in secret_values(fleet)]
    r.counts["secret values searched for"] = len(secrets)
    root = fleet.paths.root
    data_root = fleet.paths.data_root
    holders = _holders(root, data_root)
    # A root-run fleet's data directory: root's passages to each server's own directories, enter-only (0711).
    passages = ({data_root, fleet.paths.servers_dir, fleet.paths.work_dir, fleet.paths.otel_dir}
                if data_root != root else set())

    # -- the state directory (and the data directory) ------------------------------------------------------------
    trees = [root] + ([data_root] if data_root != root else [])
    if not fleet.paths.run_dir.is_relative_to(root):
        trees.append(fleet.paths.run_dir)
    for tree in trees:
        for dirpath, _dirnames, filenames in os.walk(tree):
            d = Path(dirpath)
            mode = stat.S_IMODE(d.stat().st_mode)
            r.bump("directories checked")
            if mode != (0o711 if d in passages else 0o700):
                r.bump("bad_modes")
                r.check(f"{d} is {'0711' if d in passages else '0700'}", False, f"{mode:04o}")
            for name in filenames:
                path = d / name
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                r.runs += 1
                if path in holders:
                    r.bump("secret holders")
                    if stat.S_IMODE(st.st_mode) != 0o600:
                        r.bump("bad_modes")
                        r.check(f"{path} is 0600", False, f"{stat.S_IMODE(st.st_mode):04o}")
                    continue
                _search_file(path, secrets, r)
    for path in extra_files or []:
        r.runs += 1
        _search_file(path, secrets, r)
    r.counts["log files searched"] = sum(1 for p in root.rglob("*.log") if p.is_file())

    # -- every process's arguments ------------------------------------------------------------------------------
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        r.runs += 1
        r.bump("process command lines")
        if any(s in cmdline for s in secrets):
            r.bump("leaks")
            r.check(f"process {entry} has no secret in its arguments", False,
                    cmdline.replace(b"\0", b" ")[:80].decode(errors="replace") + " ...")
    # Informative: the CLI servers get their token through the environment (readable by the same user only).
    env_holders = 0
    for pid in fleet.fleet_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env_holders += any(s in env for s in secrets)
    r.counts["fleet processes with a secret in their environment (by design)"] = env_holders

    if render:
        _render_audit(r)
    return r.finish()


def _search_file(path: Path, secrets: list[bytes], r: ScenarioResult) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        r.check(f"{path} can be read", False, str(exc))
        return
    r.bump("files searched")
    r.bump("bytes searched", len(data))
    found = [i for i, s in enumerate(secrets) if s in data]
    if found:
        r.bump("leaks")
        r.check(f"{path} holds no secret", False, f"{len(found)} secret value(s) in it")


def _render_audit(r: ScenarioResult) -> None:
    """The Pulumi program under mocks with known secret values, masked and written as `copilot-fleet render` does."""
    from copilot_fleet.render import manifests, masked_outputs, run_program, to_yaml, write_manifests

    image = "registry.example.com/copilot-cli:1.0.102"
    configs: dict[str, tuple[dict[str, Any], set[str]]] = {
        "shared-cli": ({"isolation": "shared-cli", "platform": "kubernetes", "image": image,
                        "githubToken": RENDER_SECRETS["githubToken"], "storage": {"storageClass": "nfs-client"}},
                       {"githubToken"}),
        "shared-session": ({"isolation": "shared-session", "platform": "kubernetes", "image": image,
                            "provider": {"baseUrl": "https://models.example.com/v1",
                                         "apiKey": RENDER_SECRETS["provider.apiKey"]},
                            "redis": {"mode": "external", "url": RENDER_SECRETS["redis.url"]},
                            "storage": {"storageClass": "nfs-client"}},
                           {"provider", "redis"}),
        "per-user": ({"isolation": "per-user", "platform": "kubernetes", "image": image,
                      "users": [{"id": "alice", "githubToken": RENDER_SECRETS["githubToken"] + "-alice"}],
                      "storage": {"accessMode": "ReadWriteOnce"}}, {"users"}),
    }
    needles = [v.encode() for v in RENDER_SECRETS.values()] + [b"AUDIT-redis-pw-0003"]
    with tempfile.TemporaryDirectory(prefix="copilot-fleet-audit-") as out:
        for pattern, (values, secret_keys) in configs.items():
            run = run_program({f"fleet:{k}": v for k, v in values.items()}, {f"fleet:{k}" for k in secret_keys},
                              stack=f"audit-{pattern}")
            objects = manifests(run)
            written = write_manifests(objects, Path(out) / pattern)
            r.bump("rendered manifests", len(written))
            blobs = [p.read_bytes() for p in written] + [to_yaml(masked_outputs(run)).encode()]
            for blob in blobs:
                r.runs += 1
                if any(n in blob for n in needles):
                    r.bump("render_leaks")
            r.check(f"render of {pattern}: no secret value in {len(written)} manifests or the outputs",
                    not any(n in b for b in blobs for n in needles))
