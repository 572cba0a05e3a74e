"""ProxylessNAS mixed edge: architecture logits, binary gates, path sampling.

One ``MixedOp`` holds the candidate ops of one searchable cell. Only the
sampled (active) op runs forward, so activation memory does not grow with the
number of candidates (the point of ProxylessNAS over DARTS). In the two-path
architecture step a custom autograd function produces the gate gradients
dL/dg_k = sum(out_k * grad_out) of both sampled ops; ``set_alpha_grad`` maps
them onto alpha and ``rescale_alpha`` keeps the unsampled probabilities fixed.
In that step the expected latency of the cell is taken over the sampled pair
with its renormalised probabilities (the reference's ``current_prob_over_ops``),
so the latency term too reaches only the sampled alphas.
Follows mit-han-lab/proxylessnas ``search/modules/mix_op.py`` (``MixedEdge``,
``ArchGradientFunction``) and the paper (Cai, Zhu, Han, ICLR 2019).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("weights", "two", "fixed", "random")
ZERO_BLOCK = "zero"
ALPHA_INIT_STD = 1e-3  # the reference's arch_init_ratio: alpha ~ N(0, 1e-3)


class _TwoPathGates(torch.autograd.Function):
    """Runs only the active op; backward also yields the sampled gates' grads.

    Forward: out = op_active(x) (its gate is 1, so the product is skipped).
    Backward: grad_x flows through the active op's saved graph; for every
    sampled k, dL/dg_k = sum(out_k * grad_out), the inactive op re-run under
    no_grad on the saved input. As in the reference, only the input receives a
    gradient: the architecture step leaves weight gradients untouched.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        gates: torch.Tensor,
        ops: nn.ModuleList,
        active: int,
        sampled: tuple[int, ...],
    ) -> torch.Tensor:
        x_detached = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = ops[active](x_detached)
        ctx.ops, ctx.active, ctx.sampled = ops, active, sampled
        ctx.gate_meta = (gates.shape, gates.dtype, gates.device)
        # Saving `out` (not a copy) means an in-place edit of the returned
        # tensor trips autograd's version check instead of corrupting g_active.
        ctx.save_for_backward(x_detached, out)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_detached, out = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0] and out.requires_grad:
            # The Zero op's output is not connected to x: allow_unused gives None (= 0).
            (grad_x,) = torch.autograd.grad(out, x_detached, grad_out, allow_unused=True)
        gate_grads = None
        if ctx.needs_input_grad[1]:
            shape, dtype, device = ctx.gate_meta
            gate_grads = torch.zeros(shape, dtype=dtype, device=device)
            # Train-mode BatchNorm in the re-run inactive op normalises with this
            # batch's statistics (and updates its running stats), as in the reference.
            with torch.no_grad():
                for k in ctx.sampled:
                    out_k = out if k == ctx.active else ctx.ops[k](x_detached.detach())
                    gate_grads[k] = torch.sum(out_k * grad_out)
        return grad_x, gate_grads, None, None, None


