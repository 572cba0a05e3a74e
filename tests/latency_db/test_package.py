"""The package's contract with the rest of the service: import rules, public surface, table names."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import latency_db
from latency_db import LatencyBase

ROOT = Path(__file__).resolve().parents[2]


def test_importing_latency_db_pulls_in_neither_torch_nor_the_service() -> None:
    code = (
        "import sys, latency_db; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'automl_server', 'search_spaces', 'device_agents', 'flask', 'celery')); "
        "print(','.join(bad))"
    )

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)

    assert result.stdout.strip() == ""


def test_public_names_are_all_importable() -> None:
    missing = [name for name in latency_db.__all__ if not hasattr(latency_db, name)]

    assert missing == []


def test_tables_are_prefixed_and_constraints_named() -> None:
    tables = LatencyBase.metadata.tables

    assert set(tables) == {
        "latency_targets", "latency_ops", "latency_measurements", "latency_network_measurements",
    }
    for table in tables.values():
        for constraint in table.constraints:
            assert constraint.name, f"{table.name} has an unnamed constraint"
    assert {index.name for index in tables["latency_measurements"].indexes} == {
        "ix_latency_measurements_target_id_op_id"
    }
