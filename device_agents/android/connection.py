"""An authenticated adb connection to one phone (adb-shell), with retries.

Over TCP (``adb tcpip 5555`` on the phone, then its IP) or USB (its serial,
with adb-shell's ``usb`` extra). The host authenticates with an RSA key pair
at ``key_path`` (``key_path`` + ``.pub``), generated there when missing; the
default is adb's own key, which a phone that already trusts this computer's
``adb`` accepts without a prompt.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from adb_shell import exceptions as adb_errors
from adb_shell.adb_device import AdbDevice, AdbDeviceTcp, AdbDeviceUsb
from adb_shell.auth.keygen import keygen, write_public_keyfile
from adb_shell.auth.sign_pythonrsa import PythonRSASigner

from device_agents.android.errors import AdbAuthRefusedError, DeviceGoneError, UsbUnavailableError

log = logging.getLogger("automl.agent.android")
T = TypeVar("T")

# What a dropped link, a phone gone to sleep or a restarting adbd raise; worth
# a reconnect. Our own errors (auth refused, ...) are not in here.
# OSError covers refused, reset, aborted, broken pipe, timeouts, unreachable
# hosts and DNS failures; local files are read before any transport call, so
# an OSError in here is always the link's.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    adb_errors.TcpTimeoutException,
    adb_errors.AdbTimeoutError,
    adb_errors.AdbConnectionError,
    adb_errors.InvalidChecksumError,
    adb_errors.InvalidCommandError,
    adb_errors.UsbDeviceNotFoundError,
    adb_errors.UsbReadFailedError,
    adb_errors.UsbWriteFailedError,
)


@dataclass(frozen=True)
class AdbTarget:
    """How to reach and authenticate with one phone."""

    host: str | None = None  # the phone's IP or name for adb over TCP; None to use USB
    port: int = 5555  # adbd's TCP port (`adb tcpip 5555`)
    serial: str | None = None  # USB serial (`adb devices`); only when host is None
    key_path: Path = Path("~/.android/adbkey")  # private key; the public key is key_path + ".pub"
    transport_timeout_s: float = 10.0  # one socket read or write
    auth_timeout_s: float = 30.0  # time the user has to tap "Allow" on the phone's RSA prompt
    attempts: int = 3  # tries per operation before the phone counts as gone
    retry_backoff_s: float = 1.0  # pause before the 2nd try; doubles for each further one

    def __post_init__(self) -> None:
        if (self.host is None) == (self.serial is None):
            raise ValueError(
                f"give exactly one of host (adb over TCP) or serial (USB), got host={self.host!r}, "
                f"serial={self.serial!r}"
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be an integer in 1..65535, got {self.port!r}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("transport_timeout_s", "auth_timeout_s", "retry_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        object.__setattr__(self, "key_path", Path(self.key_path).expanduser())

    @property
    def address(self) -> str:
        """For messages: ``host:port`` or ``usb:<serial>``."""
        return f"{self.host}:{self.port}" if self.host is not None else f"usb:{self.serial}"


def load_signer(key_path: Path) -> PythonRSASigner:
    """The signer for the key pair at key_path, generating the pair (or the
    missing public half) first; the private key is made readable by its owner only."""
    public_path = Path(f"{key_path}.pub")
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        keygen(str(key_path))
        os.chmod(key_path, 0o600)
        log.info("generated an adb key pair at %s", key_path)
    elif not public_path.exists():
        write_public_keyfile(str(key_path), str(public_path))
    return PythonRSASigner.FromRSAKeyPath(str(key_path))


class AdbConnection:
    """One phone, connected on first use and reconnected after transport errors."""

    def __init__(self, target: AdbTarget) -> None:
        self.target = target
        self._signer: PythonRSASigner | None = None
        self._device: AdbDevice | None = None

    def call(self, operation: Callable[[AdbDevice], T], what: str) -> T:
        """operation(device), connecting first if needed. A transport error closes
        the connection and the operation is tried again (``target.attempts`` in
        all, with backoff); then DeviceGoneError. ``what`` names it in messages."""
        if self._signer is None:  # outside the retries: a bad key file is no transport error
            self._signer = load_signer(self.target.key_path)
        signer = self._signer
        last_error: BaseException | None = None
        for attempt in range(self.target.attempts):
            if attempt:
                time.sleep(self.target.retry_backoff_s * 2 ** (attempt - 1))
            try:
                device = self._device if self._device is not None else self._connect(signer)
                return operation(device)
            except TRANSPORT_ERRORS as exc:
                self.close()
                last_error = exc
                log.warning("%s: %s failed (attempt %d of %d): %s: %s", self.target.address, what,
                            attempt + 1, self.target.attempts, type(exc).__name__, exc)
        raise DeviceGoneError(
            f"the phone at {self.target.address} did not answer ({what}) after {self.target.attempts} "
            f"attempt(s): {type(last_error).__name__}: {last_error}. Check that it is on and unlocked, that "
            "`adb tcpip 5555` is still in effect (it resets on reboot) or its USB cable is in, and that "
            "nothing else holds its adb connection"
        ) from last_error

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            except TRANSPORT_ERRORS:
                pass
            self._device = None

    def _open_device(self) -> AdbDevice:
        timeout = self.target.transport_timeout_s
        if self.target.host is not None:
            return AdbDeviceTcp(self.target.host, self.target.port, default_transport_timeout_s=timeout)
        try:
            return AdbDeviceUsb(serial=self.target.serial, default_transport_timeout_s=timeout)
        except adb_errors.InvalidTransportError as exc:  # adb-shell says so when libusb1 is missing
            raise UsbUnavailableError(
                f"cannot reach {self.target.address}: USB needs adb-shell's USB support "
                "(`pip install 'adb-shell[usb]'`, which brings libusb1, plus the libusb library). "
                "Or use adb over TCP: `adb tcpip 5555` with the cable in, then configure host=<the phone's IP>"
            ) from exc

    def _connect(self, signer: PythonRSASigner) -> AdbDevice:
        device = self._open_device()
        prompted: list[bool] = []  # adb-shell calls back just before it offers our public key
        try:
            device.connect(
                rsa_keys=[signer],
                transport_timeout_s=self.target.transport_timeout_s,
                auth_timeout_s=self.target.auth_timeout_s,
                read_timeout_s=self.target.transport_timeout_s,
                auth_callback=lambda _device: prompted.append(True),
            )
        except adb_errors.DeviceAuthError as exc:
            device.close()
            raise self._auth_refused(exc) from exc
        except TRANSPORT_ERRORS as exc:
            device.close()
            if prompted:
                # The phone rejected our signature, was offered the public key
                # and then never said yes: the prompt was declined or ignored.
                raise self._auth_refused(exc) from exc
            raise
        self._device = device
        log.info("connected to %s", self.target.address)
        return device

    def _auth_refused(self, cause: BaseException) -> AdbAuthRefusedError:
        return AdbAuthRefusedError(
            f"the phone at {self.target.address} did not accept this host's RSA key "
            f"({self.target.key_path}.pub) within {self.target.auth_timeout_s:g} s: unlock the phone and "
            "accept the RSA key prompt on the phone (tick 'Always allow from this computer'), then try again. "
            "No prompt? Revoke USB debugging authorisations in Developer options and reconnect. "
            f"({type(cause).__name__}: {cause})"
        )
