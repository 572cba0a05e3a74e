"""A job that keeps its promise (issue 18, part 3): when the exported network's
measured latency misses the target, try the next-faster network before
reporting, and say the miss plainly when none meets it.

After the verify stage measured the exported network over the target, the job
derives the next-faster network from the *search's final probabilities*
(``search.ckpt``; ``engine.derive.derive_within_target``) at an aim corrected
by what the device just showed: the new band's top is the margin under the
target divided by the measured/predicted ratio of the miss, and always at
least ``STEP`` under the missed network's prediction, so every try is faster
than the last. The job then *rewinds* to the train stage with that network
(``StageRewind``): it is trained with the job's train budget again (the same
epochs, or the same share of ``budget.minutes``), exported, scheduled and
measured like the first. At most ``params.target_retries`` (default 3)
retries; each try (network, prediction, measurement) is kept in
``result.promise.tries``. When none meets the target, or no faster network
exists, the job still ends ``succeeded`` (its network is trained and
exported) with ``result.target_met: false``, a ``warning`` event saying the
miss, the report's ``target_met: false``, the final state event's message
and data (so webhooks carry it) and the job page and CLI showing it. Why
``succeeded`` with a flag and not a new state: every client that waits for
``succeeded`` to fetch the model keeps working, and those that care read one
more field; a new state would break each of them.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from automl_server.jobs.context import StageContext
from automl_server.jobs.spec import JobSpec

if TYPE_CHECKING:
    from search_spaces import Arch

# Each retry's band top is at least this far under the missed network's prediction.
STEP = 0.05
# The stage a retry goes back to; every stage from it to verify runs again.
REWIND_TO = "train"
# Files of the stages that run again, moved into try-<n>/ so each try keeps its own.
# (and every training checkpoint, *.ckpt but the search's: a pipeline resumes from its own).
PER_TRY_FILES = ("verify.json", "verify-again.json", "verify-state.json", "schedule-state.json",
                 "schedule-device.json", "schedule-candidates.json", "schedule-plan.json", "schedule-times.json",
                 "device-state.json", "sparse_update_plan.json")
# The folders where pipelines keep their resumable state (FedGKT's Flower workspace, delayed-sgd's
# torchrun checkpoints, sparse-update's on-device bundle): a retry trains a different network, which
# must not resume from the missed one's state (a FedGKT retry failed loading the old edge weights
# into the new network, 2026-12-03).
PER_TRY_DIRS = ("fedgkt", "dts", "on_device")
KEEP_CHECKPOINTS = ("search.ckpt",)


class StageRewind(Exception):
    """The stage asks the runner to go back to ``stage`` with ``results`` merged into
    the job's result (the stages from ``stage`` on run again); ``message`` goes on the
    timeline as a warning."""

    def __init__(self, stage: str, results: dict[str, Any], message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.stage, self.results, self.message, self.data = stage, results, message, data


def keep_promise(ctx: StageContext, verified: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The verify stage's output with ``target_met`` and the tries so far; raises
    StageRewind to try a faster network when this one missed and retries remain."""
    spec = JobSpec.from_params(ctx.params)
    target_ms = float(ctx.params["latency_target_ms"])
    tries = [*((ctx.results.get("promise") or {}).get("tries") or []),
             {"try": len((ctx.results.get("promise") or {}).get("tries") or []) + 1, "arch": candidate["arch"],
              "predicted_ms": candidate["predicted_ms"], "measured_ms": verified["measured_ms"],
              "meets_target": verified["meets_target"]}]
    if verified["meets_target"]:
        return {**verified, "target_met": True, "tries": tries}
    retries_used = len(tries) - 1
    measured, predicted = float(verified["measured_ms"]), float(candidate["predicted_ms"])
    miss = f"measured {measured:.4g} ms, over the target {target_ms:g} ms (predicted {predicted:.4g} ms)"
    if retries_used < spec.target_retries:
        faster = next_faster(ctx, candidate, measured, tried=[t["arch"] for t in tries])
        if faster is not None:
            retry = retries_used + 1
            _archive_try(ctx, len(tries))
            raise StageRewind(
                REWIND_TO, {"promise": {"tries": tries}, "retry": {**faster, "try": retry + 1}},
                f"the network {miss}: trying the next-faster network of the search (retry {retry} of "
                f"{spec.target_retries}, predicted {faster['predicted_ms']:.4g} ms); it is trained with the job's "
                "train budget again, exported and measured",
                {"level": "warning", "target_ms": target_ms, "measured_ms": measured, "predicted_ms": predicted,
                 "retry": retry, "retries": spec.target_retries, "next_predicted_ms": faster["predicted_ms"]})
        why = "no faster network can be derived from the search's probabilities"
    else:
        why = (f"{spec.target_retries} retr{'y' if spec.target_retries == 1 else 'ies'} allowed, all used"
               if spec.target_retries else "no retries: params.target_retries is 0")
    message = (f"latency target missed: the network {miss}; {len(tries)} network(s) tried, none met the "
               f"target ({why})")
    ctx.event("warning", message, level="warning", target_met=False, target_ms=target_ms, measured_ms=measured,
              tries=len(tries))
    return {**verified, "target_met": False, "tries": tries, "missed": message}


