"""Reaching a cluster's fleet from outside it: `kubectl port-forward` per server, and the target rewritten to match.

The target of a Kubernetes or Azure stack holds cluster DNS names (copilot_fleet/clusterdns.py), which do not
resolve on a laptop or a CI runner. As the Kubernetes ecosystem does it, the servers are reached through the API
server with the user's own kubeconfig: one `kubectl port-forward --address 127.0.0.1 <pod|svc> :<port>` per
object, each on a local port kubectl picks and reports (`Forwarding from 127.0.0.1:N -> P`), and a copy of the
target whose every cluster address is `127.0.0.1:N` (Redis too, password kept). Nothing needs to be installed in
the cluster, and the NetworkPolicies are not in the way (the API server reaches the pod through the kubelet).

kubectl is started in a session of its own, so a Ctrl-C in the terminal does not cut the forwards while the smoke
tests still delete their sessions through them; `close()` stops them afterwards. A forward that ends by itself
(the pod restarted, the API server dropped the stream) is recorded and reported.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Literal

from pydantic import SecretStr

from copilot_fleet.clusterdns import (
    ClusterAddress,
    parse_cluster_address,
    redis_address,
    replace_redis_address,
    resolves,
)
from copilot_fleet.errors import CommandError
from copilot_fleet.target import Target

# kubectl's own line once a forward listens (and one per connection after it, which we drain).
_FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)\s*$")
_KUBECTL_TIMEOUT = 30  # seconds for a single short kubectl call (config current-context)
_STOP_GRACE = 5.0


class PortForwardError(CommandError):
    """Port-forwarding could not be set up; the message says what to fix."""


def cluster_addresses(target: Target, *, servers: bool = True, redis: bool = True) -> list[ClusterAddress]:
    """Every address of the target that is a cluster DNS name: the CLI servers (endpoint, replicas, users'
    servers) and Redis, or only one of the two."""
    addresses = ([target.endpoint] if target.endpoint else []) + [*target.replicas, *target.users.values()]
    if not servers:
        addresses = []
    if redis and target.redis_url is not None and (at := redis_address(target.redis_url.get_secret_value())):
        addresses.append(at)
    found = [parse_cluster_address(a) for a in addresses]
    return [a for a in found if a is not None]


@contextmanager
def reachable(target: Target, via: str, context: str | None, *, servers: bool = True, redis: bool = True,
              timeout: float = 60.0) -> Iterator[Target]:
    """The target as this machine can reach it: itself, or (when `choose_route` says so) a copy pointing at
    forwards to its cluster objects (only the servers or only Redis if asked), stopped on exit."""
    if choose_route(target, via) == "direct":
        yield target
        return
    kubectl = find_kubectl()
    with PortForwards(kubectl, current_context(kubectl, context), ready_timeout=timeout) as forwards:
        local = forwards.start(cluster_addresses(target, servers=servers, redis=redis))
        yield localize(target, local)


def choose_route(target: Target, via: str) -> Literal["port-forward", "direct"]:
    """`auto`: port-forward when the target names cluster objects whose DNS names do not resolve from here (a
    laptop, a CI runner); direct inside the cluster, for local fleets and for targets without cluster names."""
    if via == "direct":
        return "direct"
    cluster = cluster_addresses(target)
    if via == "port-forward":
        if not cluster:
            raise PortForwardError(
                f"--via port-forward: nothing to forward, no address of the target is a cluster DNS name "
                f"(<service>.<namespace>.svc...); platform {target.platform}: use --via direct")
        return "port-forward"
    if target.platform == "local" or not cluster:
        return "direct"
    return "direct" if resolves(cluster[0].host) else "port-forward"


def localize(target: Target, local: Mapping[str, str]) -> Target:
    """The target with each address found in `local` (cluster address -> 127.0.0.1:N) replaced."""
    update: dict[str, object] = {
        "endpoint": local.get(target.endpoint, target.endpoint) if target.endpoint else None,
        "replicas": [local.get(a, a) for a in target.replicas],
        "users": {user: local.get(a, a) for user, a in target.users.items()},
    }
    if target.session_state.server_ids:
        # Store mode: a server keeps its id (what its provider registered) under its local address.
        update["session_state"] = target.session_state.model_copy(update={"server_ids": {
            local.get(address, address): server for address, server in target.session_state.server_ids.items()}})
    if target.redis_url is not None:
        url = target.redis_url.get_secret_value()
        address = redis_address(url)
        if address is not None and address in local:
            update["redis_url"] = SecretStr(replace_redis_address(url, local[address]))
    return target.model_copy(update=update)


def find_kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise PortForwardError(
            "kubectl is not installed (or not on PATH): verifying a cluster's fleet from outside the cluster goes "
            "through the API server with `kubectl port-forward` and your kubeconfig. Install kubectl "
            "(https://kubernetes.io/docs/tasks/tools/), or run verify inside the cluster with --via direct")
    return kubectl


def current_context(kubectl: str, context: str | None) -> str:
    """The context kubectl will use: --kube-context, else the kubeconfig's current one (an error without)."""
    if context:
        return context
    proc = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True,
                          timeout=_KUBECTL_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    name = proc.stdout.strip()
    if proc.returncode != 0 or not name:
        raise PortForwardError(
            "kubectl has no current context, so it does not know which cluster to forward to: pick one with "
            "`kubectl config use-context NAME` or pass --kube-context NAME"
            + (f" ({proc.stderr.strip()[-300:]})" if proc.stderr.strip() else ""))
    return name


