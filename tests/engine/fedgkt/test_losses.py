"""KD_T and the two sides' losses against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from automl_server.engine.train.fedgkt.losses import client_loss, kd_loss, server_loss


def softmax(values: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_is_t_squared_kl_of_teacher_to_student_averaged_over_samples():
    student = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    t = 3.0
    by_hand = []
    for z, zt in zip(student, teacher):
        p_t, p_s = softmax(zt, t), softmax(z, t)
        by_hand.append(t * t * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))

    loss = kd_loss(torch.tensor(student), torch.tensor(teacher), t)

    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_sends_no_gradient_to_the_teacher():
    z = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)

    loss = kd_loss(z, teacher, 3.0)
    loss.backward()

    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert teacher.grad is None


def test_client_adds_alpha_kd_to_ce_and_server_puts_alpha_on_ce():
    z, zt, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    ce = -math.log(softmax([1.0, 0.0], 1.0)[1])
    kd = kd_loss(z, zt, 3.0).item()

    assert client_loss(z, y, None, 3.0, 0.5).item() == pytest.approx(ce, rel=1e-5)
    assert client_loss(z, y, zt, 3.0, 0.5).item() == pytest.approx(ce + 0.5 * kd, rel=1e-5)
    assert server_loss(z, y, zt, 3.0, 0.5).item() == pytest.approx(kd + 0.5 * ce, rel=1e-5)
