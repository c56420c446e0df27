"""Invalid stack config stops the Pulumi program before a single resource is registered.

Each case starts from a valid Kubernetes fleet, breaks one thing, runs the real program under recording mocks,
and expects a ConfigError naming the key, with zero registrations.
"""

from __future__ import annotations

from typing import Any

import pytest

from copilot_fleet.render import RecordingMocks, run_program
from copilot_fleet.spec import ConfigError

IMAGE = "registry.example.com/copilot-cli:1.0.102"
SHARED: dict[str, Any] = {"isolation": "shared-cli", "platform": "kubernetes", "image": IMAGE, "githubToken": "ghp_x",
                          "storage": {"storageClass": "nfs-client"}}
PER_USER: dict[str, Any] = {"isolation": "per-user", "platform": "kubernetes", "image": IMAGE,
                            "users": [{"id": "alice", "githubToken": "ghp_a"}],
                            "storage": {"accessMode": "ReadWriteOnce"}}
DROP = object()

# (case id, base, changes (DROP removes a key), secret keys, the key the message must name)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str], str]] = [
    ("isolation-unknown", SHARED, {"isolation": "shared"}, {"githubToken"}, "fleet:isolation"),
    ("isolation-missing", SHARED, {"isolation": DROP}, {"githubToken"}, "fleet:isolation"),
    ("platform-unknown", SHARED, {"platform": "openshift"}, {"githubToken"}, "fleet:platform"),
    ("platform-local", SHARED, {"platform": "local", "image": DROP}, {"githubToken"}, "fleet:platform"),
    ("replicas-type", SHARED, {"replicas": "three"}, {"githubToken"}, "fleet:replicas"),
    ("replicas-zero", SHARED, {"replicas": 0}, {"githubToken"}, "fleet:replicas"),
    ("replicas-too-many", SHARED, {"replicas": 51}, {"githubToken"}, "fleet:replicas"),
    ("port-privileged", SHARED, {"port": 80}, {"githubToken"}, "fleet:port"),
    ("unknown-key", SHARED, {"replica": 2}, {"githubToken"}, "fleet:replica"),
    ("unknown-nested-key", SHARED, {"storage": {"sise": "1Gi"}}, {"githubToken"}, "fleet:storage.sise"),
    ("no-credential", SHARED, {"githubToken": DROP}, set(), "fleet:githubToken"),
    ("plaintext-token", SHARED, {}, set(), "fleet:githubToken"),
    ("plaintext-provider-key", SHARED,
     {"githubToken": DROP, "provider": {"baseUrl": "https://m.example/v1", "apiKey": "sk"}}, set(),
     "fleet:provider.apiKey"),
    ("provider-without-key", SHARED, {"githubToken": DROP, "provider": {"baseUrl": "https://m.example/v1"}},
     {"provider"}, "fleet:provider.apiKey"),
    ("provider-bad-url", SHARED, {"provider": {"baseUrl": "models.example", "apiKey": "sk"}},
     {"githubToken", "provider"}, "fleet:provider.baseUrl"),
    ("per-user-without-users", PER_USER, {"users": []}, {"users"}, "fleet:users"),
    ("per-user-replicas", PER_USER, {"replicas": 3}, {"users"}, "fleet:replicas"),
    ("per-user-with-redis", PER_USER, {"redis": {"mode": "in-cluster"}}, {"users"}, "fleet:redis"),
    ("shared-with-users", SHARED, {"users": [{"id": "alice"}]}, {"githubToken"}, "fleet:users"),
    ("shared-read-write-once", SHARED, {"storage": {"accessMode": "ReadWriteOnce"}}, {"githubToken"},
     "fleet:storage.accessMode"),
    ("access-mode-unknown", SHARED, {"storage": {"accessMode": "ReadWriteAll"}}, {"githubToken"},
     "fleet:storage.accessMode"),
    ("redis-external-without-url", SHARED, {"redis": {"mode": "external"}}, {"githubToken"}, "fleet:redis.url"),
    ("redis-url-not-redis", SHARED, {"redis": {"mode": "external", "url": "http://r:6379"}},
     {"githubToken", "redis"}, "fleet:redis.url"),
    ("redis-url-plaintext", SHARED, {"redis": {"mode": "external", "url": "redis://:p@r:6379/0"}},
     {"githubToken"}, "fleet:redis.url"),
    ("debug-logging", SHARED, {"logLevel": "debug"}, {"githubToken"}, "fleet:logLevel"),
    ("log-level-unknown", SHARED, {"logLevel": "verbose"}, {"githubToken"}, "fleet:logLevel"),
    ("image-latest", SHARED, {"image": "registry.example.com/copilot-cli:latest"}, {"githubToken"}, "fleet:image"),
    ("image-untagged", SHARED, {"image": "registry.example.com/copilot-cli"}, {"githubToken"}, "fleet:image"),
    ("image-wrong-version", SHARED, {"image": "registry.example.com/copilot-cli:1.0.90"}, {"githubToken"},
     "fleet:image"),
    ("image-missing", SHARED, {"image": DROP}, {"githubToken"}, "fleet:image"),
    ("cli-version-wrong", SHARED, {"cliVersion": "1.0.104"}, {"githubToken"}, "fleet:cliVersion"),
    ("user-id-uppercase", PER_USER, {"users": [{"id": "Alice", "githubToken": "g"}]}, {"users"}, "fleet:users"),
    ("user-id-dot", PER_USER, {"users": [{"id": "a.b", "githubToken": "g"}]}, {"users"}, "fleet:users"),
    ("user-duplicate", PER_USER, {"users": [{"id": "al", "githubToken": "g"}, {"id": "al", "githubToken": "h"}]},
     {"users"}, "fleet:users"),
    ("user-token-plaintext", PER_USER, {}, set(), "fleet:users[*].githubToken"),
    ("duration-bad", SHARED, {"sessionTtl": "a week"}, {"githubToken"}, "fleet:sessionTtl"),
    ("ttl-too-short", SHARED, {"sessionTtl": "30m"}, {"githubToken"}, "fleet:sessionTtl"),
    ("idle-too-short", SHARED, {"idleTimeout": 10}, {"githubToken"}, "fleet:idleTimeout"),
    ("quantity-bad", SHARED, {"storage": {"size": "10 GB"}}, {"githubToken"}, "fleet:storage.size"),
    ("requests-over-limits", SHARED,
     {"resources": {"requests": {"cpu": "4", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
     {"githubToken"}, "requests.cpu"),
    ("cron-bad", SHARED, {"janitorSchedule": "every 15 minutes"}, {"githubToken"}, "fleet:janitorSchedule"),
    ("rwx-without-class", SHARED, {"storage": {"size": "10Gi"}}, {"githubToken"}, "fleet:storage.storageClass"),
    ("load-balancer-without-ranges", SHARED, {"loadBalancer": {"serviceType": "LoadBalancer"}}, {"githubToken"},
     "fleet:loadBalancer.sourceRanges"),
    ("node-port-without-ranges", SHARED, {"loadBalancer": {"serviceType": "NodePort"}}, {"githubToken"},
     "fleet:loadBalancer.sourceRanges"),
    ("backend-selector-shared", SHARED, {"backendSelector": {"app": "b"}}, {"githubToken"},
     "fleet:backendSelector"),
    ("backend-selector-empty", PER_USER, {"backendSelector": {}}, {"users"}, "fleet:backendSelector"),
    ("egress-private-provider", SHARED, {"provider": {"baseUrl": "http://10.1.2.3:8000/v1", "apiKey": "sk"}},
     {"githubToken", "provider"}, "fleet:provider.baseUrl: http://10.1.2.3:8000/v1 is a private"),
    ("egress-metadata-endpoint", SHARED, {"otlpEndpoint": "http://169.254.169.254:80"}, {"githubToken"},
     "fleet:otlpEndpoint: http://169.254.169.254:80 is a private or link-local address"),
    ("egress-in-cluster-provider", SHARED, {"provider": {"baseUrl": "http://models.ml.svc:8080/v1", "apiKey": "sk"}},
     {"githubToken", "provider"}, "fleet:egress.allow {namespace: ml, ports: [8080]}"),
    ("egress-same-namespace-service", SHARED, {"otlpEndpoint": "http://collector:4318"}, {"githubToken"},
     "is a Service in namespace 'copilot-fleet'"),
    ("egress-public-port", SHARED, {"provider": {"baseUrl": "https://models.example.com:8443/v1", "apiKey": "sk"}},
     {"githubToken", "provider"}, "uses port 8443"),
    ("egress-rule-two-destinations", SHARED, {"egress": {"allow": [{"cidr": "10.0.0.0/8", "namespace": "a",
                                                                      "ports": [1]}]}},
     {"githubToken"}, "fleet:egress.allow"),
    ("egress-rule-no-ports", SHARED, {"egress": {"allow": [{"cidr": "10.0.0.0/8", "ports": []}]}},
     {"githubToken"}, "fleet:egress.allow"),
    ("service-type-unknown", SHARED, {"loadBalancer": {"serviceType": "Ingress"}}, {"githubToken"},
     "fleet:loadBalancer.serviceType"),
    ("affinity-unknown", SHARED, {"loadBalancer": {"sessionAffinity": "Cookie"}}, {"githubToken"},
     "fleet:loadBalancer.sessionAffinity"),
    ("namespace-not-dns", SHARED, {"namespace": "Copilot_Fleet"}, {"githubToken"}, "fleet:namespace"),
    ("otlp-not-url", SHARED, {"otlpEndpoint": "collector:4318"}, {"githubToken"}, "fleet:otlpEndpoint"),
    ("grace-too-short", SHARED, {"terminationGraceSeconds": 1}, {"githubToken"}, "fleet:terminationGraceSeconds"),
    # The port is plain TCP: outside the cluster the stack must say what protects it.
    ("load-balancer-in-clear", SHARED, {"loadBalancer": {"serviceType": "LoadBalancer",
                                                         "sourceRanges": ["203.0.113.0/24"]}}, {"githubToken"},
     "fleet:loadBalancer.tls.terminatedBy"),
    ("node-port-in-clear", SHARED, {"loadBalancer": {"serviceType": "NodePort", "sourceRanges": ["10.0.0.0/8"]}},
     {"githubToken"}, "fleet:loadBalancer.acceptPlaintext"),
    ("tls-on-cluster-ip", SHARED, {"loadBalancer": {"tls": {"terminatedBy": "nothing at all"}}}, {"githubToken"},
     "fleet:loadBalancer.tls: only for serviceType LoadBalancer or NodePort"),
    ("tls-and-plaintext", SHARED, {"loadBalancer": {"serviceType": "LoadBalancer", "sourceRanges": ["10.0.0.0/8"],
                                                    "tls": {"terminatedBy": "an edge proxy"},
                                                    "acceptPlaintext": True}}, {"githubToken"},
     "fleet:loadBalancer.acceptPlaintext: contradicts"),
    ("redis-external-in-clear", SHARED, {"redis": {"mode": "external", "url": "redis://:p@r.example.com:6379/0"}},
     {"githubToken", "redis"}, "fleet:redis.url: redis:// to r.example.com"),
    ("redis-plaintext-in-cluster-mode", SHARED, {"redis": {"acceptPlaintext": True}}, {"githubToken"},
     "fleet:redis.acceptPlaintext"),
    # The Kubernetes keys users expect, checked as the API server would.
    ("node-selector-bad-key", SHARED, {"nodeSelector": {"pool name": "cli"}}, {"githubToken"}, "fleet:nodeSelector"),
    ("toleration-exists-with-value", SHARED, {"tolerations": [{"key": "dedicated", "operator": "Exists",
                                                               "value": "cli"}]}, {"githubToken"},
     "fleet:tolerations[0]"),
    ("toleration-seconds-without-no-execute", SHARED,
     {"tolerations": [{"key": "k", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 60}]}, {"githubToken"},
     "fleet:tolerations[0]"),
    ("affinity-in-without-values", SHARED, {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In"}]}]}}}}, {"githubToken"},
     "fleet:affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
     ".matchExpressions[0]"),
    ("affinity-misspelt-key", SHARED, {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologykey": "kubernetes.io/hostname"}]}}},
     {"githubToken"}, "did you mean fleet:affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
     ".topologyKey?"),
    ("pod-annotation-ours", SHARED, {"podAnnotations": {"copilot-fleet/secrets-checksum": "0"}}, {"githubToken"},
     "fleet:podAnnotations"),
    ("service-annotation-bad-key", SHARED, {"serviceAnnotations": {"-bad": "x"}}, {"githubToken"},
     "fleet:serviceAnnotations"),
    ("pull-secret-bad-name", SHARED, {"imagePullSecrets": ["Registry_Login"]}, {"githubToken"},
     "fleet:imagePullSecrets[0]"),
    ("pull-credentials-other-registry", SHARED,
     {"imagePullCredentials": {"server": "ghcr.io", "username": "u", "password": "p"}},
     {"githubToken", "imagePullCredentials"}, "fleet:imagePullCredentials.server: ghcr.io is not a registry"),
    ("pull-credentials-in-clear", SHARED,
     {"imagePullCredentials": {"server": "registry.example.com", "username": "u", "password": "p"}},
     {"githubToken"}, "fleet:imagePullCredentials.password: a credential must be set as a secret"),
    ("pull-credentials-with-scheme", SHARED,
     {"imagePullCredentials": {"server": "https://registry.example.com", "username": "u", "password": "p"}},
     {"githubToken", "imagePullCredentials"}, "fleet:imagePullCredentials.server"),
    ("home-class-without-home-volume", PER_USER, {"storage": {"accessMode": "ReadWriteOnce",
                                                              "homeStorageClass": "premium"}}, {"users"},
     "fleet:storage.homeStorageClass"),
]


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_the_table_is_wide_enough() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, base, changes, secret_keys, key", CASES, ids=[c[0] for c in CASES])
def test_invalid_config_registers_nothing(case: str, base: dict[str, Any], changes: dict[str, Any],
                                          secret_keys: set[str], key: str) -> None:
    values = _apply(base, changes)
    mocks = RecordingMocks()
    with pytest.raises(ConfigError) as err:
        run_program({f"fleet:{k}": v for k, v in values.items()}, {f"fleet:{k}" for k in secret_keys},
                    stack="invalid", mocks=mocks)
    assert key in str(err.value), f"{case}: message does not name {key}:\n{err.value}"
    assert mocks.registrations == [], f"{case}: registered {[(r.typ, r.name) for r in mocks.registrations]}"
    # No secret value is echoed back in the message.
    for secret in ("ghp_x", "ghp_a", "p@r:6379"):
        if secret in str(values):
            assert secret not in str(err.value)


def test_the_valid_bases_do_deploy() -> None:
    """The table's bases are valid: each case fails because of its one change."""
    for base, keys in ((SHARED, {"githubToken"}), (PER_USER, {"users"})):
        mocks = RecordingMocks()
        run_program({f"fleet:{k}": v for k, v in base.items()}, {f"fleet:{k}" for k in keys}, mocks=mocks)
        assert any(r.typ == "kubernetes:apps/v1:StatefulSet" for r in mocks.registrations)
