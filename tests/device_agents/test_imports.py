"""The agent's package boundary: device_agents never imports the service, and
an agent host needs none of the service's web, database-server or browser
pieces. Each check imports in a fresh interpreter, so what the test process
already loaded cannot hide an import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Top-level packages an agent host must never load: the service, its web framework and
# WSGI server, its migrations and database-server drivers, its tuning, the browser tests.
SERVICE_ONLY = ("automl_server", "flask", "werkzeug", "waitress", "alembic", "psycopg", "psycopg2",
                "optuna", "swagger_ui", "playwright", "pydantic", "sklearn")


def loaded_after(statement: str, forbidden: tuple[str, ...] = SERVICE_ONLY) -> list[str]:
    """Forbidden top-level packages present in sys.modules after ``statement`` in a new interpreter."""
    code = (f"import sys\n{statement}\n"
            f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_the_protocol_needs_only_the_standard_library() -> None:
    third_party = ("torch", "celery", "kombu", "sqlalchemy", "numpy", "click", "latency_db", "search_spaces")

    assert loaded_after("import device_agents.protocol", SERVICE_ONLY + third_party) == []


@pytest.mark.parametrize("module", ["device_agents.agent", "device_agents.cli", "device_agents.worker",
                                    "device_agents.tasks", "device_agents.profiling", "device_agents.android"])
def test_agent_modules_import_nothing_of_the_service(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def test_an_agent_that_has_run_its_tasks_loaded_nothing_of_the_service() -> None:
    # Running the tasks pulls in what they import lazily (backends, search_spaces, latency_db).
    statement = (
        "import torch; torch.set_num_threads(1)\n"
        "from device_agents.tasks import measure_network, profile_ops\n"
        "from device_agents.worker import make_agent_celery\n"
        "make_agent_celery('memory://')\n"
        "quick = {'warmup': 0, 'block_size': 1, 'min_block_ms': 0.0, 'min_blocks': 2, 'max_blocks': 2,\n"
        "         'yardstick': False, 'min_rounds': 1, 'min_seconds': 0.0}\n"
        "target = {'device_name': 'x', 'backend': 'onnxruntime', 'backend_version': '', 'threads': 1}\n"
        "key = 'Conv-input:8x8x1-output:4x4x8'\n"
        "assert 'stats' in profile_ops(target, [key], quick)['results'][0]\n"
        "arch = {'space': 'tiny', 'resolution': 8, 'num_classes': 10, 'in_channels': 1,\n"
        "        'blocks': ['mb3_k5', 'zero', 'mb3_k3', 'mb6_k3', 'mb3_k3', 'mb6_k5', 'mb6_k5', 'mb6_k5']}\n"
        "reply = measure_network(target, arch, quick)\n"
        "assert 'measured_ms' in reply, reply\n"
    )

    assert loaded_after(statement) == []
