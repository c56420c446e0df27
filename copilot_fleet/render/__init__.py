"""Offline render: run the Pulumi program under the SDK's mock engine and turn what it registers into validated
Kubernetes manifests, without the Pulumi CLI or a cluster.

- `run_program(config, secret_keys, stack=...)` runs `program.run()` in-process with `RecordingMocks` and returns
  every registration and the resolved stack outputs. Each call gets a fresh Pulumi runtime (its own thread, event
  loop and context variables, as `pulumi.runtime.test` sets up per test), so it can run any number of times in
  one process and never leaks mocks or config into the caller.
- `render_stack(project_dir, stack)` reads `stacks/Pulumi.<stack>.yaml`, runs the program, rebuilds each Kubernetes
  object, masks every secret value and validates each object strictly against the Kubernetes OpenAPI schema.

Secret values never leave this module unmasked in manifests or RenderResult.outputs: Pulumi secret inputs, and all
of a Secret's data, read `<secret>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import config as runtime_config
from pulumi.runtime import mocks as _sdk_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime import stack as runtime_stack
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.rpc import _special_secret_sig, _special_sig_key

from copilot_fleet.errors import FleetError
from copilot_fleet.render import schema_check
from copilot_fleet.stackfile import as_engine_config, read_stack_config

SECRET_MASK = "<secret>"
DEFAULT_K8S_VERSION = "1.33"
PROJECT = "copilot-fleet"
_RANDOM_TYPES = ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString")
_MARKER = ".copilot-fleet-render"  # marks an output directory as ours, so stale files may be removed from it


# --- the mock engine ---------------------------------------------------------------------------------------------

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
        return rpc.deserialize_properties(struct)


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


# --- from registrations to manifests -----------------------------------------------------------------------------

def is_wrapped_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(_special_sig_key) == _special_secret_sig


def _masked(value: Any) -> Any:
    """The same shape with every scalar replaced by the mask (so a masked Secret still validates)."""
    if is_wrapped_secret(value):
        return _masked(value.get("value"))
    if isinstance(value, Mapping):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return SECRET_MASK


def plain(value: Any, mask: bool = True) -> Any:
    """Inputs as a manifest: secret wrappers removed (their contents masked when `mask`), whole floats as ints."""
    if is_wrapped_secret(value):
        return _masked(value.get("value")) if mask else plain(value.get("value"), mask)
    if isinstance(value, Mapping):
        return {k: plain(v, mask) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [plain(v, mask) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_manifest(reg: Registration, mask: bool = True) -> dict[str, Any]:
    """The Kubernetes object a registration stands for (its inputs are the object: apiVersion, kind, metadata, ...)."""
    doc = plain(reg.inputs, mask)
    if mask and doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
        # A Secret's data is secret whether or not the program marked it so.
        for key in ("data", "stringData"):
            if key in doc:
                doc[key] = _masked(doc[key])
    return doc


def _sort_key(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return (str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def manifests(run: ProgramRun, mask: bool = True) -> list[dict[str, Any]]:
    return sorted((to_manifest(r, mask) for r in run.kubernetes), key=_sort_key)


def object_id(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def masked_outputs(run: ProgramRun) -> dict[str, Any]:
    return {k: (_masked(v) if k in run.secret_outputs else v) for k, v in run.outputs.items()}


# --- schema validation -------------------------------------------------------------------------------------------

# Custom resources the platforms create on purpose; kubernetes-validate ships schemas for built-in kinds only.
# Any other kind without a schema is an error.
CUSTOM_RESOURCES_WITHOUT_SCHEMA = frozenset({("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass")})

class UnknownKubernetesVersion(FleetError, ValueError):
    """A Kubernetes version without a bundled schema (the message names the versions there are)."""


class SchemaValidator:
    """`kubernetes_validate.validate(doc, version, strict=True)`, with each schema loaded once.

    The library re-reads a 1.4 MB definitions file on every call (about 11 ms); a per-user fleet of 1000 users has
    thousands of objects. This builds the same Draft 2020-12 validator from the same bundled schema files, once per
    kind, and reports every error of an object rather than the first.

    Each kind's schema is also compiled once into a yes/no check (`schema_check`, about 20 times faster than
    jsonschema's walk): an object it passes has no schema error; any other object goes through jsonschema, which
    gives the messages. A kind whose schema the compiler does not support is checked by jsonschema alone.
    """

    def __init__(self, version: str = DEFAULT_K8S_VERSION, strict: bool = True) -> None:
        from kubernetes_validate import utils as kv

        self._kv = kv
        latest = kv.major_minor(kv.latest_version())
        try:
            wanted = kv.Version(kv.major_minor(version.removeprefix("v")))
        except ValueError:  # not a version at all ('abc')
            wanted = None
        supported = [v for v in kv.all_versions() if wanted is not None and kv.Version(kv.major_minor(v)) <= wanted]
        if not supported or wanted is None or wanted > kv.Version(latest):
            first = kv.major_minor(kv.all_versions()[0])
            raise UnknownKubernetesVersion(f"Kubernetes version {version!r} has no bundled schema: use {first} to "
                                           f"{latest}")
        self.version = kv.major_minor(supported[-1])
        self._dir = f"v{supported[-1]}-local" + ("-strict" if strict else "")
        self._validators: dict[tuple[str, str], Any] = {}
        self._definitions: Any = None
        self._compiler: schema_check.SchemaCompiler | None = None
        self._checks: dict[tuple[str, str], schema_check.Check | None] = {}

    def _validator(self, kind: str, api_version: str) -> Any:
        import re

        import jsonschema
        from referencing import Registry, Resource

        key = (kind, api_version)
        if key not in self._validators:
            kv = self._kv
            api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            try:
                schema = kv.schema_contents(f"kubernetes-json-schema/{self._dir}/{kind.lower()}-{api}.json",
                                            self.version)
            except FileNotFoundError:
                raise kv.SchemaNotFoundError(version=self.version, kind=kind, api_version=api_version) from None
            if self._definitions is None:
                self._definitions = Resource.from_contents(
                    kv.schema_contents(f"kubernetes-json-schema/{self._dir}/_definitions.json", self.version))
            registry = self._definitions @ (Resource.from_contents(schema) @ Registry())
            self._validators[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
            self._checks[key] = self._compile(schema)
        return self._validators[key]

    def _compile(self, schema: Mapping[str, Any]) -> schema_check.Check | None:
        try:
            if self._compiler is None:
                self._compiler = schema_check.SchemaCompiler({})
                self._compiler.add(self._definitions.contents)
            return self._compiler.compile(self._compiler.add(schema))
        except schema_check.Unsupported:
            return None  # jsonschema alone for this kind

    def errors(self, doc: Mapping[str, Any]) -> list[str]:
        """One line per schema error: `Kind/name: field.path: message`."""
        where = object_id(doc)
        try:
            validator = self._validator(str(doc.get("kind")), str(doc.get("apiVersion")))
        except self._kv.SchemaNotFoundError:
            if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_RESOURCES_WITHOUT_SCHEMA:
                return []
            return [f"{where}: no Kubernetes {self.version} schema for apiVersion {doc.get('apiVersion')!r} "
                    f"kind {doc.get('kind')!r}"]
        check = self._checks.get((str(doc.get("kind")), str(doc.get("apiVersion"))))
        if check is not None and check(doc):
            return []
        found = []
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            found.append(f"{where}: {field_path(err.absolute_path) or '(object)'}: {_short(err.message)}")
        return found


def field_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[:limit] + "..."


# --- the render ----------------------------------------------------------------------------------------------------

@dataclass
class RenderResult:
    """Masked manifests (sorted), masked target outputs, and one line per schema error (empty: all valid)."""

    stack: str
    k8s_version: str
    objects: list[dict[str, Any]]
    outputs: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    registrations: int = 0  # resources the program registered (every kind, components included)

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for o in self.objects:
            if o.get("kind") == kind and o["metadata"].get("name") == name:
                return o
        raise KeyError(f"no {kind}/{name} in the render of {self.stack}")

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(str(o.get("kind")) for o in self.objects).items()))


def stack_config(project_dir: Path, stack: str) -> tuple[dict[str, Any], set[str], str]:
    """A stack file's config, its secret keys, and the project name from Pulumi.yaml."""
    values, secret = read_stack_config(project_dir, stack)
    meta = yaml.safe_load((project_dir / "Pulumi.yaml").read_text()) or {}
    return values, secret, str(meta.get("name") or PROJECT)


