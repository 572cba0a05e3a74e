"""The contract between the service and its device agents: task names, queues
and the payloads that cross the broker and the REST API.

Both sides import this module and neither imports the other (as Flower keeps
its messages in ``flwr/common``). It uses the standard library only, so an
agent on a Raspberry Pi and the service's web process load it alike.

The service sends a task by name to the queue ``device.<name>``; the agent
that consumes that queue answers with a plain JSON dict, which Celery hands
to a recording task linked on the service's ``default`` queue (where the
database is). The wire format is the one the two sides already spoke before
this module existed: positional task arguments and reply dicts with the same
keys, so an agent and a service of different releases still understand each
other. ``from_dict`` ignores keys it does not know for the same reason (a
newer agent may report more) and raises ``ProtocolError`` naming the field
when one it needs is missing or of the wrong type.
"""
from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

# Celery task names. The agent registers them (device_agents.tasks); the service sends them by name.
PROFILE_OPS = "automl.profile_ops"
MEASURE_NETWORK = "automl.measure_network"
# IOS scheduling (automl_server.jobs.schedule): time candidate stages of an ONNX
# model, then the whole model under several schedules side by side.
MEASURE_IOS_STAGES = "automl.measure_ios_stages"
TIME_SCHEDULES = "automl.time_schedules"
# The runtimes an agent runs IOS schedules on (device_agents/ios/remote.py); the job's
# schedule stage is planned only for these (LiteRT has no per-operator entry point).
IOS_RUNTIMES = ("onnxruntime", "pytorch")
# Sparse-update fine-tuning steps with ONNX Runtime training in the agent's training
# environment (automl_server.jobs.on_device_finetune; device_agents.ort_training).
FINETUNE_ON_DEVICE = "automl.finetune_on_device"
AGENT_TASKS = (PROFILE_OPS, MEASURE_NETWORK, MEASURE_IOS_STAGES, TIME_SCHEDULES, FINETUNE_ON_DEVICE)

DEVICE_QUEUE_PREFIX = "device."

# REST paths the agent calls on the service (automl_server.api.devices serves them).
DEVICES_PATH = "/api/v1/devices"

# Device kinds the service accepts in a Registration (automl_server.api.schemas.DEVICE_KINDS).
DEVICE_KINDS = ("cpu", "gpu", "android", "raspberry-pi")

# Exported-model formats an agent can time as a file (``MeasureNetworkRequest.model_file``).
# "onnx-weightless" (IOS tasks only, where only time matters): an ONNX model whose float initializers of
# at least WEIGHTLESS_MIN_ELEMENTS elements keep their name, type and dims but carry no data; the agent
# fills them with seeded random values before it runs the model. Inception-v3 travels as 58 KB instead
# of 95 MB, once per chunk of stages (the server's half: automl_server/jobs/ios_weights.py, the
# agent's: device_agents/ios/weights.py).
MODEL_FILE_FORMATS = ("onnx", "tflite", "onnx-weightless")
WEIGHTLESS_MIN_ELEMENTS = 1024


class ProtocolError(ValueError):
    """A payload that does not follow the contract; the message names the field and what was expected."""


def device_queue(device_name: str) -> str:
    """The Celery queue that only the agent next to ``device_name`` consumes."""
    if not device_name:
        raise ProtocolError("device_name must be a non-empty string, got ''")
    return f"{DEVICE_QUEUE_PREFIX}{device_name}"


# The header carrying a device's agent token, issued by the service at the
# device's first registration (``agent_token`` in the answer). Re-registering
# the device and its heartbeats need it; the agent keeps it in its state file.
AGENT_TOKEN_HEADER = "Automl-Agent-Token"


def heartbeat_path(device_name: str) -> str:
    return f"{DEVICES_PATH}/{device_name}/heartbeat"