def faster_top(top_ms: float, predicted_ms: float, measured_ms: float) -> float:
    """The predicted bound of the next try after a network predicted ``predicted_ms`` measured
    ``measured_ms``. What the device showed corrects the aim: a network measured r x its
    prediction needs a prediction r times further under the band's top ``top_ms``; and each
    try is at least ``STEP`` faster than the last."""
    ratio = measured_ms / predicted_ms if predicted_ms > 0 else 1.0
    return min(top_ms / max(ratio, 1.0), predicted_ms * (1 - STEP))


def faster_top_after_fit(target_ms: float, predicted_ms: float, measured_ms: float) -> float:
    """``faster_top`` once the fit stage (jobs/fit.py) has put networks where the device, not
    the margin, puts them: the bound under which a network measured like the miss (r x its
    prediction ``predicted_ms``) lands on the window's middle (its band centred there,
    ``MOVE_TOP`` x target), and at least ``STEP`` under the miss. The job's own retry and a
    baseline's (jobs/baselines.retry_band) aim with it."""
    from automl_server.jobs.margin import MOVE_TOP

    return min(MOVE_TOP * target_ms * predicted_ms / measured_ms, predicted_ms * (1 - STEP))


def next_faster(ctx: StageContext, missed: dict[str, Any], measured_ms: float,
                tried: Sequence[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """The next-faster derivation of the search's final probabilities, as a chosen-network
    dict (arch, predicted_ms); None when the job has no search or nothing faster exists.

    The missed network's prediction is taken again from the predictor as it is now, not the
    one it had when it was picked (``missed["predicted_ms"]``): the job's own timings (the
    fit's, verify's) calibrate the predictor in between, and the new bound is applied by the
    predictor as it is now, so the measured/predicted ratio and the "at least ``STEP``
    faster" rule must be in its terms too. With the pick-time prediction a bound could land
    over the missed network's new prediction and derive it again (a baseline's retry did,
    in CI, 2026-12-06). ``tried``: the job's earlier networks (arch dicts), never derived
    again."""
    from automl_server.jobs.search_stage import current_prediction, derive_under, searched_supernet, target_band

    net = searched_supernet(ctx)
    if net is None:  # a job that adopted its parent's network did not search
        return None
    predicted = current_prediction(ctx)([missed["arch"]])[0]
    # After the fit stage (jobs/fit.py) the network sits where the device, not the margin, put
    # it: the retry aims where a network measured like the miss lands on the fit's window
    # middle (its band centred there, MOVE_TOP), not back at the margin's band top (which the
    # fit had moved away from).
    # (The fit's ratio is applied either way: a device faster than its prediction moves the bound up.)
    after_fit = "tries" in (ctx.results.get("fit") or {})
    if after_fit:
        new_top = faster_top_after_fit(float(ctx.params["latency_target_ms"]), predicted, measured_ms)
    else:
        new_top = faster_top(target_band(ctx).top_ms, predicted, measured_ms)
    # Aimed at the fit's window: where the greedy swaps step under it, the most probable network
    # inside it not tried yet (jobs/margin.into_window), not one far under the target.
    earlier = [list(arch.get("blocks", [])) for arch in (missed["arch"], *tried)]
    derived = derive_under(ctx, net, new_top, timed=earlier if after_fit else None)
    if derived.predicted_ms >= predicted * (1 - 1e-9) or any(_same(derived.arch, arch)
                                                             for arch in (missed["arch"], *tried)):
        return None
    return {"arch": derived.arch.to_dict(), "predicted_ms": round(derived.predicted_ms, 6), "holdout_accuracy": None,
            "derived_from": "the search's final probabilities", "aimed_under_ms": round(new_top, 6)}


def _same(arch: Arch, other: dict[str, Any]) -> bool:
    return list(arch.blocks) == list(other.get("blocks", []))


def _archive_try(ctx: StageContext, number: int) -> None:
    """Move the files of the stages that run again into try-<number>/."""
    folder = ctx.job_dir() / f"try-{number}"
    folder.mkdir(exist_ok=True)
    directory = ctx.job_dir()
    checkpoints = [p.name for p in directory.glob("*.ckpt") if p.name not in KEEP_CHECKPOINTS]
    for name in (*PER_TRY_FILES, *checkpoints, *PER_TRY_DIRS):
        path = directory / name
        if path.exists():
            if (folder / name).is_dir():  # a redelivered rewind already moved an earlier copy
                shutil.rmtree(folder / name)
            shutil.move(str(path), folder / name)
