"""The service and its agents speak one protocol (device_agents.protocol):
payloads survive the broker's JSON, keep the wire format older agents speak,
and each side accepts what the other sends."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from automl_server.celery_app import make_celery
from automl_server.db.engine import get_database
from automl_server.db.migrate import upgrade
from automl_server.profiling import (
    RECORD_MEASUREMENTS,
    Target,
    dispatch_network_measurement,
    dispatch_profiling,
    repository,
)
from device_agents import tasks
from device_agents.protocol import (
    AGENT_TOKEN_HEADER,
    DEVICE_KINDS,
    DEVICES_PATH,
    MEASURE_NETWORK,
    PROFILE_OPS,
    MeasureNetworkReply,
    MeasureNetworkRequest,
    ModelFile,
    OpResult,
    ProfileOpsReply,
    ProfileOpsRequest,
    ProtocolError,
    Registration,
    Runtime,
    TargetPayload,
    device_queue,
    heartbeat_path,
)
from latency_db import TargetSpec
from search_spaces import Arch
from tests.conftest import _forget_database, make_settings

PI = TargetPayload("pi-4", "onnxruntime", "1.31.1", threads=2)
# The target exactly as the service wrote it by hand before the protocol module existed.
PI_ON_THE_WIRE = {"device_name": "pi-4", "backend": "onnxruntime", "backend_version": "1.31.1", "threads": 2,
                  "dtype": "float32", "batch": 1}
KEY = "expanded_conv-input:4x4x16-output:4x4x16-expand:3-kernel:3-stride:1-idskip:1"
STATS = {"samples": 5, "warmup": 1, "median_ms": 0.5, "mean_ms": 0.52, "std_ms": 0.01, "p90_ms": 0.55,
         "min_ms": 0.49, "cv": 0.02, "method": {"threads": 2}, "temperature_c": None}
ARCH = {"space": "tiny", "resolution": 8, "num_classes": 10, "in_channels": 1,
        "blocks": ["mb3_k5", "zero", "mb3_k3", "mb6_k3", "mb3_k3", "mb6_k5", "mb6_k5", "mb6_k5"]}
# Measurement settings that make the agent's timing of one tiny op take milliseconds.
QUICK = {"warmup": 0, "block_size": 1, "min_block_ms": 0.0, "min_blocks": 2, "max_blocks": 2, "yardstick": False}


def through_broker(value: Any) -> Any:
    """What the other side receives: Celery's JSON serializer turns tuples into lists."""
    return json.loads(json.dumps(value))


def test_requests_round_trip_through_json_in_the_wire_format() -> None:
    profile = ProfileOpsRequest(PI, (KEY, "conv-x"), {"min_seconds": 0.5})
    network = MeasureNetworkRequest(PI, ARCH, {"min_seconds": 0.2}, ModelFile.from_bytes("onnx", b"\x08\x01"))

    profile_args, network_args = through_broker(profile.to_args()), through_broker(network.to_args())

    assert profile_args == [PI_ON_THE_WIRE, [KEY, "conv-x"], {"min_seconds": 0.5}]
    assert network_args == [PI_ON_THE_WIRE, ARCH, {"min_seconds": 0.2}, {"format": "onnx", "b64": "CAE="}]
    assert ProfileOpsRequest.from_args(*profile_args) == profile
    assert MeasureNetworkRequest.from_args(*network_args) == network
    assert MeasureNetworkRequest.from_args(*network_args).model_file.data() == b"\x08\x01"  # type: ignore[union-attr]


def test_a_network_request_without_a_file_sends_three_arguments_as_before() -> None:
    request = MeasureNetworkRequest(PI, ARCH)

    assert request.to_args() == [PI_ON_THE_WIRE, ARCH, {}]
    assert MeasureNetworkRequest.from_args(PI_ON_THE_WIRE, ARCH) == request


