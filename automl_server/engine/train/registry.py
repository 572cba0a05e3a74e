"""The training-pipeline registry: one way in for every pipeline.

A pipeline registers itself once, in its own module, with

    register_pipeline("fedgkt", FedGKTConfig, run_fedgkt, params_key="fedgkt",
                      title="FedGKT", description="...")

where ``FedGKTConfig`` is a pydantic model (its fields, defaults, bounds and
descriptions are the pipeline's settings; unknown fields are refused) and
``run(inputs, config, callbacks) -> TrainOutcome``. From that one call the
API's schema and OpenAPI spec, ``GET /api/v1/pipelines``, the CLI's choices
and the web form learn the pipeline and its settings (in the spirit of timm's
``register_model`` / ``create_model``), and the job's generic train stage runs
it. A job's settings for the pipeline travel in ``params[params_key]``.

Importable without Flask or Celery: the engine's side of the contract is a
model, the job's data splits, callbacks and a working directory.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from automl_server.engine.data import SplitData

# Modules whose import registers the built-in pipelines. A module missing from
# an installation (an optional extra not installed) is skipped, not fatal.
BUILTIN_PIPELINE_MODULES = (
    "automl_server.engine.train.standard_pipeline",
    "automl_server.engine.train.fedgkt.pipeline",
    "automl_server.engine.train.distributed.pipeline",
    "automl_server.engine.train.sparse_update.pipeline",
)


class PipelineConfig(BaseModel):
    """Base of every pipeline's settings: unknown fields are an error, so a typo
    in a request is refused with the field's name instead of silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class PipelineInputs:
    """What the job gives a pipeline: the searched architecture, the network built
    from it (seeded), the splits (normalised; the holdout split may be empty when
    the job trains on train + holdout) and the unseen test split."""

    arch: Any  # search_spaces.Arch
    model: nn.Module
    data: SplitData
    x_test: torch.Tensor
    y_test: torch.Tensor
    epochs: int  # the job's budget.train_epochs: a pipeline may read it as its default length
    batch_size: int
    seed: int
    work_dir: Path  # the job's directory: checkpoints, artifacts, child processes' files


class TrainCallbacks(Protocol):
    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        """Progress within training (0..1); raises to cancel (JobCancelled)."""

    def metric(self, message: str, **data: Any) -> None:
        """A metric row on the job's timeline (per epoch or round)."""

    def log(self, message: str, **data: Any) -> None:
        """A log line on the job's timeline."""

    def check_cancelled(self) -> None:
        """Cheap in inner loops; raises to cancel."""

    def should_stop(self) -> bool:
        """True once the job's budget of minutes for training is spent."""

    def store_artifact(self, kind: str, path: Path) -> None:
        """Offer a file of ``work_dir`` as a download of the job."""


@dataclass
class TrainOutcome:
    """What a pipeline returns. ``model`` is the network the job exports and
    verifies on the device (for FedGKT the edge model); ``report`` holds the
    pipeline's own figures, shown in the job's report under its name."""

    model: nn.Module
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    holdout_accuracy: float | None = None


class InvalidPipelineSettings(ValueError):
    """A setting is wrong for this job's data; ``field`` names it (the setting's
    name, optionally prefixed by the pipeline's params key) and the message says
    what would be accepted."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


RunFn = Callable[[PipelineInputs, Any, TrainCallbacks], TrainOutcome]
# Checks a config against the job's data before anything runs (e.g. more clients
# than the training split can feed); raises InvalidPipelineSettings.
CheckFn = Callable[[Any, "DataFacts"], None]


@dataclass(frozen=True)
class DataFacts:
    """What is known of a job's data when it is submitted (for ``check``)."""

    train_samples: int
    num_classes: int
    resolution: int
    epochs: int
    batch_size: int = 64  # the job's batch size (params.batch_size)
    space: str = ""  # the job's search space


@dataclass(frozen=True)
class Pipeline:
    name: str
    config: type[PipelineConfig]
    run: RunFn
    params_key: str
    title: str
    description: str
    check: CheckFn | None = None

    def settings_schema(self) -> dict[str, Any]:
        return self.config.model_json_schema()

    def field_path(self, field_name: str) -> str:
        """A setting's path in a job request: ``params.<params_key>.<field>`` (a field
        already starting with the params key, as "fedgkt.clients", is not prefixed twice)."""
        relative = field_name.removeprefix(f"{self.params_key}.")
        return f"params.{self.params_key}" + (f".{relative}" if relative and relative != self.params_key else "")

    def parse(self, raw: dict[str, Any] | None) -> PipelineConfig:
        """Settings from a job's params (pydantic ValidationError when wrong)."""
        return self.config.model_validate(raw or {})


_PIPELINES: dict[str, Pipeline] = {}
_loaded = False


def register_pipeline(name: str, config: type[PipelineConfig], run: RunFn, *, params_key: str | None = None,
                      title: str = "", description: str = "", check: CheckFn | None = None) -> Pipeline:
    """Make a pipeline known everywhere. Registering the same name twice replaces
    it (a module reloaded in tests), never silently keeps two."""
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise ValueError(f"pipeline name {name!r} must be letters, digits and '-'")
    pipeline = Pipeline(name, config, run, params_key or name.replace("-", "_"), title or name,
                        description or (run.__doc__ or "").strip().split("\n")[0], check)
    _PIPELINES[name] = pipeline
    return pipeline


def unregister_pipeline(name: str) -> None:
    _PIPELINES.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_PIPELINE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing module of the pipeline itself (or its optional
            # dependency) is skipped; a broken import elsewhere is a bug.
            if exc.name is None or not (module.startswith(exc.name) or exc.name.split(".")[0] in {"flwr"}):
                raise


def pipelines() -> dict[str, Pipeline]:
    """Every registered pipeline by name, built-ins first."""
    _load_builtins()
    return dict(_PIPELINES)


def get_pipeline(name: str) -> Pipeline:
    known = pipelines()
    if name not in known:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(known)}")
    return known[name]


def pipeline_names() -> tuple[str, ...]:
    return tuple(pipelines())
