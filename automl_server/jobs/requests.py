"""What a caller asks for: the request models of a job and of a comparison.

They live in the job layer (not the HTTP layer) because everything that
submits a job speaks them: the REST API, the web form, comparisons and
re-runs. The pipeline and stage names, and each pipeline's settings under
``params.<key>``, come from the registries (``engine.train.registry`` and
``jobs.stages``), so a new pipeline or stage appears here, in the OpenAPI spec
and in the form by registering itself.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from automl_server.engine.privacy.settings import PrivacyAuditSettings
from automl_server.engine.strategies import strategies
from automl_server.engine.train.registry import pipelines
from automl_server.jobs.spec import Budget, FinalFit, JobSpec, WarmupSampling
from automl_server.jobs.stages import stage_names

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
DEFAULT_PIPELINE = "standard"


class Strict(BaseModel):
    # Unknown fields are refused: a typo in a pipeline must not pass silently.
    model_config = ConfigDict(extra="forbid")


# The defaults live in jobs/spec.py, once; the API documents them from there.
_BUDGET, _SPEC = Budget(), JobSpec()


class JobBudget(Strict):
    """How much work the job may do; the defaults fit the bundled digits on a 2-core CPU well inside 15 minutes."""

    warmup_epochs: int = Field(_BUDGET.warmup_epochs, ge=0, le=1000, description="Weight-only epochs on random paths.")
    search_epochs: int = Field(_BUDGET.search_epochs, ge=1, le=1000, description="Epochs of alternating weight/architecture steps.")
    tune_trials: int = Field(_BUDGET.tune_trials, ge=0, le=200, description="Optuna trials (0: no tuning).")
    tune_epochs: int = Field(_BUDGET.tune_epochs, ge=1, le=200, description="Epochs per tuning trial.")
    train_epochs: int = Field(_BUDGET.train_epochs, ge=1, le=2000, description="Epochs to train the found network from scratch.")
    minutes: float | None = Field(None, gt=0, le=7 * 24 * 60,
                                  description="Wall-clock cap for search, tune and train (40/30/30%).")


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON Schema with its ``$defs`` inlined, so it can sit inside
    another document (the OpenAPI spec, the pipelines listing) without refs."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(dict(defs[ref.split("/")[-1]]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _pipeline_settings_schema(schema: dict[str, Any]) -> None:
    """Each registered pipeline's settings as a property of ``params``."""
    properties = schema.setdefault("properties", {})
    # extra="allow" keeps the pipelines' settings (model_extra), but only under
    # the keys listed here: _known_keys_only refuses any other, so the schema
    # must not promise additional properties.
    schema["additionalProperties"] = False
    for pipeline in pipelines().values():
        properties[pipeline.params_key] = {
            **inline_schema(pipeline.settings_schema()),
            "description": f"Settings of the {pipeline.name!r} pipeline ({pipeline.title}); "
                           f"only with pipeline: {pipeline.name}.",
        }


