"""Does the supernet learn when its path changes every step? (README, issue 17 section.)

Trains the engine's ``SuperNet`` on digits at 8 px with the search's weight
optimiser (SGD lr 0.025, Nesterov, label smoothing 0.1, batch 64) and prints
the training accuracy per epoch, for a path chosen in one of these ways:

    fixed        one path (seeded sample of the space) for the whole run
    plain        the same path built as a plain network (build_model)
    random       a uniformly random candidate in every cell, every step (the warm-up)
    random-cell  random in one cell only (--cell), the others fixed to candidate 0
    progressive  random in the first k cells, the rest fixed to the seeded path; k grows from 1 to
                 every cell over the first --ramp share of the steps, then every cell is random

    .venv/bin/python bench/probe_supernet_sampling.py random --epochs 25
    .venv/bin/python bench/probe_supernet_sampling.py random-cell --cell 5 --epochs 4

Not a test: it prints what happens, side by side runs are yours to compare.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from automl_server.engine.supernet import SuperNet
from search_spaces import build_model, get_space, sample_archs

SPACE, RESOLUTION = "proxyless-mobile", 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("how", choices=("fixed", "plain", "random", "random-cell", "progressive"))
    parser.add_argument("--ramp", type=float, default=0.7, help="progressive: share of the steps to reach all cells")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cell", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.025)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:1100]
    x_train, y_train = x[order], y[order]
    layout = get_space(SPACE).layout(resolution=RESOLUTION, num_classes=10, in_channels=1)
    arch = sample_archs(SPACE, 1, seed=3, resolution=RESOLUTION, num_classes=10, in_channels=1)[0]
    torch.manual_seed(0)
    supernet = SuperNet(layout)
    net: nn.Module = build_model(arch) if args.how == "plain" else supernet
    params = list(net.parameters()) if args.how == "plain" else supernet.weight_parameters()
    chosen = [list(cell.candidates).index(block) for cell, block in zip(layout.cells, arch.blocks)]
    supernet.set_mode("fixed" if args.how == "fixed" else "random")
    for mixed, index in zip(supernet.mixed_ops, chosen):
        mixed.active_index = index
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    generator = torch.Generator().manual_seed(1)

    steps_per_epoch = -(-len(y_train) // 64)
    total_steps, step = args.epochs * steps_per_epoch, 0

    def resample() -> None:
        if args.how == "random":
            supernet.sample(generator)
        elif args.how == "progressive":
            cells = len(supernet.mixed_ops)
            k = min(cells, 1 + int(cells * step / max(1.0, args.ramp * total_steps)))
            for i, (mixed, index) in enumerate(zip(supernet.mixed_ops, chosen)):
                if i < k:
                    mixed.sample(generator)
                else:
                    mixed.active_index, mixed.sampled = index, (index,)
        elif args.how == "random-cell":
            for i, mixed in enumerate(supernet.mixed_ops):
                if i == args.cell:
                    mixed.sample(generator)
                else:
                    mixed.active_index, mixed.sampled = 0, (0,)

    for epoch in range(args.epochs):
        net.train()
        shuffle = torch.randperm(len(y_train))
        right = seen = 0
        for start in range(0, len(y_train), 64):
            resample()
            step += 1
            batch = shuffle[start:start + 64]
            logits = net(x_train[batch])
            loss = F.cross_entropy(logits, y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            right += int((logits.argmax(1) == y_train[batch]).sum())
            seen += len(batch)
        print(f"{args.how} epoch {epoch + 1}: training accuracy {right / seen:.3f}")
    if args.how in ("random", "progressive"):
        # What a search's accuracy signal rests on: random paths, batch statistics as in training.
        right = seen = 0
        with torch.no_grad():
            for _ in range(5):
                supernet.sample(generator)
                for start in range(0, len(y_train), 256):
                    logits = net(x_train[start:start + 256])
                    right += int((logits.argmax(1) == y_train[start:start + 256]).sum())
                    seen += len(logits)
        print(f"{args.how}: training accuracy of random paths after training {right / seen:.3f}")


if __name__ == "__main__":
    main()
