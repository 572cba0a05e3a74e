"""FedGKT's Flower ClientApp: one client, in the process its SuperNode starts.

The SuperNode's node config names the client's shard (``shard="<path>"``);
everything else arrives in messages. Messages:

- ``query.identify``: which client this node holds (its index in the job).
- ``train``: one FedGKT round. In: the round, the round this client resumes
  from, the round settings, and the server's z_s of the previous round (a
  payload blob, absent in round 1). Out: the upload blob (ids, H, z_c, y and
  test H, y) and metrics (accuracy on its test data, wall time, bytes).
- ``query.export``: after the last round, the last z_s (so every reply the
  server accounted is delivered) in, the edge model's weights out: the job
  exports an edge model and the edge weights otherwise never leave the client.

The client's own state (edge weights, optimizer) lives beside its shard, one
file per finished round, so a restarted run resumes from the server's round.
"""
from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from automl_server.engine.train.fedgkt import payload
from automl_server.engine.train.fedgkt.client import RoundSettings, ServerLogits, client_round, make_optimizer
from automl_server.engine.train.fedgkt.models import EdgeModel, split_edge_model
from automl_server.engine.train.fedgkt.workspace import atomic_save, read_shard
from search_spaces import Arch, build_model

client_app = ClientApp()


def blob_record(blob: bytes) -> ArrayRecord:
    return ArrayRecord({"payload": Array(np.frombuffer(blob, dtype=np.uint8))})


def record_blob(record: ArrayRecord) -> bytes:
    return record["payload"].numpy().tobytes()


def record_int(record: Mapping[str, object], key: str) -> int:
    """``record[key]`` (a number in a Flower config or metric record) as an int."""
    value = record[key]
    if not isinstance(value, (int, float, str, bytes)):
        raise TypeError(f"record entry {key!r} is a {type(value).__name__}; expected a number")
    return int(value)


def _round_settings(config: Mapping[str, object]) -> RoundSettings:
    # Any: the values are the server's asdict(RoundSettings), already of the fields' types.
    values: dict[str, Any] = {name: config[name] for name in RoundSettings.__dataclass_fields__}
    return RoundSettings(**values)


def _shard_path(context: Context) -> Path:
    return Path(str(context.node_config["shard"]))


def _edge_file(shard_path: Path, round_index: int) -> Path:
    return shard_path.with_name(f"edge_r{round_index}.pt")


def _load_edge(shard_path: Path, resume_from: int, lr: float) -> tuple[EdgeModel, torch.optim.Optimizer]:
    _, _, arch, cut, edge_state = read_shard(shard_path)
    edge = split_edge_model(build_model(Arch.from_dict(arch)), Arch.from_dict(arch), cut)
    optimizer = make_optimizer(edge, lr)
    if resume_from > 0:
        state = torch.load(_edge_file(shard_path, resume_from), weights_only=True)
        edge.load_state_dict(state["edge"])
        optimizer.load_state_dict(state["optimizer"])
    else:
        edge.load_state_dict(edge_state)
    return edge, optimizer


@client_app.query("identify")
def identify(message: Message, context: Context) -> Message:
    client, shard, *_ = read_shard(_shard_path(context))
    return Message(RecordDict({"identity": ConfigRecord({"client": client, "samples": len(shard.y)})}),
                   reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    started = time.monotonic()
    config = message.content["config"]
    torch.set_num_threads(record_int(config, "threads"))
    settings = _round_settings(config)
    round_index, resume_from = record_int(config, "round"), record_int(config, "resume_from")
    shard_path = _shard_path(context)
    client, shard, *_ = read_shard(shard_path)
    edge, optimizer = _load_edge(shard_path, resume_from, settings.lr)
    server_logits, bytes_down = None, 0
    if "reply" in message.content.array_records:
        blob = record_blob(message.content.array_records["reply"])
        bytes_down = len(blob)
        reply = payload.decode(blob, payload.REPLY_FIELDS)
        server_logits = ServerLogits(torch.from_numpy(reply["ids"]), torch.from_numpy(reply["logits"]))
    seed = (settings.seed * 7919 + round_index) * 131 + client
    upload, metrics = client_round(edge, optimizer, shard, server_logits, settings, seed)
    atomic_save({"edge": edge.state_dict(), "optimizer": optimizer.state_dict()}, _edge_file(shard_path, round_index))
    for old in shard_path.parent.glob("edge_r*.pt"):  # keep this round and the one before (resume point)
        if int(old.stem[len("edge_r"):]) < round_index - 1:
            old.unlink(missing_ok=True)
    blob = payload.encode(upload)
    metrics.update(client=float(client), bytes_up=float(len(blob)), bytes_down_received=float(bytes_down),
                   wall_s=time.monotonic() - started)
    return Message(RecordDict({"upload": blob_record(blob), "metrics": MetricRecord(dict(metrics))}),
                   reply_to=message)


@client_app.query("export")
def export(message: Message, context: Context) -> Message:
    config = message.content["config"]
    shard_path = _shard_path(context)
    bytes_down = len(record_blob(message.content.array_records["reply"])) if "reply" in message.content.array_records \
        else 0
    edge, _ = _load_edge(shard_path, record_int(config, "round"), 1e-3)
    buffer = io.BytesIO()
    torch.save(edge.state_dict(), buffer)
    return Message(RecordDict({"edge": blob_record(buffer.getvalue()),
                               "metrics": MetricRecord({"bytes_down_received": float(bytes_down)})}),
                   reply_to=message)
