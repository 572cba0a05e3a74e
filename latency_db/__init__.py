"""Latency database: per-target operator measurements, canonical op keys and the predictor.

- ``keys``: ``OpKey`` and ``parse_key`` for the reference ProxylessNAS LUT keys
  (``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0``).
- ``models``: the SQLAlchemy tables ``latency_*`` on their own ``LatencyBase``.
- ``records``: frozen records that leave the repository (``TargetSpec``,
  ``MeasurementStats`` that device agents produce, ...).
- ``repository``: ``LatencyRepository``, the only code that touches the rows;
  YAML import/export in the reference LUT format (``lut_yaml``).
- ``pace``: ``at_pace``, a measurement rescaled to its target's pace (the
  yardstick time every latency of that target is given at).
- ``predictor`` and ``metrics``: LUT sum, per-target calibration on whole
  networks, and the accuracy figures (share within +-10%, Kendall's tau-b).

Imports only SQLAlchemy, numpy, PyYAML and the standard library.
"""
from __future__ import annotations

from latency_db.errors import (
    CalibrationError,
    InvalidKeyError,
    LatencyStoreError,
    LutFormatError,
    MissingLatencyError,
)
from latency_db.keys import ACCEPTED_FORMS, IOS_STAGE, KINDS, OpKey, StageKey, parse_key
from latency_db.lut_yaml import read_lut_yaml, write_lut_yaml
from latency_db.metrics import PredictorReport, kendall_tau, within_pct
from latency_db.models import (
    LatencyBase,
    LatencyMeasurement,
    LatencyNetworkMeasurement,
    LatencyOp,
    LatencyTarget,
)
from latency_db.pace import at_pace, yardstick_ms
from latency_db.predictor import (
    MIN_CALIBRATION_NETWORKS,
    Calibration,
    HeldOutError,
    LatencyPredictor,
    fit_calibration,
    heldout_error,
)
from latency_db.records import (
    MeasurementRecord,
    MeasurementStats,
    NetworkRecord,
    TargetRecord,
    TargetSpec,
)
from latency_db.repository import LatencyRepository

__all__ = [
    # keys
    "IOS_STAGE",
    "OpKey",
    "StageKey",
    "parse_key",
    "KINDS",
    "ACCEPTED_FORMS",
    # schema
    "LatencyBase",
    "LatencyTarget",
    "LatencyOp",
    "LatencyMeasurement",
    "LatencyNetworkMeasurement",
    # records
    "TargetSpec",
    "TargetRecord",
    "MeasurementStats",
    "MeasurementRecord",
    "NetworkRecord",
    # storage
    "LatencyRepository",
    "read_lut_yaml",
    "write_lut_yaml",
    # prediction
    "LatencyPredictor",
    "Calibration",
    "fit_calibration",
    "heldout_error",
    "HeldOutError",
    "MIN_CALIBRATION_NETWORKS",
    "PredictorReport",
    "at_pace",
    "yardstick_ms",
    "within_pct",
    "kendall_tau",
    # errors
    "InvalidKeyError",
    "LatencyStoreError",
    "LutFormatError",
    "MissingLatencyError",
    "CalibrationError",
]
