"""A stack's rendered pods running on one Node (kubelet.py), with what a cluster and its surroundings would provide.

What the runner provides, and says so:

- **The stack, derived for this machine.** `derive_stack` copies `stacks/Pulumi.<stack>.yaml` and changes one
  thing: the model provider points at the bundled test model, run as a pod of its own on the pod network
  (`python -m copilot_fleet.testmodel` in the CLI image), with the egress rule a private model endpoint needs
  (`fleet:egress.allow` its address and port). Nothing else changes: a stack that carries GitHub tokens keeps
  them (fake values here: no GitHub), sessions then use the provider. `copilot-fleet render` renders it.
- **Secret values.** The render masks every secret. Each (Secret, key) the rendered objects declare (Secrets, or
  the SecretProviderClass' secretObjects on Azure) gets a generated value, the same wherever it is read; the
  lease store URLs are composed from the pieces they name (the Redis password and Service), and the provider key
  is the test model's. A pod that reads a key no object declares fails, as it would on a cluster.
- **Stand-ins** for what is outside the cluster: the test model, and the lease store where the stack uses one it
  does not run (an external Redis URL; Azure Cache for Redis): a Redis pod from the stand-in Redis image speaking
  TLS on 6380 only, as those do, with a certificate from a CA made for the run. Its URL (`rediss://...`) names
  that CA (`?ssl_ca_certs=`), and the janitor pod gets the CA file mounted: the one addition to a rendered pod,
  because the real services' certificates chain to public CAs the image already trusts.
- **Images**: the manifests' images map to the locally built CLI image and the Redis stand-in
  (scripts/setup-runtime.sh).
- **Cluster DNS**: `/etc/hosts` entries for each StatefulSet pod (`<pod>.<service>.<ns>.svc.cluster.local`),
  each Service with exactly one backend, and the stand-ins.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copilot_fleet.components.kubernetes.secrets import docker_config_json
from tests.helpers.kubelet import Node, RunningPod

ROOT = Path(__file__).resolve().parents[2]
# scripts/setup-runtime.sh builds it under this tag (checkouts running the tier side by side set their own).
CLI_IMAGE = os.environ.get("COPILOT_FLEET_RUNTIME_CLI_IMAGE", "localhost/copilot-fleet/copilot-cli:local")
REDIS_IMAGE = "localhost/local-stand-in/redis:bookworm-debian"

MODEL_HOST = "test-model.runtime.invalid"  # .invalid: a name no real network resolves
MODEL_PORT = 18080
MODEL_ID = "copilot-fleet-test"
# The lease store outside the cluster (fleet:redis.url, Azure Cache for Redis): TLS on 6380 only.
OUTSIDE_STORE_HOST = {"kubernetes": "external-redis.runtime.invalid", "azure": "azure-cache.runtime.invalid"}
OUTSIDE_STORE_PORT = 6380
STORE_CA_IN_POD = "/etc/runtime-tier/lease-store-ca.crt"

CLI_COMPONENT = "cli"
LEASE_STORE_COMPONENT = "lease-store"
JANITOR_COMPONENT = "janitor"
COMPONENT_LABEL = "app.kubernetes.io/component"
USER_LABEL = "copilot-fleet/user"


def copilot_fleet_command() -> list[str]:
    return [str(Path(sys.executable).parent / "copilot-fleet")]


def run_verify(document: Mapping[str, Any], where: Path, env: Mapping[str, str] | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`copilot-fleet verify --target FILE` with `document` as the target (a 0600 file in `where`): the finished
    process (its report printed) and the names of the checks that passed."""
    target = where / "target.json"
    target.write_text(json.dumps(document))
    target.chmod(0o600)
    report_file = where / "report.json"
    proc = subprocess.run([*copilot_fleet_command(), "verify", "--target", str(target), "--json", str(report_file),
                           "--timeout", "300"], capture_output=True, text=True, timeout=400,
                          env=dict(env) if env is not None else None)
    print(proc.stdout)
    if not report_file.exists():
        return proc, set()
    report = json.loads(report_file.read_text())
    return proc, {c["nodeid"].split("::")[-1].split("[")[0] for c in report["checks"] if c["outcome"] == "passed"}


