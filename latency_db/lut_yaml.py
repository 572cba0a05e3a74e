"""Latency tables as YAML files in the reference ProxylessNAS format.

The reference mobile table maps each key to ``{count, mean, var}`` in
milliseconds. We write ``{count, mean, std}`` plus ``median``, ``p90`` and
``min`` (readers of the reference format look up ``mean`` and ignore the
rest), and read back either ``var`` or ``std``. A reference table carries no
median, p90 or min: they default to the mean, the only location statistic it
has, and the ``method`` of the imported measurement says so.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import yaml

from latency_db.errors import InvalidKeyError, LutFormatError
from latency_db.keys import parse_key
from latency_db.records import MeasurementStats

REQUIRED_FIELDS = ("count", "mean")
OPTIONAL_FIELDS = ("var", "std", "median", "p90", "min")
ENTRY_FORM = "{count: runs, mean: ms, var: ms^2 | std: ms[, median: ms, p90: ms, min: ms]}"


def read_lut_yaml(path: str | os.PathLike[str]) -> dict[str, MeasurementStats]:
    """Every entry of the file as statistics; LutFormatError naming the file and the first bad entry.

    Nothing is returned unless every entry is valid, so that an import is all or nothing.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise LutFormatError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raise LutFormatError(f"{source}: the file is empty; expected a mapping of operator key -> {ENTRY_FORM}")
    if not isinstance(raw, Mapping):
        raise LutFormatError(
            f"{source}: expected a mapping of operator key -> {ENTRY_FORM}, got a {type(raw).__name__}"
        )
    method = {
        "source": "yaml-import",
        "file": os.path.basename(source),
        "note": "reference LUT format: statistics not in the file (median, p90, min, warmup) are derived",
    }
    return {_key(source, key): _stats(source, str(key), value, method) for key, value in raw.items()}


def write_lut_yaml(path: str | os.PathLike[str], entries: Mapping[str, MeasurementStats]) -> None:
    """Write entries (key -> stats) in the reference format, keys sorted so that files diff well."""
    table = {
        key: {
            "count": stats.samples,
            "mean": stats.mean_ms,
            "std": stats.std_ms,
            "median": stats.median_ms,
            "p90": stats.p90_ms,
            "min": stats.min_ms,
        }
        for key, stats in sorted(entries.items())
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(table, f, sort_keys=False)


def _key(source: str, key: object) -> str:
    if not isinstance(key, str):
        raise LutFormatError(f"{source}: entry {key!r}: keys must be strings in the operator key format")
    try:
        return parse_key(key).key
    except InvalidKeyError as exc:
        raise LutFormatError(f"{source}: entry {key!r}: {exc}") from None


def _stats(source: str, key: str, value: object, method: dict[str, Any]) -> MeasurementStats:
    where = f"{source}: entry {key!r}"
    if not isinstance(value, Mapping):
        raise LutFormatError(f"{where}: expected {ENTRY_FORM}, got {value!r}")
    unknown = sorted(str(name) for name in value if name not in REQUIRED_FIELDS + OPTIONAL_FIELDS)
    if unknown:
        raise LutFormatError(
            f"{where}: unknown field(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in value]
    if missing:
        raise LutFormatError(f"{where}: missing {', '.join(missing)}; expected {ENTRY_FORM}")
    if ("var" in value) == ("std" in value):
        raise LutFormatError(f"{where}: give exactly one of var or std; expected {ENTRY_FORM}")
    count = value["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise LutFormatError(f"{where}: count must be an integer >= 1, got {count!r}")
    numbers = {name: _number(where, name, value[name]) for name in ("mean",) + OPTIONAL_FIELDS if name in value}
    mean = numbers["mean"]
    std = numbers["std"] if "std" in numbers else math.sqrt(numbers["var"])
    median = numbers.get("median", mean)
    try:
        return MeasurementStats(
            samples=count,
            warmup=0,
            median_ms=median,
            mean_ms=mean,
            std_ms=std,
            p90_ms=numbers.get("p90", median),
            min_ms=numbers.get("min", median),
            cv=std / mean if mean > 0 else 0.0,
            method=method,
        )
    except ValueError as exc:
        raise LutFormatError(f"{where}: {exc}") from None


def _number(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LutFormatError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)