def test_replies_round_trip_and_tell_failures_by_their_error_key() -> None:
    ops = ProfileOpsReply(PI, "0.1.0", (OpResult(KEY, stats=STATS), OpResult("bad", error="RuntimeError: x",
                                                                             trace="Traceback ...")))
    measured = MeasureNetworkReply(PI, ARCH, "0.1.0", measured_ms=1.25, stats=STATS, measured_file=True)
    failed = MeasureNetworkReply(PI, ARCH, "0.1.0", error="WrongRuntime: no")

    ops_dict, measured_dict, failed_dict = (through_broker(r.to_dict()) for r in (ops, measured, failed))

    assert ops_dict["results"] == [{"key": KEY, "stats": STATS},
                                   {"key": "bad", "error": "RuntimeError: x", "trace": "Traceback ..."}]
    assert measured_dict == {"target": PI_ON_THE_WIRE, "arch": ARCH, "agent_version": "0.1.0", "measured_ms": 1.25,
                             "stats": STATS, "measured_file": True}
    assert failed_dict == {"target": PI_ON_THE_WIRE, "arch": ARCH, "agent_version": "0.1.0",
                           "error": "WrongRuntime: no"}
    assert ProfileOpsReply.from_dict(ops_dict) == ops
    assert MeasureNetworkReply.from_dict(measured_dict) == measured
    assert MeasureNetworkReply.from_dict(failed_dict) == failed


def test_a_reply_from_a_newer_or_older_agent_is_still_read() -> None:
    newer = {"target": PI_ON_THE_WIRE, "arch": ARCH, "agent_version": "9.0", "measured_ms": 2, "stats": STATS,
             "measured_file": False, "power_mw": 812.0}
    older = {"target": {k: v for k, v in PI_ON_THE_WIRE.items() if k not in ("dtype", "batch")},
             "results": [{"key": KEY, "stats": STATS}]}

    assert MeasureNetworkReply.from_dict(newer).measured_ms == 2.0
    assert ProfileOpsReply.from_dict(older) == ProfileOpsReply(PI, "unknown", (OpResult(KEY, stats=STATS),))


@pytest.mark.parametrize(("payload", "message"), [
    ({"arch": ARCH, "measured_ms": 1.0}, "reply has no 'target'"),
    ({"target": {**PI_ON_THE_WIRE, "threads": "2"}, "arch": ARCH, "measured_ms": 1.0},
     "reply.target.threads must be int, got '2'"),
    ({"target": PI_ON_THE_WIRE, "arch": ARCH, "measured_ms": True}, "reply.measured_ms must be int or float"),
    ({"target": PI_ON_THE_WIRE, "arch": ARCH}, "exactly one of measured_ms and error"),
])
def test_a_malformed_reply_is_refused_naming_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(".", r"\.")):
        MeasureNetworkReply.from_dict(payload)


def test_bad_values_are_refused_with_what_would_be_accepted() -> None:
    with pytest.raises(ProtocolError, match="onnx, tflite"):
        ModelFile("pt", "")
    with pytest.raises(ProtocolError, match=r"keys\[1\] must be str"):
        ProfileOpsRequest.from_args(PI_ON_THE_WIRE, [KEY, 3])
    with pytest.raises(ProtocolError, match="non-empty"):
        device_queue("")


def test_payloads_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PI.threads = 4  # type: ignore[misc]


def test_the_target_carries_exactly_the_latency_databases_target_fields() -> None:
    spec = TargetSpec(**PI.to_dict())

    assert [f.name for f in dataclasses.fields(TargetPayload)] == [f.name for f in dataclasses.fields(TargetSpec)]
    assert spec.threads == 2 and spec.backend == "onnxruntime"


def test_the_agent_registers_the_tasks_by_the_protocols_names_and_arguments() -> None:
    assert (tasks.profile_ops.name, tasks.measure_network.name) == (PROFILE_OPS, MEASURE_NETWORK)
    # Celery calls the task with the request's positional arguments: they must bind.
    inspect.signature(tasks.profile_ops.run).bind(*ProfileOpsRequest(PI, (KEY,)).to_args())
    inspect.signature(tasks.measure_network.run).bind(
        *MeasureNetworkRequest(PI, ARCH, model_file=ModelFile("tflite", "")).to_args())


