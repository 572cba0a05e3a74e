"""A job's settings, read from its row: what was asked, with the defaults.

The API validates a request into ``job.params`` (schemas.JobBudget and
friends); stages read it back through ``JobSpec`` so that every default lives
here, once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# What the found network is trained on (JobSpec.final_fit).
FinalFit = Literal["train+holdout", "train"]
# How the search's warm-up draws paths (engine.search.SearchConfig.warmup_sampling).
WarmupSampling = Literal["uniform", "progressive"]


@dataclass(frozen=True)
class Budget:
    # Search: weight-only warm-up on random paths, then alternating steps (ProxylessNAS schedule).
    warmup_epochs: int = 10
    search_epochs: int = 30
    # Optuna: short searches that each try a latency-loss strength and learning rates.
    tune_trials: int = 4
    tune_epochs: int = 8
    # Training the found network from scratch.
    train_epochs: int = 150
    # Wall-clock cap for search + tune + train, in minutes (None: epochs decide). When
    # set, each stage stops at the epoch boundary where its share would be exceeded.
    minutes: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Budget:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class JobSpec:
    strategy: str = "gradient"
    budget: Budget = Budget()
    tune: bool = True
    seed: int = 0
    batch_size: int = 64
    # Whole networks measured end to end to calibrate the predictor on a new target.
    calibration_networks: int = 16  # bench/bench_predictor.py: 20 gave 98-100% within +-10%
    # What the found network is trained on: the holdout split chose the architecture
    # (search, tune) and has done its work by then, so by default it joins the training
    # data, as ProxylessNAS retrains the found network on the full training set. "train"
    # keeps it out, to watch a held-out curve while training. The test split stays unseen.
    final_fit: FinalFit = "train+holdout"
    # How long the job waits for an offline device before it fails.
    device_wait_s: float = 600.0
    # An IOS schedule of the exported model (stage "schedule", jobs/schedule.py); false skips the stage.
    schedule: bool = True
    # The exported ONNX takes any batch size (its first dimension is named "batch"); true fixes it at 1.
    static_batch: bool = False
    # When the exported network's measured latency misses the target, the job tries the
    # next-faster derivation of the search's final probabilities this many times (each one
    # trained with the job's train budget again, exported and measured) before it reports
    # the miss (jobs/promise.py).
    target_retries: int = 3
    # The chosen network timed on the device before training and moved until the device's
    # pooled measured/predicted ratio puts it at 87-96% of the target (stage "fit",
    # jobs/fit.py): the budget used, not left to the margin.
    fit_on_device: bool = True
    # The searched network side by side with random search and a uniform MobileNetV2-style
    # network at the same latency bound, each trained with the job's train budget and measured
    # on the device (stage "baselines", jobs/baselines.py); costs about one more search and two
    # more trainings.
    baselines: bool = False
    # "uniform" (the paper): every cell's block at random each warm-up step. "progressive": cells
    # join the random draw one after another; on digits at 8 px it left proxyless-mobile's
    # supernet at 0.62 held-out accuracy of random paths after 990 warm-up steps against 0.20
    # (bench/bench_warmup_sampling.py). Not the default until a whole search has been compared.
    warmup_sampling: WarmupSampling = "uniform"
    stop_after: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> JobSpec:
        values = {f.name: params[f.name] for f in fields(cls) if f.name in params and f.name != "budget"}
        return cls(budget=Budget.from_dict(params.get("budget")), **values)

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


# Minutes of the budget each stage may use, as shares of ``Budget.minutes``.
MINUTE_SHARES = {"search": 0.4, "tune": 0.3, "train": 0.3}
