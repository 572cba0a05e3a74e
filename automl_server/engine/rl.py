"""ProxylessNAS-R: REINFORCE on the architecture logits.

For a non-differentiable objective, such as a latency measured on the device
itself: sample whole architectures from softmax(alpha) per cell, score each
on a held-out batch with reward = acc * (T / lat) ** w (paper Sec. 3.3,
reference w = 0.1), and ascend E[reward] with the likelihood-ratio gradient
sum_b (R_b - baseline) * grad log p(arch_b), using a moving-average baseline
to cut variance. ``lat`` comes from a measurement callback when one is given,
otherwise from the latency model.
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
    rl_baseline_decay: float
    target_ms: float


def reward(accuracy: float, latency_ms: float, target_ms: float, exponent: float) -> float:
    """acc * (T / lat) ** w: faster than the target raises the reward, slower lowers it."""
    if latency_ms <= 0:
        raise ValueError(f"a measured latency must be > 0 ms, got {latency_ms}")
    return accuracy * (target_ms / latency_ms) ** exponent


class ReinforceController:
    def __init__(self, net: SuperNet, latency_model: LatencyModel, config: RLSettings,
                 measure: Callable[[Arch], float] | None = None) -> None:
        self.net, self.latency_model, self.config, self.measure = net, latency_model, config, measure
        self.baseline: float | None = None

    def _arch(self, indices: list[int]) -> Arch:
        layout = self.net.layout
        return Arch(space=layout.space, resolution=layout.resolution, num_classes=layout.num_classes,
                    in_channels=layout.in_channels,
                    blocks=tuple(m.candidates[i] for m, i in zip(self.net.mixed_ops, indices)))

    def _latency_ms(self, arch: Arch) -> float:
        return float(self.measure(arch)) if self.measure is not None else arch_latency_ms(arch, self.latency_model)

    def step(self, holdout: BatchStream, arch_optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
        x, y = holdout.next()
        self.net.eval()
        self.net.set_mode("fixed")
        rewards: list[float] = []
        log_probs: list[torch.Tensor] = []
        for _ in range(self.config.rl_samples):
            indices = [int(torch.multinomial(m.probs().detach(), 1, generator=generator)) for m in self.net.mixed_ops]
            for mixed, index in zip(self.net.mixed_ops, indices):
                mixed.active_index = index
            with torch.no_grad():
                accuracy = (self.net(x).argmax(1) == y).float().mean().item()
            rewards.append(reward(accuracy, self._latency_ms(self._arch(indices)), self.config.target_ms,
                                  self.config.rl_exponent))
            log_probs.append(_total(torch.log_softmax(m.alpha, 0)[i] for m, i in zip(self.net.mixed_ops, indices)))
        mean_reward = sum(rewards) / len(rewards)
        # The advantage uses the baseline from before this batch (unbiased); the
        # first batch starts the moving average at its own mean.
        baseline = mean_reward if self.baseline is None else self.baseline
        loss = -_total((r - baseline) * lp for r, lp in zip(rewards, log_probs)) / len(rewards)
        arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        arch_optimizer.step()
        decay = self.config.rl_baseline_decay
        self.baseline = mean_reward if self.baseline is None else decay * self.baseline + (1 - decay) * mean_reward
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state["baseline"]


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """t0 + t1 + ..., the same additions as the built-in sum (whose 0 start types as int)."""
    return functools.reduce(torch.add, terms)
