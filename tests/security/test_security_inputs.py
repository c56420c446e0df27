"""Hostile input to the commands: target files that are deeply nested, not UTF-8 or huge; durations written
with other digits, spaces or absurd sizes. Each gets a clear error (exit status 2 or 1, no traceback) and costs
nothing: a huge file is refused before it is read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from copilot_fleet.spec import parse_duration
from copilot_fleet.target import MAX_TARGET_BYTES, TargetError, load_target

PROJECT = Path(__file__).resolve().parents[2]

# The command's own peak resident memory (VmHWM: this process image only; getrusage's maxrss would carry over the
# size of the pytest process it was forked from) must stay far below the size of the file it refused.
_MEASURED = """
import runpy, sys
sys.argv = ["copilot-fleet", *sys.argv[1:]]
try:
    runpy.run_module("copilot_fleet.cli", run_name="__main__")
finally:
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(f"maxrss-kib={hwm}", file=sys.stderr)
"""


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    proc = subprocess.run([sys.executable, "-c", _MEASURED, "--project-dir", str(PROJECT), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    rss = int(proc.stderr.rsplit("maxrss-kib=", 1)[1].split()[0])
    return proc, rss


@pytest.fixture(scope="module")
def bad_targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("targets")
    files = {
        "deep": ("[" * 200_000).encode(),
        "deep-object": ('{"a":' * 200_000).encode(),
        "latin1": '{"stack": "caf\xe9"}'.encode("latin-1"),
        "binary": b"\xff\xfe\x00{\x00}",
    }
    out = {}
    for name, data in files.items():
        out[name] = where / f"{name}.json"
        out[name].write_bytes(data)
    huge = where / "huge.json"
    with open(huge, "wb") as f:  # 300 MB, sparse: costs no disk, would cost 300 MB (and more) to read
        f.truncate(300 * 1024 * 1024)
    out["huge"] = huge
    return out


@pytest.mark.parametrize("name", ["deep", "deep-object", "latin1", "binary", "huge"])
@pytest.mark.parametrize("command", [("verify",), ("sessions", "list")], ids=["verify", "sessions-list"])
def test_a_bad_target_file_is_refused_with_a_message(bad_targets: dict[str, Path], name: str,
                                                     command: tuple[str, ...]) -> None:
    proc, rss_kib = _run(*command, "--target", str(bad_targets[name]))
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.splitlines()[0]
    expected = {"deep": "nested", "deep-object": "nested", "latin1": "UTF-8", "binary": "UTF-8",
                "huge": "bytes"}[name]
    assert expected in message and str(bad_targets[name]) in message, message
    assert rss_kib < 200 * 1024, f"refusing {name} cost {rss_kib // 1024} MiB of memory"


def test_load_target_limits(bad_targets: dict[str, Path]) -> None:
    with pytest.raises(TargetError, match=f"larger than the limit of {MAX_TARGET_BYTES} bytes"):
        load_target(bad_targets["huge"])
    with pytest.raises(TargetError, match="nested too deeply"):
        load_target(bad_targets["deep"])
    with pytest.raises(TargetError, match=r"not UTF-8 \(byte 0xe9 at position 14\)"):
        load_target(bad_targets["latin1"])


@pytest.mark.parametrize("value", ["٣h", "３h", "1 h", " 1h", "1h ", "10^23d", "99999999999999999999999d",
                                   "1e3s", "+5m", "-5m", "0x10s", "1_000s", "1.5h", "", "h"])
def test_durations_are_ascii_digits_and_a_unit(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_durations_have_a_sane_maximum() -> None:
    assert parse_duration("3650d") == 3650 * 86400
    with pytest.raises(ValueError, match="at most 3650 days"):
        parse_duration("3651d")
    with pytest.raises(ValueError, match="at most 3650 days"):
        parse_duration(10**12)
    assert parse_duration("90s") == 90 and parse_duration("7d") == 7 * 86400 and parse_duration(1800) == 1800


@pytest.mark.parametrize("value", ["٣h", "1 h", "10^23d", "99999999999999999999999d"])
def test_the_commands_refuse_such_durations(value: str) -> None:
    for argv in (["sessions", "delete", "--target", "/nonexistent", "--older-than", value],):
        proc, _ = _run(*argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "--older-than" in proc.stderr and "duration" in proc.stderr, proc.stderr
    janitor = subprocess.run([sys.executable, "-m", "copilot_fleet.pod.janitor", "--session-state", "/nonexistent",
                              "--ttl", value], capture_output=True, text=True, timeout=60, check=False)
    assert janitor.returncode == 2 and "--ttl" in janitor.stderr and "Traceback" not in janitor.stderr


@pytest.mark.parametrize("value", ["٣", "１０", "1e400", "nan"])
def test_second_counts_are_ascii_numbers(value: str) -> None:
    proc, _ = _run("verify", "--target", "/nonexistent", "--timeout", value)
    assert proc.returncode == 2 and "--timeout" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
