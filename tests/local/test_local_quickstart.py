"""The quickstart's ports: a stack whose ports are free is left alone; one whose ports are taken (another fleet,
anything listening) gets a free block written into its stack file, or the block asked for with --base-port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import tests.helpers.local_fleet as h
from copilot_fleet.local import quickstart
from copilot_fleet.pod.ports import port_is_free
from copilot_fleet.stackfile import load_stack_spec

HEADER = "# The embedded default: shared-cli as real processes on 127.0.0.1.\n# No provider is set.\n"


@pytest.fixture
def project(tmp_path: Path) -> h.Project:
    made = h.Project.create(tmp_path / "project")
    made.local_stack("dev", "shared-cli", replicas=2)
    path = made.dir / "stacks" / "Pulumi.dev.yaml"
    path.write_text(HEADER + path.read_text())
    return made


def ports(project: h.Project) -> dict[int, str]:
    return quickstart.ports_of(load_stack_spec(project.dir, "dev"))


def test_free_ports_are_left_as_they_are(project: h.Project, capsys: pytest.CaptureFixture[str]) -> None:
    before = (project.dir / "stacks" / "Pulumi.dev.yaml").read_text()
    assert quickstart.main(["--project-dir", str(project.dir), "--stack", "dev"]) == 0
    out, err = capsys.readouterr()
    assert out == "dev\n" and err == ""
    assert (project.dir / "stacks" / "Pulumi.dev.yaml").read_text() == before


def test_a_taken_port_moves_the_stack_to_a_free_block(project: h.Project,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    redis_port = next(p for p, key in ports(project).items() if key == "fleet:local.redisPort")
    with socket.create_server(("127.0.0.1", redis_port)):  # another fleet's Redis, say
        assert quickstart.main(["--project-dir", str(project.dir), "--stack", "dev"]) == 0
        out, err = capsys.readouterr()
        assert out == "dev\n"
        assert f"port {redis_port} (fleet:local.redisPort) is in use by pid {os.getpid()}" in err, err
        moved = ports(project)
        assert redis_port not in moved and len(moved) == 5
        assert all(port_is_free(p) for p in moved)
    text = (project.dir / "stacks" / "Pulumi.dev.yaml").read_text()
    assert text.startswith(HEADER)  # the comments at the top are kept
    spec = load_stack_spec(project.dir, "dev")
    assert (spec.isolation, spec.replicas) == ("shared-cli", 2)
    assert sorted(moved) == list(range(spec.local.replica_base_port, spec.local.replica_base_port + 5))


def test_base_port_sets_the_block_asked_for(project: h.Project, capsys: pytest.CaptureFixture[str]) -> None:
    base = h.free_port_block(5)
    assert quickstart.main(["--project-dir", str(project.dir), "--stack", "dev", "--base-port", str(base)]) == 0
    assert f"--base-port {base}: Pulumi.dev.yaml now uses 127.0.0.1:{base}-{base + 4}" in capsys.readouterr().err
    local = load_stack_spec(project.dir, "dev").local
    assert (local.replica_base_port, local.endpoint_port, local.redis_port, local.model_port) == (
        base, base + 2, base + 3, base + 4)


def test_a_taken_base_port_is_refused_naming_the_port(project: h.Project,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = (project.dir / "stacks" / "Pulumi.dev.yaml").read_text()
    base = h.free_port_block(5)
    with socket.create_server(("127.0.0.1", base + 2)):
        assert quickstart.main(["--project-dir", str(project.dir), "--stack", "dev", "--base-port",
                                str(base)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"port {base + 2} is in use by pid {os.getpid()}" in err, err
    assert (project.dir / "stacks" / "Pulumi.dev.yaml").read_text() == before
    with pytest.raises(SystemExit):
        quickstart.main(["--project-dir", str(project.dir), "--base-port", "80"])
    assert "from 1024 to 65535" in capsys.readouterr().err
