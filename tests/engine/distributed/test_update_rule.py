"""The DTS update rule against hand computations and against synchronous SGD."""
from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.train.distributed.collective import ThreadCollective
from automl_server.engine.train.distributed.update_rule import DelayedSparseSGD


def run_workers(world_size: int, body: Callable[[int, ThreadCollective], None]) -> None:
    """Run ``body(rank, collective)`` for every rank in its own thread; re-raise the first error."""
    group = ThreadCollective.group(world_size)
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            body(rank, group[rank])
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]


def test_delayed_update_follows_the_hand_computed_three_step_trace():
    # Worker j minimises 0.5 * a_j * w^2 (gradient a_j * w), a = (1, 3), w_0 = 1,
    # lr = 0.1, d = 1, no momentum: w_{n+1} = w_n - lr (g_n - g_{n-1} + mean g_{n-1}).
    #   n=0: g = (1, 3) -> w = (0.9, 0.7)                          [nothing has arrived]
    #   n=1: g = (0.9, 2.1); mean g_0 = 2   -> w = 0.9 - 0.1 (0.9 - 1 + 2) = 0.71,
    #                                          0.7 - 0.1 (2.1 - 3 + 2) = 0.59
    #   n=2: g = (0.71, 1.77); mean g_1 = 1.5 -> w = 0.71 - 0.1 (0.71 - 0.9 + 1.5) = 0.579,
    #                                            0.59 - 0.1 (1.77 - 2.1 + 1.5) = 0.473
    #   flush: mean g_2 = 1.24 -> 0.579 - 0.1 (1.24 - 0.71) = 0.526 = 0.473 - 0.1 (1.24 - 1.77)
    a = (1.0, 3.0)
    trace: dict[int, list[float]] = {0: [], 1: []}

    def body(rank: int, collective: ThreadCollective) -> None:
        w = nn.Parameter(torch.tensor([1.0]))
        rule = DelayedSparseSGD([w], collective, momentum=0.0, delay=1)
        for _ in range(3):
            w.grad = a[rank] * w.detach().clone()
            rule.step(lr=0.1)
            trace[rank].append(float(w.detach()))
        rule.flush(lr=0.1)
        trace[rank].append(float(w.detach()))

    run_workers(2, body)

    assert trace[0] == pytest.approx([0.9, 0.71, 0.579, 0.526], abs=1e-6)
    assert trace[1] == pytest.approx([0.7, 0.59, 0.473, 0.526], abs=1e-6)


def tiny_net() -> nn.Module:
    # No BatchNorm: with it, two half-batches normalise differently from one
    # combined batch, and the comparison would not be of the update rule.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(steps: int, per_worker: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(per_worker * world_size, 1, 8, 8, generator=generator),
             torch.randint(0, 10, (per_worker * world_size,), generator=generator)) for _ in range(steps)]


def test_no_delay_no_period_no_compression_equals_synchronous_sgd_and_one_process_on_the_combined_batch():
    steps, per_worker, world, lr, momentum, wd = 6, 4, 2, 0.1, 0.9, 1e-3
    data = batches(steps, per_worker, world)

    # One process, the combined batch, torch's own momentum SGD.
    single = tiny_net()
    optimizer = torch.optim.SGD(single.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(single(x), y).backward()
        optimizer.step()

    # Synchronous SGD by hand: all-reduce the gradients every step, then torch's SGD.
    synchronous: dict[int, nn.Module] = {}
    dts: dict[int, nn.Module] = {}

    # Built here, not in the threads: torch's global seed is one for all threads.
    sync_models = [tiny_net() for _ in range(world)]
    dts_models = [tiny_net() for _ in range(world)]

    def sync_body(rank: int, collective: ThreadCollective) -> None:
        model = sync_models[rank]
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x[rank::world]), y[rank::world]).backward()
            for p in model.parameters():
                assert p.grad is not None
                p.grad.copy_(collective.all_reduce_sum(p.grad.clone()).wait()[0] / world)
            opt.step()
        synchronous[rank] = model

    def dts_body(rank: int, collective: ThreadCollective) -> None:
        model = dts_models[rank]
        rule = DelayedSparseSGD(list(model.parameters()), collective, momentum=momentum, weight_decay=wd)
        for x, y in data:
            model.zero_grad()
            F.cross_entropy(model(x[rank::world]), y[rank::world]).backward()
            rule.step(lr)
        dts[rank] = model

    run_workers(world, sync_body)
    run_workers(world, dts_body)

    # Tolerance: float32 sums in a different order (two half-batch means vs one mean).
    for name, expected in single.state_dict().items():
        for rank in range(world):
            assert torch.allclose(synchronous[rank].state_dict()[name], expected, atol=1e-5), name
            assert torch.allclose(dts[rank].state_dict()[name], expected, atol=1e-5), name


@pytest.mark.parametrize(("delay", "period", "compress"), [(2, 1, False), (1, 3, False), (3, 2, True)])
def test_after_a_flush_every_worker_holds_the_same_weights(delay, period, compress):
    data = batches(7, 4, 2)
    models = {rank: tiny_net() for rank in range(2)}  # not in the threads: one global seed

    def body(rank: int, collective: ThreadCollective) -> None:
        model = models[rank]
        rule = DelayedSparseSGD(list(model.parameters()), collective, momentum=0.9, delay=delay, period=period,
                                compress=compress)
        for x, y in data:
            model.zero_grad()
            F.cross_entropy(model(x[rank::2]), y[rank::2]).backward()
            rule.step(0.05, density=0.1)
        rule.flush(0.05, density=0.1)

    run_workers(2, body)

    for name, value in models[0].state_dict().items():
        assert torch.allclose(value, models[1].state_dict()[name], atol=1e-6), name
