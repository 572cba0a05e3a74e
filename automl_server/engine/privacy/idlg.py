"""iDLG's label recovery (Zhao, Mopuri, Bilen, 2020: "iDLG: Improved Deep Leakage
from Gradients"), the fast path for labels.

For one image, cross-entropy and a last linear layer W h + b, the gradient of
row i of W is (p_i - t_i) h. After ReLU/ReLU6 and average pooling h >= 0, and
with a one-hot t only the true class has p_i - t_i < 0: its row is the only
one whose entries are negative, so argmin over rows of the row sum is the
label, with no optimisation at all.

Batch of n: the rows with a negative sum are the classes present (labels as a
set; counts are not recovered). This extension follows the same sign argument
summed over the batch; it can miss a class whose negative term is outweighed
by the other images' positive ones.

Label smoothing (the job's 0.1) breaks the sign argument on a confident
network: the true class's row turns positive once p_true > 1 - s + s / C, and
every other row turns negative once p_j < s / C. The audit reports whether
the label came back rather than assuming it.
"""
from __future__ import annotations

import torch


def idlg_label(last_weight_gradient: torch.Tensor) -> int:
    """The label of a one-image gradient: the row of the classifier's weight gradient with the least sum."""
    if last_weight_gradient.dim() != 2:
        raise ValueError(f"expected the (classes x features) weight gradient, got shape "
                         f"{tuple(last_weight_gradient.shape)}")
    return int(torch.argmin(last_weight_gradient.sum(dim=-1)))


def idlg_label_set(last_weight_gradient: torch.Tensor) -> set[int]:
    """The classes present in a batch's gradient: rows with a negative sum (the least one at least)."""
    sums = last_weight_gradient.sum(dim=-1)
    present = {int(i) for i in torch.nonzero(sums < 0).flatten()}
    return present or {int(torch.argmin(sums))}
