"""Verifying a cluster's fleet from outside the cluster: which addresses are cluster objects, how the target is
rewritten to the forwards, when verify forwards, and what it says when kubectl cannot. The forwards themselves run
through the real code path with a stand-in `kubectl` (tests/helpers/kubectl_standin.py); no fleet needed here
(tests/verify/test_verify_local_fleets.py verifies a real fleet through them)."""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from copilot_fleet import portforward
from copilot_fleet.cli import main
from copilot_fleet.clusterdns import parse_cluster_address, redis_address, replace_redis_address
from copilot_fleet.commands.verify import kube_namespace
from copilot_fleet.nodelay import open_tcp
from copilot_fleet.pod import procfs
from copilot_fleet.portforward import PortForwardError, PortForwards, choose_route, cluster_addresses, localize
from copilot_fleet.target import parse_target

ROOT = Path(__file__).resolve().parents[2]
NS = "copilot-shared"
SHARED = {
    "stack": "prod", "platform": "kubernetes", "isolation": "shared-cli",
    "endpoint": f"copilot-cli.{NS}.svc.cluster.local:4321",
    "replicas": [f"copilot-cli-{i}.copilot-cli-headless.{NS}.svc.cluster.local:4321" for i in range(2)],
    "connection_token": "t" * 32,
    "redis_url": f"redis://:s3cret-pw@copilot-redis.{NS}.svc.cluster.local:6379/0",
}
PER_USER = {
    "stack": "users", "platform": "kubernetes", "isolation": "per-user",
    "users": {"alice": "copilot-user-alice.team-a.svc.cluster.local:4321",
              "bob-smith": "copilot-user-bob-smith.team-a.svc.cluster.local:4321"},
    "user_tokens": {"alice": "a" * 32, "bob-smith": "b" * 32},
}


# --- the address mapping --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "resource", "namespace"), [
    (f"copilot-cli-1.copilot-cli-headless.{NS}.svc.cluster.local:4321", "pod/copilot-cli-1", NS),
    (f"copilot-cli.{NS}.svc.cluster.local:4321", "svc/copilot-cli", NS),
    ("copilot-user-bob-smith.team-a.svc.cluster.local:4321", "svc/copilot-user-bob-smith", "team-a"),
    ("copilot-redis.fleet.svc:6379", "svc/copilot-redis", "fleet"),  # without the cluster domain
    ("copilot-cli.fleet.svc.corp.example:4321", "svc/copilot-cli", "fleet"),  # another cluster domain
    ("Copilot-CLI.Fleet.SVC.cluster.local:4321", "svc/copilot-cli", "fleet"),  # DNS is case-blind
])
def test_cluster_dns_names_map_to_the_object_behind_them(address: str, resource: str, namespace: str) -> None:
    parsed = parse_cluster_address(address)
    assert parsed is not None
    assert (parsed.resource, parsed.namespace, parsed.address) == (resource, namespace, address)


@pytest.mark.parametrize("address", ["127.0.0.1:4321", "[::1]:4321", "copilot.example.com:443",
                                     "leases.redis.cache.windows.net:6380", "localhost:4321",
                                     "a.b.c.d.svc.cluster.local:1"])
def test_other_addresses_are_not_cluster_objects(address: str) -> None:
    assert parse_cluster_address(address) is None


def test_redis_urls_keep_password_database_and_scheme() -> None:
    url = "rediss://:p%40ss@copilot-redis.ns.svc.cluster.local:6380/3?ssl_cert_reqs=none"
    assert redis_address(url) == "copilot-redis.ns.svc.cluster.local:6380"
    assert replace_redis_address(url, "127.0.0.1:40001") == "rediss://:p%40ss@127.0.0.1:40001/3?ssl_cert_reqs=none"
    assert replace_redis_address("redis://h.ns.svc:6379", "127.0.0.1:1") == "redis://127.0.0.1:1"
    assert redis_address("redis://copilot-redis.ns.svc") == "copilot-redis.ns.svc:6379"  # the default port


def test_every_cluster_address_of_the_target_is_forwarded_and_rewritten() -> None:
    target = parse_target(json.dumps(SHARED))
    found = cluster_addresses(target)
    assert [a.resource for a in found] == ["svc/copilot-cli", "pod/copilot-cli-0", "pod/copilot-cli-1",
                                           "svc/copilot-redis"]
    local = {a.address: f"127.0.0.1:{40000 + i}" for i, a in enumerate(found)}
    moved = localize(target, local)
    assert moved.endpoint == "127.0.0.1:40000"
    assert moved.replicas == ["127.0.0.1:40001", "127.0.0.1:40002"]
    assert moved.redis_url is not None and moved.redis_url.get_secret_value() == "redis://:s3cret-pw@127.0.0.1:40003/0"
    assert moved.token_for(None) == target.token_for(None)  # nothing else changes
    users = parse_target(json.dumps(PER_USER))
    moved = localize(users, {a.address: "127.0.0.1:1" for a in cluster_addresses(users)})
    assert moved.users == {"alice": "127.0.0.1:1", "bob-smith": "127.0.0.1:1"}


def test_an_external_lease_store_is_used_as_it_is() -> None:
    target = parse_target(json.dumps({**SHARED, "redis_url": "rediss://:k@leases.redis.cache.windows.net:6380/0"}))
    assert [a.resource for a in cluster_addresses(target)][-1] == "pod/copilot-cli-1"
    moved = localize(target, {a.address: "127.0.0.1:1" for a in cluster_addresses(target)})
    assert moved.redis_url is not None and "leases.redis.cache.windows.net:6380" in moved.redis_url.get_secret_value()


