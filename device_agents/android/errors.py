"""The errors of the Android backend; each message says what to do about it."""
from __future__ import annotations


class AndroidBackendError(RuntimeError):
    """Base class: something about the phone or the benchmark tool stopped a measurement."""


class AdbAuthRefusedError(AndroidBackendError):
    """The phone did not accept this host's RSA key."""


class DeviceGoneError(AndroidBackendError):
    """The phone cannot be reached (connection refused, reset or closed) even after retries."""


class UsbUnavailableError(AndroidBackendError):
    """A USB serial was configured, but adb-shell's USB support (libusb1) is not installed."""


class BenchmarkBinaryMissingError(AndroidBackendError):
    """The benchmark_model binary is missing locally, or the phone cannot execute it."""


class BenchmarkFailedError(AndroidBackendError):
    """benchmark_model ran and exited with an error (the message holds the end of its output)."""


class BenchmarkOutputError(AndroidBackendError):
    """benchmark_model's output does not hold the statistics lines this backend reads."""


class DeviceTooHotError(AndroidBackendError):
    """The phone stayed above the temperature limit for longer than the cool-down limit."""
