"""Delayed and temporally sparse SGD (Zhu et al., 2019), with optional DGC.

Every worker j takes its own step at once and is corrected later:

    w_{n+1} = w_n - lr * (g_{n,j} - g_{n-d,j} + mean_j g_{n-d})          (delay d)

With a period p the gradients of p steps are accumulated and synchronised
together; when their average arrives the worker's own accumulated
contribution is replaced by it. Both combine: a synchronisation started at
step s is applied at step s + d. d = 0, p = 1 is synchronous SGD.

Momentum. Locally each worker runs momentum SGD (u = m u + g; w -= lr u).
When the average of a period arrives, the local gradients of that period are
replaced by the average in the weights *and in the momentum buffer*, exactly
(every update is linear in the gradients): for the period's gradient sum G and
its momentum-weighted sum e = sum_i m^{s-i} g_i, with Delta = average - local
and age a = n - s,

    w -= lr * (Delta G - m^{a+1} Delta e) / (1 - m)      u += m^a Delta e.

With m = 0 this is the paper's formula above; with d = 0, p = 1 it is
synchronous momentum SGD on the averaged gradient. Deviation: the paper's
momentum compensation is stated in words only ("the momentum buffer is
compensated"); this is the exact replacement. For p > 1 it needs e beside G,
so an uncompressed period sends 2 tensors (for m = 0 or p = 1 only one).

With DGC the compressed tensors (dim > 1) follow DGC instead: the velocity u is
accumulated (v += u), top-k of v is sent as indices + values by all_gather,
and momentum factor masking is DGC's own compensation of the buffer; when the
sparse average arrives it replaces the velocities this worker applied
locally during that period. Indices, values and the uncompressed tensors
travel in one all_gather per synchronisation. Uncompressed tensors (dim <= 1) follow the exact
rule above.

Asynchrony: each synchronisation hands freshly made buffers to the
collective (``async_op``) and keeps its own copies of the local values; the
pending operations wait in a FIFO and are only read after ``wait()``, d steps
later. Nothing handed over is touched while in flight.

Deviation: the correction uses the learning rate of the step it is applied in
(the paper's schedule is constant per phase; with cosine per step the
difference is O(d * lr / steps)).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import nn

from automl_server.engine.train.distributed.collective import Collective, Pending
from automl_server.engine.train.distributed.dgc import Segments, densify, take_sparse


class RuleState(TypedDict):
    """What a checkpoint keeps of a DelayedSparseSGD between epochs."""

    u: torch.Tensor
    velocity_acc: torch.Tensor
    step_index: int


@dataclass
class _InFlight:
    sent_step: int
    due_step: int
    pending: Pending  # all_reduce of [G(, e)], or (compressed) all_gather of [indices | values | G(, e)]
    dense_local: torch.Tensor  # [G] or [G, e] of this worker, as sent
    k: int  # entries sent sparsely (0: uncompressed, the pending op is an all_reduce)
    sparse_local: torch.Tensor | None  # velocities this worker applied during the period (compressed entries)


@dataclass
class StepStats:
    bytes_sent: int = 0  # payload this worker contributed to collectives in the step
    wait_s: float = 0.0  # time blocked waiting for collectives


class FlatParameters:
    """The model's parameters as views of one flat vector, so updates are single ops."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.flat = torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.zeros(0)
        offset, compressible = 0, []
        for p in params:
            n = p.numel()
            p.data = self.flat[offset:offset + n].view_as(p)
            compressible.append((offset, n, p.dim() > 1))
            offset += n
        self.layout = compressible

    def gradient(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                          for p in self.params])


