"""``python -m device_agents.ort_training --model m.onnx --trainable a,b --data d.npz --steps N
--lr X --batch B --out result.json``: generate the training artifacts (in a child process, so
that the peak memory reported is the fine-tune's alone) and run the steps."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from device_agents.ort_training.artifacts import ArtifactPaths
from device_agents.ort_training.finetune import fine_tune


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device_agents.ort_training", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="inference ONNX model (float initializers)")
    parser.add_argument("--trainable", required=True, help="comma-separated initializer names to train")
    parser.add_argument("--data", type=Path, required=True, help=".npz with x (float32 NCHW) and y (int64)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="folder for the training artifacts (default: a temporary one)")
    parser.add_argument("--params-out", type=Path, default=None,
                        help="also write every checkpoint parameter after training to this .npz")
    return parser


def _generate_in_child(model: Path, trainable: str, out_dir: Path) -> None:
    command = [sys.executable, "-m", "device_agents.ort_training.artifacts", str(model), str(out_dir), trainable]
    # Its log goes to a file, shown only on failure: the gradient graph builder logs every
    # optimizer pass at INFO whatever the session's severity.
    with tempfile.TemporaryFile(mode="w+") as log:
        child = subprocess.Popen(command, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
        try:
            code = child.wait()
        finally:
            if child.poll() is None:  # interrupted while waiting: leave no child behind
                child.kill()
                child.wait()
        if code != 0:
            log.seek(0)
            tail = log.read()[-4000:]
            raise SystemExit(f"generating the training artifacts failed (exit {code}):\n{tail}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with np.load(args.data) as data:
        x, y = data["x"].astype(np.float32, copy=False), data["y"].astype(np.int64, copy=False)
    with tempfile.TemporaryDirectory(prefix="ort-training-") as scratch:
        folder = args.artifacts or Path(scratch)
        _generate_in_child(args.model, args.trainable, folder)
        run = fine_tune(ArtifactPaths(folder), x, y, steps=args.steps, lr=args.lr, batch=args.batch)
    import onnxruntime

    result = {"runtime": f"onnxruntime-training {onnxruntime.__version__}", "lr": args.lr, "batch": args.batch,
              "samples": len(y), **run.to_dict()}
    args.out.write_text(json.dumps(result, indent=1))
    if args.params_out is not None:
        savez: Any = np.savez  # its stubs read a parameter named "allow_pickle" into **kwargs
        savez(args.params_out, **run.parameters)


if __name__ == "__main__":
    main()