# --- when verify forwards ---------------------------------------------------------------------------------------

def test_auto_forwards_only_cluster_names_that_do_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    target = parse_target(json.dumps(SHARED))
    monkeypatch.setattr(portforward, "resolves", lambda host: False)  # a laptop: no cluster DNS
    assert choose_route(target, "auto") == "port-forward"
    assert choose_route(target, "direct") == "direct"
    monkeypatch.setattr(portforward, "resolves", lambda host: True)  # a pod in the cluster
    assert choose_route(target, "auto") == "direct"
    assert choose_route(target, "port-forward") == "port-forward"
    local = parse_target(json.dumps({**SHARED, "platform": "local", "endpoint": "127.0.0.1:4321",
                                     "replicas": ["127.0.0.1:4401"], "redis_url": "redis://:p@127.0.0.1:6390/0"}))
    assert choose_route(local, "auto") == "direct"
    with pytest.raises(PortForwardError, match="nothing to forward"):
        choose_route(local, "port-forward")


def test_the_pods_namespace_comes_from_the_flag_the_target_the_stack_or_the_names() -> None:
    def ns(flag: str | None, doc: Mapping[str, object], stack_ns: str | None = None) -> str | None:
        return kube_namespace(argparse.Namespace(kube_namespace=flag), parse_target(json.dumps(doc)), stack_ns)

    assert ns("mine", SHARED) == "mine"
    assert ns(None, {**SHARED, "namespace": "exported"}, "from-stack") == "exported"
    assert ns(None, SHARED, "from-stack") == "from-stack"
    assert ns(None, SHARED) == NS
    assert ns(None, PER_USER) == "team-a"
    assert ns(None, {**SHARED, "platform": "local", "endpoint": "127.0.0.1:1", "replicas": [],
                     "redis_url": None}) is None


# --- kubectl, through the real code path ------------------------------------------------------------------------

@pytest.fixture
def echo_server() -> Iterator[str]:
    """A local TCP server that answers each line with the same line (stands in for a pod's port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_forwards_start_reach_the_pod_and_stop(kubectl_standin, echo_server: str) -> None:
    kubectl_standin.configure(forwards={f"{NS}/pod/copilot-cli-0:4321": echo_server,
                                        f"{NS}/svc/copilot-cli:4321": echo_server})
    target = parse_target(json.dumps({**SHARED, "replicas": SHARED["replicas"][:1], "redis_url": None}))
    kubectl = portforward.find_kubectl()
    assert kubectl.endswith("standin-bin/kubectl")
    with PortForwards(kubectl, portforward.current_context(kubectl, None)) as forwards:
        local = forwards.start(cluster_addresses(target))
        assert set(local) == {SHARED["endpoint"], SHARED["replicas"][0]}
        for address in local.values():
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1" and int(port) != 4321  # a port kubectl picked
            with open_tcp(host, int(port), timeout=30) as conn:  # the CLI server's address, as verify reaches it
                conn.sendall(b"ping\n")
                assert conn.recv(16) == b"ping\n"
        pids = kubectl_standin.pids()
        assert len(pids) == 2 and all(procfs.is_alive(p) for p in pids)
        assert forwards.ended() == []
    assert not any(procfs.is_alive(p) for p in pids), "a kubectl port-forward outlived verify"


def _verify(capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: Mapping[str, object],
            *args: str) -> tuple[int, str, str]:
    target = tmp_path / "target.json"
    target.write_text(json.dumps(doc))
    code = main(["--project-dir", str(ROOT), "verify", "--target", str(target), "--via", "port-forward", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_no_kubectl_says_what_it_is_for(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out, err = _verify(capsys, tmp_path, SHARED)
    assert code == 1 and "kubectl is not installed" in err and "--via direct" in err, err
    assert "PASS" not in out


def test_no_current_context_says_how_to_pick_one(kubectl_standin, tmp_path: Path, capsys) -> None:
    kubectl_standin.configure(context=None)
    code, _, err = _verify(capsys, tmp_path, SHARED)
    assert code == 1 and "no current context" in err and "--kube-context" in err, err


def test_a_context_that_does_not_exist_is_named(kubectl_standin, tmp_path: Path, capsys) -> None:
    code, _, err = _verify(capsys, tmp_path, SHARED, "--kube-context", "staging")
    assert code == 1 and "no context 'staging'" in err, err
    assert kubectl_standin.pids() == []


def test_a_missing_pod_names_pod_namespace_and_context_and_stops_the_other_forwards(
        kubectl_standin, echo_server: str, tmp_path: Path, capsys) -> None:
    """The endpoint's Service forwards, the first replica's pod does not exist in that cluster (the wrong
    context, or the fleet is down): the error says which pod, where, and how to pick another context; the forward
    that did start is stopped."""
    kubectl_standin.configure(forwards={f"{NS}/svc/copilot-cli:4321": echo_server,
                                        f"{NS}/svc/copilot-redis:6379": echo_server})
    code, out, err = _verify(capsys, tmp_path, SHARED)
    assert code == 1, out
    assert f"pod copilot-cli-0 not found in namespace {NS} of kubectl context standin" in err, err
    assert "--kube-context" in err
    pids = kubectl_standin.pids()
    assert pids and not any(procfs.is_alive(p) for p in pids), "a forward was left running"
