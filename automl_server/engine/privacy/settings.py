"""``params.privacy_audit``: what the audit stage attacks and how hard it tries."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from automl_server.engine.privacy.optimise import DEFAULT_ITERATIONS

# Pipelines whose point is that raw data need not move: audited unless the job says otherwise.
AUDITED_BY_DEFAULT = ("fedgkt", "delayed-sgd")

# Item bounds as schema constraints (not validators), so the OpenAPI spec says what is accepted.
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0, description="A share of entries zeroed, in [0, 1).")]
NoiseVariance = Annotated[float, Field(gt=0.0, le=100.0, description="A variance above 0 and at most 100.")]


class PrivacyAuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = Field(None, description="Run the audit stage after training; default: on for the "
                                 f"{' and '.join(AUDITED_BY_DEFAULT)} pipelines, off for the others.")
    samples: int = Field(8, ge=1, le=64, description="Training images attacked from what the job shares.")
    iterations: int = Field(DEFAULT_ITERATIONS, ge=1, le=5000, description="L-BFGS iterations per attack "
                            "(DLG: 300; each iteration is up to 20 evaluations, as in the reference).")
    defenses: bool = Field(True, description="Also attack under each defense and measure its accuracy cost.")
    defense_samples: int = Field(2, ge=1, le=64, description="Images attacked under each defense setting.")
    prune_sparsities: tuple[Sparsity, ...] = Field((0.1, 0.3, 0.5, 0.7, 0.9), min_length=1, max_length=10,
                                                description="Gradient pruning: shares of smallest entries zeroed "
                                                "(DLG: above about 30% defends).")
    noise_variances: tuple[NoiseVariance, ...] = Field((1e-4, 1e-3, 1e-2, 1e-1), min_length=1, max_length=10,
                                               description="Gaussian noise variances added to what is shared "
                                               "(DLG's sweep).")
    larger_batch: int = Field(8, ge=2, le=64, description="Images per gradient for the larger-batch defense "
                              "(DLG recovers batches of 8 on its LeNet).")
    cost_steps: int = Field(100, ge=0, le=10_000, description="SGD steps of the short training that measures each "
                            "gradient defense's accuracy cost (0: not measured).")
    minutes: float = Field(10.0, gt=0, le=24 * 60, description="Wall-clock cap of the audit; what is not done by "
                           "then is reported as not run. The job's budget.minutes caps it too.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the attacked images' choice and the dummies.")


def audit_settings(params: dict[str, Any]) -> PrivacyAuditSettings:
    """The job's audit settings (``params.privacy_audit``; ``true``/``false`` are accepted as ``{enabled: ...}``)."""
    raw = params.get("privacy_audit")
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    return PrivacyAuditSettings.model_validate(raw or {})


def audit_applies(params: dict[str, Any]) -> bool:
    """Whether a job with these params runs the audit stage."""
    settings = audit_settings(params)
    if settings.enabled is not None:
        return settings.enabled
    return params.get("pipeline") in AUDITED_BY_DEFAULT