# -- reading untrusted dicts --------------------------------------------------
def _field(payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"{where} must be a JSON object, got {type(payload).__name__}")
    if name not in payload:
        raise ProtocolError(f"{where} has no {name!r}; it has: {', '.join(sorted(payload)) or 'nothing'}")
    return _typed(payload[name], kind, f"{where}.{name}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int to isinstance; a count or a latency that is True is a bug on the other side.
    wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if wrong_bool or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ProtocolError(f"{where} must be {names}, got {value!r}")
    return value


def _optional(payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = payload.get(name)
    return None if value is None else _typed(value, kind, f"{where}.{name}")


# -- payloads -------------------------------------------------------------------
@dataclass(frozen=True)
class TargetPayload:
    """The hardware target a task measures on; the fields of ``latency_db.TargetSpec``."""

    device_name: str
    backend: str  # the runtime: "pytorch", "onnxruntime", "litert"
    backend_version: str  # "" when unknown (a phone's benchmark_model)
    threads: int = 1
    dtype: str = "float32"
    batch: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"device_name": self.device_name, "backend": self.backend, "backend_version": self.backend_version,
                "threads": self.threads, "dtype": self.dtype, "batch": self.batch}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], where: str = "target") -> TargetPayload:
        return cls(
            device_name=_field(payload, "device_name", str, where),
            backend=_field(payload, "backend", str, where),
            backend_version=_field(payload, "backend_version", str, where),
            threads=_typed(payload.get("threads", 1), int, f"{where}.threads"),
            dtype=_typed(payload.get("dtype", "float32"), str, f"{where}.dtype"),
            batch=_typed(payload.get("batch", 1), int, f"{where}.batch"),
        )


@dataclass(frozen=True)
class ModelFile:
    """An exported model shipped inside a task, base64 in JSON (the broker carries text)."""

    format: str  # one of MODEL_FILE_FORMATS
    b64: str

    def __post_init__(self) -> None:
        if self.format not in MODEL_FILE_FORMATS:
            raise ProtocolError(f"model_file.format must be one of {', '.join(MODEL_FILE_FORMATS)}, "
                                f"got {self.format!r}")

    @classmethod
    def from_bytes(cls, format: str, data: bytes) -> ModelFile:  # noqa: A002 - the wire's own name
        return cls(format, base64.b64encode(data).decode())

    def data(self) -> bytes:
        return base64.b64decode(self.b64)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "b64": self.b64}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ModelFile:
        return cls(_field(payload, "format", str, "model_file"), _field(payload, "b64", str, "model_file"))


def _method(value: Any) -> dict[str, Any]:
    # Overrides of device_agents.profiling.MeasurementMethod's fields; the agent validates the values.
    return dict(_typed(value, Mapping, "method")) if value is not None else {}


@dataclass(frozen=True)
class ProfileOpsRequest:
    """Measure each op key on ``target`` (task ``PROFILE_OPS``)."""

    target: TargetPayload
    keys: tuple[str, ...]  # canonical op keys (latency_db.keys)
    # MeasurementMethod field overrides; dicts are left out of hash(), the payload is still frozen.
    method: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_args(self) -> list[Any]:
        """The task's positional arguments, as ``device_agents.tasks.profile_ops`` takes them."""
        return [self.target.to_dict(), list(self.keys), dict(self.method)]

    @classmethod
    def from_args(cls, target: Mapping[str, Any], keys: Sequence[str],
                  method: Mapping[str, Any] | None = None) -> ProfileOpsRequest:
        keys = _typed(keys, (list, tuple), "keys")
        return cls(TargetPayload.from_dict(target), tuple(_typed(k, str, f"keys[{i}]") for i, k in enumerate(keys)),
                   _method(method))


@dataclass(frozen=True)
class OpResult:
    """One op's outcome: its statistics (``latency_db.MeasurementStats`` as a dict) or its error."""

    key: str
    stats: dict[str, Any] | None = field(default=None, hash=False)
    error: str | None = None
    trace: str | None = None  # the last frames of the agent's traceback, for the operator

    def __post_init__(self) -> None:
        if (self.stats is None) == (self.error is None):
            raise ProtocolError(f"op result {self.key!r} must carry exactly one of stats and error")

    def to_dict(self) -> dict[str, Any]:
        # The service tells a failure by the presence of "error": absent keys, never nulls.
        out: dict[str, Any] = {"key": self.key}
        if self.error is not None:
            out["error"] = self.error
            if self.trace is not None:
                out["trace"] = self.trace
        else:
            out["stats"] = self.stats
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], where: str = "result") -> OpResult:
        return cls(key=_field(payload, "key", str, where), stats=_optional(payload, "stats", dict, where),
                   error=_optional(payload, "error", str, where), trace=_optional(payload, "trace", str, where))