# --- the stack ---------------------------------------------------------------------------------------------------

def derive_stack(stack: str, project: Path, model_address: str, *, source_project: Path = ROOT) -> Path:
    """Write a project at `project` whose stack `stack` is the repository's, with the provider pointed at the test
    model pod (at `model_address`, which the CLI pods' egress policy must let through); returns the stack file."""
    source = source_project / "stacks" / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(source.read_text())
    config = document["config"]
    provider = dict(config.get("fleet:provider") or {"type": "openai"})
    provider["baseUrl"] = f"http://{MODEL_HOST}:{MODEL_PORT}/v1"
    provider["model"] = MODEL_ID
    # The value is masked by the render anyway; the runner gives the Secret the test model's key.
    provider.setdefault("apiKey", {"secure": "v1:runtime-tier-placeholder"})
    config["fleet:provider"] = provider
    egress = dict(config.get("fleet:egress") or {})
    egress["allow"] = [*(egress.get("allow") or []), {"cidr": f"{model_address}/32", "ports": [MODEL_PORT]}]
    config["fleet:egress"] = egress
    (project / "stacks").mkdir(parents=True, exist_ok=True)
    shutil.copy(source_project / "Pulumi.yaml", project / "Pulumi.yaml")
    out = project / "stacks" / f"Pulumi.{stack}.yaml"
    out.write_text("# Derived by tests/runtime for the real-runtime tier: the provider points at the test model pod."
                   "\n" + yaml.safe_dump(document, sort_keys=False))
    return out


@dataclass
class Rendered:
    stack: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{self.stack}: no {kind}/{name} rendered")

    @property
    def namespace(self) -> str:
        names = {o["metadata"].get("namespace") for o in self.objects} - {None}
        if len(names) != 1:
            raise AssertionError(f"{self.stack}: objects in namespaces {sorted(names)}; expected one")
        return names.pop()

    def workloads(self, component: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("StatefulSet", "Deployment", "CronJob")
                and o["metadata"]["labels"].get(COMPONENT_LABEL) == component]

    def secret_types(self) -> dict[str, str]:
        """Secret name -> type, of the Secrets the stack makes or Key Vault sync creates."""
        types = {s["metadata"]["name"]: s.get("type", "Opaque") for s in self.of_kind("Secret")}
        for spc in self.of_kind("SecretProviderClass"):
            for obj in spc["spec"].get("secretObjects") or []:
                types[obj["secretName"]] = obj.get("type", "Opaque")
        return types

    def declared_secret_keys(self) -> set[tuple[str, str]]:
        """(Secret, key) pairs that exist once the stack is up: its Secrets, or what Key Vault sync creates."""
        keys = set()
        for secret in self.of_kind("Secret"):
            for key in {**(secret.get("stringData") or {}), **(secret.get("data") or {})}:
                keys.add((secret["metadata"]["name"], key))
        for spc in self.of_kind("SecretProviderClass"):
            for obj in spc["spec"].get("secretObjects") or []:
                for item in obj.get("data") or []:
                    keys.add((obj["secretName"], item["key"]))
        return keys


