"""A latency repository on a fresh SQLite file per test, with foreign keys enforced as in the service."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

from latency_db import LatencyBase, LatencyRepository, MeasurementStats, TargetRecord, TargetSpec

MB_KEY = "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0"
CONV_KEY = "Conv-input:224x224x3-output:112x112x32"
CONV_1_KEY = "Conv_1-input:7x7x320-output:7x7x1280"
LOGITS_KEY = "Logits-input:7x7x1280-output:1000"


def stats(median_ms: float, samples: int = 50, spread_ms: float = 0.1) -> MeasurementStats:
    """Plausible statistics around a median."""
    return MeasurementStats(
        samples=samples,
        warmup=10,
        median_ms=median_ms,
        mean_ms=median_ms + spread_ms / 4,
        std_ms=spread_ms / 2,
        p90_ms=median_ms + spread_ms,
        min_ms=max(0.0, median_ms - spread_ms),
        cv=(spread_ms / 2) / (median_ms + spread_ms / 4),
        method={"timer": "perf_counter_ns", "blocks": 5},
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'latency.sqlite'}")

    @event.listens_for(engine, "connect")
    def _foreign_keys(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    LatencyBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def repo(engine: Engine) -> LatencyRepository:
    return LatencyRepository(sessionmaker(engine, expire_on_commit=False))


@pytest.fixture
def target(repo: LatencyRepository) -> TargetRecord:
    return repo.target(TargetSpec("pixel1", "litert", "2.3.0", threads=1))
