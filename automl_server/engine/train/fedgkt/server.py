"""The FedGKT server's work in a round: train the server model on every client's
(H, z_c, y), then compute z_s for each client's samples.

Transport-free, like ``client``: the Flower ServerApp and the in-process loop
both use ``ServerTrainer``.
"""
from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from automl_server.engine.train.fedgkt.client import RoundSettings, batch_order, make_optimizer
from automl_server.engine.train.fedgkt.losses import server_loss


class TrainerState(TypedDict):
    """What a checkpoint keeps of a ServerTrainer: its model's and its optimizer's state dicts."""

    model: dict[str, Any]
    optimizer: dict[str, Any]


class ServerTrainer:
    def __init__(self, model: nn.Module, settings: RoundSettings) -> None:
        self.model = model
        self.settings = settings
        self.optimizer = make_optimizer(model, settings.lr)

    def train(self, uploads: dict[int, dict[str, np.ndarray]], round_index: int) -> float:
        """``server_epochs`` epochs of KD_T(z_s, z_c) + alpha * CE(z_s, y), client after client
        (as the reference loops over the clients' features); returns the mean loss."""
        self.model.train()
        loss_sum, seen = 0.0, 0
        for epoch in range(self.settings.server_epochs):
            for client in sorted(uploads):
                upload = uploads[client]
                features = torch.from_numpy(upload["features"])
                client_logits = torch.from_numpy(upload["logits"])
                labels = torch.from_numpy(upload["labels"]).long()
                seed = ((self.settings.seed * 7919 + round_index) * 101 + epoch) * 131 + client
                for rows in batch_order(len(labels), self.settings.batch_size, seed):
                    if len(rows) < 2:
                        continue  # BatchNorm cannot train on a single sample
                    # H, z_c and y of one sample sit in the same row of one upload: aligned by construction.
                    logits = self.model(features[rows])
                    loss = server_loss(logits, labels[rows], client_logits[rows], self.settings.temperature,
                                       self.settings.kd_alpha)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    loss_sum += loss.item() * len(rows)
                    seen += len(rows)
        return loss_sum / max(seen, 1)

    @torch.no_grad()
    def logits_for(self, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
        self.model.eval()
        x = torch.from_numpy(features)
        if len(x) == 0:
            return np.zeros((0, self.model(torch.zeros(1, *x.shape[1:])).shape[1]), np.float32)
        return torch.cat([self.model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()

    def replies(self, uploads: dict[int, dict[str, np.ndarray]]) -> dict[int, dict[str, np.ndarray]]:
        """z_s for each client's training samples, with their ids (the key the client looks them up by)."""
        return {client: {"ids": upload["ids"], "logits": self.logits_for(upload["features"]).astype(np.float32)}
                for client, upload in uploads.items()}

    def test_accuracy(self, uploads: dict[int, dict[str, np.ndarray]]) -> float | None:
        """The server model's accuracy on every client's test features (each from its own extractor)."""
        correct = total = 0
        for upload in uploads.values():
            if len(upload["test_labels"]):
                predicted = self.logits_for(upload["test_features"]).argmax(1)
                correct += int((predicted == upload["test_labels"]).sum())
                total += len(upload["test_labels"])
        return correct / total if total else None

    def state_dict(self) -> TrainerState:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: TrainerState) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
