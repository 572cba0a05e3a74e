"""The registered pipeline through Flower's real processes: SuperLink, two SuperNodes, ServerApp, ClientApps."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from automl_server.engine.train.registry import PipelineInputs, get_pipeline
from search_spaces import build_model

from .conftest import tiny_arch

# the server model: ResNet-8 over H
SMALL = {"clients": 2, "rounds": 2, "client_epochs": 1, "baselines": False, "server_width_mult": 4, "server_depth_mult": 1}


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


class BudgetCallbacks(FakeCallbacks):
    """The job's time budget is spent once a round of this stage has been reported."""

    def should_stop(self) -> bool:
        return any(m.get("phase") == "fedgkt" for m in self.metrics)


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if text.encode() in environ or text.encode() in cmdline:
            found.append(int(pid))
    return [pid for pid in found if _live(pid)]


@pytest.mark.timeout(600)  # about 90 s on a quiet machine: 3 rounds, 2 deployments
def test_a_stage_killed_mid_round_resumes_after_the_last_finished_round_and_stops_on_its_budget(digits, tmp_path):
    rounds_file = tmp_path / "fedgkt" / "rounds.jsonl"
    stage_log = tmp_path / "stage.log"
    with open(stage_log, "wb") as log:
        stage = subprocess.Popen([sys.executable, "-m", "tests.engine.fedgkt.stage_process", str(tmp_path), "4"],
                                 cwd=Path(__file__).resolve().parents[3], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (rounds_file.exists() and rounds_file.read_text().strip()):
            assert stage.poll() is None, stage_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.2)
    finally:
        stage.kill()  # the worker dies without a word, in round 2
        stage.wait()
    dead_run = _pids_mentioning(str(tmp_path))

    pipeline = get_pipeline("fedgkt")
    callbacks = BudgetCallbacks()
    outcome = pipeline.run(inputs_for(digits, tmp_path), pipeline.parse({**SMALL, "rounds": 4, "baselines": True}),
                           callbacks)

    resumed = [m["round"] for m in callbacks.metrics if m.get("phase") == "fedgkt"]
    assert resumed and resumed[0] >= 2  # round 1 was not trained again
    assert [row["round"] for row in outcome.history] == list(range(1, len(outcome.history) + 1))
    # the budget: the round in flight when it ran out was the last; no FedAvg baseline after it
    assert resumed[-1] == len(outcome.history) < 4
    assert outcome.report["stopped_early"] and outcome.report["fedavg"] is None
    assert not any(_live(pid) for pid in dead_run)  # the dead round's processes are gone
    assert processes_mentioning(str(tmp_path)) == []
