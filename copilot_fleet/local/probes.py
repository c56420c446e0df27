"""Readiness and health checks, each a real round trip with the service's own protocol:

- a CLI server (and HAProxy in front of them): the JSON-RPC `connect` handshake with the connection token, then
  `status.get` (copilot_fleet.pod.health, the same check the Kubernetes probes run; not the SDK, which costs 0.7 s
  to import and about 1 s per client `stop()`, while `up`/`status` check every server at once).
- Redis: PING with the password (redis-py).
- the test model: GET /healthz.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copilot_fleet.errors import FleetError
from copilot_fleet.local.plan import HOST, Service
from copilot_fleet.pod import health

DEFAULT_TIMEOUT = 2.0
# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    detail: str  # the server's version, PONG, or what went wrong


class JsonRpcError(FleetError, RuntimeError):
    """A CLI server (or HAProxy in front of one) that did not complete the round trip; the message says why."""


def jsonrpc_status(address: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Connect, authenticate with `token`, and return `status.get` ({"version", "protocolVersion"}); raise
    JsonRpcError otherwise."""
    result = health.check(address, token, timeout)
    if not result.ok:
        raise JsonRpcError(f"{address}: {result.error}")
    return {"version": result.version, "protocolVersion": result.protocol_version}


def probe_jsonrpc(address: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    result = health.check(address, token, timeout)
    if not result.ok:
        return ProbeResult(False, result.latency_ms, result.error or "failed")
    return ProbeResult(True, result.latency_ms, f"CLI {result.version}")


def probe_redis(port: int, password: str | None, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    import redis  # redis-py; imported here to keep the commands cheap to import
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    start = time.perf_counter()
    # No retries: redis-py retries failed connections and logins with backoff by default (4 s for a wrong
    # password), and a probe should report what it saw at once.
    client = redis.Redis(host=HOST, port=port, password=password, socket_timeout=timeout,
                         socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        return ProbeResult(False, (time.perf_counter() - start) * 1000, _reason(exc))
    finally:
        client.close()
    return ProbeResult(True, (time.perf_counter() - start) * 1000, "PONG")


def probe_http(port: int, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    start = time.perf_counter()
    try:
        with _NO_PROXY.open(f"http://{HOST}:{port}/healthz", timeout=timeout) as resp:
            ok = resp.status == 200
            detail = f"HTTP {resp.status}"
    except (OSError, urllib.error.URLError) as exc:
        return ProbeResult(False, (time.perf_counter() - start) * 1000, _reason(exc))
    return ProbeResult(ok, (time.perf_counter() - start) * 1000, detail)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer (timed out)"
    return str(exc) or type(exc).__name__


def provider_not_ready(service: Service) -> str | None:
    """Store mode: why the server's session store provider does not count as registered (None: it does), from its
    ready file (copilot_fleet.pod.provider_ready, the same rule the Kubernetes health probe applies)."""
    if service.ready_file is None:
        return None
    from copilot_fleet.pod.provider_ready import not_ready

    return not_ready(Path(service.ready_file), service.port)


def probe(service: Service, secrets: dict[str, str], timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Check one service with the secrets it needs (secret name -> value)."""
    if service.probe == "jsonrpc":
        token = secrets.get(service.token_secret) if service.token_secret else None
        result = probe_jsonrpc(service.address, token, timeout)
        waiting = provider_not_ready(service) if result.ok else None
        if waiting is not None:
            return ProbeResult(False, result.latency_ms, waiting)
        return result if service.ready_file is None or not result.ok else (
            ProbeResult(True, result.latency_ms, f"{result.detail}, session store provider registered"))
    if service.probe == "redis":
        password = secrets.get(service.password_secret) if service.password_secret else None
        return probe_redis(service.port, password, timeout)
    return probe_http(service.port, timeout)


def probe_all(services: list[Service], secrets: dict[str, str],
              timeout: float = DEFAULT_TIMEOUT) -> dict[str, ProbeResult]:
    """Every service at once: the slowest one bounds the wait, not the sum."""
    if not services:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(services))) as pool:
        results = pool.map(lambda s: probe(s, secrets, timeout), services)
        return {s.name: r for s, r in zip(services, results, strict=True)}
