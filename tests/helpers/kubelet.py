"""A kubelet emulation: run a rendered pod template in podman with runc, the way a kubelet would run it.

What it does for a pod (and what a kubelet does that it mirrors):

- volumes: `emptyDir` -> a fresh directory (mode 0777, as the kubelet makes it); `persistentVolumeClaim` -> the
  directory the Node gives that claim (one per claim: pods mounting the same claim share it, as a ReadWriteMany
  volume would); `secret` -> files from the resolved Secret, `defaultMode`, read-only. Then the pod's `fsGroup`
  ownership: every file group-owned by fsGroup, group read/write, directories setgid (kubelet's
  SetVolumeOwnership), skipped under `fsGroupChangePolicy: OnRootMismatch` when the root already looks right;
- the containers: `runAsUser`/`runAsGroup` as the user, fsGroup and supplementalGroups as supplementary groups,
  `readOnlyRootFilesystem` (without podman's extra tmpfs mounts), `capabilities`, `allowPrivilegeEscalation:
  false` as no-new-privileges, `runAsNonRoot` enforced, resource limits as cgroup limits, command/args with
  `$(VAR)` expansion, env (values, secretKeyRef, fieldRef), `workingDir`, volume mounts;
- imagePullSecrets, as the kubelet's keyring reads them: each named Secret must be of type
  `kubernetes.io/dockerconfigjson` with a readable `.dockerconfigjson`; which container images it holds a login
  for is recorded (`pull_logins`). The images themselves are local stand-ins: no registry is asked;
- init containers first, in order, each to completion (exit 0) before the next;
- one network namespace per pod on a bridge network; the Node's DNS (`/etc/hosts` entries) maps Service and pod
  names to pod addresses; each container port published on 127.0.0.1 only;
- probes: exec probes run inside the container (podman exec), tcpSocket probes connect to the pod address, each
  with its timeout, period and failure threshold; the preStop hook runs before SIGTERM, within the grace period;
- NetworkPolicy egress, as a policy-enforcing network plugin would: the rules of every policy that selects the pod
  become iptables rules in the pod's network namespace (allowed destinations: ipBlock with except, pods by
  podSelector/namespaceSelector, ports); everything else is rejected. Applied as the pod starts (a network plugin
  is asynchronous too). Ingress is not emulated: the host stands in for the clients.

Not emulated, because no single node without an API server has them: ingress policies (the host stands in for the
clients), Services with several backends (kube-proxy), scheduling and affinity, restarts on their own (a
container that exits is a failure here, reported with its output; `RunningPod.restart` restarts one on request),
emptyDir `sizeLimit` and ephemeral-storage limits (kubelet evictions), the kubelet's exact fsGroup exemptions (it
skips some ReadWriteMany drivers; here every volume gets it).

Anything in a pod spec this emulation does not implement raises `Unsupported` naming the field, so a template that
grows a feature cannot pass here without the feature being looked at. Why not `podman kube play`: on this machine
kind its infra container fails to set rlimits, and it would hide the steps this module makes explicit.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copilot_fleet.nodelay import open_tcp

PODMAN = ("podman", "--runtime", "runc")  # crun refuses hybrid cgroups on this machine kind

# Pod spec fields: emulated, or with no effect on a single node without an API server (named, so that anything
# else is noticed).
POD_FIELDS_EMULATED = {"containers", "init_containers", "volumes", "security_context", "image_pull_secrets",
                       "termination_grace_period_seconds", "restart_policy", "hostname", "subdomain"}
POD_FIELDS_NODE_ONLY = {
    "service_account_name",  # no API server: nothing to authenticate as (the token is not mounted, see below)
    "enable_service_links",  # only false is accepted: no Service variables are injected
    "topology_spread_constraints", "affinity", "node_selector", "tolerations", "priority_class_name",
}
CONTAINER_FIELDS_EMULATED = {"name", "image", "image_pull_policy", "command", "args", "env", "working_dir", "ports",
                             "startup_probe", "readiness_probe", "liveness_probe", "lifecycle", "resources",
                             "security_context", "volume_mounts"}

# The kubelet's masks for fsGroup ownership (pkg/volume/volume_linux.go).
_RW_MASK = 0o660
_RO_MASK = 0o440
_EXEC_MASK = 0o110


class Unsupported(Exception):
    """The pod spec uses something this emulation does not implement."""


class PodFailed(AssertionError):
    """A pod did not come up, or did not stop, the way a kubelet would have it; the message says what happened."""


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_keys(value: Any) -> Any:
    """Rendered YAML is camelCase; this module reads snake_case (as the components write it)."""
    if isinstance(value, Mapping):
        return {snake(k): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def podman(*args: str, check: bool = True, timeout: float | None = 120, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# --- $(VAR) expansion, as the kubelet does it for command, args and env values --------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(NAME)` becomes NAME's value when NAME is defined, else stays as written; `$$` is a literal `$`."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _REFERENCE.sub(one, text)


# --- volumes ---------------------------------------------------------------------------------------------------------

def apply_fs_group(root: Path, gid: int, policy: str | None, read_only: bool = False) -> bool:
    """The kubelet's fsGroup ownership change for a volume; returns whether it changed anything.

    OnRootMismatch: nothing happens when the root already has the group, setgid and the group permissions; the
    kubelet then trusts the whole tree (which is why a root-owned directory inside stays root-owned)."""
    mask = _RO_MASK if read_only else _RW_MASK
    info = root.lstat()
    if policy == "OnRootMismatch":
        wanted = mask | stat.S_ISGID | _EXEC_MASK
        if info.st_gid == gid and info.st_mode & wanted == wanted:
            return False
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        os.chown(path, -1, gid)
        mode = stat.S_IMODE(info.st_mode) | mask
        if stat.S_ISDIR(info.st_mode):
            mode |= stat.S_ISGID | _EXEC_MASK
        os.chmod(path, mode)
    return True


@dataclass
class Node:
    """What the pods of one run share: a bridge network, a directory for volumes, DNS entries, the images to use
    for the images the manifests name, and the values of the Secrets they read."""

    prefix: str  # container and network names start with it (everything this run creates is found by it)
    root: Path  # volumes live under it
    images: Mapping[str, str]  # image named in a manifest -> the local image to run instead
    secrets: Callable[[str, str], str]  # (secret name, key) -> value
    secret_types: Mapping[str, str] = field(default_factory=dict)  # secret name -> type (absent: Opaque)
    network: str = ""
    subnet: ipaddress.IPv4Network | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # DNS name -> pod address
    pods: dict[str, RunningPod] = field(default_factory=dict)
    network_policies: list[dict[str, Any]] = field(default_factory=list)  # rendered (camelCase) NetworkPolicies
    _next_host: int = 10
    _created_network: bool = False

    # --- set-up and tear-down --------------------------------------------------------------------------------------

    def start(self) -> Node:
        used = set()
        for line in podman("network", "ls", "--format", "{{.Name}}").stdout.split():
            inspected = json.loads(podman("network", "inspect", line, check=False).stdout or "[]")  # may be gone
            for net in inspected:
                for sub in net.get("subnets") or []:
                    used.add(ipaddress.ip_network(sub["subnet"]))
        self.network = f"{self.prefix}-net"
        # Another run on this machine (another checkout's tier) may take a free subnet between the listing above
        # and the create below: podman then refuses it as "already used", and the next free one is tried.
        for third in range(100, 250):
            candidate = ipaddress.IPv4Network(f"10.89.{third}.0/24")
            if any(candidate.overlaps(u) for u in used):
                continue
            created = podman("network", "create", "--subnet", str(candidate), self.network, check=False)
            if created.returncode == 0:
                self.subnet = candidate
                break
            if "already used" not in created.stderr:
                raise RuntimeError(f"podman network create {self.network} --subnet {candidate} exited "
                                   f"{created.returncode}: {created.stderr.strip()[-2000:]}")
            used.add(candidate)
        if self.subnet is None:
            raise RuntimeError("no free 10.89.x.0/24 subnet for the pod network")
        self._created_network = True
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def close(self) -> list[str]:
        """Remove every container and the network this run made (by name); returns what could not be removed."""
        problems = []
        names = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"name=^{self.prefix}-",
                       check=False).stdout.split()
        for name in names:
            proc = podman("rm", "-f", "-t", "0", name, check=False)
            if proc.returncode != 0:
                problems.append(f"container {name}: {proc.stderr.strip()}")
        if self._created_network:
            proc = podman("network", "rm", "-f", self.network, check=False)
            if proc.returncode != 0:
                problems.append(f"network {self.network}: {proc.stderr.strip()}")
        shutil.rmtree(self.root, ignore_errors=True)
        return problems

    # --- addresses -------------------------------------------------------------------------------------------------

    def allocate(self, *names: str) -> str:
        """A pod address on the network, reachable under `names` from every pod started after this call."""
        assert self.subnet is not None, "Node.start() first"
        address = str(self.subnet.network_address + self._next_host)
        self._next_host += 1
        for name in names:
            self.hosts[name] = address
        return address

    def claim_dir(self, claim: str) -> Path:
        """The directory behind a PersistentVolumeClaim: made on first use (a fresh volume's root is root:root
        0755, as most provisioners make it), the same for every pod that mounts the claim."""
        path = self.root / "claims" / claim
        if not path.exists():
            path.mkdir(parents=True, mode=0o755)
            path.chmod(0o755)
        return path

    def image(self, name: str) -> str:
        try:
            return self.images[name]
        except KeyError:
            raise Unsupported(f"image {name!r}: no local image stands in for it (known: {sorted(self.images)})"
                              ) from None

    # --- pods ------------------------------------------------------------------------------------------------------

    def run_pod(self, name: str, spec: Mapping[str, Any], *, namespace: str, address: str | None = None,
                labels: Mapping[str, str] | None = None,
                extra_env: Mapping[str, Mapping[str, str]] | None = None,
                extra_mounts: Mapping[str, Sequence[tuple[Path, str]]] | None = None) -> RunningPod:
        """Start a pod from its (snake_case) spec: volumes, init containers, then the containers.

        `address`: the pod's address if it was allocated earlier (so other pods could already resolve it).
        `extra_env` / `extra_mounts`: container name -> variables / read-only (host path, container path) files the
        caller adds to what the spec says (the caller says why; nothing adds any silently).
        """
        pod = RunningPod(self, name, namespace, snake_keys(spec), address or self.allocate(),
                         dict(labels or {}), {k: dict(v) for k, v in (extra_env or {}).items()},
                         {k: list(v) for k, v in (extra_mounts or {}).items()})
        self.pods[name] = pod
        pod.start()
        return pod


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


@dataclass(frozen=True)
class StopResult:
    exit_code: int
    seconds: float
    grace_seconds: int
    pre_stop: subprocess.CompletedProcess[str] | None
    killed: bool  # SIGKILL after the grace period ran out

    @property
    def graceful(self) -> bool:
        return not self.killed and (self.pre_stop is None or self.pre_stop.returncode == 0)


@dataclass
class RunningPod:
    node: Node
    name: str
    namespace: str
    spec: dict[str, Any]
    address: str
    labels: dict[str, str]
    extra_env: dict[str, dict[str, str]]
    extra_mounts: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port on 127.0.0.1
    init_results: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    egress_rules: list[list[str]] | None = None  # the iptables rules applied (None: no egress policy selects it)
    pull_logins: dict[str, str] = field(default_factory=dict)  # container -> registry its pull Secrets log into

    # --- start -----------------------------------------------------------------------------------------------------

    @property
    def pod_security(self) -> dict[str, Any]:
        return self.spec.get("security_context") or {}

    def container_name(self, container: str) -> str:
        return f"{self.node.prefix}-{self.name}-{container}"

    @property
    def main(self) -> dict[str, Any]:
        containers = self.spec["containers"]
        if len(containers) != 1:
            raise Unsupported(f"pod {self.name}: {len(containers)} containers (one per pod is implemented)")
        return containers[0]

    @property
    def container(self) -> str:
        return self.container_name(self.main["name"])

    def start(self) -> None:
        self._check_pod_fields()
        self._check_image_pulls()
        self._make_volumes()
        for init in self.spec.get("init_containers") or []:
            proc = self._run_container(init, detach=False)
            self.init_results.append(proc)
            if proc.returncode != 0:
                raise PodFailed(f"pod {self.name}: init container {init['name']} exited {proc.returncode}: "
                                f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        self._run_container(self.main, detach=True)
        self._after_container_start()

    def _after_container_start(self) -> None:
        """What follows each start of the main container: its egress rules, its published ports."""
        self.egress_rules = enforce_egress(self)
        for port in self.main.get("ports") or []:
            published = podman("port", self.container, f"{port['container_port']}/tcp").stdout.strip()
            self.ports[int(port["container_port"])] = int(published.rsplit(":", 1)[1])

    def _check_pod_fields(self) -> None:
        unknown = set(self.spec) - POD_FIELDS_EMULATED - POD_FIELDS_NODE_ONLY - {"automount_service_account_token"}
        if unknown:
            raise Unsupported(f"pod {self.name}: spec fields {sorted(unknown)} are not emulated")
        if self.spec.get("automount_service_account_token") is not False:
            raise Unsupported(f"pod {self.name}: automountServiceAccountToken must be false (no API server here)")
        if self.spec.get("enable_service_links") is not False:
            raise Unsupported(f"pod {self.name}: enableServiceLinks is not false (Service variables are not "
                              "emulated)")
        for container in [*(self.spec.get("init_containers") or []), *self.spec["containers"]]:
            extra = set(container) - CONTAINER_FIELDS_EMULATED
            if extra:
                raise Unsupported(f"pod {self.name}: container {container['name']} fields {sorted(extra)} are not "
                                  "emulated")

    def _check_image_pulls(self) -> None:
        logins: dict[str, str] = {}
        for ref in self.spec.get("image_pull_secrets") or []:
            name = ref["name"]
            kind = self.node.secret_types.get(name, "Opaque")
            if kind != DOCKER_CONFIG_TYPE:
                raise PodFailed(f"pod {self.name}: imagePullSecrets names {name}, of type {kind}: the kubelet reads "
                                f"logins only from {DOCKER_CONFIG_TYPE} Secrets")
            try:
                auths = json.loads(self.node.secrets(name, ".dockerconfigjson"))["auths"]
                for server, login in auths.items():
                    logins[registry_host(server)] = login.get("username") or ""
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise PodFailed(f"pod {self.name}: Secret {name} holds no readable .dockerconfigjson ({exc!r})"
                                ) from None
        for container in [*(self.spec.get("init_containers") or []), *self.spec["containers"]]:
            registry = image_registry(container["image"])
            if registry in logins:
                self.pull_logins[container["name"]] = registry

    def _make_volumes(self) -> None:
        fs_group = self.pod_security.get("fs_group")
        policy = self.pod_security.get("fs_group_change_policy")
        for volume in self.spec.get("volumes") or []:
            name = volume["name"]
            if "empty_dir" in volume:
                if (volume["empty_dir"] or {}).get("medium"):
                    raise Unsupported(f"pod {self.name}: emptyDir medium {volume['empty_dir']['medium']}")
                path = self.node.root / "pods" / self.name / "empty-dir" / name
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
                path.chmod(0o777)  # the kubelet makes emptyDir world-writable
            elif "persistent_volume_claim" in volume:
                path = self.node.claim_dir(volume["persistent_volume_claim"]["claim_name"])
            elif "secret" in volume:
                path = self._secret_volume(volume["secret"], name)
            elif "host_path" in volume:  # only the runner's own stand-in pods use it
                path = Path(volume["host_path"]["path"])
            else:
                raise Unsupported(f"pod {self.name}: volume {name} of type {sorted(set(volume) - {'name'})}")
            if fs_group is not None:
                apply_fs_group(path, int(fs_group), policy, read_only="secret" in volume)
            self.volume_dirs[name] = path

    def _secret_volume(self, source: Mapping[str, Any], name: str) -> Path:
        path = self.node.root / "pods" / self.name / "secret" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        mode = int(source.get("default_mode", 0o644))
        items = source.get("items")
        if not items:
            raise Unsupported(f"pod {self.name}: secret volume {name} without items (all keys) is not emulated")
        for item in items:
            target = path / item["path"]
            target.write_text(self.node.secrets(source["secret_name"], item["key"]))
            target.chmod(int(item.get("mode", mode)))
        path.chmod(0o755)
        return path

    def _env(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
            elif "value_from" in var:
                source = var["value_from"]
                if "secret_key_ref" in source:
                    ref = source["secret_key_ref"]
                    env[var["name"]] = self.node.secrets(ref["name"], ref["key"])
                elif "field_ref" in source:
                    path = source["field_ref"]["field_path"]
                    known = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                             "status.podIP": self.address}
                    if path not in known:
                        raise Unsupported(f"pod {self.name}: fieldRef {path}")
                    env[var["name"]] = known[path]
                else:
                    raise Unsupported(f"pod {self.name}: env {var['name']} valueFrom {sorted(source)}")
            else:
                env[var["name"]] = ""
        env.update(self.extra_env.get(container["name"], {}))
        return env

    def user(self, container: Mapping[str, Any]) -> tuple[int | None, int | None]:
        merged = {**self.pod_security, **(container.get("security_context") or {})}
        return merged.get("run_as_user"), merged.get("run_as_group")

    def _run_container(self, container: Mapping[str, Any], detach: bool) -> subprocess.CompletedProcess[str]:
        pod_sc = self.pod_security
        sc = container.get("security_context") or {}
        env = self._env(container)
        image = self.node.image(container["image"])
        args = ["run", "--name", self.container_name(container["name"]), "--ulimit", "host",
                "--network", self.node.network, "--ip", self.address, "--hostname", self.name,
                "--label", f"copilot-fleet-runtime={self.node.prefix}"]
        for host, address in sorted(self.node.hosts.items()):
            args += ["--add-host", f"{host}:{address}"]
        uid, gid = self.user(container)
        if {**pod_sc, **sc}.get("run_as_non_root"):
            effective = uid if uid is not None else self._image_uid(image)
            if effective in (None, 0):
                raise PodFailed(f"pod {self.name}: container {container['name']} has runAsNonRoot but would run as "
                                "root (the kubelet refuses to start it)")
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
        groups = [pod_sc["fs_group"]] if pod_sc.get("fs_group") is not None else []
        groups += list(pod_sc.get("supplemental_groups") or [])
        for group in groups:
            args += ["--group-add", str(group)]
        if sc.get("read_only_root_filesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        caps = sc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap]
        if sc.get("allow_privilege_escalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        seccomp = ({**pod_sc, **sc}.get("seccomp_profile") or {}).get("type", "RuntimeDefault")
        if seccomp != "RuntimeDefault":
            raise Unsupported(f"pod {self.name}: seccompProfile {seccomp}")
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity_cpus(limits['cpu']):g}"]
        if container.get("working_dir"):
            args += ["--workdir", container["working_dir"]]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for mount in container.get("volume_mounts") or []:
            if mount.get("sub_path") or mount.get("sub_path_expr") or mount.get("mount_propagation"):
                raise Unsupported(f"pod {self.name}: volumeMount {mount['name']} with subPath/propagation")
            source = self.volume_dirs.get(mount["name"])
            if source is None:
                raise PodFailed(f"pod {self.name}: volumeMount {mount['name']} names no volume of the pod")
            options = "ro" if mount.get("read_only") else "rw"
            args += ["--volume", f"{source}:{mount['mount_path']}:{options}"]
        for source, target in self.extra_mounts.get(container["name"], []):
            args += ["--volume", f"{source}:{target}:ro"]
        if detach:
            for port in container.get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    raise Unsupported(f"pod {self.name}: port protocol {port['protocol']}")
                args += ["--publish", f"127.0.0.1::{port['container_port']}"]
            args += ["--detach"]
        else:
            args += ["--rm"]
        command = [expand(c, env) for c in container.get("command") or []]
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(image)
        args += [expand(a, env) for a in container.get("args") or []]
        return podman(*args, check=detach, timeout=None if not detach else 120)

    @staticmethod
    def _image_uid(image: str) -> int | None:
        user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        head = user.split(":")[0]
        return int(head) if head.isdigit() else (0 if head in ("", "root") else None)

    # --- state, exec, probes ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.container, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def logs(self) -> str:
        proc = podman("logs", self.container, check=False)
        return proc.stdout + proc.stderr

    def exec(self, *command: str, timeout: float | None = 60, user: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """A process inside the running container, as its user with its environment (what exec probes get)."""
        args = ["exec"] + (["--user", user] if user else []) + [self.container, *command]
        try:
            return podman(*args, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, stdout=str(exc.stdout or ""),
                                               stderr=f"timed out after {timeout} s")

    def probe(self, probe: Mapping[str, Any]) -> ProbeResult:
        timeout = float(probe.get("timeout_seconds", 1))
        if "exec" in probe:
            proc = self.exec(*probe["exec"]["command"], timeout=timeout)
            return ProbeResult(proc.returncode == 0, (proc.stdout + proc.stderr).strip()[-500:] or
                               f"exit {proc.returncode}")
        if "tcp_socket" in probe:
            port = self._port_number(probe["tcp_socket"]["port"])
            try:
                # The seam of every connection to a CLI server: a startup probe connects to the CLI's port.
                with open_tcp(self.address, port, timeout=timeout):
                    return ProbeResult(True, f"connected to {self.address}:{port}")
            except OSError as exc:
                return ProbeResult(False, f"{self.address}:{port}: {exc}")
        raise Unsupported(f"pod {self.name}: probe {sorted(probe)}")

    def _port_number(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in self.main.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["container_port"])
        raise PodFailed(f"pod {self.name}: probe names port {port!r}, which the container does not declare")

    def wait_probe(self, kind: str) -> ProbeResult:
        """Run the container's `kind` probe (startup_probe, readiness_probe, liveness_probe) as the kubelet does:
        every periodSeconds until it succeeds (successThreshold 1) or fails failureThreshold times in a row. A
        container that exits meanwhile fails at once, with its logs."""
        probe = self.main.get(kind)
        if probe is None:
            return ProbeResult(True, f"no {kind}")
        period = float(probe.get("period_seconds", 10))
        failures = 0
        threshold = int(probe.get("failure_threshold", 3))
        last = ProbeResult(False, "not run")
        while failures < threshold:
            state = self.state()
            if not state.get("Running"):
                raise PodFailed(self.exit_report(f"exited before its {kind} succeeded"))
            started = time.monotonic()
            last = self.probe(probe)
            if last.ok:
                return last
            failures += 1
            time.sleep(max(0.0, period - (time.monotonic() - started)))
        return last

    def wait_ready(self) -> None:
        """Startup probe, then readiness: what must hold before the pod's endpoints take traffic."""
        for kind in ("startup_probe", "readiness_probe"):
            result = self.wait_probe(kind)
            if not result.ok:
                raise PodFailed(f"pod {self.name}: {kind} failed {self.main[kind].get('failure_threshold', 3)} "
                                f"times: {result.detail}\n{self.logs()[-3000:]}")

    def exit_report(self, what: str) -> str:
        state = self.state()
        return (f"pod {self.name}: container {self.main['name']} {what}: exit code {state.get('ExitCode')}, "
                f"OOM killed {state.get('OOMKilled')}; its output:\n{self.logs()[-3000:] or '(nothing)'}\n"
                f"its volumes (owner, group, mode; two levels):\n{self.volume_report()}")

    def volume_report(self, depth: int = 2) -> str:
        lines = []
        for mount in self.main.get("volume_mounts") or []:
            root = self.volume_dirs.get(mount["name"])
            if root is None:
                continue
            for path in [root, *(p for p in sorted(root.rglob("*")) if len(p.relative_to(root).parts) <= depth)]:
                info = path.lstat()
                shown = Path(mount["mount_path"]) / path.relative_to(root)
                lines.append(f"  {stat.filemode(info.st_mode)} {info.st_uid:>5} {info.st_gid:>5}  {shown}")
        return "\n".join(lines)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the container to exit on its own (a Job's pod); its exit code."""
        proc = podman("wait", self.container, check=False, timeout=timeout)
        if proc.returncode != 0:
            raise PodFailed(f"pod {self.name}: podman wait failed: {proc.stderr.strip()}")
        return int(proc.stdout.strip().splitlines()[-1])

    # --- stop ------------------------------------------------------------------------------------------------------

    def stop(self) -> StopResult:
        """Pod deletion: the preStop hook (within the grace period), then SIGTERM, then SIGKILL when the grace period
        is over."""
        grace = int(self.spec.get("termination_grace_period_seconds", 30))
        started = time.monotonic()
        pre_stop = None
        hook = ((self.main.get("lifecycle") or {}).get("pre_stop") or {})
        if hook:
            if "exec" not in hook:
                raise Unsupported(f"pod {self.name}: preStop {sorted(hook)}")
            pre_stop = self.exec(*hook["exec"]["command"], timeout=grace)
        # The kubelet gives SIGTERM at least 2 s even when the hook used up the grace period.
        remaining = max(2, int(grace - (time.monotonic() - started)))
        proc = podman("stop", "-t", str(remaining), self.container, check=False, timeout=remaining + 60)
        state = self.state()
        killed = "SIGKILL" in proc.stderr or state.get("ExitCode") == 137
        return StopResult(int(state.get("ExitCode", -1)), time.monotonic() - started, grace, pre_stop, killed)

    def restart(self) -> None:
        """The kubelet restarting the container after it exited (a crash, a failed liveness probe): the same pod,
        its volumes (emptyDirs included) kept, the container started again from its spec; then ready again. The
        egress rules are applied again (the runtime rebuilds the network namespace) and the published port is
        read again (it may change)."""
        grace = int(self.spec.get("termination_grace_period_seconds", 30))
        podman("stop", "-t", str(grace), self.container, timeout=grace + 60)
        podman("start", self.container)
        # The new network namespace keeps the pod's address with a new MAC: the host would send to the old one
        # until its neighbour entry expired (measured: 20-40 s of refused probes). A cluster's network plugin
        # announces the new one; here the entry is dropped.
        subprocess.run(["ip", "neigh", "flush", "to", self.address], capture_output=True, check=False)
        self._after_container_start()
        self.wait_ready()

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.container, check=False)


