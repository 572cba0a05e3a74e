"""The errors of the latency database, in one place so callers can catch them by name."""
from __future__ import annotations


class InvalidKeyError(ValueError):
    """A string is not a canonical operator key; the message names it and shows the accepted forms."""


class LatencyStoreError(RuntimeError):
    """The database refused an operation; the message says what was attempted and what to do."""


class LutFormatError(ValueError):
    """A latency-table file is malformed; the message names the file and the bad entry."""


class CalibrationError(ValueError):
    """A calibration cannot be fitted from the given end-to-end measurements."""


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