class MixedOp(nn.Module):
    """A searchable cell's candidates with ProxylessNAS binary gates.

    Modes: ``"weights"`` samples one path from softmax(alpha) (weight step);
    ``"two"`` samples two distinct paths and produces their gate gradients
    (architecture step); ``"fixed"`` runs ``active_index`` (set it, or call
    ``fix_chosen``); ``"random"`` samples uniformly (warm-up).
    """

    gates: torch.Tensor  # a buffer (register_buffer in __init__); declared so it types as a Tensor

    def __init__(self, candidates: Sequence[str], ops: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(candidates) == 0:
            raise ValueError("MixedOp needs at least one candidate, got none")
        if len(candidates) != len(ops):
            raise ValueError(
                f"MixedOp got {len(candidates)} candidate names but {len(ops)} ops; "
                "pass one op per candidate, in the same order"
            )
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"MixedOp candidates must be distinct, got {list(candidates)}")
        self.candidates: tuple[str, ...] = tuple(candidates)
        self.ops = nn.ModuleList(ops)
        self.alpha = nn.Parameter(torch.randn(len(ops)) * ALPHA_INIT_STD)
        # A buffer, not a Parameter, so that weight_parameters() and optimizers
        # never see it; non-persistent because it is per-step state.
        self.register_buffer("gates", torch.zeros(len(ops)), persistent=False)
        self._mode = "weights"
        self._active_index = 0
        self.sampled: tuple[int, ...] = (0,)
        self._gate_leaf: torch.Tensor | None = None  # gates with grad, two-path mode only
        self._alpha_update_skipped = False
        self.active_index = 0

    # -- state -------------------------------------------------------------

    @property
    def n_choices(self) -> int:
        return len(self.ops)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown MixedOp mode {mode!r}; accepted: {', '.join(MODES)}")
        self._mode = mode

    @property
    def active_index(self) -> int:
        return self._active_index

    @active_index.setter
    def active_index(self, index: int) -> None:
        # Setting it (e.g. in "fixed" mode) keeps the binary gates in step.
        index = int(index)
        if not 0 <= index < self.n_choices:
            raise ValueError(
                f"active_index {index} out of range: {self.n_choices} candidates {list(self.candidates)}"
            )
        self._active_index = index
        self.gates.zero_()
        self.gates[index] = 1.0

    @property
    def active_op(self) -> nn.Module:
        return self.ops[self.active_index]

    def is_zero_active(self) -> bool:
        return self.candidates[self.active_index] == ZERO_BLOCK

    @property
    def gate_grad(self) -> torch.Tensor | None:
        """dL/dg from the last two-path backward (None before one ran)."""
        return None if self._gate_leaf is None else self._gate_leaf.grad

    def probs(self) -> torch.Tensor:
        """softmax(alpha): the probability of each candidate, differentiable."""
        return F.softmax(self.alpha, dim=0)

    def log_prob(self) -> torch.Tensor:
        """log p(active op), differentiable in alpha (for REINFORCE-style updates)."""
        return F.log_softmax(self.alpha, dim=0)[self.active_index]

    def chosen_index(self) -> int:
        return int(torch.argmax(self.alpha.detach()).item())

    def chosen(self) -> str:
        """The most probable candidate's block string."""
        return self.candidates[self.chosen_index()]

    def fix_chosen(self) -> None:
        """Switch to "fixed" mode on the argmax candidate (validation of the derived net)."""
        self.mode = "fixed"
        self.active_index = self.chosen_index()
        self.sampled = (self.active_index,)

    # -- sampling ------------------------------------------------------------

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Binarize the gates according to the mode (a no-op draw in "fixed")."""
        self._gate_leaf = None
        self._alpha_update_skipped = False
        if self._mode == "fixed":
            self.sampled = (self.active_index,)
        elif self._mode == "random":
            device = generator.device if generator is not None else self.alpha.device
            self.active_index = int(torch.randint(self.n_choices, (1,), generator=generator, device=device))
            self.sampled = (self.active_index,)
        elif self._mode == "weights":
            probs = self._sampling_probs(generator)
            self.active_index = int(torch.multinomial(probs, 1, generator=generator))
            self.sampled = (self.active_index,)
        else:  # "two"
            self._sample_two(generator)

    def _sampling_probs(self, generator: torch.Generator | None) -> torch.Tensor:
        probs = self.probs().detach()
        # multinomial wants the generator and the tensor on the same device.
        return probs if generator is None else probs.to(generator.device)

    def _sample_two(self, generator: torch.Generator | None) -> None:
        if self.n_choices < 2:
            # One candidate: nothing to compare, so its gate gradient maps to 0.
            self.active_index, self.sampled = 0, (0,)
        else:
            probs = self._sampling_probs(generator)
            pair = torch.multinomial(probs, 2, replacement=False, generator=generator)
            pair_probs = F.softmax(self.alpha.detach()[pair.to(self.alpha.device)], dim=0)
            pick = int(torch.multinomial(pair_probs.to(probs.device), 1, generator=generator))
            self.sampled = (int(pair[0]), int(pair[1]))
            self.active_index = self.sampled[pick]
        gate_leaf = torch.zeros_like(self.alpha.detach())
        gate_leaf[self.active_index] = 1.0
        # Created here rather than per forward so that several forwards of one
        # sample (gradient accumulation) add into the same gate gradient.
        self._gate_leaf = gate_leaf.requires_grad_(True)

    # -- forward -----------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "two" and torch.is_grad_enabled():
            if self._gate_leaf is None:
                raise RuntimeError('MixedOp in "two" mode: call sample() in that mode before forward()')
            if len(self.sampled) == 2:
                return _TwoPathGates.apply(x, self._gate_leaf, self.ops, self.active_index, self.sampled)
        # Gate value 1 on the active path: out = 1 * op(x); the other paths
        # contribute 0 and are not run, so nothing of theirs is saved.
        return self.ops[self.active_index](x)

    # -- architecture update -------------------------------------------------

    def set_alpha_grad(self) -> None:
        """Map the gate gradients onto alpha.grad (accumulating), two-path mode.

        dL/dalpha_i += sum_j dL/dg_j * p_j * (delta_ij - p_i) for i, j in the
        sampled pair S, with p = softmax(alpha[S]); entries outside S get 0.
        When the Zero op is the active one the block's update is skipped, as in
        the reference: alpha.grad is set to None, which also drops the latency
        term's gradient for this step, and optimizers skip the parameter.
        """
        if self._mode != "two":
            raise RuntimeError(
                f'set_alpha_grad needs mode "two" (gate gradients of a sampled pair), mode is {self._mode!r}'
            )
        if self.is_zero_active():
            self.alpha.grad = None
            self._alpha_update_skipped = True
            return
        if self.alpha.grad is None:
            self.alpha.grad = torch.zeros_like(self.alpha)
        gate_grad = self.gate_grad
        if gate_grad is None or len(self.sampled) < 2:
            return  # no backward through this op (or a single candidate): nothing to add
        idx = torch.tensor(self.sampled, device=self.alpha.device)
        p = F.softmax(self.alpha.detach()[idx], dim=0)
        g = gate_grad.detach()[idx].to(p.dtype)
        # sum_j g_j p_j (delta_ij - p_i) = g_i p_i - p_i * sum_j g_j p_j
        self.alpha.grad[idx] += p * g - p * torch.dot(g, p)

    def rescale_alpha(self, alpha_before: torch.Tensor) -> None:
        """Shift the sampled alphas so that unsampled probabilities do not move.

        offset = ln(sum_S exp(alpha_new) / sum_S exp(alpha_old)), alpha[S] -= offset.
        Call after the optimizer step in two-path mode, with a copy of alpha
        taken before it. Does nothing when set_alpha_grad skipped the update
        (Zero active). The unsampled alphas get no gradient in this step (the
        latency term too is taken over the sampled pair, see
        ``expected_latency``), so Adam leaves them, and after the shift every
        unsampled probability is what it was, as in the reference.
        """
        if self._alpha_update_skipped or len(self.sampled) < 2:
            return
        idx = torch.tensor(self.sampled, device=self.alpha.device)
        with torch.no_grad():
            new = self.alpha[idx]
            old = alpha_before.detach().to(self.alpha)[idx]
            # logsumexp difference == ln of the ratio of sums, without overflow.
            offset = torch.logsumexp(new, dim=0) - torch.logsumexp(old, dim=0)
            self.alpha[idx] = new - offset

    def path_probs(self) -> torch.Tensor:
        """The probabilities the latency term weighs each candidate by, differentiable in alpha.

        In a two-path step (mode "two", a pair sampled): softmax over the two
        sampled alphas at their places and 0 elsewhere, as the reference's
        ``binarize`` sets ``current_prob_over_ops``; otherwise softmax(alpha).
        """
        if self._mode != "two" or len(self.sampled) < 2:
            return self.probs()
        idx = torch.tensor(self.sampled, device=self.alpha.device)
        return torch.zeros_like(self.alpha).index_put((idx,), F.softmax(self.alpha[idx], dim=0))

    def expected_latency(self, latencies_ms: torch.Tensor, *, sampled_pair: bool = False) -> torch.Tensor:
        """sum_j p_j * latencies_ms[j], a tensor differentiable in alpha.

        p = softmax(alpha) (the whole cell's expectation: reports, derivation);
        with ``sampled_pair`` p = ``path_probs()``, the renormalised sampled
        pair in a two-path step (the architecture step's latency term, as in
        the reference). latencies_ms holds one value per candidate (0 for Zero).
        """
        if latencies_ms.shape != (self.n_choices,):
            raise ValueError(
                f"expected_latency needs one latency per candidate ({self.n_choices}), "
                f"got shape {tuple(latencies_ms.shape)}"
            )
        probs = self.path_probs() if sampled_pair else self.probs()
        return torch.sum(probs * latencies_ms.to(self.alpha))

    def extra_repr(self) -> str:
        return f"candidates={list(self.candidates)}, mode={self._mode!r}"
