"""The two collectives the update rules need, asynchronous, behind one small protocol.

``TorchCollective`` runs them on torch.distributed (gloo or NCCL) with
``async_op=True``; ``ThreadCollective`` runs J workers as threads of one process
with the same semantics (a result exists once every rank has contributed), so
the update rules can be tested step by step without starting processes.
Each call takes ownership of the tensor it is given: the caller hands over a
fresh buffer and never touches it while the operation is in flight.
"""
from __future__ import annotations

import threading
from typing import Protocol

import torch
import torch.distributed as dist


class Pending(Protocol):
    def wait(self) -> list[torch.Tensor]:
        """Block until the collective is done; its result (see the collective)."""


class Collective(Protocol):
    rank: int
    world_size: int

    def all_reduce_sum(self, buffer: torch.Tensor) -> Pending:
        """Start summing ``buffer`` over ranks; ``wait()`` gives ``[sum]``."""

    def all_gather(self, buffer: torch.Tensor) -> Pending:
        """Start gathering equally-sized ``buffer`` of every rank; ``wait()`` gives one per rank."""


class _TorchPending:
    def __init__(self, work: dist.Work, result: list[torch.Tensor]) -> None:
        self.work, self.result = work, result

    def wait(self) -> list[torch.Tensor]:
        self.work.wait()
        return self.result


class TorchCollective:
    """torch.distributed's default process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_reduce_sum(self, buffer: torch.Tensor) -> Pending:
        work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, async_op=True)
        assert work is not None
        return _TorchPending(work, [buffer])

    def all_gather(self, buffer: torch.Tensor) -> Pending:
        out = [torch.empty_like(buffer) for _ in range(self.world_size)]
        work = dist.all_gather(out, buffer, async_op=True)
        assert work is not None
        return _TorchPending(work, out)


class _Exchange:
    """Shared state of the ranks of a ThreadCollective: the n-th call of every rank meets here."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.cond = threading.Condition()
        self.slots: dict[int, dict[int, torch.Tensor]] = {}


class _ThreadPending:
    def __init__(self, exchange: _Exchange, seq: int, reduce: bool, timeout_s: float) -> None:
        self.exchange, self.seq, self.reduce, self.timeout_s = exchange, seq, reduce, timeout_s

    def wait(self) -> list[torch.Tensor]:
        ex = self.exchange
        with ex.cond:
            if not ex.cond.wait_for(lambda: len(ex.slots[self.seq]) == ex.world_size, timeout=self.timeout_s):
                raise TimeoutError(f"collective {self.seq} timed out")
            parts = [ex.slots[self.seq][r] for r in range(ex.world_size)]
        if self.reduce:
            total = parts[0].clone()
            for part in parts[1:]:  # rank order: the same sum on every rank
                total += part
            return [total]
        return [p.clone() for p in parts]


class ThreadCollective:
    """One rank of an in-process group; make the group with ``ThreadCollective.group(J)``."""

    def __init__(self, exchange: _Exchange, rank: int, timeout_s: float = 60.0) -> None:
        self.exchange, self.rank, self.world_size = exchange, rank, exchange.world_size
        self.timeout_s = timeout_s
        self._seq = 0

    @classmethod
    def group(cls, world_size: int) -> list[ThreadCollective]:
        exchange = _Exchange(world_size)
        return [cls(exchange, rank) for rank in range(world_size)]

    def _contribute(self, buffer: torch.Tensor, reduce: bool) -> Pending:
        seq, self._seq = self._seq, self._seq + 1
        with self.exchange.cond:
            self.exchange.slots.setdefault(seq, {})[self.rank] = buffer.detach().clone()
            self.exchange.cond.notify_all()
        return _ThreadPending(self.exchange, seq, reduce, self.timeout_s)

    def all_reduce_sum(self, buffer: torch.Tensor) -> Pending:
        return self._contribute(buffer, reduce=True)

    def all_gather(self, buffer: torch.Tensor) -> Pending:
        return self._contribute(buffer, reduce=False)