def render(project: Path, stack: str, out: Path) -> Rendered:
    """`copilot-fleet render` (the product's own command line) and the YAML files it writes."""
    proc = subprocess.run([*copilot_fleet_command(), "--project-dir", str(project), "render", "--stack", stack,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"copilot-fleet render --stack {stack} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr}")
    objects = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    return Rendered(stack, objects)


# --- secrets -----------------------------------------------------------------------------------------------------

@dataclass
class SecretValues:
    """Generated values for the Secrets the rendered objects declare, the same wherever they are read."""

    declared: set[tuple[str, str]]
    composed: dict[tuple[str, str], str] = field(default_factory=dict)  # values made from other values
    generated: dict[tuple[str, str], str] = field(default_factory=dict)

    def __call__(self, name: str, key: str) -> str:
        if (name, key) not in self.declared:
            raise AssertionError(f"a pod reads Secret {name} key {key}, which no rendered object creates "
                                 f"(declared: {sorted(self.declared)}): the kubelet would refuse to start it")
        if (name, key) in self.composed:
            return self.composed[(name, key)]
        return self.generated.setdefault((name, key), secrets.token_hex(24))


# --- the world ---------------------------------------------------------------------------------------------------

@dataclass
class PodPlan:
    name: str
    workload: dict[str, Any]
    template: dict[str, Any]  # camelCase, as rendered
    address: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template.get("metadata", {}).get("labels") or {})

    @property
    def component(self) -> str | None:
        return self.labels.get(COMPONENT_LABEL)


