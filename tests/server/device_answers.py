"""Rewriting a device's answers by the answer file they are for, in tests of the stages that
time networks (fit, verify, baselines): everything but the figure stays the real path (the
agent's real measurement, eager Celery)."""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

# rewrite(result file being answered, or None for an answer sent by another module; the
# paced answer) -> the answer the service records.
Rewrite = Callable[["str | None", dict[str, Any]], dict[str, Any]]


def rewrite_answers(monkeypatch: pytest.MonkeyPatch, sender: ModuleType, rewrite: Rewrite) -> None:
    """Wrap ``sender.send_measurement`` so that ``paced_measurement`` knows which result file it
    answers (an eager Celery answers inside the send), and record ``rewrite``'s answer."""
    import automl_server.profiling as profiling

    real_paced, real_send, sending = profiling.paced_measurement, sender.send_measurement, []

    def send(ctx: Any, target: Any, arch: Any, exported: Any, result_file: str) -> None:
        sending.append(result_file)
        try:
            real_send(ctx, target, arch, exported, result_file)
        finally:
            sending.pop()

    def paced(db: Any, payload: dict[str, Any]) -> dict[str, Any]:
        answer = real_paced(db, payload)
        return answer if "error" in answer else rewrite(sending[-1] if sending else None, answer)

    monkeypatch.setattr(sender, "send_measurement", send)
    monkeypatch.setattr(profiling, "paced_measurement", paced)
