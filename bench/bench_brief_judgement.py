"""How random search judges a briefly trained network (issue 17, the random search
baseline): holdout accuracy in eval mode against holdout accuracy with BatchNorm
statistics recomputed on training images (``engine/baselines.brief_holdout_accuracy``,
as the search judges its derived path), each compared with the network's test accuracy
after a full training.

Networks drawn uniformly from the space; each trained ``--brief-epochs`` (the judgement)
and, from the same initial weights, ``--full-epochs`` (what the judgement should
predict). Data: the bundled digits, split as a job splits them (a fifth for the test, a
fifth of the rest for the holdout). Prints one line per network, then the Spearman rank
correlation of each judgement with the full training's test accuracy and the full
accuracy of the network each judgement would keep.

    .venv/bin/python bench/bench_brief_judgement.py --space tiny --networks 14 --seed 0
"""
from __future__ import annotations

import argparse
import copy
import statistics

import numpy as np
import torch
from scipy.stats import spearmanr

from automl_server.cli.engine_cmds import load_dataset
from automl_server.engine.baselines import brief_holdout_accuracy
from automl_server.engine.data import split_arrays
from automl_server.engine.train.standard import StandardConfig, evaluate, train_standard
from automl_server.jobs.validate import job_splits
from search_spaces import build_model, sample_archs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--networks", type=int, default=14)
    parser.add_argument("--brief-epochs", type=int, default=2)
    parser.add_argument("--full-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x, y, _classes = load_dataset("digits")
    train, holdout, test = job_splits(y, args.seed)
    data = split_arrays(x, y, train_idx=train, holdout_idx=holdout)
    x_test, y_test = data.normalise(x[test]), torch.from_numpy(y[test].astype(np.int64))
    steps = -(-len(data.y_train) // 64)
    print(f"digits: {len(data.y_train)} training images ({steps} steps an epoch), {len(data.y_holdout)} holdout, "
          f"{len(test)} test; {args.space}, {args.brief_epochs} brief epochs, {args.full_epochs} full", flush=True)

    eval_mode, recalibrated, full = [], [], []
    for arch in sample_archs(args.space, args.networks, seed=args.seed, resolution=8, num_classes=10,
                             in_channels=1):
        torch.manual_seed(args.seed)
        model = build_model(arch)
        initial = copy.deepcopy(model.state_dict())
        history = train_standard(model, data, StandardConfig(epochs=args.brief_epochs, seed=args.seed)).history
        eval_mode.append(float(history[-1]["holdout_accuracy"]))
        recalibrated.append(brief_holdout_accuracy(model, data))
        model.load_state_dict(initial)
        train_standard(model, data, StandardConfig(epochs=args.full_epochs, seed=args.seed))
        full.append(evaluate(model, x_test, y_test))
        print(f"{' '.join(arch.blocks)}: eval mode {eval_mode[-1]:.3f}, recalibrated {recalibrated[-1]:.3f}; "
              f"after {args.full_epochs} epochs test {full[-1]:.3f}", flush=True)

    for name, scores in (("eval mode", eval_mode), ("recalibrated", recalibrated)):
        kept = full[int(np.argmax(scores))]  # ties: the first drawn, as random search keeps it
        print(f"{name}: Spearman with the full test accuracy {spearmanr(scores, full).correlation:+.2f}; "
              f"keeps a network of test accuracy {kept:.3f}")
    print(f"the networks' full test accuracy: best {max(full):.3f}, mean {statistics.mean(full):.3f}")


if __name__ == "__main__":
    main()
