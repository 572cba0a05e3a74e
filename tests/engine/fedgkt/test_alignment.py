"""Each sample's KD target is its own server logits, however the batches are reshuffled."""
from __future__ import annotations

import torch

from automl_server.engine.train.fedgkt import client as client_module
from automl_server.engine.train.fedgkt.client import ClientShard, RoundSettings, ServerLogits, make_optimizer, train_edge
from automl_server.engine.train.fedgkt.models import split_edge_model
from search_spaces import build_model

from .conftest import tiny_arch


def test_lookup_goes_by_sample_id_not_by_position():
    ids = torch.tensor([40, 7, 93, 12])
    logits = torch.stack([torch.full((3,), float(i)) for i in ids.tolist()])  # each row says its id
    server = ServerLogits(ids, logits)

    got = server.for_ids(torch.tensor([12, 93, 7, 40, 12]))

    assert got[:, 0].tolist() == [12.0, 93.0, 7.0, 40.0, 12.0]


def test_reshuffled_client_epochs_pull_each_sample_towards_its_own_server_logits(digits, monkeypatch):
    arch = tiny_arch(digits)
    torch.manual_seed(0)
    edge = split_edge_model(build_model(arch), arch, 0)
    n = 40
    ids = torch.arange(1000, 1000 + n)  # ids are not positions: they index the job's training split
    x = digits.x_train[:n].clone()
    x[:, 0, 0, 0] = ids.float()  # the batch's own images say which samples they are
    shard = ClientShard(ids, x, digits.y_train[:n], ids[:0], x[:0], digits.y_train[:0])
    reply_order = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # the server answers in its order
    server = ServerLogits(ids[reply_order], torch.stack([torch.full((10,), float(i)) for i in ids[reply_order]]))
    seen_images: list[torch.Tensor] = []
    seen_targets: list[torch.Tensor] = []
    edge.register_forward_pre_hook(lambda _m, args: seen_images.append(args[0][:, 0, 0, 0].clone()))
    real_loss = client_module.client_loss

    def recording_loss(logits, labels, teacher, t, alpha):  # type: ignore[no-untyped-def]
        seen_targets.append(teacher[:, 0].clone())
        return real_loss(logits, labels, teacher, t, alpha)

    monkeypatch.setattr(client_module, "client_loss", recording_loss)

    train_edge(edge, make_optimizer(edge, 1e-3), shard, server, RoundSettings(client_epochs=3, batch_size=8), seed=5)

    assert len(seen_targets) == 15  # 3 epochs x 5 batches, each shuffled anew
    orders = [torch.cat(seen_images[i * 5:(i + 1) * 5]).tolist() for i in range(3)]
    assert orders[0] != orders[1] != orders[2]
    for images, targets in zip(seen_images, seen_targets):
        assert torch.equal(images, targets)  # the KD target of every sample is its own z_s