@dataclass
class StackWorld:
    """One stack's pods on a Node, with stand-ins, secrets and DNS; `target()` is what verify gets."""

    rendered: Rendered
    config: dict[str, Any]  # the derived stack's config (fleet:* keys)
    node: Node
    secret_values: SecretValues
    model_key: str
    redis_password: str | None = None  # of the lease store the host's fleet client uses
    plans: dict[str, PodPlan] = field(default_factory=dict)
    lease_store_pod: str | None = None
    project: Path | None = None  # the derived project (its stack file is what was rendered)

    @property
    def namespace(self) -> str:
        return self.rendered.namespace

    # --- planning: every address is known before the first pod starts ----------------------------------------------

    def plan(self, model_address: str) -> None:
        ns = self.namespace
        self.plans["test-model"] = PodPlan("test-model", {}, {}, model_address)
        for workload in self.rendered.of_kind("StatefulSet"):
            spec = workload["spec"]
            service = spec["serviceName"]
            for ordinal in range(int(spec.get("replicas", 1))):
                pod = f"{workload['metadata']['name']}-{ordinal}"
                address = self.node.allocate(pod, f"{pod}.{service}.{ns}.svc.cluster.local",
                                             f"{pod}.{service}.{ns}.svc")
                self.plans[pod] = PodPlan(pod, workload, self._with_claims(workload, pod), address)
        for service in self.rendered.of_kind("Service"):
            selector = service["spec"].get("selector") or {}
            backends = [p for p in self.plans.values()
                        if selector and all(p.labels.get(k) == v for k, v in selector.items())]
            if len(backends) == 1 and service["spec"].get("clusterIP") != "None":
                # No kube-proxy here: a Service with one backend resolves straight to it.
                name = service["metadata"]["name"]
                for alias in (f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc", f"{name}.{ns}", name):
                    self.node.hosts[alias] = backends[0].address

    @staticmethod
    def _with_claims(workload: Mapping[str, Any], pod: str) -> dict[str, Any]:
        """The StatefulSet controller's part: each volumeClaimTemplate becomes the claim `<template>-<pod>`."""
        template = json.loads(json.dumps(workload["spec"]["template"]))
        volumes = template["spec"].setdefault("volumes", [])
        for claim in workload["spec"].get("volumeClaimTemplates") or []:
            name = claim["metadata"]["name"]
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{pod}"}})
        return template

    def pods(self, component: str) -> list[PodPlan]:
        return [p for p in self.plans.values() if p.component == component]

    # --- lease stores ----------------------------------------------------------------------------------------------

    def in_cluster_redis(self) -> PodPlan | None:
        stores = self.pods(LEASE_STORE_COMPONENT)
        return stores[0] if stores else None

    def janitor_url_key(self) -> tuple[str, str] | None:
        for name, key in self.secret_values.declared:
            if key == "redis-url":
                return name, key
        return None

    @property
    def outside_store_host(self) -> str | None:
        """The lease store's host when it is outside the cluster (None: in-cluster Redis, or none at all)."""
        if self.janitor_url_key() is None or self.in_cluster_redis() is not None:
            return None
        return OUTSIDE_STORE_HOST[self.config["fleet:platform"]]

    def store_tls_dir(self) -> Path:
        return self.node.root / "lease-store-tls"

    def make_store_tls(self) -> None:
        """A CA for the run and a server certificate for the outside lease store (its name, and 127.0.0.1 for the
        host's fleet client through the published port); the key is the Redis user's (999) only."""
        host = self.outside_store_host
        assert host is not None
        tls = self.store_tls_dir()
        tls.mkdir(parents=True, exist_ok=True)
        openssl = ["openssl"]
        run = lambda *a: subprocess.run([*openssl, *a], cwd=tls, check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=copilot-fleet runtime tier CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={host}")
        (tls / "san.ext").write_text(f"subjectAltName=DNS:{host},IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
        for name in ("ca.crt", "server.crt"):
            (tls / name).chmod(0o644)
        os.chown(tls / "server.key", 999, 999)
        (tls / "server.key").chmod(0o400)
        tls.chmod(0o755)

    def janitor_mounts(self) -> dict[str, list[tuple[Path, str]]]:
        """The outside lease store's CA for the janitor container (see the module docstring), if there is one."""
        if self.outside_store_host is None:
            return {}
        return {"janitor": [(self.store_tls_dir() / "ca.crt", STORE_CA_IN_POD)]}

    def compose_secrets(self) -> None:
        provider_key = [k for k in self.secret_values.declared if k[1] == "provider-api-key"]
        for key in provider_key:
            self.secret_values.composed[key] = self.model_key
        login = self.config.get("fleet:imagePullCredentials")
        for key in [k for k in self.secret_values.declared if k[1] == ".dockerconfigjson"]:
            # The stack's registry login as the program writes it (the password is masked: a generated one).
            assert login, f"{key} is declared but the stack has no fleet:imagePullCredentials"
            self.secret_values.composed[key] = docker_config_json(login["server"], login["username"],
                                                                  secrets.token_hex(16))
        url_key = self.janitor_url_key()
        redis = self.in_cluster_redis()
        if redis is not None:
            # Secret copilot-redis: `password`, and `auth.conf` holding it as Redis config (docs/kubernetes.md).
            (secret_name,) = {v["secret"]["secretName"] for v in redis.template["spec"]["volumes"] if "secret" in v}
            self.redis_password = self.secret_values(secret_name, "password")
            self.secret_values.composed[(secret_name, "auth.conf")] = f"requirepass {self.redis_password}\n"
            if url_key is not None:
                service = self.client_service(redis)
                # The URL the program gives the janitor (docs/kubernetes.md, Lease store).
                self.secret_values.composed[url_key] = (
                    f"redis://:{self.redis_password}@{service}.{self.namespace}.svc.cluster.local:6379/0")
        elif url_key is not None:
            self.redis_password = secrets.token_hex(24)
            self.secret_values.composed[url_key] = (
                f"rediss://:{self.redis_password}@{self.outside_store_host}:{OUTSIDE_STORE_PORT}/0"
                f"?ssl_ca_certs={STORE_CA_IN_POD}")

    def client_service(self, plan: PodPlan) -> str:
        """The (non-headless) Service clients reach a pod by."""
        for service in self.rendered.of_kind("Service"):
            selector = service["spec"].get("selector") or {}
            if (service["spec"].get("clusterIP") != "None" and selector
                    and all(plan.labels.get(k) == v for k, v in selector.items())):
                return service["metadata"]["name"]
        raise AssertionError(f"no Service for pod {plan.name}")

    @staticmethod
    def _env_ref(plan: PodPlan, variable: str) -> tuple[str, str]:
        for container in plan.template["spec"]["containers"]:
            for var in container.get("env") or []:
                if var["name"] == variable:
                    ref = var["valueFrom"]["secretKeyRef"]
                    return ref["name"], ref["key"]
        raise AssertionError(f"pod {plan.name}: no {variable} from a Secret")

    # --- running ---------------------------------------------------------------------------------------------------

    def start_test_model(self) -> RunningPod:
        spec = {
            "automount_service_account_token": False, "enable_service_links": False,
            "security_context": {"run_as_non_root": True, "run_as_user": 1000, "run_as_group": 1000},
            "containers": [{
                "name": "test-model", "image": "runtime-tier/test-model",
                "command": ["python3", "-m", "copilot_fleet.testmodel", "--host", "0.0.0.0",
                            "--port", str(MODEL_PORT)],
                "env": [{"name": "TESTMODEL_API_KEY", "value": self.model_key},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "ports": [{"container_port": MODEL_PORT}],
                "readiness_probe": {"tcp_socket": {"port": MODEL_PORT}, "period_seconds": 0.2,
                                    "failure_threshold": 100},
                "security_context": {"read_only_root_filesystem": True, "allow_privilege_escalation": False,
                                     "capabilities": {"drop": ["ALL"]}},
            }],
        }
        pod = self.node.run_pod("test-model", spec, namespace="runtime-tier", address=self.plans["test-model"].address)
        pod.wait_ready()
        return pod

    def start_external_redis(self) -> RunningPod | None:
        """The stand-in for a lease store outside the cluster: Redis with TLS on 6380 only (no plain port)."""
        plan = self.plans.get("external-redis")
        if plan is None:
            return None
        assert self.redis_password is not None
        self.make_store_tls()
        tls = "/etc/runtime-tier/tls"
        spec = {
            "automount_service_account_token": False, "enable_service_links": False,
            "security_context": {"run_as_non_root": True, "run_as_user": 999, "run_as_group": 999},
            "containers": [{
                "name": "redis", "image": "runtime-tier/external-redis",
                "command": ["redis-server", "--port", "0", "--tls-port", str(OUTSIDE_STORE_PORT),
                            "--tls-cert-file", f"{tls}/server.crt", "--tls-key-file", f"{tls}/server.key",
                            "--tls-ca-cert-file", f"{tls}/ca.crt", "--tls-auth-clients", "no",
                            "--requirepass", self.redis_password, "--save", "", "--appendonly", "no"],
                "ports": [{"container_port": OUTSIDE_STORE_PORT}],
                "readiness_probe": {"tcp_socket": {"port": OUTSIDE_STORE_PORT}, "period_seconds": 0.2,
                                    "failure_threshold": 100},
                "security_context": {"read_only_root_filesystem": True, "allow_privilege_escalation": False,
                                     "capabilities": {"drop": ["ALL"]}},
                "volume_mounts": [{"name": "tls", "mount_path": tls, "read_only": True}],
            }],
            "volumes": [{"name": "tls", "host_path": {"path": str(self.store_tls_dir())}}],
        }
        pod = self.node.run_pod("external-redis", spec, namespace="runtime-tier", address=plan.address)
        pod.wait_ready()
        return pod

    def run_janitor(self, pod_name: str, template: Mapping[str, Any]) -> RunningPod:
        """One Job pod of a janitor CronJob (with the outside lease store's CA mounted, when there is one)."""
        return self.node.run_pod(pod_name, template["spec"], namespace=self.namespace,
                                 labels=template["metadata"]["labels"], extra_mounts=self.janitor_mounts())

    def start(self, plan: PodPlan) -> RunningPod:
        return self.node.run_pod(plan.name, plan.template["spec"], namespace=self.namespace,
                                 address=plan.address, labels=plan.labels)

    def start_components(self, component: str) -> list[RunningPod]:
        """Start every pod of a component at once (as parallel pod management does), then wait for each."""
        pods = [self.start(plan) for plan in self.pods(component)]
        for pod in pods:
            pod.wait_ready()
        return pods

    # --- what verify gets ------------------------------------------------------------------------------------------

    def target(self) -> dict[str, Any]:
        """The target `copilot-fleet verify --target` reads, made of the pods' published ports."""
        cli = self.pods(CLI_COMPONENT)
        first = cli[0].template["spec"]["containers"][0]
        out: dict[str, Any] = {"stack": self.rendered.stack, "platform": self.config["fleet:platform"],
                               "namespace": self.namespace}
        users = {p.labels[USER_LABEL]: p for p in cli if USER_LABEL in p.labels}
        out["isolation"] = self.config["fleet:isolation"]
        if users:
            out["users"] = {u: f"127.0.0.1:{self._cli_port(p)}" for u, p in sorted(users.items())}
            out["user_tokens"] = {u: self.secret_values(*self._env_ref(p, "COPILOT_CONNECTION_TOKEN"))
                                  for u, p in sorted(users.items())}
        else:
            out["replicas"] = [f"127.0.0.1:{self._cli_port(p)}" for p in cli]
            out["connection_token"] = self.secret_values(*self._env_ref(cli[0], "COPILOT_CONNECTION_TOKEN"))
        redis = self.in_cluster_redis()
        store = self.node.pods.get(redis.name if redis else "external-redis")
        if store is not None and self.redis_password is not None:
            if redis is not None:
                out["redis_url"] = f"redis://:{self.redis_password}@127.0.0.1:{store.ports[6379]}/0"
            else:
                out["redis_url"] = (f"rediss://:{self.redis_password}@127.0.0.1:{store.ports[OUTSIDE_STORE_PORT]}/0"
                                    f"?ssl_ca_certs={self.store_tls_dir() / 'ca.crt'}")
        env = {v["name"]: v.get("value") for v in first.get("env") or []}
        out["provider"] = {"type": env["COPILOT_PROVIDER_TYPE"], "base_url": env["COPILOT_PROVIDER_BASE_URL"],
                           "api_key": self.model_key, "wire_api": env.get("COPILOT_PROVIDER_WIRE_API")}
        out["model"] = env.get("COPILOT_MODEL")
        return out

    def _cli_port(self, plan: PodPlan) -> int:
        container_port = int(plan.template["spec"]["containers"][0]["ports"][0]["containerPort"])
        return self.node.pods[plan.name].ports[container_port]

    # --- from outside the cluster, as a user's laptop reaches it --------------------------------------------------

    def cluster_target(self) -> dict[str, Any]:
        """The target as `pulumi stack output` gives it: the servers, and an in-cluster lease store, by their cluster
        DNS names, taken from the stack's own outputs (the Pulumi program under the mock engine, on the derived
        stack); the secrets are the world's (the outputs hold the mock engine's). A lease store outside the
        cluster stays the stand-in's address, which this machine reaches as a laptop reaches a managed store."""
        from copilot_fleet.clusterdns import parse_cluster_address, redis_address, replace_redis_address
        from copilot_fleet.render import run_program, stack_config

        assert self.project is not None, "the world was not built from a derived project"
        values, secret_keys, project = stack_config(self.project, self.rendered.stack)
        outputs = run_program(values, secret_keys, stack=self.rendered.stack, project=project, preview=True).outputs
        out = self.target()
        for key in ("endpoint", "replicas", "users", "namespace"):
            if outputs.get(key):
                out[key] = outputs[key]
        store = redis_address(outputs.get("redis_url") or "")
        if "redis_url" in out and store is not None and parse_cluster_address(store) is not None:
            out["redis_url"] = replace_redis_address(out["redis_url"], store)
        return out

    def api_server_forwards(self) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        """What `kubectl port-forward` and `kubectl get/exec` reach through the API server, for the stand-in kubectl
        (tests/helpers/kubectl_standin.py), made from the rendered objects and the running pods, not from any
        target: (`<ns>/pod/<name>:<port>` and `<ns>/svc/<name>:<port>` -> the pod's published 127.0.0.1 port,
        `<ns>/<pod>` -> its labels and container). A Service forward goes to the first running pod its selector
        matches, on the Service port's targetPort, as kubectl does."""
        ns = self.namespace
        running = {name: pod for name, pod in sorted(self.node.pods.items())
                   if name in self.plans and self.plans[name].workload}
        forwards: dict[str, str] = {}
        pods: dict[str, dict[str, Any]] = {}
        for name, pod in running.items():
            pods[f"{ns}/{name}"] = {"labels": pod.labels, "container": pod.container}
            for container_port, published in pod.ports.items():
                forwards[f"{ns}/pod/{name}:{container_port}"] = f"127.0.0.1:{published}"
        for service in self.rendered.of_kind("Service"):
            selector = service["spec"].get("selector") or {}
            backends = [p for p in running.values() if selector
                        and all(p.labels.get(k) == v for k, v in selector.items())]
            if not backends:
                continue
            for port in service["spec"].get("ports") or []:
                target_port = port.get("targetPort", port["port"])
                if isinstance(target_port, str):
                    target_port = next(int(p["container_port"]) for p in backends[0].main.get("ports") or []
                                       if p.get("name") == target_port)
                if int(target_port) in backends[0].ports:
                    forwards[f"{ns}/svc/{service['metadata']['name']}:{port['port']}"] = (
                        f"127.0.0.1:{backends[0].ports[int(target_port)]}")
        return forwards, pods

    # --- janitor ---------------------------------------------------------------------------------------------------

    def janitor_jobs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(pod name, pod template) for each CronJob, as its Job controller would make the pod."""
        for cron in self.rendered.of_kind("CronJob"):
            if cron["metadata"]["labels"].get(COMPONENT_LABEL) != JANITOR_COMPONENT:
                continue
            template = cron["spec"]["jobTemplate"]["spec"]["template"]
            yield f"{cron['metadata']['name']}-manual", template



def stack_images(rendered: Rendered, config: Mapping[str, Any], cli_image: str) -> dict[str, str]:
    """The images the manifests name -> the local images run instead: the stack's CLI image is the one built from
    images/cli/Dockerfile here, a lease store's image the Redis stand-in."""
    images = {config["fleet:image"]: cli_image, "runtime-tier/test-model": cli_image,
              "runtime-tier/external-redis": REDIS_IMAGE}
    for workload in rendered.workloads(LEASE_STORE_COMPONENT):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            images[container["image"]] = REDIS_IMAGE
    return images


def build_world(stack: str, workdir: Path, prefix: str, cli_image: str = CLI_IMAGE) -> StackWorld:
    """Derive and render the stack, make its Node (network, volumes) and plan every pod; nothing runs yet."""
    values = SecretValues(set())
    node = Node(prefix=prefix, root=workdir / "node", images={}, secrets=values).start()
    try:
        model_address = node.allocate(MODEL_HOST)
        project = workdir / "project"
        stack_file = derive_stack(stack, project, model_address)
        rendered = render(project, stack, workdir / "rendered")
        config = yaml.safe_load(stack_file.read_text())["config"]
        values.declared = rendered.declared_secret_keys()
        node.secret_types = rendered.secret_types()
        node.images = stack_images(rendered, config, cli_image)
        node.network_policies = rendered.of_kind("NetworkPolicy")
        world = StackWorld(rendered, config, node, values, model_key=secrets.token_hex(16), project=project)
        world.plan(model_address)
        world.compose_secrets()
        if world.outside_store_host is not None:
            world.plans["external-redis"] = PodPlan("external-redis", {}, {},
                                                    node.allocate(world.outside_store_host))
    except BaseException:
        node.close()
        raise
    return world
