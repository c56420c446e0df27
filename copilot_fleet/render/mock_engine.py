"""The Pulumi program under the SDK's mock engine, in-process: every registration recorded, the outputs resolved.

`run_program(config, secret_keys, stack=...)` runs `program.run()` with `RecordingMocks` and returns a `ProgramRun`.
Each call gets a fresh Pulumi runtime (its own thread, event loop and context variables, as `pulumi.runtime.test`
sets up per test), so it can run any number of times in one process and never leaks mocks or config into the
caller.

It leans on parts of the SDK that are not public API (the mock monitor, the RPC (de)serialisers, the runtime's
settings and stack): they are confined to this module, and tests/kubernetes/test_render_speedups.py and
test_k8s_render.py compare what it registers with the SDK's own mock engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks as _sdk_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime import stack as runtime_stack
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.rpc import _special_sig_key

from copilot_fleet.stackfile import as_engine_config

PROJECT = "copilot-fleet"
_RANDOM_TYPES = ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString")


@dataclass(frozen=True)
class Registration:
    """One resource the program registered: its type token, logical name and inputs (camelCase, secrets wrapped)."""

    typ: str
    name: str
    inputs: dict[str, Any]
    custom: bool
    provider: str = ""  # the provider reference (`urn::id`) the resource was registered with, if any

    @property
    def is_kubernetes(self) -> bool:
        return self.custom and self.typ.startswith("kubernetes:")  # providers are `pulumi:providers:kubernetes`


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every registration. Answers with a deterministic `result` for pulumi-random resources (a stand-in,
    masked wherever it shows up) and with the inputs as state for everything else, except Kubernetes objects:
    the program never reads one back, and echoing thousands of manifests through the mock engine's
    serialisation would double the cost of a large render."""

    def __init__(self) -> None:
        self.registrations: list[Registration] = []
        self._lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        with self._lock:
            self.registrations.append(Registration(args.typ, args.name, dict(args.inputs), bool(args.custom),
                                                   args.provider or ""))
        if args.typ.startswith("kubernetes:"):
            return f"{args.name}-id", {}
        if args.typ.startswith("azure-native:"):
            # What Azure would answer (ids, host names, keys): the Azure program reads them back.
            from copilot_fleet.components.azure.offline import resource_state

            answer = resource_state(args.typ, args.name, args.inputs)
            if answer is not None:
                return answer
        state = dict(args.inputs)
        if args.typ in _RANDOM_TYPES:
            length = int(args.inputs.get("length", 16))
            digest = hashlib.sha256(f"mock-random/{args.name}".encode()).hexdigest()
            state["result"] = (digest * (length // len(digest) + 1))[:length]
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        # The SDK's mock monitor iterates the second item (failures): an empty list, never None.
        if args.token.startswith("azure-native:"):
            from copilot_fleet.components.azure.offline import invoke_result

            return invoke_result(args.token, args.args) or {}, []
        return {}, []


def _complete(coroutine: Any) -> Any:
    """Run a coroutine that never waits (serialising plain values) to its result, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("mock state serialisation waited on something; return plain values from the mocks")


class InlineMockMonitor(MockMonitor):
    """The SDK's MockMonitor, able to answer RegisterResource on the event loop's own thread.

    The SDK calls the monitor through `run_in_executor`: one thread hop per registration, and with thousands of
    them the event loop and the pool threads mostly wait for each other's GIL. Run inline (`InlineExecutor`), the
    SDK's RegisterResource would re-enter the running loop through `_sync_await`; this copy of it serialises the
    (plain) mock state directly instead. Invoke and ReadResource keep the SDK's code on a thread of their own.
    """

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        inputs = deserialize_inputs(request.object)
        resource_args = pulumi.runtime.MockResourceArgs(
            typ=request.type, name=request.name, inputs=inputs, provider=request.provider,
            resource_id=request.importId, custom=request.custom or False,
            transforms=_sdk_mocks._resolve_callbacks(request.transforms),
        )
        id_, state = self.mocks.new_resource(resource_args)
        obj_proto = _complete(rpc.serialize_properties(state, {}))
        self.resources[urn] = MockMonitor.ResourceRegistration(urn, id_ or "", state)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_ or "", object=obj_proto)

    def Invoke(self, request: Any) -> Any:
        return _on_own_thread(super().Invoke, request)

    def ReadResource(self, request: Any) -> Any:
        return _on_own_thread(super().ReadResource, request)


class _NotPlain(Exception):
    """A value the SDK's deserialiser gives a meaning of its own: a secret, asset, resource reference, unknown."""


def deserialize_inputs(struct: Any) -> dict[str, Any]:
    """`rpc.deserialize_properties(struct)`, the mock monitor's view of a registration's inputs, faster.

    Most inputs are plain JSON (no secret, asset, resource reference or unknown anywhere): those are read straight
    from the protobuf Struct, with the SDK's rules (numbers as floats, a null property left out, a null list item
    kept). Anything else takes the SDK's own deserialiser for the whole object: a secret makes its parents secret.
    """
    try:
        return _plain_struct(struct)
    except _NotPlain:
        inputs: dict[str, Any] = rpc.deserialize_properties(struct)
        return inputs


def _plain_struct(struct: Any) -> dict[str, Any]:
    fields = struct.fields
    if _special_sig_key in fields:
        raise _NotPlain
    out = {}
    for key, value in fields.items():
        plain_value = _plain_value(value)
        if plain_value is not None:
            out[key] = plain_value
    return out


def _plain_value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if text == rpc.UNKNOWN:
            raise _NotPlain
        return text
    if kind == "struct_value":
        return _plain_struct(value.struct_value)
    if kind == "list_value":
        return [_plain_value(v) for v in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    raise _NotPlain  # an unset Value: let the SDK say what it makes of it


def _on_own_thread(fn: Callable[[Any], Any], request: Any) -> Any:
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, fn, request).result()


class InlineExecutor(ThreadPoolExecutor):
    """An event loop's default executor that runs each call at once on the calling thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool thread would
            future.set_exception(exc)
        return future


@dataclass(frozen=True)
class ProgramRun:
    """What one mocked run of the program registered and exported. `outputs` hold clear values (mock secrets);
    `secret_outputs` names the outputs Pulumi would store encrypted."""

    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: frozenset[str]

    @property
    def kubernetes(self) -> list[Registration]:
        return [r for r in self.registrations if r.is_kubernetes]


def default_program() -> Mapping[str, Any]:
    from copilot_fleet.program import run

    return run()


def run_program(config: Mapping[str, Any], secret_keys: Iterable[str] = (), *, stack: str = "render",
                project: str = PROJECT, program: Callable[[], Mapping[str, Any]] | None = None,
                mocks: RecordingMocks | None = None, inline: bool = True, preview: bool = False,
                collect: bool = True) -> ProgramRun:
    """Run the program (default: copilot_fleet.program.run) under mocks with this stack config.

    `config` is `namespace:key -> value` (native values; structured ones are passed as JSON, as the engine does);
    `secret_keys` are the keys Pulumi holds as secrets. Exceptions of the program (ConfigError) propagate; pass
    your own `mocks` to see what was registered before one was raised. `inline=False` uses the SDK's own
    MockMonitor and thread pool (slower for large fleets; the reference the inline engine is tested against).
    `preview=True` runs as `pulumi preview` would: the SDK then skips turning every input of every resource back
    into output values (nothing here reads them), which makes large renders markedly cheaper.
    `collect=False` leaves what the run left behind (the SDK's outputs, tasks and futures, most of them in
    reference cycles: about two million objects at 1000 users) to the garbage collector's own schedule instead of
    freeing it before returning (about a fifth of the run's CPU time): for a process that ends soon after.
    """
    mocks = mocks if mocks is not None else RecordingMocks()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def worker() -> None:
        try:
            outcome["value"] = context.run(
                _run_isolated, mocks, as_engine_config(config), sorted(secret_keys), stack, project,
                program or default_program, inline, preview, collect)
        except BaseException as exc:  # noqa: BLE001 - handed back to the calling thread
            outcome["error"] = exc

    # A thread of its own: its own event loop (the caller may be running one) and its own Pulumi settings.
    thread = threading.Thread(target=worker, name=f"pulumi-mock-{stack}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    outputs, secret = outcome["value"]
    return ProgramRun(list(mocks.registrations), outputs, frozenset(secret))


def _run_isolated(mocks: RecordingMocks, config: dict[str, str], secret_keys: list[str], stack: str, project: str,
                  program: Callable[[], Mapping[str, Any]], inline: bool, preview: bool,
                  collect: bool = True) -> tuple[dict[str, Any], set[str]]:
    loop = asyncio.new_event_loop()
    if inline:
        loop.set_default_executor(InlineExecutor(max_workers=1))
    asyncio.set_event_loop(loop)
    outputs: dict[str, Any] = {}
    secret: set[str] = set()

    async def body() -> None:
        exported = program()
        for key, value in exported.items():
            output = pulumi.Output.from_input(value)
            outputs[key] = await output.future()
            if await output.is_secret():
                secret.add(key)

    try:
        # What the SDK's test helpers do for a fresh program: new settings and root, then mocks and config.
        runtime_settings.reset_options(project=project, stack=stack, preview=preview)
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview,
                                 monitor=InlineMockMonitor(mocks) if inline else None)
        runtime_config.set_all_config(config, secret_keys)
        with fewer_collections(collect=collect):
            loop.run_until_complete(runtime_stack.run_pulumi_func(body))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
    return outputs, secret


@contextlib.contextmanager
def fewer_collections(collect: bool = True) -> Iterator[None]:
    """No cyclic garbage collection inside the block; at its end (`collect`) one pass over what the block left.

    A registration leaves tens of objects behind (outputs, tasks, futures, protobufs), and the collector's passes
    over them while the program runs took half of the CPU time of a 1000-user render (measured: 34 of 74 s).
    Everything alive before the block is frozen out of the final pass, so it costs what the block allocated and
    frees the run's cycles; afterwards everything joins the oldest generation without another scan.
    (It undoes a gc.freeze() the caller made before; nothing here relies on one.)
    """
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if collect:
            gc.collect()
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()
