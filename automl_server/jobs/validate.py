"""Stage "validate": re-read the stored dataset, check it is intact, compute
statistics and the fixed train / holdout / test split every later stage shares."""
from __future__ import annotations

from typing import Any

import numpy as np

from automl_server.datasets.ingest import DatasetRejected, UploadLimits, load_arrays
from automl_server.db.models import Dataset, Job
from automl_server.files import sha256_of
from automl_server.jobs.context import StageContext, StageFailed

TEST_FRACTION = 0.2
HOLDOUT_FRACTION = 0.2


def job_splits(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A job's three disjoint splits of its labels, as (train, holdout, test) indices:
    "test" is never seen before the final evaluation; "holdout" drives the architecture
    steps and model selection; "train" the weights. Stratified, a fixed function of ``seed``."""
    # Imported here: the engine pulls in torch, which the web process does not need.
    from automl_server.engine.data import stratified_split

    rest_idx, test_idx = stratified_split(y, holdout=TEST_FRACTION, seed=seed)
    train_sub, holdout_sub = stratified_split(y[rest_idx], holdout=HOLDOUT_FRACTION, seed=seed + 1)
    return rest_idx[train_sub], rest_idx[holdout_sub], test_idx


def validate_dataset(ctx: StageContext) -> dict[str, Any]:
    """Re-read the stored dataset, check it is intact, compute statistics and a
    fixed train / held-out split that the search and training stages share."""
    with ctx.db.session() as session:
        job = session.get_one(Job, ctx.job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise StageFailed(f"dataset {job.dataset_name!r} was deleted; submit the job again with another dataset")
        stored_path = ctx.settings.data_dir / dataset.file_path
        expected_sha, fmt, seed = dataset.sha256, dataset.format, int(job.params.get("seed", 0))
    if not stored_path.exists():
        raise StageFailed(f"the file of dataset {job.dataset_name!r} is missing from {stored_path}")
    ctx.progress(0.1, "checking dataset checksum")
    if sha256_of(stored_path) != expected_sha:
        raise StageFailed(f"dataset {job.dataset_name!r} changed on disk since upload (SHA-256 mismatch)")
    ctx.progress(0.3, "decoding images")
    limits = UploadLimits(
        max_upload_bytes=ctx.settings.max_upload_bytes,
        max_uncompressed_bytes=ctx.settings.max_uncompressed_bytes,
        max_entries=ctx.settings.max_archive_entries,
    )
    try:
        x, y, classes = load_arrays(stored_path, fmt, limits)
    except DatasetRejected as exc:
        raise StageFailed(f"dataset {job.dataset_name!r} no longer validates: {exc.detail}") from exc
    ctx.progress(0.7, "computing statistics", samples=int(len(y)))
    pixels = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    counts = np.bincount(y, minlength=len(classes))
    train_idx, holdout_idx, test_idx = job_splits(y, seed)
    arrays_path = ctx.job_dir() / "dataset.npz"
    tmp_path = arrays_path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp_path, x=x, y=y, classes=np.array(classes), train_idx=train_idx, holdout_idx=holdout_idx,
        test_idx=test_idx,
    )
    tmp_path.replace(arrays_path)  # atomic: a re-run never leaves half a file
    stats = {
        "num_samples": int(len(y)),
        "num_classes": len(classes),
        "class_counts": {name: int(n) for name, n in zip(classes, counts)},
        "image_shape": [int(d) for d in x.shape[1:]],
        "pixel_mean": [round(float(v), 6) for v in pixels.mean(axis=0)],
        "pixel_std": [round(float(v), 6) for v in pixels.std(axis=0)],
        "train_samples": int(len(train_idx)),
        "holdout_samples": int(len(holdout_idx)),
        "test_samples": int(len(test_idx)),
        "imbalance_ratio": round(float(counts.max() / max(counts.min(), 1)), 4),
    }
    ctx.store_artifact("arrays", arrays_path)
    ctx.event("metric", "dataset statistics", **stats)
    return stats
