"""ProxylessNAS-R: REINFORCE on the architecture logits.

For a non-differentiable objective, such as a latency measured on the device
itself: sample whole architectures from softmax(alpha) per cell, score each
on a held-out batch with reward = acc * (T / lat) ** w (paper Sec. 3.3,
reference w = 0.1), and ascend E[reward] with the likelihood-ratio gradient
sum_b (R_b - baseline) * grad log p(arch_b), using a moving-average baseline
to cut variance. ``lat`` comes from a measurement callback when one is given,
otherwise from the latency model.

As in the reference (``search/nas_manager.py``, ``rl_update_step``): the
baseline is updated first, b <- b + w * (mean reward - b) with w =
``rl_baseline_weight`` (the reference's ``rl_baseline_decay_weight``, 0.99),
and the advantages use that updated baseline; every sampled network of a
step is scored on one batch of ``rl_reward_images`` held-out images (the
reference's ``test_batch_size``, 1,000, not its training batch) with
BatchNorm in train mode (the statistics of the batch itself), because the
running statistics average over every path the supernet sampled and misjudge
any single one.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Callable, Protocol

import torch

from automl_server.engine.data import BatchStream
from automl_server.engine.latency import LatencyModel, arch_latency_ms
from automl_server.engine.supernet import SuperNet
from search_spaces import Arch


class RLSettings(Protocol):
    """What the controller reads of the search's settings (``search.SearchConfig``
    has these), so this module need not import the search loop that uses it."""

    rl_samples: int
    rl_exponent: float
    rl_baseline_weight: float
    target_ms: float


def reward(accuracy: float, latency_ms: float, target_ms: float, exponent: float) -> float:
    """acc * (T / lat) ** w: faster than the target raises the reward, slower lowers it."""
    if latency_ms <= 0:
        raise ValueError(f"a measured latency must be > 0 ms, got {latency_ms}")
    return accuracy * (target_ms / latency_ms) ** exponent


def updated_baseline(baseline: float | None, mean_reward: float, weight: float) -> float:
    """b <- b + weight * (mean_reward - b), starting at the first mean (the reference's order and meaning:
    ``weight`` is how much of the new mean enters, 0.99 there)."""
    return mean_reward if baseline is None else baseline + weight * (mean_reward - baseline)


class ReinforceController:
    def __init__(self, net: SuperNet, latency_model: LatencyModel, config: RLSettings,
                 measure: Callable[[Arch], float] | None = None) -> None:
        self.net, self.latency_model, self.config, self.measure = net, latency_model, config, measure
        self.baseline: float | None = None
        # The last step's rewards and sampled candidate indices per network (for logs and tests).
        self.last_rewards: list[float] = []
        self.last_samples: list[list[int]] = []

    def _arch(self, indices: list[int]) -> Arch:
        layout = self.net.layout
        return Arch(space=layout.space, resolution=layout.resolution, num_classes=layout.num_classes,
                    in_channels=layout.in_channels,
                    blocks=tuple(m.candidates[i] for m, i in zip(self.net.mixed_ops, indices)))

    def _latency_ms(self, arch: Arch) -> float:
        return float(self.measure(arch)) if self.measure is not None else arch_latency_ms(arch, self.latency_model)

    def step(self, holdout: BatchStream, arch_optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
        x, y = holdout.next()
        # Train mode, as the reference: each path normalised with this batch's own statistics.
        # (Its forward passes also update the running statistics, as there; evaluation
        # recomputes them for the derived path anyway, see search.recalibrated_batchnorm.)
        self.net.train()
        self.net.set_mode("fixed")
        rewards: list[float] = []
        log_probs: list[torch.Tensor] = []
        samples: list[list[int]] = []
        for _ in range(self.config.rl_samples):
            indices = [int(torch.multinomial(m.probs().detach(), 1, generator=generator)) for m in self.net.mixed_ops]
            for mixed, index in zip(self.net.mixed_ops, indices):
                mixed.active_index = index
            with torch.no_grad():
                accuracy = (self.net(x).argmax(1) == y).float().mean().item()
            rewards.append(reward(accuracy, self._latency_ms(self._arch(indices)), self.config.target_ms,
                                  self.config.rl_exponent))
            log_probs.append(_total(torch.log_softmax(m.alpha, 0)[i] for m, i in zip(self.net.mixed_ops, indices)))
            samples.append(indices)
        self.baseline = updated_baseline(self.baseline, sum(rewards) / len(rewards), self.config.rl_baseline_weight)
        loss = -_total((r - self.baseline) * lp for r, lp in zip(rewards, log_probs)) / len(rewards)
        arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        arch_optimizer.step()
        self.last_rewards, self.last_samples = rewards, samples
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state["baseline"]


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """t0 + t1 + ..., the same additions as the built-in sum (whose 0 start types as int)."""
    return functools.reduce(torch.add, terms)
