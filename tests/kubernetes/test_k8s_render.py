"""The offline render: every Kubernetes stack renders and validates strictly; the CLI's files, exit codes and
masking."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from copilot_fleet import cli, render
from copilot_fleet.spec import OFFLINE_SECRET
from copilot_fleet.stackfile import read_stack_config

PROJECT_DIR = Path(__file__).resolve().parents[2]


def test_there_is_a_kubernetes_stack_per_pattern(example_project: Path,
                                                 example_stack_kinds: dict[str, tuple[str, str]]) -> None:
    patterns = {read_stack_config(example_project, s)[0]["fleet:isolation"]
                for s, (platform, _) in example_stack_kinds.items() if platform == "kubernetes"}
    assert patterns == {"per-user", "shared-cli", "shared-session"}


@pytest.mark.example_stacks("kubernetes")
def test_every_kubernetes_stack_renders_and_validates(example_project: Path, example_stack: str) -> None:
    result = render.render_stack(example_project, example_stack)
    assert result.errors == []
    kinds = result.counts()
    assert kinds.get("StatefulSet") and kinds.get("Service") and kinds.get("NetworkPolicy") and kinds.get("CronJob")
    dump = json.dumps(result.objects)
    assert OFFLINE_SECRET not in dump
    (namespace,) = result.of_kind("Namespace")
    for obj in result.objects:
        assert obj["metadata"]["name"], obj
        if obj["kind"] not in ("Namespace", "PersistentVolume"):
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], render.object_id(obj)
    # the library itself agrees, object by object (our cached validator builds the same schemas)
    for obj in result.objects[:: max(1, len(result.objects) // 6)]:
        kubernetes_validate.validate(obj, result.k8s_version, strict=True)


def test_render_is_repeatable_in_one_process() -> None:
    first = render.render_stack(PROJECT_DIR, "k8s-shared-cli")
    other = render.render_stack(PROJECT_DIR, "k8s-per-user")
    second = render.render_stack(PROJECT_DIR, "k8s-shared-cli")
    assert first.objects == second.objects and first.outputs == second.outputs
    assert {o["metadata"].get("namespace") for o in other.objects} - {None} == {"copilot-users"}
    assert [render.object_id(o) for o in first.objects] == sorted(
        (render.object_id(o) for o in first.objects), key=lambda i: (i.split("/")[0], i))


def test_validator_matches_the_library_and_names_object_and_field() -> None:
    result = render.render_stack(PROJECT_DIR, "k8s-shared-cli")
    sts = copy.deepcopy(result.get("StatefulSet", "copilot-cli"))
    sts["spec"]["replicas"] = "three"
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["tcpSocketz"] = {"port": 1}
    validator = render.SchemaValidator("1.33")
    errors = validator.errors(sts)
    assert any(e.startswith("StatefulSet/copilot-cli: spec.replicas:") for e in errors), errors
    assert any("spec.template.spec.containers[0].livenessProbe" in e and "tcpSocketz" in e for e in errors), errors
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.33", strict=True)
    assert validator.errors(result.get("StatefulSet", "copilot-cli")) == []
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no Kubernetes 1.33 schema" in validator.errors(unknown)[0]
    with pytest.raises(ValueError, match="no bundled schema"):
        render.SchemaValidator("2.99")


def _project(tmp_path: Path, stacks: dict[str, dict[str, Any]]) -> Path:
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks").mkdir()
    for name, config in stacks.items():
        (tmp_path / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": config}))
    return tmp_path


GOOD = {
    "fleet:isolation": "per-user", "fleet:platform": "kubernetes",
    "fleet:image": "registry.example.com/copilot-cli:1.0.102",
    "fleet:users": [{"id": "alice", "githubToken": {"secure": "v1:AAAA"}}, {"id": "bob"}],
    "fleet:githubToken": {"secure": "v1:BBBB"}, "fleet:storage": {"accessMode": "ReadWriteOnce"},
}


def test_cli_writes_sorted_masked_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, {"good": GOOD})
    out = tmp_path / "out"
    (out).mkdir()
    (out / "keep.txt").write_text("not ours")
    code = cli.main(["--project-dir", str(project), "render", "--stack", "good", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "all" in printed.out and "valid" in printed.out and "StatefulSet" in printed.out
    files = sorted(out.glob("*.yaml"))
    assert {"statefulset-copilot-user-alice.yaml", "secret-copilot-user-bob-credentials.yaml",
            "networkpolicy-copilot-user-bob-ingress.yaml", "cronjob-janitor-alice.yaml"} <= {f.name for f in files}
    text = "".join(f.read_text() for f in files)
    assert OFFLINE_SECRET not in text and OFFLINE_SECRET not in printed.out
    assert render.SECRET_MASK in (out / "secret-copilot-user-alice-credentials.yaml").read_text()
    for f in files:
        doc = yaml.safe_load(f.read_text())
        assert f.read_text() == render.to_yaml(doc)  # keys sorted, stable
    assert (out / "keep.txt").exists()
    # a second render into the same directory replaces its own files only
    (out / "statefulset-stale.yaml").write_text("kind: StatefulSet\n")
    assert cli.main(["--project-dir", str(project), "render", "--stack", "good", "--out", str(out)]) == 0
    assert not (out / "statefulset-stale.yaml").exists() and (out / "keep.txt").exists()


def test_no_secret_value_reaches_the_render(tmp_path: Path) -> None:
    """The real program's mock tokens and any config secret are masked in manifests and outputs."""
    values = {"fleet:isolation": "shared-cli", "fleet:platform": "kubernetes",
              "fleet:image": "registry.example.com/copilot-cli:1.0.102", "fleet:githubToken": "ghp_CANARY_123",
              "fleet:storage": {"storageClass": "nfs-client"}}
    run = render.run_program(values, {"fleet:githubToken"})
    clear = [run.outputs["connection_token"], run.outputs["redis_url"], "ghp_CANARY_123"]
    masked = json.dumps(render.manifests(run)) + json.dumps(render.masked_outputs(run))
    assert not [c for c in clear if c in masked]
    assert render.SECRET_MASK in masked
    assert "ghp_CANARY_123" in json.dumps(render.manifests(run, mask=False))  # the check above can fail


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {**GOOD, "fleet:replicas": 3}
    local = {"fleet:isolation": "shared-cli", "fleet:platform": "local"}
    project = _project(tmp_path, {"good": GOOD, "bad": bad, "here": local})
    out = tmp_path / "out"
    assert cli.main(["--project-dir", str(project), "render", "--stack", "bad", "--out", str(out)]) == 2
    assert "fleet:replicas" in capsys.readouterr().err
    assert cli.main(["--project-dir", str(project), "render", "--stack", "here", "--out", str(out)]) == 2
    assert "copilot-fleet up --stack here" in capsys.readouterr().err
    assert cli.main(["--project-dir", str(project), "render", "--stack", "nope", "--out", str(out)]) == 1
    assert "good" in capsys.readouterr().err  # lists the stacks there are
    assert cli.main(["--project-dir", str(project), "render", "--stack", "good", "--k8s-version", "9.9",
                     "--out", str(out)]) == 1
    assert "no bundled schema" in capsys.readouterr().err
    assert not out.exists()  # nothing written for any failure above

    real_manifests = render.manifests

    def broken(run: render.ProgramRun, mask: bool = True) -> list[dict[str, Any]]:
        docs = real_manifests(run, mask)
        for d in docs:
            if d["kind"] == "Service":
                d["spec"]["ports"][0]["port"] = "http"
        return docs

    monkeypatch.setattr(render, "manifests", broken)
    assert cli.main(["--project-dir", str(project), "render", "--stack", "good", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Service/copilot-user-alice: spec.ports[0].port:" in err


@pytest.mark.parametrize("stack", ["k8s-per-user", "k8s-shared-cli"])
def test_render_shortcuts_register_what_the_sdk_engine_does(stack: str) -> None:
    """The render's inline mock monitor (a copy of the SDK's RegisterResource without thread hops) and its preview
    mode are pure speed-ups: same registrations, inputs, providers and outputs as an `up` under the SDK's own
    MockMonitor in its thread pool."""
    values, secret, project = render.stack_config(PROJECT_DIR, stack)
    reference = render.run_program(values, secret, stack=stack, project=project, inline=False)

    def key(run: render.ProgramRun) -> list[tuple[str, str, str, str]]:
        return sorted((r.typ, r.name, json.dumps(r.inputs, sort_keys=True), r.provider) for r in run.registrations)

    for fast in (render.run_program(values, secret, stack=stack, project=project),
                 render.run_program(values, secret, stack=stack, project=project, preview=True)):
        assert key(fast) == key(reference)
        assert fast.outputs == reference.outputs and fast.secret_outputs == reference.secret_outputs


def test_main_module_is_the_program() -> None:
    """`pulumi up` runs __main__.py: under mocks it registers the fleet and exports the target."""
    import runpy

    def program() -> dict[str, Any]:
        from pulumi.runtime import settings

        runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
        root: Any = settings.get_root_resource()  # the Stack resource: its outputs are not public API
        return dict(root.outputs)

    values, secret, project = render.stack_config(PROJECT_DIR, "k8s-shared-cli")
    run = render.run_program(values, secret, stack="k8s-shared-cli", project=project, program=program)
    assert any(r.typ == "kubernetes:apps/v1:StatefulSet" and r.name == "copilot-cli" for r in run.registrations)
    assert run.outputs["endpoint"] == "copilot-cli.copilot-shared.svc.cluster.local:4321"


def test_source_ranges_and_client_namespaces_come_from_stack_config(tmp_path: Path) -> None:
    config = {
        "fleet:isolation": "shared-cli", "fleet:platform": "kubernetes",
        "fleet:image": "registry.example.com/copilot-cli:1.0.102",
        "fleet:githubToken": {"secure": "v1:BBBB"},
        "fleet:loadBalancer": {"serviceType": "LoadBalancer", "sourceRanges": ["203.0.113.0/24"],
                               "acceptPlaintext": True},
        "fleet:clientNamespaceSelector": {"team": "apps"}, "fleet:storage": {"storageClass": "nfs-client"},
    }
    result = render.render_stack(_project(tmp_path, {"lb": config}), "lb")
    assert result.errors == []
    (client_svc,) = [s for s in result.of_kind("Service") if s["spec"].get("type") == "LoadBalancer"]
    assert client_svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    peers = json.dumps([p["spec"] for p in result.of_kind("NetworkPolicy")])
    assert "203.0.113.0/24" in peers and '"team": "apps"' in peers
