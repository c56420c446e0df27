"""The hops between an application and a CLI server, and whether any of them brings Nagle back.

1. HAProxy (TCP mode, the local fleet's endpoint): TCP_NODELAY read from HAProxy's own sockets, the one it
   accepted from the application and the one it opened to a replica, and from the CLI's end of that second
   connection (benchmarks/sockopts.py, root only). Its latency against a direct connection is in
   benchmarks/vs_raw_sdk.py (route `haproxy`).
2. The Kubernetes Service path: kube-proxy (iptables mode) only installs DNAT rules. Measured here in a network
   namespace made for it: a CLI server and the test model inside, an iptables `nat OUTPUT` DNAT rule from a
   ClusterIP-like address (10.96.0.10:4321) to the CLI, and the same SDK client cycle (TCP_NODELAY) through the
   Service address and straight to the server, interleaved; plus the rule's packet counter (the nat table sees
   the first packet of each connection only) and the CLI's end of the connection, whose peer is the
   application's own socket: one TCP connection end to end, no process in between to set or lose an option.

    .venv/bin/python benchmarks/hops.py [--quick]     (root: network namespaces, iptables, pidfd_getfd)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import sockopts

SERVICE_IP, SERVICE_PORT, SERVICE_NET, SERVICE_SRC = "10.96.0.10", 4321, "10.96.0.0/24", "10.96.0.1"


# --- HAProxy --------------------------------------------------------------------------------------------------

@dataclass
class HaproxyEnds:
    application: dict[str, bool] = field(default_factory=dict)  # our client / the raw SDK -> TCP_NODELAY
    frontend: list[bool] = field(default_factory=list)  # HAProxy's accepted sockets
    backend: list[bool] = field(default_factory=list)  # HAProxy's sockets to the replicas
    cli_end: list[bool] = field(default_factory=list)  # the CLIs' ends of HAProxy's connections
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def haproxy_ends(fleet: common.LocalFleet) -> HaproxyEnds:
    from copilot_fleet.nodelay import client_nodelay
    from copilot_fleet.pod.health import parse_address

    target = fleet.target
    assert target is not None and target.endpoint is not None
    out = HaproxyEnds()
    ours = await common.sdk_client(target.endpoint, common.token_of(target))
    raw = await common.sdk_client(target.endpoint, common.token_of(target), as_shipped=True)
    try:
        out.application = {"copilot_fleet.nodelay client": bool(client_nodelay(ours)),
                           "raw SDK as shipped": bool(client_nodelay(raw))}
        haproxy = fleet.pid("haproxy")
        out.skipped = sockopts.available(haproxy) or ""
        if out.skipped:
            return out
        endpoint_port = parse_address(target.endpoint)[1]
        replicas = {parse_address(a) for a in target.replicas}
        to_replicas = []
        for s in sockopts.tcp_sockets(haproxy):
            if s.local[1] == endpoint_port:
                out.frontend.append(s.nodelay)
            elif s.peer in replicas:
                out.backend.append(s.nodelay)
                to_replicas.append(s.local)
        for i in range(len(target.replicas)):
            for s in sockopts.tcp_sockets(fleet.pid(fleet.replica_name(i))):
                if s.peer in to_replicas:
                    out.cli_end.append(s.nodelay)
    finally:
        await common.close_client(ours)
        await common.close_client(raw)
    return out


def haproxy_report(h: HaproxyEnds) -> str:
    def share(values: list[bool]) -> str:
        return f"{sum(values)} of {len(values)}" if values else "none found"

    rows = [[f"application ({name})", "on" if on else "off"] for name, on in h.application.items()]
    if not h.skipped:
        rows += [["HAProxy, accepted from the applications", share(h.frontend)],
                 ["HAProxy, its connections to the replicas", share(h.backend)],
                 ["the CLI's end of HAProxy's connections", share(h.cli_end)]]
    text = common.table(["socket", "TCP_NODELAY"], rows)
    if h.skipped:
        text += f"\n\nHAProxy's sockets not read: {h.skipped}"
    return text


# --- the Kubernetes Service path (kube-proxy, iptables mode) ---------------------------------------------------

@dataclass
class ServicePath:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "service"/"direct" -> op -> s
    ping: dict[str, list[float]] = field(default_factory=dict)
    rule_packets: int = 0
    connections: int = 0
    client_nodelay: dict[str, bool] = field(default_factory=dict)
    one_connection: bool = False  # the CLI's end of the Service connection has the application's socket as peer
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"stats": {arm: {op: common.summary(v) for op, v in ops.items()} for arm, ops in self.samples.items()},
                "ping": {arm: common.summary(v) for arm, v in self.ping.items()}, "rule_packets": self.rule_packets,
                "connections": self.connections, "client_nodelay": self.client_nodelay,
                "one_connection": self.one_connection, "errors": self.errors,
                "error_examples": self.error_examples[:5], "skipped": self.skipped}


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def _namespace() -> Iterator[str]:
    name = f"cf-hops-{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        # The Service range gets a route, as a node has one for its ClusterIPs; through the loopback device, as this
        # kernel has no dummy devices. No ClusterIP is a local address: only the DNAT rule answers for it.
        _run("ip", "-n", name, "addr", "add", f"{SERVICE_SRC}/32", "dev", "lo")
        _run("ip", "-n", name, "route", "add", SERVICE_NET, "dev", "lo", "src", SERVICE_SRC)
        # DNAT to a loopback address from another source needs loopback routing allowed for it.
        _run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30)


def _start(ns: str, cmd: list[str], ready: re.Pattern[str], env: dict[str, str], cwd: Path) -> tuple[
        subprocess.Popen[str], re.Match[str]]:
    """`ip netns exec` execs the command, so the PID is the program's own. Its output is read in a thread (the
    wait is bounded) and kept being read, so it never blocks on a full pipe."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[re.Match[str]] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stdout or []:
            match = ready.search(line)
            if match and not found:
                found.append(match)
                seen.set()
        seen.set()  # EOF: it exited

    threading.Thread(target=read, daemon=True).start()
    if seen.wait(60) and found:
        return proc, found[0]
    _stop(proc)
    raise RuntimeError(f"{Path(cmd[0]).name} in namespace {ns} did not report ready within 60 s")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def service_path(cycles: int = 20) -> ServicePath:
    """The namespace, a CLI and the test model in it, the DNAT rule, and the client cycle run inside it."""
    if os.geteuid() != 0 or not shutil.which("iptables"):
        return ServicePath(skipped="needs root and iptables (network namespace and a nat rule)")
    work = Path(tempfile.mkdtemp(prefix="copilot-fleet-hops-"))
    procs: list[subprocess.Popen[str]] = []
    try:
        with _namespace() as ns:
            token, api_key = secrets.token_hex(16), secrets.token_hex(16)
            home = work / "home"
            (home / "session-state").mkdir(parents=True)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
                   "COPILOT_HOME": str(home), "COPILOT_CACHE_HOME": str(common.CACHE),
                   "COPILOT_CONNECTION_TOKEN": token, "COPILOT_AUTO_UPDATE": "false"}
            model, found = _start(ns, [sys.executable, "-m", "copilot_fleet.testmodel", "--host", "127.0.0.1",
                                       "--port", "0"], re.compile(r"listening on (127\.0\.0\.1:\d+)"),
                                  {**os.environ, "TESTMODEL_API_KEY": api_key}, common.ROOT)
            procs.append(model)
            model_address = found.group(1)
            cli, found = _start(ns, [str(common.CLI), "--headless", "--no-auto-update", "--no-auto-login",
                                     "--log-level", "info", "--port", "0"],
                                re.compile(r"listening on port (\d+)"), env, work)
            procs.append(cli)
            port = int(found.group(1))
            _run("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", f"{SERVICE_IP}/32", "-p",
                 "tcp", "--dport", str(SERVICE_PORT), "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}")
            child = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "--child",
                 "--cli-port", str(port), "--cli-pid", str(cli.pid), "--model", model_address,
                 "--cycles", str(cycles)],
                input=json.dumps({"token": token, "api_key": api_key}), capture_output=True, text=True,
                timeout=600, env={**os.environ, "PYTHONPATH": str(common.ROOT)}, check=False)
            if child.returncode != 0:
                raise RuntimeError(f"the client in the namespace failed:\n{child.stderr[-3000:]}")
            result = ServicePath(**json.loads(child.stdout.strip().splitlines()[-1]))
            counters = _run("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-L", "OUTPUT", "-n", "-v", "-x")
            hit = [line for line in counters.splitlines() if "DNAT" in line and SERVICE_IP in line]
            result.rule_packets = int(hit[0].split()[0]) if hit else 0
            return result
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(work, ignore_errors=True)