@dataclass(frozen=True)
class KeyedResultsReply:
    """One result per measured key, in order, with the target and the agent's version:
    the shape of every "measure these keys" reply."""

    target: TargetPayload
    agent_version: str
    results: tuple[OpResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "agent_version": self.agent_version,
                "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Self:
        results = _field(payload, "results", list, "reply")
        return cls(TargetPayload.from_dict(_field(payload, "target", dict, "reply"), "reply.target"),
                   # An agent from before versions were reported still gets its measurements stored.
                   _typed(payload.get("agent_version", "unknown"), str, "reply.agent_version"),
                   tuple(OpResult.from_dict(r, f"reply.results[{i}]") for i, r in enumerate(results)))


@dataclass(frozen=True)
class ProfileOpsReply(KeyedResultsReply):
    """What the agent returns for a ``ProfileOpsRequest``: one result per op key, in order."""


@dataclass(frozen=True)
class MeasureNetworkRequest:
    """Time a whole network end to end on ``target`` (task ``MEASURE_NETWORK``).

    With ``model_file`` the exported file itself is timed when the agent's
    backend runs that format; otherwise the agent rebuilds ``arch``.
    """

    target: TargetPayload
    arch: dict[str, Any] = field(hash=False)  # search_spaces.Arch.to_dict()
    method: dict[str, Any] = field(default_factory=dict, hash=False)
    model_file: ModelFile | None = None

    def to_args(self) -> list[Any]:
        args: list[Any] = [self.target.to_dict(), dict(self.arch), dict(self.method)]
        if self.model_file is not None:
            args.append(self.model_file.to_dict())
        return args

    @classmethod
    def from_args(cls, target: Mapping[str, Any], arch: Mapping[str, Any], method: Mapping[str, Any] | None = None,
                  model_file: Mapping[str, Any] | None = None) -> MeasureNetworkRequest:
        return cls(TargetPayload.from_dict(target), dict(_typed(arch, Mapping, "arch")), _method(method),
                   ModelFile.from_dict(model_file) if model_file else None)


@dataclass(frozen=True)
class MeasureNetworkReply:
    """What the agent returns for a ``MeasureNetworkRequest``: the measurement, or why there is none."""

    target: TargetPayload
    arch: dict[str, Any] = field(hash=False)
    agent_version: str
    measured_ms: float | None = None  # the median of the network's timed rounds, as the clock said
    stats: dict[str, Any] | None = field(default=None, hash=False)  # latency_db.MeasurementStats as a dict
    measured_file: bool = False  # True when the shipped model file was timed, not a rebuilt network
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.measured_ms is None) == (self.error is None):
            raise ProtocolError("a network measurement reply must carry exactly one of measured_ms and error")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target.to_dict(), "arch": dict(self.arch),
                               "agent_version": self.agent_version}
        if self.error is not None:
            out["error"] = self.error
        else:
            out.update(measured_ms=self.measured_ms, stats=self.stats, measured_file=self.measured_file)
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> MeasureNetworkReply:
        measured = _optional(payload, "measured_ms", (int, float), "reply")
        return cls(
            target=TargetPayload.from_dict(_field(payload, "target", dict, "reply"), "reply.target"),
            arch=dict(_field(payload, "arch", dict, "reply")),
            agent_version=_typed(payload.get("agent_version", "unknown"), str, "reply.agent_version"),
            measured_ms=None if measured is None else float(measured),
            stats=_optional(payload, "stats", dict, "reply"),
            measured_file=_typed(payload.get("measured_file", False), bool, "reply.measured_file"),
            error=_optional(payload, "error", str, "reply"),
        )


