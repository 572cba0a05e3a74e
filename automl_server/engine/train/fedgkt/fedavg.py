"""The FedAvg baseline (McMahan et al. 2017) on FedGKT's partition, rounds and epochs.

Each round every client starts from the global weights, trains
``client_epochs`` with CE on its shard, and the server averages the weights
weighted by the clients' sample counts. Run in-process, clients one after the
other: it is a yardstick for the report, not a deployment (the weights it
would exchange are accounted as bytes all the same: the model's float32
state each way per client per round).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.train.fedgkt.client import ClientShard, batch_order, make_optimizer
from automl_server.engine.train.standard import evaluate


def average_states(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean of every floating tensor; integer buffers (BN's step count) from the first client."""
    total = float(sum(weights))
    averaged = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            terms = [state[name] * (w / total) for state, w in zip(states, weights)]
            averaged[name] = sum(terms[1:], start=terms[0])
        else:
            averaged[name] = first.clone()
    return averaged


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run_fedavg(model: nn.Module, shards: list[ClientShard], *, rounds: int, client_epochs: int, lr: float,
               batch_size: int, seed: int, eval_x: torch.Tensor, eval_y: torch.Tensor,
               on_step: Callable[[], None] | None = None,
               should_stop: Callable[[], bool] | None = None,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, object]:
    """Train ``model`` (the global model) in place; the accuracy per round on (eval_x, eval_y) and bytes.
    Once ``should_stop`` says so (asked between rounds) no further round starts. ``on_round``
    gets each round's row as it ends (the job's progress)."""
    history = []
    for round_index in range(1, rounds + 1):
        if should_stop is not None and round_index > 1 and should_stop():
            break
        states, weights = [], []
        for client, shard in enumerate(shards):
            local = copy.deepcopy(model)
            optimizer = make_optimizer(local, lr)
            local.train()
            for epoch in range(client_epochs):
                for rows in batch_order(len(shard.y), batch_size, ((seed * 7919 + round_index) * 131 + client) * 1000
                                        + epoch):
                    if len(rows) < 2:
                        continue
                    loss = F.cross_entropy(local(shard.x[rows]), shard.y[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if on_step is not None:
                        on_step()
            states.append(local.state_dict())
            weights.append(len(shard.y))
        model.load_state_dict(average_states(states, weights))
        history.append({"round": round_index, "accuracy": evaluate(model, eval_x, eval_y) if len(eval_y) else None})
        if on_round is not None:
            on_round(history[-1])
    per_client = state_bytes(model)
    return {"history": history, "rounds": len(history), "accuracy": history[-1]["accuracy"] if history else None,
            "bytes_per_round": 2 * per_client * len(shards), "bytes_per_client_per_round": {"up": per_client,
                                                                                            "down": per_client}}
