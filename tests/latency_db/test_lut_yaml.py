"""YAML tables in the reference ProxylessNAS format: export/import round trip, `var`, all-or-nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from latency_db import LatencyRepository, LutFormatError, TargetRecord, TargetSpec
from tests.latency_db.conftest import CONV_KEY, LOGITS_KEY, MB_KEY, stats


@pytest.fixture
def other(repo: LatencyRepository) -> TargetRecord:
    return repo.target(TargetSpec("pixel1-copy", "litert", "2.3.0"))


def test_export_then_import_round_trips_the_table(
    repo: LatencyRepository, target: TargetRecord, other: TargetRecord, tmp_path: Path
) -> None:
    repo.record(target, MB_KEY, stats(6.0, samples=50), "agent")
    repo.record(target, CONV_KEY, stats(2.5, samples=20), "agent")
    repo.record_failure(target, LOGITS_KEY, "crashed", "agent")
    path = tmp_path / "pixel1.yaml"

    exported = repo.export_yaml(target, path)
    imported = repo.import_yaml(other, path, agent_version="import-test")

    original, copy = repo.lut(target), repo.lut(other)
    assert exported == imported == 2
    assert set(copy) == {MB_KEY, CONV_KEY}
    for key in copy:
        a, b = original[key].stats, copy[key].stats
        assert a is not None and b is not None
        assert (b.samples, b.median_ms, b.mean_ms, b.p90_ms, b.min_ms) == (
            a.samples, a.median_ms, a.mean_ms, a.p90_ms, a.min_ms,
        )
        assert b.std_ms == pytest.approx(a.std_ms)
        assert copy[key].agent_version == "import-test"


def test_exported_file_is_readable_as_the_reference_format(
    repo: LatencyRepository, target: TargetRecord, tmp_path: Path
) -> None:
    repo.record(target, MB_KEY, stats(6.0, samples=50), "agent")
    path = tmp_path / "pixel1.yaml"

    repo.export_yaml(target, path)

    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert table[MB_KEY]["count"] == 50
    assert table[MB_KEY]["mean"] == stats(6.0).mean_ms
    assert table[MB_KEY]["std"] == stats(6.0).std_ms


def test_reference_table_with_var_is_imported(repo: LatencyRepository, target: TargetRecord, tmp_path: Path) -> None:
    path = tmp_path / "mobile_lut.yaml"
    path.write_text(
        f"{MB_KEY}:\n  count: 50\n  mean: 6.25\n  var: 0.04\n"
        f"{CONV_KEY}:\n  count: 50\n  mean: 2.5\n  var: 0.0\n",
        encoding="utf-8",
    )

    count = repo.import_yaml(target, path)

    entry = repo.latest(target, MB_KEY)
    assert count == 2
    assert entry is not None and entry.stats is not None
    assert entry.stats.mean_ms == entry.stats.median_ms == 6.25
    assert entry.stats.std_ms == pytest.approx(0.2)
    assert entry.stats.samples == 50
    assert entry.stats.method["source"] == "yaml-import"
    assert entry.agent_version == "imported"
    assert repo.lut_ms(target) == {MB_KEY: 6.25, CONV_KEY: 2.5}


@pytest.mark.parametrize(
    "entry, named",
    [
        ("{count: 50, mean: -1.0, var: 0.0}", "mean"),
        ("{count: 50, mean: fast, var: 0.0}", "mean"),
        ("{count: 0, mean: 1.0, var: 0.0}", "count"),
        ("{count: 50, var: 0.0}", "missing mean"),
        ("{count: 50, mean: 1.0}", "exactly one of var or std"),
        ("{count: 50, mean: 1.0, var: 0.0, std: 0.0}", "exactly one of var or std"),
        ("{count: 50, mean: 1.0, std: 0.1, mena: 2}", "unknown field"),
        ("{count: 50, mean: 1.0, std: 0.1, min: 3.0}", "min_ms <= median_ms"),
        ("[50, 1.0, 0.1]", "expected"),
    ],
)
def test_malformed_entry_is_refused_naming_the_key_and_nothing_is_stored(
    repo: LatencyRepository, target: TargetRecord, tmp_path: Path, entry: str, named: str
) -> None:
    repo.record(target, LOGITS_KEY, stats(0.9), "agent")
    path = tmp_path / "bad.yaml"
    path.write_text(f"{MB_KEY}: {{count: 50, mean: 6.25, var: 0.04}}\n{CONV_KEY}: {entry}\n", encoding="utf-8")

    with pytest.raises(LutFormatError) as excinfo:
        repo.import_yaml(target, path)

    assert CONV_KEY in str(excinfo.value) and named in str(excinfo.value)
    assert set(repo.lut(target)) == {LOGITS_KEY}


@pytest.mark.parametrize(
    "text, named",
    [
        ("Conv-input:224x224x3: {count: 1, mean: 1.0, std: 0.0}\n", "Conv-input:224x224x3"),
        ("- just\n- a list\n", "mapping"),
        ("", "empty"),
        ("key: [unclosed\n", "YAML"),
    ],
)
def test_malformed_file_is_refused_and_nothing_is_stored(
    repo: LatencyRepository, target: TargetRecord, tmp_path: Path, text: str, named: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"{text}", encoding="utf-8")

    with pytest.raises(LutFormatError, match="bad.yaml") as excinfo:
        repo.import_yaml(target, path)

    assert named in str(excinfo.value)
    assert repo.lut(target) == {}
