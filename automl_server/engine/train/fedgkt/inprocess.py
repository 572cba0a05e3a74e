"""FedGKT rounds in one process, clients one after the other: for unit tests of the
algorithm only. The product path is the Flower deployment (``deployment``)."""
from __future__ import annotations

import numpy as np
import torch

from automl_server.engine.train.fedgkt import payload
from automl_server.engine.train.fedgkt.client import ClientShard, RoundSettings, ServerLogits, client_round, make_optimizer
from automl_server.engine.train.fedgkt.models import EdgeModel
from automl_server.engine.train.fedgkt.server import ServerTrainer


def run_in_process(edges: list[EdgeModel], server: torch.nn.Module, shards: list[ClientShard],
                   settings: RoundSettings, rounds: int) -> list[dict[str, object]]:
    """The same round as the ServerApp/ClientApp, with the same payload encoding; one row per round."""
    optimizers = [make_optimizer(edge, settings.lr) for edge in edges]
    trainer = ServerTrainer(server, settings)
    pending: dict[int, bytes] = {}
    history = []
    for round_index in range(1, rounds + 1):
        uploads, rows = {}, []
        for client, (edge, optimizer, shard) in enumerate(zip(edges, optimizers, shards)):
            logits = None
            if client in pending:
                reply = payload.decode(pending[client], payload.REPLY_FIELDS)
                logits = ServerLogits(torch.from_numpy(reply["ids"]), torch.from_numpy(reply["logits"]))
            upload, metrics = client_round(edge, optimizer, shard, logits, settings,
                                           (settings.seed * 7919 + round_index) * 131 + client)
            blob = payload.encode(upload)
            uploads[client] = payload.decode(blob, payload.UPLOAD_FIELDS)
            rows.append({"client": client, "accuracy": metrics["accuracy"], "bytes_up": len(blob)})
        trainer.train(uploads, round_index)
        pending = {client: payload.encode(reply) for client, reply in trainer.replies(uploads).items()}
        history.append({"round": round_index, "clients": rows, "server_accuracy": trainer.test_accuracy(uploads),
                        "bytes_down": int(np.sum([len(blob) for blob in pending.values()]))})
    return history
