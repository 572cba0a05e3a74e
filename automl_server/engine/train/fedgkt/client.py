"""One FedGKT client's work in a round: train the edge model, then extract what it sends.

Transport-free (tensors in, arrays out): the Flower ClientApp and the
in-process loop of the tests both call ``client_round``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from automl_server.engine.train.fedgkt.losses import client_loss
from automl_server.engine.train.fedgkt.models import EdgeModel


@dataclass(frozen=True)
class RoundSettings:
    """Hyper-parameters a round needs on either side (see the pipeline's settings for their sources)."""

    client_epochs: int = 1
    server_epochs: int = 1
    temperature: float = 3.0
    kd_alpha: float = 1.0
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


@dataclass
class ClientShard:
    """A client's own data: training samples with their ids, and its local test samples."""

    ids: torch.Tensor  # int64 sample ids (positions in the job's training split): the key of z_s
    x: torch.Tensor
    y: torch.Tensor
    test_ids: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


class ServerLogits:
    """z_s per sample id. Lookups go by id, never by position in a batch or in the
    reply, so reshuffled batches still get each sample's own target (the reference
    keys them by batch index while reshuffling, which mismatches them)."""

    def __init__(self, ids: torch.Tensor, logits: torch.Tensor) -> None:
        order = torch.argsort(ids)
        self.sorted_ids = ids[order]
        self.logits = logits[order]
        if len(self.sorted_ids) > 1 and bool((self.sorted_ids[1:] == self.sorted_ids[:-1]).any()):
            raise ValueError("server logits repeat a sample id")

    def for_ids(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.searchsorted(self.sorted_ids, ids).clamp(max=len(self.sorted_ids) - 1)
        missing = self.sorted_ids[rows] != ids
        if bool(missing.any()):
            raise KeyError(f"no server logits for sample ids {ids[missing][:5].tolist()}")
        return self.logits[rows]


def batch_order(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A fresh shuffle cut into batches (a seed per client, round and epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(order.split(max(batch_size, 1)))


def train_edge(edge: EdgeModel, optimizer: torch.optim.Optimizer, shard: ClientShard,
               server_logits: ServerLogits | None, settings: RoundSettings, seed: int,
               on_step: object = None) -> float:
    """``client_epochs`` epochs of CE + alpha * KD_T(z_c, z_s); returns the mean training loss."""
    edge.train()
    loss_sum, seen = 0.0, 0
    for epoch in range(settings.client_epochs):
        for rows in batch_order(len(shard.y), settings.batch_size, seed * 1000 + epoch):
            if len(rows) < 2:
                continue  # BatchNorm cannot train on a single sample
            logits = edge(shard.x[rows])
            teacher = server_logits.for_ids(shard.ids[rows]) if server_logits is not None else None
            loss = client_loss(logits, shard.y[rows], teacher, settings.temperature, settings.kd_alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(rows)
            seen += len(rows)
            if callable(on_step):
                on_step()
    return loss_sum / max(seen, 1)


@torch.no_grad()
def extract(edge: EdgeModel, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, z_c) for every sample, in eval mode (as the reference extracts after training)."""
    edge.eval()
    if len(x) == 0:
        features = edge.extractor(torch.zeros(1, *x.shape[1:]))
        logits = edge.client_classifier(features)
        return features[:0], logits[:0]
    pairs = [edge.features_and_logits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([f for f, _ in pairs]), torch.cat([z for _, z in pairs])


def client_round(edge: EdgeModel, optimizer: torch.optim.Optimizer, shard: ClientShard,
                 server_logits: ServerLogits | None, settings: RoundSettings, seed: int,
                 on_step: object = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train, then the upload (arrays, see ``payload``) and the client's metrics."""
    train_loss = train_edge(edge, optimizer, shard, server_logits, settings, seed, on_step)
    features, logits = extract(edge, shard.x)
    test_features, test_logits = extract(edge, shard.test_x)
    test_correct = int((test_logits.argmax(1) == shard.test_y).sum())
    upload = {"ids": shard.ids.numpy(), "features": features.numpy().astype(np.float32),
              "logits": logits.numpy().astype(np.float32), "labels": shard.y.numpy(),
              "test_ids": shard.test_ids.numpy(), "test_features": test_features.numpy().astype(np.float32),
              "test_labels": shard.test_y.numpy()}
    metrics = {"train_loss": train_loss, "test_correct": float(test_correct), "test_samples": float(len(shard.test_y)),
               "accuracy": test_correct / len(shard.test_y) if len(shard.test_y) else float("nan")}
    return upload, metrics


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (lr 1e-3 by default), as FedGKT trains both sides in the paper's CIFAR experiments."""
    return torch.optim.Adam(model.parameters(), lr=lr)