def render_stack(project_dir: Path | str, stack: str, k8s_version: str = DEFAULT_K8S_VERSION,
                 collect: bool = True) -> RenderResult:
    """Render one stack file offline. Raises ConfigError for invalid config, StackNotFound for a missing stack."""
    project_dir = Path(project_dir)
    validator = SchemaValidator(k8s_version)  # a bad version fails before the program runs
    values, secret, project = stack_config(project_dir, stack)
    return render_config(values, secret, stack=stack, project=project, validator=validator, collect=collect)


def render_config(config: Mapping[str, Any], secret_keys: Iterable[str], *, stack: str, project: str = PROJECT,
                  validator: SchemaValidator | None = None, collect: bool = True,
                  timings: dict[str, float] | None = None) -> RenderResult:
    """Render a stack's config (`namespace:key -> value`, as `stack_config` reads it): run the program as a
    preview, rebuild the masked manifests, validate each. `collect`: see `run_program`. `timings`, if given,
    receives the seconds of each step (`program`, `manifests`, `validation`) and the program's CPU seconds
    (`program_cpu`; benchmarks/render_scaling.py)."""
    validator = validator or SchemaValidator()
    clock, cpu = time.perf_counter(), time.process_time()
    run = run_program(config, secret_keys, stack=stack, project=project, preview=True,  # a render is a preview
                      collect=collect)
    steps = {"program": time.perf_counter() - clock, "program_cpu": time.process_time() - cpu}
    with fewer_collections(collect=False):  # building dicts: nothing cyclic to free
        clock = time.perf_counter()
        objects = manifests(run)
        steps["manifests"] = time.perf_counter() - clock
        clock = time.perf_counter()
        errors = [e for doc in objects for e in validator.errors(doc)]
        steps["validation"] = time.perf_counter() - clock
    if timings is not None:
        timings.update(steps)
    return RenderResult(stack=stack, k8s_version=validator.version, objects=objects,
                        outputs=masked_outputs(run), errors=errors, registrations=len(run.registrations))


