"""Ports picked for the servers that fleets, tests and fault runs start: never one the kernel could hand to a
bind(port 0) or an outgoing connection in the moment between our pick and our server's bind (that race once gave a
test's Redis port to the test model server), and not the same one twice in a process within two minutes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from copilot_fleet.pod import ports as ports_module
from copilot_fleet.pod.ports import free_port, free_port_block, port_is_free


@pytest.fixture(autouse=True)
def own_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests hand out hundreds of ports; the rest of the session must not find them remembered."""
    monkeypatch.setattr(ports_module, "_handed_out", {})


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_picked_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    low, _ = ephemeral_range()
    picked = [free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= port < low for port in picked), [p for p in picked if p >= low]
    blocks = [free_port_block(5) for _ in range(50)]
    ports = [b + i for b in blocks for i in range(5)]
    assert len(set(ports)) == len(ports) and not set(ports) & set(picked)
    assert all(port < low for port in ports)


def test_bind_port_zero_never_gets_a_port_picked_but_not_yet_bound() -> None:
    picked = {free_port() for _ in range(20)}
    held: list[socket.socket] = []
    try:
        for _ in range(500):  # what the test model server, a CLI on --port 0 and every connect() draw from
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] not in picked
    finally:
        for sock in held:
            sock.close()
    assert all(port_is_free(port) for port in picked)


def test_a_block_is_free_when_handed_out() -> None:
    with socket.create_server(("127.0.0.1", free_port())) as taken:
        taken_port = taken.getsockname()[1]
        for _ in range(20):
            base = free_port_block(8)
            assert taken_port not in range(base, base + 8)
            assert all(port_is_free(p) for p in range(base, base + 8))


def test_a_wide_block_is_found_among_hundreds_of_recently_handed_out_ports() -> None:
    """A long test session hands out ports all over the range; a fault run then needs 50 in a row."""
    scattered = {free_port() for _ in range(500)}
    for _ in range(10):
        base = free_port_block(50)
        assert not scattered & set(range(base, base + 50))
        assert all(port_is_free(p) for p in range(base, base + 50))
