"""Recycling on Kubernetes: the probes carry fleet:recycle's bounds, in a form the health check accepts."""

from __future__ import annotations

from copilot_fleet.pod.health import build_parser


def _probe_args(fleet, probe: str) -> list[str]:
    (sts,) = [o for o in fleet.objects if o["kind"] == "StatefulSet" and "copilot-cli" in o["metadata"]["name"]]
    (cli,) = sts["spec"]["template"]["spec"]["containers"]
    command = cli[probe]["exec"]["command"]
    assert command[:3] == ["python3", "-m", "copilot_fleet.pod.health"], command
    return command[3:]


def test_bounds_reach_readiness_and_liveness(make_fleet, kube):
    fleet = make_fleet("shared-cli", recycle={"maxRssMb": 1536, "maxSessions": 400})
    for probe in ("readinessProbe", "livenessProbe"):
        args = build_parser().parse_args(_probe_args(fleet, probe))  # the real parser: the two cannot drift
        assert (args.recycle_rss_mb, args.recycle_sessions) == (1536, 400), probe
        assert args.home is None  # the probe inherits the container's COPILOT_HOME


def test_no_bounds_no_recycle_arguments(make_fleet, kube):
    fleet = make_fleet("shared-session")
    for probe in ("readinessProbe", "livenessProbe"):
        args = build_parser().parse_args(_probe_args(fleet, probe))
        assert args.recycle_rss_mb is None and args.recycle_sessions is None
