"""Shared pieces of the benchmarks: statistics, bounded loops, a throwaway local fleet, SDK clients, and the
table and plot writers. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The one path set-up of the benchmarks. Run as scripts (`python benchmarks/x.py`), they have only benchmarks/ on
# sys.path, which is how they import each other (`import common`); a script that needs more imports this module
# first, and it puts the checkout root after benchmarks/: for the fault suite (faults/, which is not installed) and
# for a checkout without `pip install`. The tests import the benchmarks through pytest's pythonpath instead.
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from copilot_fleet.local.operate import cli_service  # noqa: E402
from copilot_fleet.local.paths import StatePaths  # noqa: E402
from copilot_fleet.local.supervisor import Supervisor, read_record  # noqa: E402
from copilot_fleet.pod import procfs, provider_ready  # noqa: E402
from copilot_fleet.pod.ports import free_port_block  # noqa: E402
from copilot_fleet.sessiondir import INUSE_LOCK_GLOB  # noqa: E402
from copilot_fleet.target import Target, load_target  # noqa: E402

CLI = ROOT / ".tools/npm/node_modules/@github/copilot-linux-x64/copilot"
CACHE = ROOT / ".tools/copilot-cache"
STACK = "bench"


# --- statistics -----------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": float(len(values)), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99)}


def ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """p50(a) / p50(b): how much slower a is than b."""
    return percentile(a, 50) / percentile(b, 50) if a and b else float("nan")


@dataclass
class Budget:
    """A loop bound in both count and wall time: `while budget.next(): ...`."""

    max_count: int
    max_seconds: float
    count: int = 0
    started: float = field(default_factory=time.monotonic)

    def next(self) -> bool:
        if self.count >= self.max_count or self.elapsed() >= self.max_seconds:
            return False
        self.count += 1
        return True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def exhausted_by_time(self) -> bool:
        return self.elapsed() >= self.max_seconds


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


# --- a throwaway local fleet ----------------------------------------------------------------------------------

def fleet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("COPILOT_CLI_PATH", str(CLI))
    env.setdefault("COPILOT_CACHE_HOME", str(CACHE))
    return env


def shared_cli_stack(replicas: int, *, store: bool = False) -> str:
    """A throwaway shared-cli local stack on a free block of ports (replicas, then endpoint, redis, model); with
    `store`, session state in the session store (each CLI behind its provider, docs/session-store.md)."""
    base = free_port_block(replicas + 3)
    state = "  fleet:sessionState:\n    mode: store\n" if store else ""
    return f"""config:
  fleet:isolation: shared-cli
  fleet:platform: local
  fleet:replicas: {replicas}
{state}  fleet:local:
    replicaBasePort: {base}
    endpointPort: {base + replicas}
    redisPort: {base + replicas + 1}
    modelPort: {base + replicas + 2}
"""


@dataclass
class LocalFleet:
    """A shared-cli fleet (replicas, Redis, HAProxy, test model) in a temp project with free ports; with `store`,
    session state in the session store (the supervised program of each replica is then its provider)."""

    dir: Path
    replicas: int
    target: Target | None = None
    up_seconds: float = 0.0
    store: bool = False

    @classmethod
    def create(cls, replicas: int = 2, *, store: bool = False) -> LocalFleet:
        where = Path(tempfile.mkdtemp(prefix="copilot-fleet-bench-"))
        (where / "stacks").mkdir()
        (where / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
        (where / "stacks" / f"Pulumi.{STACK}.yaml").write_text(shared_cli_stack(replicas, store=store))
        return cls(where, replicas, store=store)

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.dir, STACK)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "copilot_fleet.cli", "--project-dir", str(self.dir), *args],
                              env=fleet_env(), capture_output=True, text=True, timeout=timeout, check=False)

    def up(self) -> Target:
        started = time.perf_counter()
        proc = self.cli("up", "--stack", STACK)
        self.up_seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"copilot-fleet up failed:\n{proc.stdout}\n{proc.stderr}")
        self.target = load_target(self.paths.target_file)
        return self.target

    def supervisor(self) -> Supervisor:
        return Supervisor(self.paths)

    def replica_name(self, index: int) -> str:
        return f"copilot-cli-{index}"

    def pid(self, name: str) -> int:
        return int(self.supervisor().processes()[name]["pid"])

    def rss_mib(self, name: str) -> float:
        """VmRSS of a fleet process (the supervised one: in store mode the provider), from /proc/<pid>/status."""
        return _rss_mib(self.pid(name), name)

    def ready_file(self, name: str) -> Path:
        """Store mode: the ready file of replica `name`'s provider (as the fleet's manifest names it)."""
        ready = cli_service(self.paths, STACK, name).ready_file
        if ready is None:
            raise RuntimeError(f"{name} has no session store provider: this fleet is not in store mode")
        return Path(ready)

    def cli_pid(self, name: str) -> int:
        """The CLI's own pid: supervisord's in volume mode; in store mode the provider's child, which the provider's
        ready file names (the supervised process is the provider)."""
        if not self.store:
            return self.pid(name)
        pid = provider_ready.cli_pid(self.ready_file(name))
        if pid is None:
            raise RuntimeError(f"{name}: the provider's ready file {self.ready_file(name)} names no CLI pid")
        return pid

    def cli_rss_mib(self, name: str) -> float:
        """VmRSS of replica `name`'s CLI process."""
        return _rss_mib(self.cli_pid(name), f"the CLI of {name}")

    def replica_of(self, session_id: str) -> str | None:
        """The address of the replica that has `session_id` attached: the CLI writes
        `session-state/<id>/inuse.<pid>.lock` while a client holds it open."""
        assert self.target is not None
        pids = {self.pid(self.replica_name(i)): addr for i, addr in enumerate(self.target.replicas)}
        for lock in (self.paths.shared_session_state / session_id).glob(INUSE_LOCK_GLOB):
            addr = pids.get(int(lock.name.split(".")[1]))
            if addr:
                return addr
        return None

    def fleet_pids(self) -> list[int]:
        record = read_record(self.paths)
        return procfs.session_members(record.pid) if record else []

    def down(self) -> None:
        """`down --purge`, then SIGKILL by PID whatever is left of this fleet, then remove the project."""
        try:
            proc = self.cli("down", "--stack", STACK, "--purge", timeout=120)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
        finally:
            for pid in self.fleet_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(self.dir, ignore_errors=True)


