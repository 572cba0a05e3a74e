"""Stage "device-finetune" of a sparse-update job with ``on_device``: the
scheme's fine-tuning steps run on the job's device by its agent, with ONNX
Runtime training, and are compared with PyTorch's same steps.

The train stage's pipeline leaves the plan in the job's directory (model with
the scheme's tensors trainable, samples, settings and PyTorch's losses;
``engine.train.sparse_update.on_device.write_device_plan``). This stage ships
it to the device's queue like the verify stage ships the exported model, with
a callback on the service's queue that writes the agent's reply into the job's
directory, and waits for it without holding a worker.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any

from celery import shared_task

from automl_server.jobs.context import StageContext, StageFailed, StageWait
from automl_server.jobs.profile import POLL_S, _wait_for_device, job_target
from automl_server.jobs.spec import JobSpec

RECORD_DEVICE_FINETUNE = "automl.record_device_finetune"
REPLY_FILE = "device_reply.json"
STATE_FILE = "device-state.json"
# How long the stage waits for the device's answer once it is online (the agent's own limit is 900 s).
FINETUNE_TIMEOUT_S = 1200.0


def applies(params: dict[str, Any]) -> bool:
    """Sparse-update jobs that asked for the on-device run."""
    from automl_server.engine.train.registry import get_pipeline

    if params.get("pipeline") != "sparse-update":
        return False
    pipeline = get_pipeline("sparse-update")
    try:  # as the pipeline reads them ("false" is False), not as Python's truth of a string
        return bool(getattr(pipeline.parse(params.get(pipeline.params_key) or {}), "on_device", False))
    except ValueError:  # refused at submission already; such a job never reaches a plan
        return False


def finetune_on_device(ctx: StageContext) -> dict[str, Any]:
    from automl_server.engine.train.sparse_update.on_device import PLAN_FILE, report_from_plan
    from automl_server.engine.train.sparse_update.pipeline import DEVICE_FOLDER
    from device_agents.protocol import FINETUNE_ON_DEVICE, FineTuneReply, FineTuneRequest, ModelFile

    folder = ctx.job_dir() / DEVICE_FOLDER
    if not (folder / PLAN_FILE).exists():
        raise StageFailed(f"the train stage left no on-device plan ({DEVICE_FOLDER}/{PLAN_FILE}); re-run this job")
    plan = json.loads((folder / PLAN_FILE).read_text())
    state_path = folder / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    target = job_target(ctx)
    if (folder / REPLY_FILE).exists():
        reply = FineTuneReply.from_dict(json.loads((folder / REPLY_FILE).read_text()))
        if reply.error is not None or reply.result is None:
            raise StageFailed(f"device {target.device_name!r} could not run the fine-tune: {reply.error}")
        report = report_from_plan(plan, reply.result)
        comparison = report["comparison"]
        ctx.event("log", f"on {target.device_name}: final loss {report['device']['final_loss']:.4f}, peak RSS "
                f"{report['device']['peak_rss_kb']} kB; largest loss difference from PyTorch "
                f"{comparison['max_abs_loss_diff']:.2e} ({'within' if comparison['within_tolerance'] else 'OVER'} "
                f"the tolerance {comparison['tolerance']:g})", **comparison)
        return {**report, "device_name": target.device_name, "agent_version": reply.agent_version,
                "device_seconds": round(time.time() - state.get("sent_at", time.time()), 3)}
    _wait_for_device(ctx, JobSpec.from_params(ctx.params), state, state_path,
                     "the sparse update's on-device steps need it")
    # Sent again, without failing, when the broker came back empty since (the request was lost with it).
    lost = ctx.broker_lost_since(state.get("sent_at"))
    if "sent_at" not in state or lost or time.time() - state["sent_at"] > FINETUNE_TIMEOUT_S:
        if state.get("sent_at") and not lost:
            raise StageFailed(f"device {target.device_name!r} did not answer within {FINETUNE_TIMEOUT_S:.0f} s; "
                              "check its agent's log, then re-run this job")
        model = ModelFile.from_bytes("onnx", (folder / plan["model_file"]).read_bytes())
        samples = base64.b64encode((folder / plan["data_file"]).read_bytes()).decode()
        request = FineTuneRequest(target.payload, model, tuple(plan["trainable"]), samples, int(plan["steps"]),
                                  float(plan["lr"]), int(plan["batch"]))
        ctx.celery.signature(FINETUNE_ON_DEVICE, args=request.to_args(), queue=target.queue).apply_async(
            link=ctx.celery.signature(RECORD_DEVICE_FINETUNE, args=[ctx.job_id], queue="default"))
        state["sent_at"] = time.time()
        state_path.write_text(json.dumps(state))
    ctx.progress(0.5, f"fine-tuning {plan['steps']} steps on {target.device_name} (ONNX Runtime training)",
                 device_status="online")
    raise StageWait(POLL_S, "waiting for the device's fine-tune")


@shared_task(name=RECORD_DEVICE_FINETUNE, bind=True, acks_late=True)
def record_device_finetune(self: Any, payload: dict[str, Any], job_id: str) -> None:
    """The agent's reply, kept in the job's directory for the stage."""
    from automl_server.engine.train.sparse_update.pipeline import DEVICE_FOLDER
    from automl_server.settings import settings_of

    folder = settings_of(self.app).artifacts_dir / job_id / DEVICE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (REPLY_FILE + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(folder / REPLY_FILE)
