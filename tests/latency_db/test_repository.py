"""The repository: targets, measurements (latest successful wins), failures, missing keys, networks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker

from latency_db import (
    InvalidKeyError,
    LatencyMeasurement,
    LatencyNetworkMeasurement,
    LatencyRepository,
    LatencyStoreError,
    LatencyTarget,
    MeasurementStats,
    TargetRecord,
    TargetSpec,
)
from tests.latency_db.conftest import CONV_1_KEY, CONV_KEY, LOGITS_KEY, MB_KEY, stats

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_target_is_created_once_and_found_again(repo: LatencyRepository) -> None:
    spec = TargetSpec("pixel1", "litert", "2.3.0", threads=1)

    first = repo.target(spec)
    again = repo.target(spec)
    four_threads = repo.target(TargetSpec("pixel1", "litert", "2.3.0", threads=4))

    assert first == again
    assert first.spec == spec
    assert four_threads.id != first.id
    assert repo.find_target("pixel1") == [first, four_threads]
    assert repo.find_target("pixel1", backend="onnxruntime") == []
    assert repo.find_target("rpi4") == []


@pytest.mark.parametrize(
    "fields, bad",
    [
        (dict(device_name="", backend="litert", backend_version="1"), "device_name"),
        (dict(device_name="pixel1", backend="litert", backend_version="1", threads=0), "threads"),
        (dict(device_name="pixel1", backend="litert", backend_version="1", batch=True), "batch"),
        (dict(device_name="x" * 101, backend="litert", backend_version="1"), "device_name"),
    ],
)
def test_bad_target_spec_is_refused_by_name(fields: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        TargetSpec(**fields)


def test_latest_and_lut_return_the_latest_successful_measurement(
    repo: LatencyRepository, target: TargetRecord
) -> None:
    repo.record(target, MB_KEY, stats(6.0), "agent-1", measured_at=T0)
    repo.record(target, MB_KEY, stats(5.5), "agent-2", measured_at=T0 + timedelta(minutes=5))
    repo.record(target, CONV_KEY, stats(2.5), "agent-1", measured_at=T0)

    latest = repo.latest(target, MB_KEY)
    table = repo.lut(target)

    assert latest is not None and latest.ok
    assert latest.stats == stats(5.5)
    assert latest.agent_version == "agent-2"
    assert latest.measured_at == T0 + timedelta(minutes=5)
    assert latest.measured_at.tzinfo is not None
    assert set(table) == {MB_KEY, CONV_KEY}
    assert table[MB_KEY] == latest
    assert repo.lut_ms(target) == {MB_KEY: 5.5, CONV_KEY: 2.5}


def test_an_older_measurement_recorded_later_does_not_replace_the_newer(
    repo: LatencyRepository, target: TargetRecord
) -> None:
    repo.record(target, MB_KEY, stats(5.5), "agent", measured_at=T0 + timedelta(hours=1))
    repo.record(target, MB_KEY, stats(9.0), "agent", measured_at=T0)  # uploaded late

    assert repo.latest(target, MB_KEY).stats.median_ms == 5.5  # type: ignore[union-attr]
    assert repo.lut(target)[MB_KEY].stats.median_ms == 5.5  # type: ignore[union-attr]


def test_a_failure_is_stored_and_does_not_hide_the_earlier_good_value(
    repo: LatencyRepository, target: TargetRecord
) -> None:
    repo.record(target, MB_KEY, stats(6.0), "agent", measured_at=T0)
    repo.record_failure(target, MB_KEY, "RuntimeError: delegate refused op", "agent", measured_at=T0 + timedelta(1))
    repo.record_failure(target, CONV_KEY, "timeout after 60 s", "agent")

    history = repo.history(target, MB_KEY)

    assert [(r.ok, r.error) for r in history] == [(True, None), (False, "RuntimeError: delegate refused op")]
    assert history[1].stats is None
    assert repo.latest(target, MB_KEY).stats.median_ms == 6.0  # type: ignore[union-attr]
    assert repo.latest(target, CONV_KEY) is None
    assert set(repo.lut(target)) == {MB_KEY}
    assert repo.missing(target, [CONV_KEY, MB_KEY]) == [CONV_KEY]


def test_failures_name_only_keys_never_measured_successfully(
    repo: LatencyRepository, target: TargetRecord
) -> None:
    repo.record(target, MB_KEY, stats(6.0), "agent", measured_at=T0)
    repo.record_failure(target, MB_KEY, "RuntimeError: delegate refused op", "agent", measured_at=T0 + timedelta(1))
    repo.record_failure(target, CONV_KEY, "timeout after 60 s", "agent", measured_at=T0)
    repo.record_failure(target, CONV_KEY, "timeout after 90 s", "agent", measured_at=T0 + timedelta(1))

    failures = repo.failures(target, [CONV_KEY, MB_KEY])

    assert failures == {CONV_KEY: "timeout after 90 s"}


def test_measurements_are_kept_apart_per_target(repo: LatencyRepository, target: TargetRecord) -> None:
    other = repo.target(TargetSpec("rpi4", "onnxruntime", "1.31.1", threads=4))
    repo.record(target, MB_KEY, stats(6.0), "agent")
    repo.record(other, MB_KEY, stats(20.0), "agent")

    assert repo.lut_ms(target) == {MB_KEY: 6.0}
    assert repo.lut_ms(other) == {MB_KEY: 20.0}


def test_missing_keeps_order_and_drops_repeats(repo: LatencyRepository, target: TargetRecord) -> None:
    repo.record(target, CONV_KEY, stats(2.5), "agent")

    missing = repo.missing(target, [LOGITS_KEY, CONV_KEY, MB_KEY, LOGITS_KEY, CONV_1_KEY, MB_KEY])

    assert missing == [LOGITS_KEY, MB_KEY, CONV_1_KEY]
    assert repo.missing(target, []) == []


def test_missing_refuses_an_invalid_key(repo: LatencyRepository, target: TargetRecord) -> None:
    with pytest.raises(InvalidKeyError, match="Conv-input:bad"):
        repo.missing(target, [CONV_KEY, "Conv-input:bad"])


def test_record_refuses_invalid_input_and_stores_nothing(repo: LatencyRepository, target: TargetRecord) -> None:
    with pytest.raises(InvalidKeyError):
        repo.record(target, "Conv-input:224x224x3", stats(1.0), "agent")
    with pytest.raises(ValueError, match="agent_version"):
        repo.record(target, CONV_KEY, stats(1.0), "")
    with pytest.raises(ValueError, match="error"):
        repo.record_failure(target, CONV_KEY, "  ", "agent")

    assert repo.lut(target) == {}
    assert repo.history(target, CONV_KEY) == []


def test_writing_to_an_unknown_target_is_refused(repo: LatencyRepository, target: TargetRecord) -> None:
    ghost = TargetRecord(999, "ghost", "litert", "", 1, "float32", 1)

    with pytest.raises(LatencyStoreError, match="target 999"):
        repo.record(ghost, CONV_KEY, stats(1.0), "agent")


@pytest.mark.parametrize(
    "fields, bad",
    [
        (dict(samples=0), "samples"),
        (dict(median_ms=float("nan")), "median_ms"),
        (dict(min_ms=9.0), "min_ms <= median_ms <= p90_ms"),
        (dict(method={"when": datetime.now(timezone.utc)}), "method"),
    ],
)
def test_bad_statistics_are_refused_by_name(fields: dict, bad: str) -> None:
    good = dict(samples=50, warmup=5, median_ms=2.0, mean_ms=2.1, std_ms=0.1, p90_ms=2.3, min_ms=1.9, cv=0.05)

    with pytest.raises(ValueError, match=bad):
        MeasurementStats(**{**good, **fields})


def test_stats_from_samples() -> None:
    result = MeasurementStats.from_samples([4.0, 1.0, 3.0, 2.0, 5.0], warmup=2, method={"runs": 5})

    assert (result.samples, result.warmup) == (5, 2)
    assert (result.median_ms, result.mean_ms, result.min_ms) == (3.0, 3.0, 1.0)
    assert result.std_ms == pytest.approx(1.5811388)
    assert result.p90_ms == pytest.approx(4.6)
    assert result.cv == pytest.approx(1.5811388 / 3.0)
    assert result.method == {"runs": 5}


def test_network_measurements_round_trip(repo: LatencyRepository, target: TargetRecord) -> None:
    arch = {"space": "proxyless-mobile", "blocks": ["mb3_k5", "zero"]}
    repo.record_network(target, arch, 80.5, 70.0, "agent", n_ops=21, measured_at=T0)
    repo.record_network(target, arch, 60.0, 52.0, "agent", n_ops=19, measured_at=T0 + timedelta(1))

    networks = repo.networks(target)

    assert [n.calibration_sample for n in networks] == [(70.0, 21, 80.5), (52.0, 19, 60.0)]
    assert networks[0].arch == arch
    assert networks[0].target_id == target.id


def test_deleting_a_target_deletes_its_measurements(
    engine: Engine, repo: LatencyRepository, target: TargetRecord
) -> None:
    repo.record(target, MB_KEY, stats(6.0), "agent")
    repo.record_network(target, {}, 10.0, 9.0, "agent", n_ops=3)

    with sessionmaker(engine)() as session, session.begin():
        session.delete(session.get(LatencyTarget, target.id))
    with sessionmaker(engine)() as session:
        left = session.query(LatencyMeasurement).count() + session.query(LatencyNetworkMeasurement).count()

    assert left == 0


def test_a_missing_schema_is_reported_with_the_fix(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    repo = LatencyRepository(sessionmaker(engine))

    with pytest.raises(LatencyStoreError, match="automl db upgrade"):
        repo.target(TargetSpec("pixel1", "litert", "2.3.0"))
    engine.dispose()
