"""The CLI server as the provider's child: started, watched, stopped, and never outliving the provider.

- The child gets PR_SET_PDEATHSIG(SIGKILL): if the provider dies in any way (SIGKILL included), the kernel kills
  the CLI too, so a CLI can never keep serving without its provider (CLI 1.0.102 does not let another provider
  register after the first one's connection closed, and would fall back to nothing).
- Its environment is the provider's minus every `COPILOT_FLEET_STORE_*` variable, so the store's credentials
  never reach the CLI or the tools it runs.
- Optionally it runs as another user (`user=`): then a tool run in the CLI cannot read the provider's files or its
  /proc entries either.
- Its output is read line by line: the ready line gives the port, everything is passed on to our stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

READY_LINE = re.compile(r"CLI server listening on port (\d+)")
STORE_ENV_PREFIX = "COPILOT_FLEET_STORE_"
_PR_SET_PDEATHSIG = 1


_PR_SET_DUMPABLE = 4


def _die_with_parent() -> None:  # runs in the child between fork and exec: keep it to one system call
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def make_undumpable() -> None:
    """Make this process non-dumpable: other processes of its user (a tool run in the CLI, when both run as one
    user) can then neither read its /proc/<pid>/environ, where the store URL is, nor its memory, nor ptrace it.
    The CLI child is exec'd afresh, so this does not carry over to it (the execute-only CLI is non-dumpable by
    itself). Raises OSError if the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")


def cli_environment(environ: Mapping[str, str], copilot_home: Path, token: str | None) -> dict[str, str]:
    """The CLI's environment: ours without the store's variables, with its home and connection token."""
    env = {k: v for k, v in environ.items() if not k.startswith(STORE_ENV_PREFIX)}
    env["COPILOT_HOME"] = str(copilot_home)
    env.setdefault("COPILOT_AUTO_UPDATE", "false")
    if token is not None:
        env["COPILOT_CONNECTION_TOKEN"] = token
    return env


class CliProcess:
    """`await CliProcess.start(...)` returns once the CLI printed its ready line (or raises with its output)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, drain: asyncio.Task[None]) -> None:
        self.proc = proc
        self.port = port
        self._drain = drain

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        user: int | None = None,
        group: int | None = None,
    ) -> CliProcess:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
        assert proc.stdout is not None
        seen: list[str] = []

        async def ready() -> int:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").rstrip()
                seen.append(text)
                if match := READY_LINE.search(text):
                    return int(match.group(1))
            raise RuntimeError("the CLI exited before it was ready")

        try:
            port = await asyncio.wait_for(ready(), timeout)
        except (TimeoutError, RuntimeError) as exc:
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            why = f"did not report ready within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            raise RuntimeError(
                f"the Copilot CLI {argv[0]} {why} (exit status {code}); its output: {' | '.join(seen[-20:])}"
            ) from None
        drain = asyncio.get_running_loop().create_task(cls._pass_output(proc), name="cli-output")
        return cls(proc, port, drain)

    @staticmethod
    async def _pass_output(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            sys.stderr.buffer.write(b"[cli] " + line)
            sys.stderr.flush()

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                self.proc.send_signal(signum)

    async def wait(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(self._drain, return_exceptions=True)
        return code

    async def stop(self, grace: float) -> int:
        """SIGTERM (the CLI finishes its turns and shuts down), then SIGKILL after `grace` seconds."""
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), grace)
        except TimeoutError:
            logger.warning("the CLI (pid %d) did not stop within %g s after SIGTERM; killing it", self.pid, grace)
            self.signal(signal.SIGKILL)
            return await self.wait()