async def _child(port: int, cli_pid: int, model: str, cycles: int, token: str, api_key: str) -> dict[str, Any]:
    """Inside the namespace: the same SDK client (copilot_fleet.nodelay) to the Service address and straight to
    the server, cycles interleaved."""
    from copilot.session import PermissionHandler

    import vs_raw_sdk
    from copilot_fleet.nodelay import client_nodelay, client_socket

    opts = {"provider": {"type": "openai", "base_url": f"http://{model}/v1", "api_key": api_key},
            "model": "copilot-fleet-test", "on_permission_request": PermissionHandler.approve_all}
    addresses = {"service": f"{SERVICE_IP}:{SERVICE_PORT}", "direct": f"127.0.0.1:{port}"}
    clients = {arm: await common.sdk_client(a, token) for arm, a in addresses.items()}
    out: dict[str, Any] = {"samples": {arm: vs_raw_sdk._new_samples() for arm in clients},
                           "ping": {arm: [] for arm in clients}, "errors": 0, "error_examples": [],
                           "client_nodelay": {arm: bool(client_nodelay(c)) for arm, c in clients.items()}}
    service_socket = client_socket(clients["service"])
    assert service_socket is not None
    mine = service_socket.getsockname()[:2]
    ends = [s for s in sockopts.tcp_sockets(cli_pid) if s.peer == mine]
    out["one_connection"] = len(ends) == 1
    out["connections"] = 1  # the `service` client's: the only connection made to the Service address
    try:
        for client in clients.values():  # warm-up
            await vs_raw_sdk._sdk_cycle(client, opts, vs_raw_sdk._new_samples())
        budget = common.Budget(cycles, 240)
        while budget.next():
            order = list(clients) if budget.count % 2 else list(reversed(clients))
            for arm in order:
                try:
                    await vs_raw_sdk._sdk_cycle(clients[arm], opts, out["samples"][arm])
                    t, _ = await common.timed(clients[arm].ping)
                    out["ping"][arm].append(t)
                except Exception as exc:
                    out["errors"] += 1
                    out["error_examples"].append(f"{arm}: {type(exc).__name__}: {str(exc)[:160]}")
    finally:
        for c in clients.values():
            await common.close_client(c)
    return out


