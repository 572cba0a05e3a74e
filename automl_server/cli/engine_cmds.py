"""`automl spaces list|sample` and `automl search`: the engine without the server."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from tqdm import tqdm

from automl_server.cli.base import _echo_json, _table, json_option, main

if TYPE_CHECKING:  # numpy, torch and Pillow load when a command runs, not for --help
    from automl_server.datasets.ingest import Arrays
    from automl_server.engine.search import EpochReport


@main.group()
def spaces() -> None:
    """Search spaces."""


@spaces.command("list")
@json_option
def spaces_list(as_json: bool) -> None:
    """List the registered search spaces."""
    from search_spaces import list_spaces

    rows: list[dict[str, Any]] = [{"name": s.name, "description": s.description, "width_mult": s.width_mult,
                                   "candidates": list(s.candidates), "allow_zero": s.allow_zero}
                                  for s in list_spaces()]
    if as_json:
        _echo_json(rows)
        return
    _table([[r["name"], r["width_mult"], " ".join(r["candidates"]) + (" zero" if r["allow_zero"] else ""),
             r["description"]] for r in rows], ["NAME", "WIDTH", "CANDIDATES", "DESCRIPTION"])


@spaces.command("sample")
@click.option("--space", required=True)
@click.option("--n", "count", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resolution", type=click.IntRange(8, 1024), default=224, show_default=True)
@click.option("--num-classes", type=click.IntRange(2, 100_000), default=1000, show_default=True)
@click.option("--in-channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@json_option
def spaces_sample(space: str, count: int, seed: int, resolution: int, num_classes: int, in_channels: str,
                  as_json: bool) -> None:
    """Print random architectures of a space (deterministic for a seed)."""
    from search_spaces import sample_archs

    try:
        archs = sample_archs(space, count, seed, resolution, num_classes, int(in_channels))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--space") from None
    if as_json:
        _echo_json([a.to_dict() for a in archs])
    else:
        for arch in archs:
            click.echo(" ".join(arch.blocks))


def load_dataset(name_or_path: str) -> Arrays:
    """Arrays of a bundled dataset (by name) or of a .zip/.npz file."""
    from automl_server.datasets.bundled import BUNDLED_DATASETS
    from automl_server.datasets.ingest import DatasetRejected, detect_format, load_arrays

    try:
        if name_or_path in BUNDLED_DATASETS:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name_or_path}.npz"
                BUNDLED_DATASETS[name_or_path].build(path)
                return load_arrays(path, "npz")
        path = Path(name_or_path)
        if not path.is_file():
            raise click.BadParameter(
                f"{name_or_path!r} is neither a bundled dataset ({', '.join(BUNDLED_DATASETS)}) nor a file",
                param_hint="--dataset")
        return load_arrays(path, detect_format(path.name))
    except DatasetRejected as exc:
        raise click.BadParameter(f"{exc.field}: {exc.detail}", param_hint="--dataset") from None


@main.command()
@click.option("--space", default="proxyless-mobile", show_default=True)
@click.option("--dataset", required=True, help="Bundled dataset name (digits, mnist-5k) or a .zip/.npz path.")
@click.option("--target-ms", type=float, required=True, help="Latency target T in milliseconds.")
@click.option("--epochs", type=click.IntRange(0, 100_000), default=4, show_default=True,
              help="Search epochs after warm-up.")
@click.option("--warmup-epochs", type=click.IntRange(0, 100_000), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 65_536), default=64, show_default=True)
@click.option("--strategy", default="gradient", show_default=True,
              help="Architecture-search strategy: gradient (binarized gates) or rl (REINFORCE), or a registered one.")
@click.option("--loss", "loss_kind", type=click.Choice(["auto", "mul#log", "add#linear", "add#abs", "none"]),
              default="auto", show_default=True,
              help="Latency loss: the paper's mul#log / add#linear, add#abs to track the target from both sides, "
              "none (accuracy alone), or auto: as a job chooses (mul#log; none when every network meets the target; "
              "add#linear when the target is so far above the space that mul#log's logarithm would turn negative).")
@click.option("--loss-lambda", type=float, default=0.1, show_default=True, help="lambda of the add# losses.")
@click.option("--arch-lr", type=float, default=1e-3, show_default=True,
              help="Adam learning rate of the architecture logits (paper: 1e-3).")
@click.option("--arch-every", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="One architecture step every N weight steps (paper: 5); small datasets want 1.")
@click.option("--min-arch-steps", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="At least this many architecture steps in each search epoch, spread over its batches "
              "(small datasets: the paper's rule gives almost none); 0: the paper's rule only.")
@click.option("--derive", type=click.Choice(["argmax", "target"]), default="argmax", show_default=True,
              help="argmax per cell (paper), or the most probable network within 10% of the target.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lut", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Latency lookup table (reference ProxylessNAS YAML); default: a FLOPs-based estimate.")
@click.option("--gmacs", type=float, default=None, help="Throughput of the FLOPs estimate, in GMAC/s.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint file: written every epoch, resumed from when it exists.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the derived architecture here.")
@click.option("--tune-trials", type=click.IntRange(0, 200), default=0, show_default=True,
              help="Then tune the latency loss (beta, learning rates) with Optuna TPE for this many trials, "
              "each warm-started from the searched supernet, as a job's tune stage does.")
@click.option("--tune-epochs", type=click.IntRange(1, 200), default=2, show_default=True, help="Epochs per trial.")
@json_option
def search(space: str, dataset: str, target_ms: float, epochs: int, warmup_epochs: int, batch_size: int,
           strategy: str, loss_kind: str, loss_lambda: float, arch_lr: float, arch_every: int, min_arch_steps: int,
           derive: str,
           seed: int, lut: Path | None, gmacs: float | None, checkpoint: Path | None,
           out: Path | None, tune_trials: int, tune_epochs: int, as_json: bool) -> None:
    """Run a ProxylessNAS search on this machine, without the server."""
    from automl_server.engine.data import split_arrays
    from automl_server.engine.latency import FlopsLatencyModel, LutLatencyModel
    from automl_server.engine.search import SearchConfig, run_search
    from search_spaces import Arch, get_space

    try:
        layout_space = get_space(space)
        config = SearchConfig(warmup_epochs=warmup_epochs, search_epochs=epochs, batch_size=batch_size,
                              target_ms=target_ms, strategy=strategy, seed=seed, arch_lr=arch_lr,
                              arch_update_every=arch_every, min_arch_steps_per_epoch=min_arch_steps, loss_lambda=loss_lambda,
                              derive=derive)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    x, y, classes = load_dataset(dataset)
    if x.shape[1] != x.shape[2]:
        raise click.BadParameter(f"images must be square, got {x.shape[1]}x{x.shape[2]}", param_hint="--dataset")
    data = split_arrays(x, y, seed=seed)
    layout = layout_space.layout(data.resolution, len(classes), data.in_channels)
    latency_model = LutLatencyModel.from_yaml(lut) if lut else (
        FlopsLatencyModel(gmacs_per_s=gmacs) if gmacs else FlopsLatencyModel())
    config = replace(config, loss_kind=_loss_for_target(loss_kind, layout, latency_model, target_ms, quiet=as_json))
    with tqdm(total=config.total_epochs, unit="epoch", disable=as_json, desc="search") as bar:
        def progress(report: EpochReport) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{report.phase} acc {report.holdout_accuracy:.3f} "
                                f"E[lat] {report.expected_latency_ms:.3f} ms")
        scratch = tempfile.TemporaryDirectory()  # the supernet's checkpoint, for tuning, when --checkpoint is not given
        checkpoint_path = checkpoint or Path(scratch.name) / "search.ckpt"
        try:
            result = run_search(layout, data, latency_model, config, progress=progress, checkpoint_path=checkpoint_path)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    summary: dict[str, Any] = {"arch": result.arch.to_dict(), "expected_latency_ms": round(result.expected_latency_ms, 6),
                               "holdout_accuracy": round(result.holdout_accuracy, 4), "target_ms": target_ms}
    if tune_trials:
        summary["tune"] = _tune(layout, data, latency_model, config, checkpoint_path, summary, tune_trials,
                                tune_epochs, target_ms, seed, quiet=as_json)
        if summary["tune"]["used_trial"]:
            summary.update({k: summary["tune"][k] for k in ("arch", "expected_latency_ms", "holdout_accuracy")})
            result = replace(result, arch=Arch.from_dict(summary["arch"]),
                             expected_latency_ms=summary["expected_latency_ms"],
                             holdout_accuracy=summary["holdout_accuracy"])
    scratch.cleanup()
    if out is not None:
        out.write_text(result.arch.to_json() + "\n")
    if as_json:
        _echo_json(summary)
        return
    if tune_trials:
        t = summary["tune"]
        click.echo(f"tuning: {t['trials']} trials; best {t['best_params']} "
                   f"({'used' if t['used_trial'] else 'the searched network stays: no trial beat it'})")
    click.echo(f"architecture: {' '.join(result.arch.blocks)}")
    click.echo(f"expected latency: {result.expected_latency_ms:.3f} ms (target {target_ms} ms)")
    click.echo(f"held-out accuracy: {result.holdout_accuracy:.4f} ({len(data.y_holdout)} images)")
    if out is not None:
        click.echo(f"written to {out}")


def _loss_for_target(asked: str, layout: Any, latency_model: Any, target_ms: float, *, quiet: bool) -> str:
    """The loss to search with, checked against the space's latency range before any search runs
    (as a job's profile and search stages do), so a target far above the space fails with the
    range instead of a ValueError mid-search."""
    from automl_server.engine.search_plan import latency_range_ms, loss_kind_for, mul_log_refusal

    try:
        fastest, slowest = latency_range_ms(layout, latency_model)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if asked == "mul#log":
        refusal = mul_log_refusal(target_ms, fastest, slowest)
        if refusal is not None:
            raise click.UsageError(refusal)
        return asked
    if asked != "auto":
        return asked
    chosen = loss_kind_for(target_ms, fastest, slowest)
    if not quiet and chosen == "none":
        click.echo(f"every network of {layout.space!r} meets the target ({fastest:.4g}-{slowest:.4g} ms predicted, "
                   f"target {target_ms:g} ms): accuracy alone counts, the search runs without a latency term", err=True)
    elif not quiet and chosen == "add#linear":
        click.echo(f"target {target_ms:g} ms is far above the space's fastest networks ({fastest:.4g} ms): "
                   "add#linear instead of mul#log, whose logarithm would turn negative", err=True)
    return chosen


def _tune(layout: Any, data: Any, latency_model: Any, config: Any, checkpoint_path: Path, searched: dict[str, Any],
          trials: int, epochs: int, target_ms: float, seed: int, *, quiet: bool) -> dict[str, Any]:
    """Optuna over the searched supernet (engine.tune), with a progress bar per trial."""
    import torch

    from automl_server.engine.tune import Candidate, tune

    warm = torch.load(checkpoint_path, weights_only=False)["net"]
    with tqdm(total=trials, unit="trial", disable=quiet, desc="tune") as bar:
        def on_trial(number: int, candidate: Candidate) -> None:
            bar.update(1)
            bar.set_postfix_str(f"acc {candidate.holdout_accuracy:.3f} lat {candidate.predicted_ms:.3f} ms")

        try:
            outcome = tune(layout, data, latency_model, config, warm,
                           Candidate(searched["arch"], searched["expected_latency_ms"], searched["holdout_accuracy"]),
                           trials=trials, epochs=epochs, target_ms=target_ms, seed=seed, study_name="cli-tune",
                           on_trial=on_trial)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    return {"arch": outcome.chosen.arch, "expected_latency_ms": outcome.chosen.predicted_ms,
            "holdout_accuracy": round(outcome.chosen.holdout_accuracy, 4), "used_trial": outcome.used_trial,
            "best_params": outcome.best_params, "best_value": outcome.best_value,
            "searched_value": outcome.searched_value, "trials": outcome.trials}