@dataclass
class Forward:
    """One `kubectl port-forward` process and what it said."""

    address: ClusterAddress
    process: subprocess.Popen[str]
    local_port: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def what(self) -> str:
        return f"{self.address.resource}:{self.address.port} in namespace {self.address.namespace}"

    @property
    def local_address(self) -> str:
        return f"127.0.0.1:{self.local_port}"


class PortForwards:
    """Forwards for every cluster address of a target, started together; use as a context manager."""

    def __init__(self, kubectl: str, context: str, *, ready_timeout: float = 60.0) -> None:
        self.kubectl = kubectl
        self.context = context
        self.ready_timeout = ready_timeout
        self.forwards: list[Forward] = []
        self._closing = False

    def __enter__(self) -> PortForwards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, addresses: Iterable[ClusterAddress]) -> dict[str, str]:
        """Start one forward per distinct (namespace, object, port); return cluster address -> 127.0.0.1:N once
        every forward listens. A forward that fails stops them all, with kubectl's reason in words."""
        by_object: dict[tuple[str, str, int], list[ClusterAddress]] = {}
        for a in addresses:
            by_object.setdefault((a.namespace, a.resource, a.port), []).append(a)
        try:
            for same in by_object.values():
                self.forwards.append(self._spawn(same[0]))
            deadline = time.monotonic() + self.ready_timeout
            for forward in self.forwards:
                self._wait_ready(forward, deadline)
        except BaseException:
            self.close()
            raise
        local: dict[str, str] = {}
        for forward in self.forwards:
            key = (forward.address.namespace, forward.address.resource, forward.address.port)
            for a in by_object[key]:
                local[a.address] = forward.local_address
        return local

    def _spawn(self, address: ClusterAddress) -> Forward:
        argv = [self.kubectl, f"--context={self.context}", f"--namespace={address.namespace}", "port-forward",
                "--address", "127.0.0.1", address.resource, f":{address.port}"]
        try:
            # A session of its own: the terminal's Ctrl-C must not end the forwards while checks clean up.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, start_new_session=True)
        except OSError as exc:
            raise PortForwardError(f"cannot run {self.kubectl}: {exc.strerror}") from exc
        forward = Forward(address, process)
        threading.Thread(target=self._read_stdout, args=(forward,), daemon=True,
                         name=f"port-forward {address.resource}").start()
        threading.Thread(target=self._read_stderr, args=(forward,), daemon=True).start()
        return forward

    @staticmethod
    def _read_stdout(forward: Forward) -> None:
        stream: IO[str] | None = forward.process.stdout
        assert stream is not None
        # Keep reading to the end: kubectl writes a line per connection, and a full pipe would stall it.
        for line in stream:
            match = _FORWARDING.match(line)
            if match and forward.local_port is None:
                forward.local_port = int(match.group(1))
                forward.ready.set()
        forward.process.wait()
        forward.ended.set()
        forward.ready.set()  # wake a waiter: it finds the process ended

    @staticmethod
    def _read_stderr(forward: Forward) -> None:
        stream = forward.process.stderr
        assert stream is not None
        for line in stream:
            if line.strip():
                forward.stderr.append(line.strip())

    def _wait_ready(self, forward: Forward, deadline: float) -> None:
        forward.ready.wait(max(0.0, deadline - time.monotonic()))
        if forward.local_port is not None and not forward.ended.is_set():
            return
        if not forward.ended.is_set():
            raise PortForwardError(f"kubectl port-forward {forward.what} (context {self.context}) did not start "
                                   f"forwarding within {self.ready_timeout:g} s: {self._said(forward)}")
        forward.process.wait()
        raise PortForwardError(self._failure(forward))

    def _said(self, forward: Forward) -> str:
        return " | ".join(forward.stderr) or "it printed nothing"

    def _failure(self, forward: Forward) -> str:
        """kubectl's reason, in terms of what the user can change."""
        said = self._said(forward)
        lowered = said.lower()
        a = forward.address
        where = f"namespace {a.namespace} of kubectl context {self.context}"
        if "notfound" in lowered or "not found" in lowered:
            kind = "pod" if a.pod else "service"
            name = a.pod or a.service
            return (f"{kind} {name} not found in {where}: is this the cluster the stack was deployed to, and is the "
                    f"fleet up? Pick the context with --kube-context or `kubectl config use-context` "
                    f"(kubectl: {said})")
        if f'context "{self.context.lower()}" does not exist' in lowered or "does not exist" in lowered:
            return f"kubectl has no context {self.context!r}: see `kubectl config get-contexts` (kubectl: {said})"
        if any(s in lowered for s in ("unable to connect", "connection refused", "no such host", "i/o timeout",
                                       "unauthorized", "forbidden", "credentials")):
            return f"kubectl cannot use the cluster of context {self.context}: {said}"
        return (f"kubectl port-forward {a.resource} :{a.port} in {where} exited with status "
                f"{forward.process.returncode}: {said}")

    def ended(self) -> list[str]:
        """Forwards that stopped by themselves since they started, each with kubectl's last words."""
        if self._closing:
            return []
        return [f"kubectl port-forward {f.what} -> {f.local_address} ended (exit {f.process.returncode}): "
                f"{self._said(f)}" for f in self.forwards if f.ended.is_set()]

    def describe(self) -> list[str]:
        return [f"{f.address.resource}:{f.address.port} ({f.address.namespace}) -> {f.local_address}"
                for f in self.forwards]

    def close(self) -> None:
        """Stop every kubectl this started: SIGTERM, then SIGKILL after a grace period."""
        self._closing = True
        for forward in self.forwards:
            if forward.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(forward.process.pid, signal.SIGTERM)
        for forward in self.forwards:
            try:
                forward.process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(forward.process.pid, signal.SIGKILL)
                forward.process.wait()
