"""Canonical operator keys, in the format of the reference ProxylessNAS mobile LUT.

One key names one operator at one shape, e.g.
``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0``.
``search_spaces.op_key`` produces these keys; device agents measure them; the
latency database stores them. Parsing is strict (no spaces, no leading zeros,
fields in the reference order), so every accepted key formats back to exactly
the same string and one operator never ends up under two spellings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from latency_db.errors import InvalidKeyError

EXPANDED_CONV = "expanded_conv"  # an MBConv block (1x1 expand, KxK depthwise, 1x1 project)
CONV = "Conv"  # the stem conv
CONV_1 = "Conv_1"  # the final 1x1 feature-mix conv
LOGITS = "Logits"  # global pooling + the linear classifier
KINDS = (EXPANDED_CONV, CONV, CONV_1, LOGITS)

ACCEPTED_FORMS = (
    "expanded_conv-input:{H}x{W}x{C}-output:{h}x{w}x{c}-expand:{E}-kernel:{K}-stride:{S}-idskip:{0|1}",
    "Conv-input:{H}x{W}x{C}-output:{h}x{w}x{c}",
    "Conv_1-input:{H}x{W}x{C}-output:{h}x{w}x{c}",
    "Logits-input:{H}x{W}x{C}-output:{N}",
    "ios-stage/{version}:{parallel|merge}:{40 hex digits}",
)
# A stage of an IOS schedule (automl_server.engine.deploy.ios.stage): a set of
# operators run side by side, or merged, named by a hash of its canonical form.
# Its cost is stored per target like an op's, so a second schedule on the same
# device reuses it. The version changes when the executor runs a stage
# differently (2: a group of operators is one session), so costs timed the old
# way are never read for the new; stored keys of every version stay valid.
IOS_STAGE = "ios_stage"
_IOS_STAGE_PATTERN = re.compile(r"ios-stage/[1-9][0-9]*:(parallel|merge):[0-9a-f]{40}")

_INT = r"([1-9][0-9]*)"
_SHAPE = rf"{_INT}x{_INT}x{_INT}"
_PATTERNS = {
    EXPANDED_CONV: re.compile(
        rf"expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:{_INT}-kernel:{_INT}-stride:{_INT}-idskip:([01])"
    ),
    CONV: re.compile(rf"Conv-input:{_SHAPE}-output:{_SHAPE}"),
    CONV_1: re.compile(rf"Conv_1-input:{_SHAPE}-output:{_SHAPE}"),
    LOGITS: re.compile(rf"Logits-input:{_SHAPE}-output:{_INT}"),
}
_BLOCK_FIELDS = ("expand", "kernel", "stride", "idskip")


@dataclass(frozen=True)
class OpKey:
    """One operator at one shape. ``key`` formats it; ``parse_key`` reads it back."""

    kind: str  # one of KINDS
    input_hw: tuple[int, int]  # (height, width) of the input map
    in_ch: int
    output_hw: tuple[int, int]  # (height, width) of the output map; (1, 1) for Logits
    out_ch: int  # output channels; for Logits the number of classes
    expand: int | None = None  # expanded_conv only: expansion ratio (1 = no expand conv)
    kernel: int | None = None  # expanded_conv only: depthwise kernel size
    stride: int | None = None  # expanded_conv only
    idskip: int | None = None  # expanded_conv only: 1 if the block adds its input (identity shortcut)

    def __post_init__(self) -> None:
        # Lists are accepted and frozen so that keys stay hashable and comparable.
        object.__setattr__(self, "input_hw", tuple(self.input_hw))
        object.__setattr__(self, "output_hw", tuple(self.output_hw))
        where = f"OpKey({self.kind!r})"
        if self.kind not in KINDS:
            raise InvalidKeyError(f"OpKey kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name, hw in (("input_hw", self.input_hw), ("output_hw", self.output_hw)):
            if len(hw) != 2:
                raise InvalidKeyError(f"{where}: {name} must be (height, width), got {hw!r}")
            for value in hw:
                _check_positive(where, name, value)
        _check_positive(where, "in_ch", self.in_ch)
        _check_positive(where, "out_ch", self.out_ch)
        block_values = [getattr(self, name) for name in _BLOCK_FIELDS]
        if self.kind == EXPANDED_CONV:
            for name in ("expand", "kernel", "stride"):
                _check_positive(where, name, getattr(self, name))
            if self.idskip not in (0, 1) or isinstance(self.idskip, bool):
                raise InvalidKeyError(f"{where}: idskip must be 0 or 1, got {self.idskip!r}")
        elif any(value is not None for value in block_values):
            raise InvalidKeyError(
                f"{where}: expand, kernel, stride and idskip belong to expanded_conv only, "
                f"got {dict(zip(_BLOCK_FIELDS, block_values))}"
            )
        if self.kind == LOGITS and self.output_hw != (1, 1):
            raise InvalidKeyError(f"{where}: the classifier's output_hw is (1, 1), got {self.output_hw!r}")

    @property
    def key(self) -> str:
        """The canonical key string; ``parse_key(op.key) == op``."""
        h, w = self.input_hw
        input_part = f"input:{h}x{w}x{self.in_ch}"
        if self.kind == LOGITS:
            return f"{LOGITS}-{input_part}-output:{self.out_ch}"
        oh, ow = self.output_hw
        shapes = f"{input_part}-output:{oh}x{ow}x{self.out_ch}"
        if self.kind == EXPANDED_CONV:
            return (
                f"{EXPANDED_CONV}-{shapes}-expand:{self.expand}-kernel:{self.kernel}"
                f"-stride:{self.stride}-idskip:{self.idskip}"
            )
        return f"{self.kind}-{shapes}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class StageKey:
    """The key of an IOS stage (kind ``IOS_STAGE``); it has no shape fields, the hash covers them."""

    key: str
    kind: str = IOS_STAGE

    def __str__(self) -> str:
        return self.key


def parse_key(key: str) -> OpKey | StageKey:
    """The OpKey (or, for an IOS stage, the StageKey) of a canonical key string;
    InvalidKeyError naming it and the accepted forms otherwise."""
    if not isinstance(key, str):
        raise InvalidKeyError(_message(repr(key), f"a key is a string, got {type(key).__name__}"))
    if key.startswith("ios-stage/"):
        if _IOS_STAGE_PATTERN.fullmatch(key) is None:
            return _raise(key, "it does not have the IOS stage form")
        return StageKey(key)
    kind = key.split("-", 1)[0]
    pattern = _PATTERNS.get(kind)
    if pattern is None:
        return _raise(key, f"unknown operator kind {kind!r}; kinds: {', '.join(KINDS)}")
    match = pattern.fullmatch(key)
    if match is None:
        return _raise(key, f"it does not have the {kind} form")
    v = [int(group) for group in match.groups()]
    if kind == LOGITS:
        return OpKey(kind, (v[0], v[1]), v[2], (1, 1), v[3])
    if kind == EXPANDED_CONV:
        return OpKey(kind, (v[0], v[1]), v[2], (v[3], v[4]), v[5], expand=v[6], kernel=v[7], stride=v[8], idskip=v[9])
    return OpKey(kind, (v[0], v[1]), v[2], (v[3], v[4]), v[5])


def _raise(key: str, reason: str) -> OpKey:  # never returns; typed for the callers' returns
    raise InvalidKeyError(_message(repr(key), reason))


def _message(shown_key: str, reason: str) -> str:
    forms = "\n  ".join(ACCEPTED_FORMS)
    return (
        f"invalid operator key {shown_key}: {reason}. Accepted forms (positive integers, no spaces "
        f"or leading zeros):\n  {forms}"
    )


def _check_positive(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidKeyError(f"{where}: {name} must be an integer >= 1, got {value!r}")
