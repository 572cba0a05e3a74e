"""FedGKT's losses (He et al. 2020, eqs. 5-7; reference: FedML ``KL_Loss``).

KD_T(z, z_t) = T^2 * KL(softmax(z_t / T) || softmax(z / T)), averaged over the
batch: the student's logits z are pulled towards the teacher's z_t; the T^2
keeps the gradient's scale independent of the temperature (Hinton et al.).
The teacher's logits are constants (no gradient flows into them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch."""
    teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    student_log = F.log_softmax(student_logits / temperature, dim=1)
    # sum over classes, mean over samples ("batchmean"): the KL of each sample, averaged
    return temperature ** 2 * F.kl_div(student_log, teacher, reduction="batchmean")


def client_loss(logits: torch.Tensor, labels: torch.Tensor, server_logits: torch.Tensor | None,
                temperature: float, alpha: float) -> torch.Tensor:
    """CE(z_c, y) + alpha * KD_T(z_c, z_s); the KD term only once the server has sent logits."""
    loss = F.cross_entropy(logits, labels)
    if server_logits is not None:
        loss = loss + alpha * kd_loss(logits, server_logits, temperature)
    return loss


def server_loss(logits: torch.Tensor, labels: torch.Tensor, client_logits: torch.Tensor,
                temperature: float, alpha: float) -> torch.Tensor:
    """KD_T(z_s, z_c) + alpha * CE(z_s, y): on the server the alpha weighs the CE term (paper, eq. 7)."""
    return kd_loss(logits, client_logits, temperature) + alpha * F.cross_entropy(logits, labels)
