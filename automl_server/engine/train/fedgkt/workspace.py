"""The files of one FedGKT run under the job's work_dir, written by the train
stage and read by the Flower processes (which share nothing else with it).

    fedgkt/job.json                  what the ServerApp needs: round settings, arch, cut, clients
    fedgkt/clients/<k>/shard.pt      client k's data, ids, arch and initial edge weights (its node config
                                     points here; at scale the file sits beside the SuperNode)
    fedgkt/clients/<k>/edge_r<r>.pt  client k's edge model and optimizer after round r (the client's own)
    fedgkt/server.ckpt               server model, optimizer, z_s to send, history after the last finished round
    fedgkt/rounds.jsonl              one JSON row per finished round (the train stage tails it)
    fedgkt/final/edge_<k>.pt         each client's final edge weights, fetched once after the last round
    fedgkt/stop.json                 written by the train stage once the job's time budget is spent: the
                                     ServerApp starts no further round and exports the edge models
    fedgkt/done.json                 written last by the ServerApp; fedgkt/error.txt when it failed
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from automl_server.engine.train.fedgkt.client import ClientShard, RoundSettings


class Workspace:
    def __init__(self, work_dir: Path) -> None:
        self.root = Path(work_dir) / "fedgkt"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    def shard(self, client: int) -> Path:
        return self.root / "clients" / str(client) / "shard.pt"

    @property
    def server_checkpoint(self) -> Path:
        return self.root / "server.ckpt"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.jsonl"

    def final_edge(self, client: int) -> Path:
        return self.root / "final" / f"edge_{client}.pt"

    @property
    def done(self) -> Path:
        return self.root / "done.json"

    @property
    def stop(self) -> Path:
        return self.root / "stop.json"

    @property
    def error(self) -> Path:
        return self.root / "error.txt"

    def write_job(self, *, settings: RoundSettings, rounds: int, clients: int, arch: dict[str, Any], cut: int,
                  server_size: tuple[int, int], threads: int, node_wait_s: float) -> None:
        write_json(self.job, {"settings": asdict(settings), "rounds": rounds, "clients": clients, "arch": arch,
                              "cut": cut, "server_size": list(server_size), "threads": threads,
                              "node_wait_s": node_wait_s})

    def read_job(self) -> dict[str, Any]:
        return json.loads(self.job.read_text())

    def read_rounds(self) -> list[dict[str, Any]]:
        if not self.rounds.exists():
            return []
        return [json.loads(line) for line in self.rounds.read_text().splitlines() if line.strip()]


def write_shard(path: Path, client: int, shard: ClientShard, arch: dict[str, Any], cut: int,
                edge_state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"client": client, "arch": arch, "cut": cut, "edge_state": edge_state,
                 "ids": shard.ids, "x": shard.x, "y": shard.y,
                 "test_ids": shard.test_ids, "test_x": shard.test_x, "test_y": shard.test_y}, path)


def read_shard(path: Path) -> tuple[int, ClientShard, dict[str, Any], int, dict[str, torch.Tensor]]:
    state = torch.load(path, weights_only=True)
    shard = ClientShard(state["ids"], state["x"], state["y"], state["test_ids"], state["test_x"], state["test_y"])
    return int(state["client"]), shard, state["arch"], int(state["cut"]), state["edge_state"]


def atomic_save(obj: object, path: Path) -> None:
    """torch.save via a temporary file: a crash mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def append_json_line(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
