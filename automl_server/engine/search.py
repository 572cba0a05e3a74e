"""The ProxylessNAS search driver.

Schedule (paper, Sec. 3 and reference ``nas_manager.py``): warm-up epochs
train the weights on uniformly random paths; then every epoch alternates
weight steps on the training split (one sampled path, SGD with Nesterov and a
cosine schedule, label smoothing) with an architecture step on a held-out
batch every ``arch_update_every`` weight steps (two-path binary gates, Adam
with betas (0, 0.999)), or, for ProxylessNAS-R, a REINFORCE step. The derived
architecture is the argmax per cell.

Everything random draws from generators seeded by ``SearchConfig.seed`` and
stored in the checkpoint, so a resumed search continues exactly where a
straight one would have been.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from automl_server.engine.data import BatchStream, SplitData
from automl_server.engine.latency import LatencyModel, arch_latency_ms  # noqa: F401  (re-exported)
from automl_server.engine.losses import latency_loss
from automl_server.engine.mixed_op import ZERO_BLOCK
from automl_server.engine.rl import ReinforceController
from automl_server.engine.search_plan import arch_steps_after, arch_steps_per_epoch
from automl_server.engine.strategies import get_strategy, register_strategy
from automl_server.engine.supernet import SuperNet
from search_spaces import Arch, SpaceLayout

DERIVATIONS = ("argmax", "target")
LATENCY_OVER = ("pair", "all")
WARMUP_SAMPLING = ("uniform", "progressive")
# mul#log takes logarithms of latencies, so its strength depends on the unit.
# The reference tuned a and beta with latencies in ms and an 80 ms mobile
# target. Deviation: we measure latencies in units of target/80 for that
# loss, i.e. every target is mapped onto the reference's operating point, so
# the published a and beta mean the same at 2 ms on a phone as at 80 ms, and
# sub-millisecond targets (tiny nets, small inputs) do not break ln T > 0.
REFERENCE_TARGET_MS = 80.0


@dataclass
class SearchConfig:
    # Epochs of weight-only training on random paths before alpha moves (paper: 40 of 160).
    warmup_epochs: int = 1
    # How the warm-up draws each step's path. "uniform" (paper): every cell's candidate at
    # random every step. "progressive" (our deviation, for small data): cells join the random
    # draw one after another over the first ``warmup_ramp`` share of the warm-up steps, the cells
    # not yet joined held on one seeded path of real (non-Zero) blocks; then every cell is random.
    # Why: with a few hundred steps, resampling all 21 cells of proxyless-mobile every step left
    # the supernet near chance (digits, 8 px: 0.16 training accuracy of random paths after 25
    # epochs), while the cells' candidates learn to feed one another when they join a trained
    # network one at a time (bench/probe_supernet_sampling.py; README, issue 17).
    warmup_sampling: str = "uniform"
    warmup_ramp: float = 0.7
    # Residual cells' candidates start as the identity (their last BatchNorm's gamma = 0;
    # SuperNet.zero_residual_gamma): our deviation, for a supernet that learns in a short
    # search (OFA's zero_last_gamma). False: the reference's gamma = 1.
    zero_residual_gamma: bool = True
    # Every cell's candidates start as the same function, its smallest candidate embedded in
    # each larger one (SuperNet.start_candidates_alike): our deviation, without which the
    # stage-transition cells of proxyless-mobile kept its supernet near chance in a short
    # search (holdout 0.22 against 0.84 after 11 epochs of random paths, digits 8 px). False: each
    # candidate's own random start (reference).
    alike_start: bool = True
    # Epochs of alternating weight / architecture steps after warm-up (paper: 120).
    search_epochs: int = 4
    batch_size: int = 64
    # Weights: SGD, Nesterov, cosine schedule (paper: lr 0.025, wd 4e-5, label smoothing 0.1).
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    # Architecture: Adam lr 1e-3, betas (0, 0.999), eps 1e-8, no weight decay (paper).
    arch_lr: float = 1e-3
    # One architecture step every this many weight steps (reference: 5).
    arch_update_every: int = 5
    # At least this many architecture steps in each search epoch: on a small dataset (a few
    # batches per epoch) the reference's rule makes almost none, so the steps are then spread
    # over the epoch's batches instead (engine/search_plan.py). 0: the rule only.
    min_arch_steps_per_epoch: int = 0
    # Latency target T and loss combination (see losses.latency_loss).
    target_ms: float = 10.0
    loss_kind: str = "mul#log"
    # mul#log's a and beta: the reference's search script (search/imagenet_arch_search.py,
    # --grad_reg_loss_alpha 0.2, --grad_reg_loss_beta 0.3); 1.0 and 0.6 are only the
    # fallbacks of its GradientArchSearchConfig class, which that script never uses.
    loss_a: float = 0.2
    loss_beta: float = 0.3
    loss_lambda: float = 0.1
    # The probabilities E[LAT] weighs each cell's candidates by in a two-path step:
    # "pair" (reference): the two sampled paths, renormalised, so unsampled alphas get no
    # gradient and the rescale keeps their probabilities. "all": softmax over every
    # candidate, as this engine did before; every alpha then feels the latency term each
    # step (a lower-variance, stronger push, for a search with very few architecture
    # steps), at the price of moving unsampled probabilities, unlike the paper.
    latency_over: str = "pair"
    # A registered strategy (engine/strategies.py): "gradient" (binarized two-path
    # gates) or "rl" (ProxylessNAS-R, REINFORCE).
    strategy: str = "gradient"
    # ProxylessNAS-R: architectures sampled per update, reward exponent w, and the weight of
    # each update's mean reward in the baseline, b <- b + weight * (mean - b), applied before
    # the advantages (reference rl_baseline_decay_weight = 0.99; see engine/rl.py).
    rl_samples: int = 10
    rl_exponent: float = 0.1
    rl_baseline_weight: float = 0.99
    # Held-out images every sampled network of one REINFORCE step is scored on (all of them when
    # the holdout is smaller): the reference's rl_update_step sets its validation loader's batch
    # to test_batch_size, 1,000 (imagenet_arch_search.py), not to the training batch. On a batch
    # of 64 one network's accuracy has a sampling error of ~6 points at 70%, larger than what
    # tells the space's networks apart; on 1,000, ~1.4.
    rl_reward_images: int = 1000
    # "argmax" per cell (paper), or "target": the most probable network within
    # derive_tolerance of target_ms (engine/derive.py; our addition).
    derive: str = "argmax"
    derive_tolerance: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        get_strategy(self.strategy)  # ValueError naming the registered strategies
        if self.latency_over not in LATENCY_OVER:
            raise ValueError(f"latency_over {self.latency_over!r} is not known; accepted: {', '.join(LATENCY_OVER)}")
        if self.warmup_sampling not in WARMUP_SAMPLING:
            raise ValueError(f"warmup_sampling {self.warmup_sampling!r} is not known; accepted: "
                             f"{', '.join(WARMUP_SAMPLING)}")
        if not 0.0 < self.warmup_ramp <= 1.0:
            raise ValueError(f"warmup_ramp must be within (0, 1], got {self.warmup_ramp}")
        if self.derive not in DERIVATIONS:
            raise ValueError(f"derive {self.derive!r} is not known; accepted: {', '.join(DERIVATIONS)}")
        if self.target_ms <= 0:
            raise ValueError(f"target_ms must be > 0, got {self.target_ms}")
        for name in ("warmup_epochs", "search_epochs", "min_arch_steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rl_reward_images < 1:
            raise ValueError(f"rl_reward_images must be >= 1, got {self.rl_reward_images}")
        if not 0.0 <= self.rl_baseline_weight <= 1.0:
            raise ValueError(f"rl_baseline_weight must be within [0, 1], got {self.rl_baseline_weight}")
        if self.batch_size < 1 or self.arch_update_every < 1:
            raise ValueError("batch_size and arch_update_every must be >= 1")

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.search_epochs


@dataclass
class EpochReport:
    """What the progress callback receives after every epoch."""

    epoch: int  # 1-based, over warm-up and search epochs
    total_epochs: int
    phase: str  # "warmup" or "search"
    weight_loss: float
    arch_loss: float | None
    train_accuracy: float
    holdout_accuracy: float
    expected_latency_ms: float
    block_probs: list[list[float]]
    derived_blocks: list[str]


@dataclass
class SearchResult:
    arch: Arch
    expected_latency_ms: float  # of the derived architecture, from the latency model
    holdout_accuracy: float  # of the supernet with the derived path fixed
    history: list[EpochReport] = field(default_factory=list)


ProgressCallback = Callable[[EpochReport], None]
MeasureCallback = Callable[[Arch], float]


class ProxylessSearch:
    """One search run: supernet, optimisers, data streams and their state."""

    def __init__(self, layout: SpaceLayout, data: SplitData, latency_model: LatencyModel, config: SearchConfig,
                 measure: MeasureCallback | None = None) -> None:
        self.layout, self.data, self.config = layout, data, config
        self.latency_model = latency_model
        # Seeded weight initialisation and alpha ~ N(0, 1e-3), without touching
        # the caller's global random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.net = SuperNet(layout)
            if config.alike_start:
                self.net.start_candidates_alike()
            if config.zero_residual_gamma:
                self.net.zero_residual_gamma()
        self.gate_generator = torch.Generator().manual_seed(config.seed + 1)
        self.base_path = self._base_path(config.seed + 4)
        self.train_stream = BatchStream(data.x_train, data.y_train, config.batch_size, config.seed + 2)
        self.holdout_stream = BatchStream(data.x_holdout, data.y_holdout, config.batch_size, config.seed + 3)
        steps_per_epoch = self.train_stream.batches_per_epoch
        self.weight_optimizer = torch.optim.SGD(
            self.net.weight_parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=max(config.total_epochs * steps_per_epoch, 1)
        )
        self.arch_optimizer = torch.optim.Adam(self.net.arch_parameters(), lr=config.arch_lr, betas=(0.0, 0.999),
                                               eps=1e-8, weight_decay=0.0)
        self.measure = measure
        self.strategy = get_strategy(config.strategy).build(self)
        self.epoch = 0
        self.history: list[EpochReport] = []
        # Called after every weight step (the service checks for cancellation there).
        self.on_step: Callable[[], None] | None = None

    def _base_path(self, seed: int) -> list[int]:
        """One real block per cell, drawn once (seeded): where a progressive warm-up holds the cells
        that have not joined the random draw yet."""
        generator = torch.Generator().manual_seed(seed)
        path = []
        for mixed in self.net.mixed_ops:
            real = [i for i, block in enumerate(mixed.candidates) if block != ZERO_BLOCK]
            path.append(real[int(torch.randint(len(real), (1,), generator=generator))])
        return path

    def cells_in_random_draw(self, warmup_step: int) -> int:
        """How many cells (from the first) draw their block at random at this warm-up step."""
        cells = len(self.base_path)
        if self.config.warmup_sampling == "uniform":
            return cells
        total = self.config.warmup_epochs * self.train_stream.batches_per_epoch
        return min(cells, 1 + int(cells * warmup_step / max(1.0, self.config.warmup_ramp * total)))

    # -- steps --------------------------------------------------------------
    def weight_step(self, mode: str) -> tuple[float, float]:
        """One batch on one sampled path: only that path's activations are kept."""
        self.net.train()
        self.net.set_mode(mode)
        self.net.sample(self.gate_generator)
        if mode == "random":
            # The scheduler counts weight steps (checkpointed): during warm-up, the warm-up's step.
            joined = self.cells_in_random_draw(self.scheduler.last_epoch)
            for mixed, index in list(zip(self.net.mixed_ops, self.base_path))[joined:]:
                mixed.active_index, mixed.sampled = index, (index,)
        x, y = self.train_stream.next()
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        self.weight_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.weight_optimizer.step()
        self.scheduler.step()
        accuracy = (logits.argmax(1) == y).float().mean().item()
        return loss.item(), accuracy

    def arch_step(self) -> float:
        """One architecture update by the search's strategy."""
        return self.strategy.step()

    @torch.no_grad()
    def holdout_accuracy(self) -> float:
        """Accuracy of the currently derived (argmax) path on the whole held-out split.

        The supernet's shared BatchNorm layers (stem, head) have running
        statistics averaged over every sampled path, which misjudge any single
        path; as in single-path one-shot NAS (SPOS, OFA) the statistics are
        recomputed for the derived path on training images first. They are
        restored afterwards, so evaluating never changes the search itself.
        """
        self.net.set_mode("fixed")
        for mixed in self.net.mixed_ops:
            mixed.active_index = int(mixed.alpha.argmax())
        return self._path_accuracy()

    @torch.no_grad()
    def _path_accuracy(self) -> float:
        """Held-out accuracy of the path the supernet is fixed to."""
        with recalibrated_batchnorm(self.net, self.data.x_train[:BN_CALIBRATION_IMAGES]):
            correct = 0
            for start in range(0, len(self.data.x_holdout), 256):
                logits = self.net(self.data.x_holdout[start : start + 256])
                correct += int((logits.argmax(1) == self.data.y_holdout[start : start + 256]).sum())
        return correct / max(len(self.data.x_holdout), 1)

    def run_epoch(self) -> EpochReport:
        warmup = self.epoch < self.config.warmup_epochs
        weight_losses, accuracies, arch_losses = [], [], []
        batches, every = self.train_stream.batches_per_epoch, self.config.arch_update_every
        per_epoch = arch_steps_per_epoch(batches, every, self.config.min_arch_steps_per_epoch)
        for step in range(batches):
            loss, accuracy = self.weight_step("random" if warmup else "weights")
            if self.on_step is not None:
                self.on_step()
            weight_losses.append(loss)
            accuracies.append(accuracy)
            if not warmup:
                for _ in range(arch_steps_after(step, batches, every, per_epoch)):
                    arch_losses.append(self.arch_step())
        self.epoch += 1
        with torch.no_grad():
            expected = float(self.net.expected_latency_ms(self.latency_model))
        report = EpochReport(
            epoch=self.epoch, total_epochs=self.config.total_epochs, phase="warmup" if warmup else "search",
            weight_loss=sum(weight_losses) / len(weight_losses),
            arch_loss=sum(arch_losses) / len(arch_losses) if arch_losses else None,
            train_accuracy=sum(accuracies) / len(accuracies), holdout_accuracy=self.holdout_accuracy(),
            expected_latency_ms=expected,
            block_probs=[[round(p, 5) for p in m.probs().tolist()] for m in self.net.mixed_ops],
            derived_blocks=list(self.net.derive().blocks),
        )
        self.history.append(report)
        return report

    # -- checkpoints --------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "layout": {"space": self.layout.space, "resolution": self.layout.resolution,
                       "num_classes": self.layout.num_classes, "in_channels": self.layout.in_channels},
            "config": asdict(self.config),
            "epoch": self.epoch,
            "net": self.net.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "gate_generator": self.gate_generator.get_state(),
            "train_stream": self.train_stream.state_dict(),
            "holdout_stream": self.holdout_stream.state_dict(),
            "rl": self.strategy.state_dict(),  # the strategy's own state (key kept for old checkpoints)
            "history": [asdict(r) for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != 1:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r}; this engine reads format 1")
        mine = asdict(self.config)
        # A setting added since the checkpoint was written had its default then.
        theirs = {**asdict(SearchConfig()), **state["config"]}
        if theirs != mine:
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(f"checkpoint was written with another search config (differs in: {', '.join(changed)}); "
                             "resume with the same settings or start a new search")
        self.epoch = state["epoch"]
        self.net.load_state_dict(state["net"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gate_generator.set_state(state["gate_generator"])
        self.train_stream.load_state_dict(state["train_stream"])
        self.holdout_stream.load_state_dict(state["holdout_stream"])
        if state["rl"] is not None:
            self.strategy.load_state_dict(state["rl"])
        self.history = [EpochReport(**r) for r in state["history"]]

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a crash mid-write keeps the previous checkpoint

    def result(self) -> SearchResult:
        if self.config.derive == "target":
            from automl_server.engine.derive import derive_within_target

            arch = derive_within_target(self.net, self.latency_model, self.config.target_ms,
                                        self.config.derive_tolerance).arch
            self.net.set_mode("fixed")
            for mixed, block in zip(self.net.mixed_ops, arch.blocks):
                mixed.active_index = mixed.candidates.index(block)
            return SearchResult(arch=arch, expected_latency_ms=arch_latency_ms(arch, self.latency_model),
                                holdout_accuracy=self._path_accuracy(), history=list(self.history))
        arch = self.net.derive()
        return SearchResult(arch=arch, expected_latency_ms=arch_latency_ms(arch, self.latency_model),
                            holdout_accuracy=self.holdout_accuracy(), history=list(self.history))


BN_CALIBRATION_IMAGES = 1024


@contextmanager
def recalibrated_batchnorm(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> Iterator[None]:
    """Eval mode with BatchNorm statistics recomputed on ``images`` for the
    current path; every BatchNorm buffer is restored on exit."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # The live buffers: reset_running_stats and forward update them in place.
    buffers = [_running_stats(m) for m in layers]
    saved = [[buffer.clone() for buffer in live] for live in buffers]
    momenta = [m.momentum for m in layers]
    was_training = net.training
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over the calibration batches
        net.train()
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                net(images[start : start + batch_size])
        net.eval()
        yield
    finally:
        for layer, live, kept, momentum in zip(layers, buffers, saved, momenta):
            for buffer, value in zip(live, kept):
                buffer.copy_(value)
            layer.momentum = momentum
        net.train(was_training)


def _running_stats(layer: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A BatchNorm's running mean, variance and batch count (the search space's layers track them)."""
    mean, var, count = layer.running_mean, layer.running_var, layer.num_batches_tracked
    if mean is None or var is None or count is None:
        raise ValueError(f"{type(layer).__name__} keeps no running statistics (track_running_stats=False); "
                         "BatchNorm recalibration needs them")
    return mean, var, count


def run_search(
    layout: SpaceLayout,
    data: SplitData,
    latency_model: LatencyModel,
    config: SearchConfig,
    *,
    progress: ProgressCallback | None = None,
    checkpoint_path: Path | None = None,
    measure: MeasureCallback | None = None,
    stop_after_epoch: int | None = None,
    on_step: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchResult:
    """Search, checkpointing after every epoch; resumes from ``checkpoint_path``
    when it exists. ``stop_after_epoch`` ends early (for tests of resumption
    and for budgets measured in epochs); ``should_stop`` is asked after every
    epoch (budgets in minutes); ``on_step`` is called after every weight step
    and may raise to abandon the search (the last epoch's checkpoint stays)."""
    search = ProxylessSearch(layout, data, latency_model, config, measure)
    search.on_step = on_step
    if checkpoint_path is not None and checkpoint_path.exists():
        search.load_state_dict(torch.load(checkpoint_path, weights_only=False))
    while search.epoch < config.total_epochs:
        report = search.run_epoch()
        # Reported before it is checkpointed: if the report cannot be stored (the service's database
        # restarting), the epoch is not in the checkpoint either and runs again on resume, so no
        # checkpointed epoch goes unreported. A crash between the two runs that epoch again on resume
        # (the job stage records its report once: jobs/search_stage.epoch_event).
        if progress is not None:
            progress(report)
        if checkpoint_path is not None:
            search.save(checkpoint_path)
        if stop_after_epoch is not None and search.epoch >= stop_after_epoch:
            break
        if should_stop is not None and should_stop():
            break
    return search.result()


class GradientGates:
    """ProxylessNAS's gradient strategy: binarized two-path gates on the
    held-out split, the latency term differentiated through E[LAT] (paper Eq. 4)."""

    def __init__(self, search: ProxylessSearch) -> None:
        self.search = search

    def step(self) -> float:
        search, config = self.search, self.search.config
        search.net.train()
        search.net.set_mode("two")
        search.net.sample(search.gate_generator)
        before = search.net.alphas_snapshot()
        x, y = search.holdout_stream.next()
        ce = F.cross_entropy(search.net(x), y)
        expected = search.net.expected_latency_ms(search.latency_model,
                                                  sampled_pair=config.latency_over == "pair")
        loss = latency_loss(ce, expected, config.target_ms, kind=config.loss_kind, a=config.loss_a,
                            beta=config.loss_beta, lam=config.loss_lambda,
                            log_unit_ms=config.target_ms / REFERENCE_TARGET_MS)
        search.net.zero_grad(set_to_none=True)
        loss.backward()  # alpha.grad now holds the latency term's gradient (sampled alphas only, "pair")
        search.net.set_alpha_grad()  # ... plus the CE term's, mapped from the binary gates
        search.arch_optimizer.step()
        search.net.rescale_alpha(before)
        # The weight gradients of this held-out batch must not leak into the next weight step.
        search.weight_optimizer.zero_grad(set_to_none=True)
        return float(loss.item())

    def state_dict(self) -> dict[str, Any] | None:
        return None  # everything it uses (alphas, Adam, generator) is in the search's checkpoint

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Reinforce:
    """ProxylessNAS-R: REINFORCE on the architecture logits (engine/rl.py), with
    a measured latency when the search was given a ``measure`` callback."""

    def __init__(self, search: ProxylessSearch) -> None:
        self.search = search
        self.controller = ReinforceController(search.net, search.latency_model, search.config, search.measure)
        # The rewards' own batches of the holdout (rl_reward_images each), as the reference's RL step
        # draws test-size batches where its gradient step draws training-size ones (holdout_stream).
        self.reward_stream = BatchStream(search.data.x_holdout, search.data.y_holdout,
                                         search.config.rl_reward_images, search.config.seed + 5)

    def step(self) -> float:
        return self.controller.step(self.reward_stream, self.search.arch_optimizer, self.search.gate_generator)

    def state_dict(self) -> dict[str, Any] | None:
        state: dict[str, Any] = {**self.controller.state_dict(), "reward_stream": self.reward_stream.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)
        if "reward_stream" in state:  # a checkpoint written before rewards had their own batches has none
            self.reward_stream.load_state_dict(state["reward_stream"])


register_strategy("gradient", GradientGates, title="Binarized gates (gradient)",
                  description="ProxylessNAS: two sampled paths per step, gradients through binary gates, "
                  "latency as a differentiable expectation.")
register_strategy("rl", Reinforce, title="REINFORCE",
                  description="ProxylessNAS-R: whole architectures sampled and rewarded by accuracy and "
                  "latency; works with a non-differentiable (measured) latency. Each architecture step scores "
                  "10 sampled networks on up to 1,000 held-out images: on a small dataset that scoring, not the "
                  "training, sets the search's time, which can be longer than the gradient search's.")