def file_name(doc: Mapping[str, Any]) -> str:
    return f"{str(doc.get('kind')).lower()}-{(doc.get('metadata') or {}).get('name')}.yaml"


_RESOLVED: dict[str, str] = {}  # plain scalar -> the tag it resolves to: the same in every document


class _NeedsPythonEmitter(Exception):
    """A scalar that libyaml would write differently from PyYAML's own emitter."""


class _ManifestRepresenter:
    """Multi-line strings (e.g. a SecretProviderClass's `objects`) as literal blocks, readable in review.

    Also two speed-ups over SafeDumper that change no byte: the tag a plain scalar resolves to is remembered, and
    the plain types of a manifest become nodes without SafeRepresenter's per-value dispatch (the same nodes,
    aliases included). `libyaml_safe` (the libyaml dumper) refuses any scalar on which libyaml's emitter and
    PyYAML's differ (found by comparing them on random strings: empty keys, keys over 100 characters, anything
    but printable ASCII on one line, which they quote or fold differently), so that `to_yaml` writes that document with PyYAML's.
    """

    libyaml_safe = False

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        # Without path resolvers (SafeDumper has none) a scalar's implicit tag depends on its value alone.
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:  # type: ignore[attr-defined]
            return super().resolve(kind, value, implicit)  # type: ignore[misc]
        if not implicit[0]:
            return self.DEFAULT_SCALAR_TAG  # type: ignore[attr-defined] # BaseResolver.resolve's answer then
        tag = _RESOLVED.get(value)
        if tag is None:
            if len(_RESOLVED) > 100_000:
                _RESOLVED.clear()
            tag = _RESOLVED[value] = super().resolve(kind, value, implicit)  # type: ignore[misc]
        return tag

    def represent_data(self, data: Any) -> Any:
        kind = type(data)
        style = self.default_style  # type: ignore[attr-defined]
        if kind is str:
            if self.libyaml_safe and not (data.isascii() and data.isprintable()):
                raise _NeedsPythonEmitter
            return yaml.ScalarNode(_STR, data, style="|" if "\n" in data else style)
        if kind is dict or kind is list:
            seen = self.represented_objects.get(id(data))  # type: ignore[attr-defined]
            if seen is not None:
                return seen  # the same object twice in one document: an alias, as SafeRepresenter does
            self.object_keeper.append(data)  # type: ignore[attr-defined]
            value: list[Any] = []
            node = (yaml.MappingNode if kind is dict else yaml.SequenceNode)(_MAP if kind is dict else _SEQ, value)
            self.represented_objects[id(data)] = node  # type: ignore[attr-defined]
            best_style = True
            if kind is dict:
                items = list(data.items())
                if self.sort_keys:  # type: ignore[attr-defined]
                    try:
                        items = sorted(items)
                    except TypeError:
                        pass
                for k, v in items:
                    if self.libyaml_safe and not (type(k) is str and 0 < len(k) <= 100):
                        raise _NeedsPythonEmitter
                    key_node, value_node = self.represent_data(k), self.represent_data(v)
                    best_style = best_style and _plain(key_node) and _plain(value_node)
                    value.append((key_node, value_node))
            else:
                for item in data:
                    item_node = self.represent_data(item)
                    best_style = best_style and _plain(item_node)
                    value.append(item_node)
            flow = self.default_flow_style  # type: ignore[attr-defined]
            node.flow_style = flow if flow is not None else best_style
            return node
        if kind is int:
            return yaml.ScalarNode(_INT, str(data), style=style)
        if kind is bool:
            return yaml.ScalarNode(_BOOL, "true" if data else "false", style=style)
        if data is None:
            return yaml.ScalarNode(_NULL, "null", style=style)
        if self.libyaml_safe and kind is not float:
            raise _NeedsPythonEmitter
        return super().represent_data(data)  # type: ignore[misc]