class JobOptions(BaseModel):
    """Less common options, and the chosen pipeline's settings under its key
    (e.g. ``params.fedgkt``); those are validated by the pipeline's own model."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_pipeline_settings_schema)

    seed: int = Field(_SPEC.seed, ge=0, le=2**31 - 1)
    batch_size: int = Field(_SPEC.batch_size, ge=1, le=4096)
    calibration_networks: int = Field(_SPEC.calibration_networks, ge=0, le=100,
                                      description="Whole networks measured to calibrate a new target.")
    device_wait_s: float = Field(_SPEC.device_wait_s, ge=0, le=86400, description="How long to wait for an offline device.")
    target_retries: int = Field(
        _SPEC.target_retries, ge=0, le=5, description="When the exported network measures over the latency target, "
        "how many next-faster networks (derived from the search's final probabilities, each trained with the "
        "job's train budget, exported and measured) the job tries before it reports the miss.")
    fit_on_device: bool = Field(
        _SPEC.fit_on_device, description="Before training, time the chosen network untrained on the device and, "
        "when the device's measured/predicted ratio (pooled over the networks timed) puts it outside 87-96% of the "
        "latency target, derive the search's network again under the bound that ratio corrects (fit stage, at most "
        "4 networks timed); false trains the network the prediction chose.")
    final_fit: FinalFit = Field(
        _SPEC.final_fit, description="Data the found network is trained on: the holdout split joins the training "
        "split once search and tuning are done (default), or stays out to show a held-out curve.")
    schedule: bool = Field(_SPEC.schedule, description="Make an IOS inter-operator schedule of the exported model "
                           "with stage latencies measured on the device (schedule stage, after export); false skips it.")
    static_batch: bool = Field(_SPEC.static_batch, description="Export the ONNX model with a fixed batch of 1; "
                               "by default its first dimension is dynamic (\"batch\") and any batch size runs. The "
                               "latency is measured at batch 1 either way; the TFLite model always takes batch 1.")
    baselines: bool = Field(
        _SPEC.baselines, description="After verify, compare the searched network with the baselines a user would "
        "try instead (baselines stage): random search (networks predicted within the same latency bound, each "
        "trained briefly, as many as the search's own seconds allow, the best kept) and a uniform MobileNetV2-style "
        "network of the space (one block type, scaled in depth and width to the same bound); each trained with "
        "the job's train budget, tested, and measured on the device. Shown in the report and on the job page; "
        "costs about one more search and two more trainings.")
    warmup_sampling: WarmupSampling = Field(
        _SPEC.warmup_sampling, description="How the search's warm-up draws each step's path: uniform (the "
        "paper: every cell at random) or progressive (cells join the random draw one after another, the rest held "
        "on one seeded path; trains a deep supernet on a small dataset far better, see the README, issue 17).")
    privacy_audit: PrivacyAuditSettings | None = Field(
        None, description="Privacy audit after training (audit stage): rebuild training images from what the "
        "pipeline shares (DLG, iDLG, feature inversion) under the job's settings and each defense. Default: on for "
        "fedgkt and delayed-sgd; true/false or an object of settings.")

    @field_validator("privacy_audit", mode="before")
    @classmethod
    def _audit_on_or_off(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value  # true/false: the defaults, on or off

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            accepted = [*cls.model_fields, *(p.params_key for p in pipelines().values())]
            unknown = [key for key in data if key not in accepted]
            if unknown:
                raise ValueError(f"unknown option {unknown[0]!r}; accepted: {', '.join(accepted)}")
            for key in data:
                if key not in cls.model_fields and not isinstance(data[key], dict):
                    raise ValueError(f"{key!r} holds a pipeline's settings and must be an object")
        return data

    def pipeline_settings(self) -> dict[str, dict[str, Any]]:
        """The pipelines' settings given, by params key."""
        return dict(self.model_extra or {})


def _pipeline_names(schema: dict[str, Any]) -> None:
    schema["enum"] = list(pipelines())


def _strategy_names(schema: dict[str, Any]) -> None:
    schema["enum"] = list(strategies())


def _stage_names(schema: dict[str, Any]) -> None:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option["enum"] = list(stage_names())


class JobCreate(Strict):
    dataset: str = Field(min_length=1, max_length=200, description="Dataset id or name.")
    device: str = Field(min_length=1, max_length=200, description="Device name.")
    runtime: str | None = Field(None, description="One of the device's runtimes; default: its first.")
    latency_target_ms: float | None = Field(None, gt=0, le=1e6, description="Latency the search aims at, in "
                                            "milliseconds. Omitted: the middle of the achievable range of the space "
                                            "on the device for this dataset, set by the profile stage once the "
                                            "latency table has it (the job's latency_target_ms is null until then).")
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN, description="Search space name.")
    strategy: str = Field("gradient", max_length=100, json_schema_extra=_strategy_names,
                          description="Architecture-search strategy (engine/strategies.py): binarized gates "
                          "(gradient) or REINFORCE (rl).")
    pipeline: str = Field(DEFAULT_PIPELINE, max_length=100, json_schema_extra=_pipeline_names,
                          description="Training pipeline; GET /api/v1/pipelines lists them with their settings.")
    budget: JobBudget = Field(default_factory=JobBudget)
    tune: bool = Field(True, description="Tune the latency loss with Optuna (tune stage).")
    stop_after: str | None = Field(None, max_length=100, json_schema_extra=_stage_names,
                                   description="End the job after this stage (e.g. 'profile' only fills the latency table).")
    webhook_url: str | None = Field(None, max_length=2000,
                                    description="Receives a signed POST (Standard Webhooks) on every state change.")
    webhook_secret: str | None = Field(None, max_length=200, description="whsec_... secret; default: generated "
                                       "and returned once in the 202 answer.")
    params: JobOptions = Field(default_factory=JobOptions, description="Less common options.")


class ComparisonCreate(Strict):
    dataset: str = Field(min_length=1, max_length=200, description="Dataset id or name.")
    devices: list[str] = Field(min_length=2, max_length=10, description="Device names (each with its first "
                               "runtime, or 'name:runtime').")
    latency_target_ms: float = Field(gt=0, le=1e6)
    space: str = Field("proxyless-mobile", pattern=NAME_PATTERN)
    strategy: str = Field("gradient", max_length=100, json_schema_extra=_strategy_names)
    budget: JobBudget = Field(default_factory=JobBudget)
    tune: bool = True
    params: JobOptions = Field(default_factory=JobOptions)
