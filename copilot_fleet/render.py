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

from copilot_fleet import schema_check
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
            from components.azure.offline import resource_state

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
            from components.azure.offline import invoke_result

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
        inputs = rpc.deserialize_properties(request.object)
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
                mocks: RecordingMocks | None = None, inline: bool = True, preview: bool = False) -> ProgramRun:
    """Run the program (default: copilot_fleet.program.run) under mocks with this stack config.

    `config` is `namespace:key -> value` (native values; structured ones are passed as JSON, as the engine does);
    `secret_keys` are the keys Pulumi holds as secrets. Exceptions of the program (ConfigError) propagate; pass
    your own `mocks` to see what was registered before one was raised. `inline=False` uses the SDK's own
    MockMonitor and thread pool (slower for large fleets; the reference the inline engine is tested against).
    `preview=True` runs as `pulumi preview` would: the SDK then skips turning every input of every resource back
    into output values (nothing here reads them), which makes large renders markedly cheaper.
    """
    mocks = mocks if mocks is not None else RecordingMocks()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def worker() -> None:
        try:
            outcome["value"] = context.run(
                _run_isolated, mocks, as_engine_config(config), sorted(secret_keys), stack, project,
                program or default_program, inline, preview)
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
                  program: Callable[[], Mapping[str, Any]], inline: bool,
                  preview: bool) -> tuple[dict[str, Any], set[str]]:
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
        with fewer_collections():
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
        wanted = kv.major_minor(version.removeprefix("v"))
        supported = [v for v in kv.all_versions() if kv.Version(kv.major_minor(v)) <= kv.Version(wanted)]
        latest = kv.major_minor(kv.latest_version())
        if not supported or kv.Version(wanted) > kv.Version(latest):
            first = kv.major_minor(kv.all_versions()[0])
            raise ValueError(f"Kubernetes version {version!r} has no bundled schema: use {first} to {latest}")
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


def render_stack(project_dir: Path | str, stack: str, k8s_version: str = DEFAULT_K8S_VERSION) -> RenderResult:
    """Render one stack file offline. Raises ConfigError for invalid config, StackNotFound for a missing stack."""
    project_dir = Path(project_dir)
    validator = SchemaValidator(k8s_version)  # a bad version fails before the program runs
    values, secret, project = stack_config(project_dir, stack)
    run = run_program(values, secret, stack=stack, project=project, preview=True)  # a render is a preview
    with fewer_collections(collect=False):  # building dicts: nothing cyclic to free
        objects = manifests(run)
        errors = [e for doc in objects for e in validator.errors(doc)]
    return RenderResult(stack=stack, k8s_version=validator.version, objects=objects,
                        outputs=masked_outputs(run), errors=errors)


def file_name(doc: Mapping[str, Any]) -> str:
    return f"{str(doc.get('kind')).lower()}-{(doc.get('metadata') or {}).get('name')}.yaml"


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (e.g. a SecretProviderClass's `objects`) as literal blocks, readable in review."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def to_yaml(doc: Mapping[str, Any]) -> str:
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