class RecordingCelery:
    """Stands in for the service's Celery app: keeps what would go to the broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def signature(self, name: str, args: list[Any] | None = None, queue: str = "", **_: Any) -> RecordingCelery.Sig:
        return RecordingCelery.Sig(self, name, args or [], queue)

    @dataclasses.dataclass
    class Sig:
        app: RecordingCelery
        name: str
        args: list[Any]
        queue: str

        def apply_async(self, link: Any = None) -> None:
            self.app.sent.append((self.name, through_broker(self.args), self.queue))


def test_the_service_sends_what_the_agent_reads_to_the_devices_queue() -> None:
    celery = RecordingCelery()
    target = Target("pi-4", "onnxruntime", "1.31.1", threads=2)

    dispatch_profiling(celery, target, [KEY] * 9, {"min_seconds": 0.5})  # type: ignore[arg-type]
    dispatch_network_measurement(celery, target, Arch.from_dict(ARCH), {"min_seconds": 0.2})  # type: ignore[arg-type]

    assert [(name, queue) for name, _, queue in celery.sent] == [
        (PROFILE_OPS, "device.pi-4"), (PROFILE_OPS, "device.pi-4"), (MEASURE_NETWORK, "device.pi-4")]
    first, second = (ProfileOpsRequest.from_args(*args) for _, args, _ in celery.sent[:2])
    assert first.target == PI and len(first.keys) + len(second.keys) == 9
    network = MeasureNetworkRequest.from_args(*celery.sent[2][1])
    assert network.arch == Arch.from_dict(ARCH).to_dict() and network.method == {"min_seconds": 0.2}


def test_what_the_agent_measures_the_service_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(1)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'automl.sqlite'}")
    db = get_database(settings.resolved_database_url)
    upgrade(db)
    celery = make_celery(settings, eager=True)
    here = Target("local", "pytorch", torch.__version__.split("+")[0])
    nowhere = Target("local", "tensorrt", "10.0")  # no backend on this agent runs it
    measure, refuse = (ProfileOpsRequest(t.payload, (KEY,), QUICK) for t in (here, nowhere))

    replies = [tasks.profile_ops(*through_broker(r.to_args())) for r in (measure, refuse)]
    for reply in replies:
        celery.tasks[RECORD_MEASUREMENTS].apply(args=[through_broker(reply)])

    measured, refused = (ProfileOpsReply.from_dict(r).results[0] for r in replies)
    assert measured.stats is not None and refused.error is not None and "tensorrt" in refused.error
    repo = repository(db)
    assert list(repo.lut_ms(repo.target(here.spec))) == [KEY]
    assert repo.missing(repo.target(nowhere.spec), [KEY]) == [KEY]
    assert "tensorrt" in (repo.history(repo.target(nowhere.spec), KEY)[-1].error or "")
    _forget_database(settings.resolved_database_url)


def test_the_service_accepts_the_agents_registration_and_heartbeat(client) -> None:  # type: ignore[no-untyped-def]
    registration = Registration(name="pi-4", kind="raspberry-pi", runtimes=(Runtime("onnxruntime", "1.31.1"),),
                                description="lab bench", info={"cpu_count": 4}, agent_version="0.1.0")

    registered = client.post(DEVICES_PATH, json=registration.to_dict())
    beat = client.post(heartbeat_path("pi-4"), json={},
                       headers={AGENT_TOKEN_HEADER: registered.json["agent_token"]})

    assert registered.status_code == 201, registered.json
    assert registered.json["queue"] == device_queue("pi-4")
    assert beat.status_code == 200 and beat.json["status"] == "online"


def test_the_agent_offers_the_device_kinds_the_service_accepts() -> None:
    from automl_server.api.schemas import DEVICE_KINDS as SERVICE_KINDS

    assert DEVICE_KINDS == SERVICE_KINDS


# Files of the job layer that still address device queues by hand; being moved to the
# protocol by its owner (automl_server.profiling.measure_network_signature, device_queue).
PENDING: set[str] = set()


def test_no_other_module_writes_the_protocols_names_by_hand() -> None:
    root = Path(__file__).resolve().parents[2]
    by_hand = re.compile(r"""f["']device\.\{|["']automl\.(profile_ops|measure_network)["']""")
    offenders = sorted(
        str(path.relative_to(root)) for package in ("automl_server", "device_agents")
        for path in (root / package).rglob("*.py")
        if path.name != "protocol.py" and by_hand.search(path.read_text())
    )

    assert [path for path in offenders if path not in PENDING] == []
