"""Stage "train": the chosen architecture trained from scratch with the job's
pipeline, validated on the holdout split every epoch, and evaluated once on
the test split that no earlier stage has seen.

Pipelines register in ``PIPELINES``; ``standard`` is plain supervised
training as in the ProxylessNAS paper (SGD with Nesterov momentum, cosine
schedule, label smoothing 0.1, weight decay 4e-5), with small random shifts
as augmentation. The federated, delayed-SGD and sparse-update pipelines plug
in here with the same signature.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from automl_server.jobs.context import StageContext, StageFailed
from automl_server.jobs.search_stage import chosen_arch, deadline, load_split
from automl_server.jobs.spec import JobSpec


def _shift(x, generator, max_shift: int):  # type: ignore[no-untyped-def]
    """Random translations by up to ``max_shift`` pixels (zero padding), one per batch."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def train_standard(ctx: StageContext, spec: JobSpec, arch_dict: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from automl_server.engine.data import BatchStream
    from search_spaces import Arch, build_model

    data, arrays = load_split(ctx)
    arch = Arch.from_dict(arch_dict)
    epochs = spec.budget.train_epochs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(arch)
    stream = BatchStream(data.x_train, data.y_train, spec.batch_size, spec.seed + 11)
    steps = stream.batches_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs * steps, 1))
    generator = torch.Generator().manual_seed(spec.seed + 12)
    max_shift = max(1, data.resolution // 8)
    checkpoint = ctx.job_dir() / "train.ckpt"
    epoch, history = 0, []
    if checkpoint.exists():  # resume after a lost worker
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        generator.set_state(state["generator"])
        epoch, history = state["epoch"], state["history"]
    ends = deadline(ctx, spec, "train")
    started = time.monotonic()
    start_epoch = epoch
    while epoch < epochs:
        model.train()
        correct = seen = 0
        loss_sum = 0.0
        for _ in range(steps):
            x, y = stream.next()
            logits = model(_shift(x, generator, max_shift))
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            ctx.check_cancelled()
        epoch += 1
        val = accuracy(model, data.x_holdout, data.y_holdout)
        history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "holdout_accuracy": val})
        tmp = checkpoint.with_name(checkpoint.name + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "stream": stream.state_dict(),
                    "generator": generator.get_state(), "epoch": epoch, "history": history}, tmp)
        os.replace(tmp, checkpoint)
        ctx.event("metric", f"train epoch {epoch}/{epochs}", phase="train", total_epochs=epochs, **history[-1])
        eta = (time.monotonic() - started) / (epoch - start_epoch) * (epochs - epoch)
        ctx.progress(epoch / epochs, f"epoch {epoch}/{epochs}: holdout accuracy {val:.3f}", eta_s=eta)
        if ends is not None and time.monotonic() > ends:
            ctx.event("log", f"training stopped after {epoch} of {epochs} epochs: the budget's minutes ran out")
            break
    x_test = data.normalise(arrays["x"][arrays["test_idx"]])
    y_test = torch.from_numpy(arrays["y"][arrays["test_idx"]].astype("int64"))
    test_accuracy = accuracy(model, x_test, y_test)
    weights = ctx.job_dir() / "model.pt"
    torch.save({"arch": arch.to_dict(), "state_dict": model.state_dict(), "mean": data.mean, "std": data.std}, weights)
    ctx.store_artifact("weights", weights)
    return {"test_accuracy": round(test_accuracy, 6), "holdout_accuracy": round(history[-1]["holdout_accuracy"], 6),
            "epochs": epoch, "test_samples": int(len(y_test)), "train_seconds": round(time.monotonic() - started, 3),
            "normalisation": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"}}


def accuracy(model, x, y) -> float:  # type: ignore[no-untyped-def]
    import torch

    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(x), 256))
    return correct / max(len(x), 1)


PIPELINES: dict[str, Callable[[StageContext, JobSpec, dict[str, Any]], dict[str, Any]]] = {
    "standard": train_standard,
}


def train_network(ctx: StageContext) -> dict[str, Any]:
    spec = JobSpec.from_params(ctx.params)
    pipeline = ctx.params["pipeline"]
    if pipeline not in PIPELINES:
        raise StageFailed(f"pipeline {pipeline!r} is not available in this version; available: "
                          f"{', '.join(PIPELINES)}")
    arch = chosen_arch(ctx.results)
    path: Path = ctx.job_dir() / "arch.json"
    path.write_text(json.dumps(arch, indent=2))
    ctx.store_artifact("arch", path)
    return {"pipeline": pipeline, **PIPELINES[pipeline](ctx, spec, arch)}