_STR, _INT, _BOOL, _NULL = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool",
                            "tag:yaml.org,2002:null")
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _plain(node: Any) -> bool:
    return isinstance(node, yaml.ScalarNode) and not node.style


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


class _ManifestDumper(_ManifestRepresenter, yaml.SafeDumper):
    pass


_ManifestDumper.add_representer(str, _represent_str)
_LibyamlDumper: Any = None
if hasattr(yaml, "CSafeDumper"):  # PyYAML built with libyaml: its emitter is about 5 times faster
    class _LibyamlManifestDumper(_ManifestRepresenter, yaml.CSafeDumper):  # type: ignore[misc, name-defined]
        libyaml_safe = True

    _LibyamlManifestDumper.add_representer(str, _represent_str)
    _LibyamlDumper = _LibyamlManifestDumper


def to_yaml(doc: Mapping[str, Any]) -> str:
    """The object as YAML, keys sorted: byte for byte what PyYAML's SafeDumper writes (libyaml when that is the
    same; tests/kubernetes/test_render_speedups.py compares them)."""
    if _LibyamlDumper is not None:
        try:
            return yaml.dump(doc, Dumper=_LibyamlDumper, sort_keys=True, default_flow_style=False, width=120)
        except _NeedsPythonEmitter:
            pass
    return yaml.dump(doc, Dumper=_ManifestDumper, sort_keys=True, default_flow_style=False, width=120)


def write_manifests(objects: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One sorted YAML file per object. Stale `*.yaml` files of an earlier render into the same directory go."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / _MARKER).exists():
        for old in out_dir.glob("*.yaml"):
            old.unlink()
    (out_dir / _MARKER).write_text("written by copilot-fleet render; *.yaml here is replaced on every render\n")
    written = []
    for doc in objects:
        path = out_dir / file_name(doc)
        path.write_text(to_yaml(doc))
        written.append(path)
    return written
