"""The registered pipeline through Flower's real processes: SuperLink, two SuperNodes, ServerApp, ClientApps."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from automl_server.engine.train.registry import PipelineInputs, get_pipeline
from search_spaces import build_model

from .conftest import tiny_arch

SMALL = {"clients": 2, "rounds": 2, "baselines": False, "server_width_mult": 1, "server_depth_mult": 1}


class Cancelled(Exception):
    pass


class FakeCallbacks:
    def __init__(self, cancel_after_checks: int | None = None) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.progress_rows: list[float] = []
        self.checks = 0
        self.cancel_after_checks = cancel_after_checks

    def progress(self, fraction: float, message: str, *, eta_s: float | None = None, **data: Any) -> None:
        self.progress_rows.append(fraction)

    def metric(self, message: str, **data: Any) -> None:
        self.metrics.append(data)

    def log(self, message: str, **data: Any) -> None:
        pass

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_after_checks is not None and self.checks > self.cancel_after_checks:
            raise Cancelled

    def should_stop(self) -> bool:
        return False

    def store_artifact(self, kind: str, path: Path) -> None:
        pass


def inputs_for(digits, work_dir: Path) -> PipelineInputs:  # type: ignore[no-untyped-def]
    arch = tiny_arch(digits)
    torch.manual_seed(0)
    return PipelineInputs(arch, build_model(arch), digits, digits.x_holdout, digits.y_holdout, epochs=1,
                          batch_size=32, seed=0, work_dir=work_dir)


def processes_mentioning(text: str) -> list[str]:
    """Command lines or environments of live processes naming ``text`` (our run's children carry FLWR_HOME)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                zombie = fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (text.encode() in environ or text.encode() in cmdline):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.timeout(240)
def test_two_clients_train_through_flower_and_account_every_byte_they_send(digits, tmp_path):
    pipeline = get_pipeline("fedgkt")
    callbacks = FakeCallbacks()
    inputs = inputs_for(digits, tmp_path)

    outcome = pipeline.run(inputs, pipeline.parse(SMALL), callbacks)

    rounds = [m for m in callbacks.metrics if m.get("phase") == "fedgkt"]
    assert [m["round"] for m in rounds] == [1, 2] and callbacks.progress_rows[-1] == 1.0
    assert all(len(m["client_accuracy"]) == 2 and m["server_accuracy"] is not None for m in rounds)
    first, second = outcome.history
    for row in outcome.history:
        for client in row["clients"]:
            assert client["bytes_up"] == client["bytes_up_sent"] > 0  # received == what the client sent
    for before, after in zip(first["clients"], second["clients"]):
        assert after["bytes_down_received"] == after["bytes_down_sent"] == before["bytes_down"] > 0
    report = outcome.report
    assert report["rounds"] == 2 and len(report["client_histograms"]) == 2
    assert sum(map(sum, report["client_histograms"])) == len(digits.y_train)
    assert report["edge_macs"] < report["server_size_model_macs"] and report["exported_client"] in (0, 1)
    assert outcome.model is inputs.model and outcome.model(digits.x_holdout[:3]).shape == (3, 10)
    assert processes_mentioning(str(tmp_path)) == []

    again = FakeCallbacks()  # a finished run is not started again (a resumed stage after the last round)
    pipeline.run(inputs_for(digits, tmp_path), pipeline.parse(SMALL), again)
    assert [m for m in again.metrics if m.get("phase") == "fedgkt"] == []


@pytest.mark.timeout(120)
def test_cancel_ends_every_flower_process(digits, tmp_path):
    pipeline = get_pipeline("fedgkt")

    with pytest.raises(Cancelled):
        pipeline.run(inputs_for(digits, tmp_path), pipeline.parse(SMALL), FakeCallbacks(cancel_after_checks=10))

    assert (tmp_path / "fedgkt" / "logs" / "supernode-1.log").exists()  # the processes had started
    assert processes_mentioning(str(tmp_path)) == []
