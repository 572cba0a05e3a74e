"""Latency models: a measured lookup table and a MACs-based estimate.

Keys are the reference ProxylessNAS LUT keys built by ``search_spaces.op_key``,
e.g. ``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0``,
``Conv-input:224x224x3-output:112x112x32``, ``Conv_1-input:7x7x320-output:7x7x1280``,
``Logits-input:7x7x1280-output:1000``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import yaml

from search_spaces import Arch, arch_keys

# The engine's own error for a missing op latency (the engine never imports the
# database layer). latency_db raises its own, same-named class for its tables;
# both are KeyErrors carrying ``key`` and ``source``, so a caller that holds
# either kind of latency model catches KeyError or checks ``.key``.
class MissingLatencyError(KeyError):
    """The latency table has no entry for a key a network needs."""

    def __init__(self, key: str, source: str = "the latency table") -> None:
        super().__init__(key)
        self.key = key
        self.source = source

    def __str__(self) -> str:
        # KeyError's own __str__ would quote the whole message; say what to do instead.
        return (
            f"no latency for {self.key!r} in {self.source}; measure it on the device with "
            "`automl profile` (or import a table that has it)"
        )


KEY_TYPES = ("expanded_conv", "Conv", "Conv_1", "Logits")

# Default throughput of FlopsLatencyModel, in GMACs per second. The paper's
# Pixel 1 numbers imply about 4: MobileNetV2 (300 M MACs) runs in ~75 ms and
# the ProxylessNAS mobile model (~320 M MACs) in 78 ms with TFLite on one big
# core. It only orders architectures; measure the device for real numbers.
DEFAULT_GMACS_PER_S = 4.0


@runtime_checkable
class LatencyModel(Protocol):
    """Anything that predicts one op's latency in milliseconds from its LUT key."""

    def latency_ms(self, key: str) -> float: ...


def parse_key(key: str) -> dict[str, object]:
    """Split a LUT key into its fields.

    ``type`` is the op type; shape fields (``input``, ``output``) become tuples
    of ints (``(H, W, C)``; ``Logits`` output is ``(num_classes,)``); the other
    fields (``expand``, ``kernel``, ``stride``, ``idskip``, and ``se``/``hs``
    of once-for-all tables) become ints.
    """
    op_type, *fields = key.split("-")
    if op_type not in KEY_TYPES:
        raise ValueError(f"LUT key {key!r} has op type {op_type!r}; accepted: {', '.join(KEY_TYPES)}")
    parsed: dict[str, object] = {"type": op_type}
    for field in fields:
        name, sep, value = field.partition(":")
        try:
            if not sep or not name:
                raise ValueError
            if name in ("input", "output"):
                parsed[name] = tuple(int(v) for v in value.split("x"))
            else:
                parsed[name] = int(value)
        except ValueError:
            raise ValueError(
                f"LUT key {key!r}: bad field {field!r}; expected name:value such as "
                "input:112x112x16, output:56x56x24, expand:3, kernel:5, stride:2, idskip:0"
            ) from None
    for required in ("input", "output"):
        if required not in parsed:
            raise ValueError(f"LUT key {key!r} has no {required}:... field")
    if op_type == "expanded_conv":
        missing = [f for f in ("expand", "kernel", "stride") if f not in parsed]
        if missing:
            raise ValueError(f"LUT key {key!r} lacks {', '.join(missing)} (needed for expanded_conv)")
    return parsed


@dataclass(frozen=True)
class LatencyEntry:
    """One LUT row: how many runs were measured, their mean and std in ms."""

    count: int
    mean: float
    std: float = 0.0