class DelayedSparseSGD:
    """The DTS (+ DGC) update for one worker; ``step`` after each backward pass."""

    def __init__(self, params: list[nn.Parameter], collective: Collective, *, momentum: float = 0.9,
                 weight_decay: float = 0.0, delay: int = 0, period: int = 1, compress: bool = False) -> None:
        self.params = FlatParameters([p for p in params if p.requires_grad])
        self.collective = collective
        self.momentum, self.weight_decay = momentum, weight_decay
        self.delay, self.period = delay, period
        device = self.params.flat.device
        positions = torch.arange(self.params.flat.numel(), device=device)
        is_compressed = torch.zeros(self.params.flat.numel(), dtype=torch.bool, device=device)
        starts, lengths, cursor = [], [], 0
        for offset, n, multi_dim in self.params.layout:
            if compress and multi_dim:
                is_compressed[offset:offset + n] = True
                starts.append(cursor)
                lengths.append(n)
                cursor += n
        self.dense_idx = positions[~is_compressed]
        self.sparse_idx = positions[is_compressed]
        self.segments = Segments(tuple(starts), tuple(lengths))
        self.send_e = momentum > 0 and period > 1
        nd, ns = len(self.dense_idx), len(self.sparse_idx)
        self.u = torch.zeros_like(self.params.flat)  # momentum buffer
        self.grad_sum = torch.zeros(nd, device=device)  # G of the running period
        self.grad_decayed = torch.zeros(nd, device=device)  # e of the running period
        self.velocity_acc = torch.zeros(ns, device=device)  # DGC's v: residual + this period
        self.applied = torch.zeros(ns, device=device)  # velocities applied locally this period
        self.steps_in_period = 0
        self.step_index = 0  # n: steps taken in all
        self.in_flight: deque[_InFlight] = deque()

    @property
    def compressed(self) -> bool:
        return len(self.sparse_idx) > 0

    def step(self, lr: float, density: float | None = None) -> StepStats:
        """Apply this worker's gradient now; start a synchronisation at the end of
        a period; apply the averages that are due (those started d steps ago)."""
        stats = StepStats()
        w, u, m = self.params.flat, self.u, self.momentum
        with torch.no_grad():
            g = self.params.gradient()
            if self.weight_decay:
                g.add_(w, alpha=self.weight_decay)
            u.mul_(m).add_(g)
            w.add_(u, alpha=-lr)
            g_dense = g[self.dense_idx]
            self.grad_sum += g_dense
            self.grad_decayed.mul_(m).add_(g_dense)
            if self.compressed:
                u_sparse = u[self.sparse_idx]
                self.velocity_acc += u_sparse
                self.applied += u_sparse
            self.steps_in_period += 1
            if self.steps_in_period == self.period:
                stats.bytes_sent += self._send(density)
            stats.wait_s += self._apply_due(lr, self.step_index)
        self.step_index += 1
        return stats

    def flush(self, lr: float, density: float | None = None) -> StepStats:
        """Synchronise a partial period and apply everything in flight (an epoch's
        end: checkpoints then hold no message in flight)."""
        stats = StepStats()
        with torch.no_grad():
            if self.steps_in_period:
                self.step_index -= 1  # the partial period belongs to the last step taken
                stats.bytes_sent += self._send(density)
                self.step_index += 1
            stats.wait_s += self._apply_due(lr, self.step_index - 1, everything=True)
        return stats

    def _send(self, density: float | None) -> int:
        dense_local = (torch.cat([self.grad_sum, self.grad_decayed]) if self.send_e else self.grad_sum.clone())
        self.grad_sum.zero_()
        self.grad_decayed.zero_()
        sparse_local, k = None, 0
        if self.compressed:
            if density is None:
                raise ValueError("a compressed update needs the density of this epoch")
            u_sparse = self.u[self.sparse_idx]
            indices, values = take_sparse(self.velocity_acc, u_sparse, self.segments, density)
            self.u[self.sparse_idx] = u_sparse  # masked momentum written back
            k = len(indices)
            # One message per synchronisation (one round trip, not three): the indices'
            # int32 bits, the values, then the small uncompressed tensors. Every worker
            # sends the same k, so all_gather's equal sizes hold. The dense part is
            # gathered too (J copies of a few thousand floats) rather than reduced
            # in a second collective that would pay the latency again.
            payload = torch.cat([indices.to(torch.int32).view(torch.float32), values, dense_local])
            pending = self.collective.all_gather(payload)
            sparse_local, self.applied = self.applied, torch.zeros_like(self.applied)
        else:
            payload = dense_local.clone()  # the collective owns this copy; dense_local stays ours
            pending = self.collective.all_reduce_sum(payload)
        self.in_flight.append(_InFlight(self.step_index, self.step_index + self.delay, pending, dense_local, k,
                                        sparse_local))
        self.steps_in_period = 0
        return payload.numel() * payload.element_size()

    def _apply_due(self, lr: float, now: int, everything: bool = False) -> float:
        waited = 0.0
        w, u, m, world = self.params.flat, self.u, self.momentum, self.collective.world_size
        while self.in_flight and (everything or self.in_flight[0].due_step <= now):
            entry = self.in_flight.popleft()
            started = time.perf_counter()
            result = entry.pending.wait()
            waited += time.perf_counter() - started
            k = entry.k
            if k:
                dense_mean = torch.stack([part[2 * k:] for part in result]).sum(0) / world
                mean_sparse = densify([part[:k].view(torch.int32) for part in result],
                                      [part[k:2 * k] for part in result], len(self.sparse_idx)) / world
                assert entry.sparse_local is not None
                w.index_add_(0, self.sparse_idx, mean_sparse - entry.sparse_local, alpha=-lr)
            else:
                dense_mean = result[0] / world
            age = now - entry.sent_step
            nd = len(self.dense_idx)
            delta_g = dense_mean[:nd] - entry.dense_local[:nd]
            delta_e = dense_mean[nd:] - entry.dense_local[nd:] if self.send_e else delta_g
            w.index_add_(0, self.dense_idx, (delta_g - m ** (age + 1) * delta_e) / (1 - m), alpha=-lr)
            u.index_add_(0, self.dense_idx, delta_e, alpha=m ** age)
        return waited

    def state_dict(self) -> RuleState:
        if self.in_flight or self.steps_in_period:
            raise RuntimeError("flush() before saving: a synchronisation is in flight")
        return {"u": self.u.clone(), "velocity_acc": self.velocity_acc.clone(), "step_index": self.step_index}

    def load_state_dict(self, state: RuleState) -> None:
        self.u.copy_(state["u"])
        self.velocity_acc.copy_(state["velocity_acc"])
        self.step_index = int(state["step_index"])
