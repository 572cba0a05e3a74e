"""The train stage's side of a FedGKT run: shard the data, start Flower's
deployment engine, follow the rounds, and collect the edge models.

Resumable: the files of ``workspace`` carry the run. A restarted stage finds
the server's checkpoint and the clients' per-round files, ends whatever of
the dead run still runs (its SuperLink and SuperNodes die with the stage,
the ServerApp/ClientApp processes are reaped, see ``deployment``), starts a
fresh SuperLink and SuperNodes, and the ServerApp continues after the last
finished round; a finished run is not started again.

The job's time budget (``should_stop``) is handed to the ServerApp as a file:
it finishes the round in flight, starts no other, and exports the edge models.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from automl_server.engine.train.fedgkt.client import ClientShard, RoundSettings
from automl_server.engine.train.fedgkt.deployment import DeploymentFailed, FlowerDeployment, reap_leftovers
from automl_server.engine.train.fedgkt.partition import class_histograms, dirichlet_partition, iid_partition
from automl_server.engine.train.fedgkt.workspace import Workspace, write_json, write_shard


@dataclass
class Federation:
    """The clients' shards (their training ids index the job's training split)."""

    shards: list[ClientShard]
    histograms: list[list[int]]


def make_federation(x: torch.Tensor, y: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor, *, clients: int,
                    partition: str, dirichlet_alpha: float, num_classes: int, seed: int) -> Federation:
    """Training samples by ``partition``; the evaluation split IID over the clients as their local test data."""
    labels = y.numpy()
    parts = (dirichlet_partition(labels, clients, dirichlet_alpha, seed) if partition == "dirichlet"
             else iid_partition(len(labels), clients, seed))
    test_parts = iid_partition(len(eval_y), clients, seed + 1)
    shards = []
    for part, test_part in zip(parts, test_parts):
        rows, test_rows = torch.from_numpy(part), torch.from_numpy(test_part)
        shards.append(ClientShard(ids=rows.clone(), x=x[rows].clone(), y=y[rows].clone(), test_ids=test_rows.clone(),
                                  test_x=eval_x[test_rows].clone(), test_y=eval_y[test_rows].clone()))
    return Federation(shards, class_histograms(labels, parts, num_classes))


def write_run(workspace: Workspace, federation: Federation, *, arch: dict[str, Any], cut: int,
              edge_state: dict[str, torch.Tensor], settings: RoundSettings, rounds: int,
              server_size: tuple[int, int], threads: int, node_wait_s: float = 120.0) -> None:
    """The job's files; shards already written (a resumed run) are kept as they are."""
    for client, shard in enumerate(federation.shards):
        if not workspace.shard(client).exists():
            write_shard(workspace.shard(client), client, shard, arch, cut, edge_state)
    workspace.write_job(settings=settings, rounds=rounds, clients=len(federation.shards), arch=arch, cut=cut,
                        server_size=server_size, threads=threads, node_wait_s=node_wait_s)


def run_rounds_on_flower(workspace: Workspace, clients: int, *, on_round: Callable[[dict[str, Any]], None],
                         check_cancelled: Callable[[], None], should_stop: Callable[[], bool] = lambda: False,
                         poll_s: float = 0.2, idle_timeout_s: float = 1800.0) -> list[dict[str, Any]]:
    """Run (or finish) the rounds on Flower processes; ``on_round`` for each round finished by this call.
    Returns every round's row. Any exception (a cancel from ``check_cancelled``) ends every child process;
    once ``should_stop`` says so, the round in flight is the last."""
    if workspace.done.exists():
        return workspace.read_rounds()
    reap_leftovers(workspace.root)  # a dead stage's ServerApp/ClientApps must not run beside ours
    workspace.error.unlink(missing_ok=True)
    workspace.stop.unlink(missing_ok=True)  # a budget spent by an earlier stage is not this one's
    reported = len(workspace.read_rounds())  # rows of a previous stage were reported by it
    shards = [workspace.shard(client) for client in range(clients)]
    last_progress = time.monotonic()
    with FlowerDeployment(workspace.root, shards) as deployment:
        while True:
            check_cancelled()
            if not workspace.stop.exists() and should_stop():
                write_json(workspace.stop, {"after_round": len(workspace.read_rounds()) + 1})
            rows = workspace.read_rounds()
            for row in rows[reported:]:
                on_round(row)
                last_progress = time.monotonic()
            reported = max(reported, len(rows))
            if workspace.done.exists():
                return rows
            if workspace.error.exists():
                raise DeploymentFailed(f"the FedGKT ServerApp failed:\n{workspace.error.read_text()[-3000:]}")
            deployment.check_alive()
            if time.monotonic() - last_progress > idle_timeout_s:
                raise DeploymentFailed(f"no FedGKT round finished in {idle_timeout_s:.0f} s; see {workspace.root}/logs")
            time.sleep(poll_s)


def load_final_edges(workspace: Workspace, clients: int) -> list[dict[str, torch.Tensor]]:
    return [torch.load(workspace.final_edge(client), weights_only=True) for client in range(clients)]


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(present)) if present else None