@dataclass(frozen=True)
class IOSStagePayload:
    """One stage of an IOS schedule, as ``device_agents.ios`` rebuilds it: its
    canonical key (the latency database's), ``kind`` ("parallel" or "merge"),
    the groups of op names, and each op's model node ids (first output tensors)."""

    key: str
    kind: str
    groups: tuple[tuple[str, ...], ...]
    ops: dict[str, tuple[str, ...]] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "groups": [list(g) for g in self.groups],
                "ops": {name: list(nodes) for name, nodes in self.ops.items()}}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], where: str = "stage") -> IOSStagePayload:
        kind = _field(payload, "kind", str, where)
        if kind not in ("parallel", "merge"):
            raise ProtocolError(f"{where}.kind must be 'parallel' or 'merge', got {kind!r}")
        groups = _field(payload, "groups", list, where)
        ops = _field(payload, "ops", dict, where)
        return cls(_field(payload, "key", str, where), kind,
                   tuple(tuple(_typed(n, str, f"{where}.groups[{i}]") for n in _typed(g, list, f"{where}.groups[{i}]"))
                         for i, g in enumerate(groups)),
                   {str(name): tuple(_typed(nodes, list, f"{where}.ops[{name!r}]")) for name, nodes in ops.items()})


@dataclass(frozen=True)
class MeasureStagesRequest:
    """Time each stage of ``model_file`` on ``target`` (task ``MEASURE_IOS_STAGES``)."""

    target: TargetPayload
    model_file: ModelFile  # the ONNX model the stages belong to
    stages: tuple[IOSStagePayload, ...]
    method: dict[str, Any] = field(default_factory=dict, hash=False)  # MeasurementMethod overrides

    def to_args(self) -> list[Any]:
        return [self.target.to_dict(), self.model_file.to_dict(), [s.to_dict() for s in self.stages],
                dict(self.method)]

    @classmethod
    def from_args(cls, target: Mapping[str, Any], model_file: Mapping[str, Any], stages: Sequence[Any],
                  method: Mapping[str, Any] | None = None) -> MeasureStagesRequest:
        stages = _typed(stages, (list, tuple), "stages")
        return cls(TargetPayload.from_dict(target), ModelFile.from_dict(model_file),
                   tuple(IOSStagePayload.from_dict(s, f"stages[{i}]") for i, s in enumerate(stages)), _method(method))


@dataclass(frozen=True)
class MeasureStagesReply(KeyedResultsReply):
    """One result per stage, in order: its key and statistics, or its error (an ``OpResult`` each)."""


@dataclass(frozen=True)
class TimeSchedulesRequest:
    """Time ``model_file`` end to end under each schedule (name -> "ios-schedule/1" JSON),
    and under ONNX Runtime's own sequential and parallel execution modes, side by
    side in interleaved rounds (task ``TIME_SCHEDULES``)."""

    target: TargetPayload
    model_file: ModelFile
    schedules: dict[str, dict[str, Any]] = field(hash=False)
    method: dict[str, Any] = field(default_factory=dict, hash=False)  # MeasurementMethod overrides

    def to_args(self) -> list[Any]:
        return [self.target.to_dict(), self.model_file.to_dict(), dict(self.schedules), dict(self.method)]

    @classmethod
    def from_args(cls, target: Mapping[str, Any], model_file: Mapping[str, Any], schedules: Mapping[str, Any],
                  method: Mapping[str, Any] | None = None) -> TimeSchedulesRequest:
        schedules = _typed(schedules, Mapping, "schedules")
        return cls(TargetPayload.from_dict(target), ModelFile.from_dict(model_file),
                   {str(k): dict(_typed(v, Mapping, f"schedules[{k!r}]")) for k, v in schedules.items()},
                   _method(method))


@dataclass(frozen=True)
class TimeSchedulesReply:
    """Milliseconds per inference by name (the request's schedules, "ort_sequential",
    "ort_parallel"), with each one's statistics; or why there are none."""

    target: TargetPayload
    agent_version: str
    latencies_ms: dict[str, float] = field(default_factory=dict, hash=False)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    skipped: dict[str, str] = field(default_factory=dict, hash=False)  # name -> why it was not timed
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target.to_dict(), "agent_version": self.agent_version,
                               "latencies_ms": dict(self.latencies_ms), "stats": dict(self.stats),
                               "skipped": dict(self.skipped)}
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> TimeSchedulesReply:
        latencies = _typed(payload.get("latencies_ms", {}), Mapping, "reply.latencies_ms")
        return cls(TargetPayload.from_dict(_field(payload, "target", dict, "reply"), "reply.target"),
                   _typed(payload.get("agent_version", "unknown"), str, "reply.agent_version"),
                   {str(k): float(_typed(v, (int, float), f"reply.latencies_ms[{k!r}]")) for k, v in latencies.items()},
                   dict(_typed(payload.get("stats", {}), Mapping, "reply.stats")),
                   dict(_typed(payload.get("skipped", {}), Mapping, "reply.skipped")),
                   _optional(payload, "error", str, "reply"))


