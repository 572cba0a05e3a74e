"""The agent's side of an on-device sparse-update fine-tune (task
``FINETUNE_ON_DEVICE``): the shipped model and samples are written to a
scratch folder and ``python -m device_agents.ort_training`` runs them in the
agent's ONNX Runtime training environment, a separate interpreter
(``make ort-training-venv``), because onnxruntime-training and the agent's
onnxruntime cannot share one. Standard library only: the agent's own
environment never imports ONNX Runtime training.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from device_agents.protocol import FineTuneReply, FineTuneRequest

AGENT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding device_agents/, run from there
TIMEOUT_S = 900.0
TRAINING_PYTHON_ENV = "AUTOML_ORT_TRAINING_PYTHON"


def training_python() -> Path:
    """This host's ONNX Runtime training interpreter: ``$AUTOML_ORT_TRAINING_PYTHON``, else
    ``.venv-ort-training/bin/python`` beside ``device_agents`` (what ``make ort-training-venv`` builds)."""
    return Path(os.environ.get(TRAINING_PYTHON_ENV, AGENT_ROOT / ".venv-ort-training" / "bin" / "python"))


def _run(argv: list[str], log_path: Path, timeout_s: float) -> int:
    """Run ``argv`` in its own process group; past the timeout the whole group (the
    artifact generator's child included) is killed."""
    # The engine's run_in_training_env (sparse_update/on_device.py) does the same (and polls a
    # cancel), on purpose not shared: the engine and device_agents may not import each other
    # (tests/engine/test_boundaries.py), and the one package both may import, search_spaces,
    # loads torch and the space catalog on import, no home for a stdlib-only helper of 15 lines.
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=AGENT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the on-device fine-tune ran past {timeout_s:.0f} s")
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return process.returncode


def run_finetune(request: FineTuneRequest, agent_version: str, timeout_s: float = TIMEOUT_S) -> FineTuneReply:
    """The fine-tune's figures, or the reason there are none (never raises for a bad run)."""
    python = training_python()
    if not python.exists():
        return FineTuneReply(request.target, agent_version, error=(
            f"this agent has no ONNX Runtime training environment at {python}: build it with "
            f"`make ort-training-venv` next to the agent, or set {TRAINING_PYTHON_ENV}"))
    try:
        with tempfile.TemporaryDirectory(prefix="automl-finetune-") as tmp:
            folder = Path(tmp)
            model, data, out = folder / "model.onnx", folder / "data.npz", folder / "result.json"
            model.write_bytes(request.model_file.data())
            data.write_bytes(base64.b64decode(request.data_b64))
            argv = [str(python), "-m", "device_agents.ort_training", "--model", str(model), "--trainable",
                    ",".join(request.trainable), "--data", str(data), "--steps", str(request.steps), "--lr",
                    repr(request.lr), "--batch", str(request.batch), "--out", str(out)]
            code = _run(argv, folder / "log.txt", timeout_s)
            if code != 0:
                tail = (folder / "log.txt").read_text(errors="replace")[-2000:]
                return FineTuneReply(request.target, agent_version,
                                     error=f"the fine-tune exited with {code}: {tail}")
            return FineTuneReply(request.target, agent_version, result=json.loads(out.read_text()))
    except Exception as exc:  # noqa: BLE001 - the service stores the reason
        return FineTuneReply(request.target, agent_version, error=f"{exc.__class__.__name__}: {exc}")