# --- image pulls (the kubelet's keyring, written here from its documented rules) -------------------------------------

DOCKER_CONFIG_TYPE = "kubernetes.io/dockerconfigjson"


def registry_host(server: str) -> str:
    """A .dockerconfigjson key as the kubelet matches it: no scheme or path; Docker Hub's names are one."""
    host = re.sub(r"^[a-z]+://", "", server).split("/", 1)[0].lower()
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def image_registry(image: str) -> str:
    """The registry an image reference names: its first component when it is a host, else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return registry_host(first)
    return "docker.io"


# --- NetworkPolicy egress ------------------------------------------------------------------------------------------

def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return False
    if selector.get("matchExpressions"):
        raise Unsupported("NetworkPolicy matchExpressions")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_addresses(pod: RunningPod, peer: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(destination, excepted) address blocks one `to` peer admits."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if ipaddress.ip_network(block["cidr"]).version != 4:
            return []  # the pod network here is IPv4 only
        return [(block["cidr"], list(block.get("except") or []))]
    namespaces = peer.get("namespaceSelector")
    out: list[tuple[str, list[str]]] = []
    for other in pod.node.pods.values():
        if namespaces is None:
            same_namespace = other.namespace == pod.namespace
        else:
            wanted = (namespaces.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
            same_namespace = wanted is None or wanted == other.namespace
            if set(namespaces.get("matchLabels") or {}) - {"kubernetes.io/metadata.name"}:
                raise Unsupported(f"namespaceSelector {namespaces}: only kubernetes.io/metadata.name is emulated")
        if same_namespace and _selects(peer.get("podSelector", {}), other.labels):
            out.append((f"{other.address}/32", []))
    return out


def egress_rules(pod: RunningPod) -> list[list[str]] | None:
    """The iptables commands (arguments) that enforce the egress policies selecting `pod`; None if none does."""
    policies = [p for p in pod.node.network_policies
                if p["metadata"].get("namespace") == pod.namespace and "Egress" in p["spec"].get("policyTypes", [])
                and _selects(p["spec"].get("podSelector"), pod.labels)]
    if not policies:
        return None
    rules = [["-N", "CF-EGRESS"], ["-A", "OUTPUT", "-j", "CF-EGRESS"],
             ["-A", "CF-EGRESS", "-o", "lo", "-j", "RETURN"],
             ["-A", "CF-EGRESS", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    chain = 0
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            ports = [(p.get("protocol", "TCP").lower(), str(p["port"])) for p in rule.get("ports") or []]
            if any(not port.isdigit() for _, port in ports):
                raise Unsupported(f"named ports in {policy['metadata']['name']}")
            peers = rule.get("to")
            destinations = ([("0.0.0.0/0", [])] if not peers
                            else [d for peer in peers for d in _peer_addresses(pod, peer)])
            for cidr, excepted in destinations:
                chain += 1
                name = f"CF-PEER-{chain}"
                rules += [["-N", name], ["-A", "CF-EGRESS", "-j", name]]
                rules += [["-A", name, "-d", block, "-j", "RETURN"] for block in excepted]
                matches = [["-p", proto, "--dport", port] for proto, port in ports] or [[]]
                rules += [["-A", name, "-d", cidr, *match, "-j", "ACCEPT"] for match in matches]
    rules += [["-A", "CF-EGRESS", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
              ["-A", "CF-EGRESS", "-j", "REJECT"]]
    return rules


def enforce_egress(pod: RunningPod) -> list[list[str]] | None:
    rules = egress_rules(pod)
    if rules is None:
        return None
    pid = podman("inspect", "--format", "{{.State.Pid}}", pod.container).stdout.strip()
    if pid in ("", "0"):
        return None  # it exited already: the start-up checks report why
    for rule in rules:
        proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-w", *rule],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pod {pod.name}: iptables {' '.join(rule)}: {proc.stderr.strip()}")
    return rules


# --- quantities ------------------------------------------------------------------------------------------------------

_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_DECIMAL = {"k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def quantity_bytes(value: str | int) -> int:
    text = str(value)
    for suffix, factor in {**_BINARY, **_DECIMAL}.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def quantity_cpus(value: str | int | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def wait_for(condition: Callable[[], Any], what: str, timeout: float, interval: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy; the bound is a safety net, not a tuned wait."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def iter_pod_templates(objects: Iterable[Mapping[str, Any]]) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(workload object, pod template) for every StatefulSet, Deployment, Job and CronJob."""
    for obj in objects:
        kind = obj.get("kind")
        if kind in ("StatefulSet", "Deployment", "Job"):
            yield obj, obj["spec"]["template"]
        elif kind == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]