def _rss_mib(pid: int, what: str) -> float:
    kib = procfs.rss_kib(pid)
    if kib is None:
        raise RuntimeError(f"{what} (pid {pid}) has no VmRSS (not running?)")
    return kib / 1024


# --- SDK ------------------------------------------------------------------------------------------------------

async def sdk_client(address: str, token: str | None, *, as_shipped: bool = False) -> Any:
    """One connected SDK client for one server (one per process and endpoint: many clients are slow).

    The project's way (copilot_fleet.nodelay: TCP_NODELAY on the connection), or with `as_shipped` the SDK's own
    CopilotClient (Nagle on): what an application on the raw SDK gets, the baseline of the comparisons."""
    if as_shipped:
        from copilot import CopilotClient
        from copilot.client import RuntimeConnection

        client = CopilotClient(connection=RuntimeConnection.for_uri(address, connection_token=token))
    else:
        from copilot_fleet.nodelay import cli_client

        client = cli_client(address, token)
    await client.start()
    return client


async def close_client(client: Any) -> None:
    # stop() blocks about 1 s joining a reader thread; with no attached sessions force_stop() is enough.
    await client.force_stop()


def session_options(target: Target) -> dict[str, Any]:
    from copilot.session import PermissionHandler

    assert target.provider is not None, "the benchmark fleet runs the test model"
    return {"provider": target.provider.to_sdk(), "model": target.model,
            "on_permission_request": PermissionHandler.approve_all}


async def send(session: Any, prompt: str = "echo: ping", timeout: float = 60) -> str:
    event = await session.send_and_wait(prompt, timeout=timeout)
    if event is None:
        raise RuntimeError(f"no reply to {prompt!r}")
    return str(event.data.content)


def token_of(target: Target) -> str | None:
    return target.connection_token.get_secret_value() if target.connection_token else None


def new_id(prefix: str = "bench") -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}-{random.randrange(1 << 30):x}"


# --- output ---------------------------------------------------------------------------------------------------

def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:.3f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot(path: Path, title: str, xlabel: str, ylabel: str,
         series: Mapping[str, tuple[Sequence[Any], Sequence[float]]],
         kind: str = "line", right: Mapping[str, tuple[Sequence[Any], Sequence[float]]] | None = None,
         right_label: str = "", log_x: bool = False, size: tuple[float, float] = (7, 4.4)) -> Path:
    """A PNG with one line (or bar group) per series; Agg backend, no display needed. Every axis has one unit:
    series in another unit go in `right`, drawn against a second y axis labelled `right_label`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    if kind == "bar":
        names = list(series)
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            xs, ys = series[name]
            ax.bar([x + i * width for x in range(len(xs))], ys, width, label=name)
        first = series[names[0]][0] if names else []
        ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(first))], [str(x) for x in first])
    else:
        for name, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        other = ax.twinx()
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"][len(series):]
        for (name, (xs, ys)), colour in zip(right.items(), colours, strict=False):
            other.plot(list(xs), list(ys), marker="s", linestyle="--", color=colour, label=name)
        other.set_ylabel(right_label)
        other.set_ylim(bottom=0)
        more_handles, more_labels = other.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if kind != "bar":
        ax.set_ylim(bottom=0)
    # Below the plot: with two axes, no corner is free of both axes' lines.
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, len(labels)),
              frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def marked_block(doc: Path, begin: str, end: str) -> str:
    """The block of `doc` between the markers `begin` and `end`, markers included ("" if it has none)."""
    text = doc.read_text() if doc.exists() else ""
    if begin not in text or end not in text:
        return ""
    _, _, rest = text.partition(begin)
    return begin + rest.partition(end)[0] + end


def write_marked_block(doc: Path, begin: str, end: str, block: str, heading: str) -> None:
    """Replace the block between the markers in `doc`, or append it under `heading` (a markdown heading line)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    doc.write_text(text)