def service_report(s: ServicePath) -> str:
    if s.skipped:
        return f"Not measured: {s.skipped}."
    rows = []
    for op in ("create", "send", "resume", "delete"):
        a, b = s.samples["service"][op], s.samples["direct"][op]
        rows.append([op, len(a), common.fmt(common.percentile(a, 50) * 1000),
                     common.fmt(common.percentile(b, 50) * 1000), f"{common.ratio(a, b):.3f}"])
    a, b = s.ping["service"], s.ping["direct"]
    rows.append(["ping", len(a), common.fmt(common.percentile(a, 50) * 1000),
                 common.fmt(common.percentile(b, 50) * 1000), f"{common.ratio(a, b):.3f}"])
    text = common.table(["op", "n", "through the Service address (DNAT) p50 ms", "straight to the server p50 ms",
                         "ratio"], rows)
    text += (f"\n\nThe DNAT rule matched {s.rule_packets} packet(s) for the {s.connections} connection(s) made to "
             "the Service address, over every cycle: the nat table sees only the first packet of a connection, "
             "conntrack rewrites the rest in the kernel. TCP_NODELAY read back on the application's sockets: "
             + ", ".join(f"{k} {'on' if v else 'off'}" for k, v in s.client_nodelay.items())
             + f". The CLI's end of the Service connection has the application's own socket as its peer: "
             f"**{'yes' if s.one_connection else 'no'}** (one TCP connection end to end; nothing in between).")
    if s.errors:
        text += f"\n\nErrors: {s.errors}; first: " + "; ".join(f"`{e}`" for e in s.error_examples[:3])
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cli-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cli-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # secrets on stdin, never in the arguments
        given = json.loads(sys.stdin.read())
        print(json.dumps(common.run(_child(args.cli_port, args.cli_pid, args.model, args.cycles, given["token"],
                                           given["api_key"]))))
        return 0
    fleet = common.LocalFleet.create(replicas=2)
    try:
        fleet.up()
        print(haproxy_report(common.run(haproxy_ends(fleet))))
    finally:
        fleet.down()
    s = service_path(cycles=2 if args.quick else 20)
    print(service_report(s))
    print(json.dumps(s.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