class LutLatencyModel:
    """Latencies measured on a device, looked up by key (reference LUT format).

    YAML: a mapping key -> {count, mean, var} (the reference tables) or
    {count, mean, std}; values in milliseconds. ``to_yaml`` writes count,
    mean and std.
    """

    def __init__(self, entries: Mapping[str, LatencyEntry] | None = None, source: str = "the latency table") -> None:
        self._entries: dict[str, LatencyEntry] = dict(entries or {})
        self.source = source

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> LutLatencyModel:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        return cls.from_dict(raw if raw is not None else {}, source=str(path))

    @classmethod
    def from_dict(cls, raw: object, source: str = "the latency table") -> LutLatencyModel:
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"{source}: expected a mapping of LUT key -> {{count, mean, std}}, got {type(raw).__name__}"
            )
        entries = {str(key): _entry_from_raw(str(key), value, source) for key, value in raw.items()}
        return cls(entries, source=source)

    def to_dict(self) -> dict[str, dict[str, float | int]]:
        return {
            key: {"count": e.count, "mean": e.mean, "std": e.std} for key, e in sorted(self._entries.items())
        }

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=True)

    def set(self, key: str, mean_ms: float, std_ms: float = 0.0, count: int = 1) -> None:
        """Add or replace one entry (e.g. after profiling it)."""
        self._entries[key] = LatencyEntry(count=int(count), mean=float(mean_ms), std=float(std_ms))

    def entry(self, key: str) -> LatencyEntry:
        try:
            return self._entries[key]
        except KeyError:
            raise MissingLatencyError(key, self.source) from None

    def latency_ms(self, key: str) -> float:
        return self.entry(key).mean

    def missing(self, keys: list[str]) -> list[str]:
        """The keys this table cannot answer (to profile them in one batch)."""
        return [k for k in keys if k not in self._entries]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _entry_from_raw(key: str, value: object, source: str) -> LatencyEntry:
    if not isinstance(value, Mapping) or "mean" not in value:
        raise ValueError(f"{source}: entry {key!r} must be a mapping with count, mean and var or std; got {value!r}")
    try:
        mean = float(value["mean"])
        if "std" in value:
            std = float(value["std"])
        else:
            std = math.sqrt(max(float(value.get("var", 0.0)), 0.0))
        count = int(value.get("count", 1))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: entry {key!r} has non-numeric count/mean/var/std: {value!r}") from None
    if not math.isfinite(mean) or mean < 0:
        raise ValueError(f"{source}: entry {key!r} has mean {mean!r}; expected a finite latency >= 0 ms")
    return LatencyEntry(count=count, mean=mean, std=std)


def key_macs(key: str) -> int:
    """Multiply-accumulates of the op a LUT key describes (batch 1)."""
    f = parse_key(key)
    h_in, w_in, c_in = _hwc(f, "input", key)
    if f["type"] == "Logits":
        num_classes = _shape(f, "output")[-1]
        # global average pool (one add per input element) + linear classifier
        return h_in * w_in * c_in + c_in * num_classes
    h_out, w_out, c_out = _hwc(f, "output", key)
    if f["type"] == "Conv":
        kernel = _int(f, "kernel", 3)  # the reference stem is a 3x3 conv; its key has no kernel
        return h_out * w_out * c_in * c_out * kernel * kernel
    if f["type"] == "Conv_1":
        return h_out * w_out * c_in * c_out  # 1x1 feature-mix conv
    # expanded_conv: [1x1 expand] + KxK depthwise + 1x1 project (no expand conv when expand == 1)
    expand, kernel = _int(f, "expand"), _int(f, "kernel")
    mid = c_in * expand
    macs = 0 if expand == 1 else h_in * w_in * c_in * mid
    macs += h_out * w_out * mid * kernel * kernel
    macs += h_out * w_out * mid * c_out
    return macs


def _shape(fields: dict[str, object], name: str) -> tuple[int, ...]:
    return cast("tuple[int, ...]", fields[name])  # parse_key makes input/output int tuples


def _int(fields: dict[str, object], name: str, default: int | None = None) -> int:
    return cast(int, fields.get(name, default))  # parse_key makes the other fields ints


def _hwc(fields: dict[str, object], name: str, key: str) -> tuple[int, int, int]:
    shape = _shape(fields, name)
    if len(shape) != 3:
        raise ValueError(f"LUT key {key!r}: {name} must be HxWxC, got {'x'.join(map(str, shape))}")
    return shape[0], shape[1], shape[2]


class FlopsLatencyModel:
    """Latency from MACs at a fixed throughput: ms = MACs / (gmacs_per_s * 1e6).

    A device-free proxy (the paper's "flops" target) that ranks architectures
    by compute; it ignores memory traffic and per-op overheads.
    """

    def __init__(self, gmacs_per_s: float = DEFAULT_GMACS_PER_S) -> None:
        if not gmacs_per_s > 0 or not math.isfinite(gmacs_per_s):
            raise ValueError(f"gmacs_per_s must be a finite positive number, got {gmacs_per_s!r}")
        self.gmacs_per_s = float(gmacs_per_s)

    def latency_ms(self, key: str) -> float:
        return key_macs(key) / (self.gmacs_per_s * 1e6)


def arch_latency_ms(arch: Arch, latency_model: LatencyModel) -> float:
    """Predicted latency of one concrete architecture (fixed layers + chosen blocks)."""
    return sum(latency_model.latency_ms(key) for key in arch_keys(arch))