@dataclass(frozen=True)
class Runtime:
    """An inference runtime installed next to the device (name as the service knows it, and version)."""

    name: str
    version: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class Registration:
    """The body of ``POST DEVICES_PATH``: the agent announces its device (the service's DeviceRegister)."""

    name: str
    kind: str  # one of DEVICE_KINDS
    runtimes: tuple[Runtime, ...]
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict, hash=False)  # hardware facts (cores, memory, os)
    agent_version: str | None = None
    # Take back the latency tables of a retired device of this name (when this registration creates it).
    reuse_latency: bool = False

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"name": self.name, "kind": self.kind, "description": self.description,
                   "runtimes": [r.to_dict() for r in self.runtimes], "info": dict(self.info),
                   "agent_version": self.agent_version}
        if self.reuse_latency:  # only when asked: a service of an older release refuses unknown keys
            payload["reuse_latency"] = True
        return payload


@dataclass(frozen=True)
class FineTuneRequest:
    """Fine-tune the named initializers of an ONNX model with ONNX Runtime training on
    the device (task ``FINETUNE_ON_DEVICE``): plain SGD at ``lr``, ``steps`` batches of
    ``batch`` samples taken in order from ``data`` (an .npz with float32 NCHW ``x`` and
    int64 ``y``, base64 like a model file)."""

    target: TargetPayload
    model_file: ModelFile  # format "onnx"
    trainable: tuple[str, ...]
    data_b64: str
    steps: int
    lr: float
    batch: int

    def __post_init__(self) -> None:
        if self.model_file.format != "onnx":
            raise ProtocolError(f"model_file.format must be 'onnx' for on-device training, got "
                                f"{self.model_file.format!r}")
        if not self.trainable:
            raise ProtocolError("trainable must name at least one initializer, got none")
        if self.steps < 1 or self.batch < 1 or not self.lr > 0:
            raise ProtocolError(f"steps and batch must be >= 1 and lr > 0, got {self.steps}, {self.batch}, {self.lr}")

    def to_args(self) -> list[Any]:
        return [self.target.to_dict(), self.model_file.to_dict(), list(self.trainable), self.data_b64, self.steps,
                self.lr, self.batch]

    @classmethod
    def from_args(cls, target: Mapping[str, Any], model_file: Mapping[str, Any], trainable: Sequence[str],
                  data_b64: str, steps: int, lr: float, batch: int) -> FineTuneRequest:
        names = _typed(trainable, (list, tuple), "trainable")
        return cls(TargetPayload.from_dict(target), ModelFile.from_dict(model_file),
                   tuple(_typed(n, str, f"trainable[{i}]") for i, n in enumerate(names)),
                   _typed(data_b64, str, "data_b64"), _typed(steps, int, "steps"),
                   float(_typed(lr, (int, float), "lr")), _typed(batch, int, "batch"))


@dataclass(frozen=True)
class FineTuneReply:
    """What the agent returns for a ``FineTuneRequest``: the run's figures
    (``device_agents.ort_training`` result: per-step loss, accuracy, peak RSS) or why there are none."""

    target: TargetPayload
    agent_version: str
    result: dict[str, Any] | None = field(default=None, hash=False)
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ProtocolError("a fine-tune reply must carry exactly one of result and error")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target.to_dict(), "agent_version": self.agent_version}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["result"] = self.result
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FineTuneReply:
        return cls(TargetPayload.from_dict(_field(payload, "target", dict, "reply"), "reply.target"),
                   _typed(payload.get("agent_version", "unknown"), str, "reply.agent_version"),
                   _optional(payload, "result", dict, "reply"), _optional(payload, "error", str, "reply"))
