"""A stand-in for a phone's adbd, for tests: the device side of the ADB protocol
on 127.0.0.1, in background threads.

It speaks the wire protocol the way adbd does, written from the protocol
description (not from adb-shell's client code), so a test exercises the real
client against an independent peer:

* packets: a 24-byte little-endian header (command, arg0, arg1, data length,
  data checksum = byte sum, magic = command ^ 0xffffffff) then the data;
* CNXN from the host -> AUTH TOKEN (20 random bytes); AUTH SIGNATURE is checked
  against the trusted keys with a real RSA check (PKCS#1 v1.5 over a SHA-1
  DigestInfo whose "digest" is the token itself, as adbd checks it); a failed
  signature gets a fresh token; AUTH RSAPUBLICKEY is accepted only with
  ``accept_new_keys`` (the user tapping "Allow"), otherwise the peer stays
  silent, as a phone does while its prompt waits;
* OPEN ``shell:<cmd>``: the command runs with /bin/sh in the sandbox folder,
  with a small environment; output goes back as WRTE packets (each waits for
  the host's OKAY), then CLSE;
* OPEN ``sync:``: SEND path,mode / DATA / DONE mtime writes the file, STAT
  answers, QUIT closes.

Device paths map into the sandbox folder: ``/data/local/tmp/x`` is
``<sandbox>/data/local/tmp/x``; ``..`` is refused. Shell commands get their
device paths rewritten the same way and the sandbox prefix is taken out of
their output again, so the client never sees a host path. This is a test
fixture, not a security boundary: the commands run on the host as this user.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
from base64 import b64decode
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils


def _command_id(name: bytes) -> int:
    return int.from_bytes(name, "little")


CNXN, AUTH, OPEN, OKAY, WRTE, CLSE = (_command_id(c) for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"WRTE", b"CLSE"))
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")
PEER_VERSION = 0x01000001  # from this version on, checksums are no longer checked
MAX_PAYLOAD = 256 * 1024
TOKEN_SIZE = 20
SYNC_HEADER = struct.Struct("<4sI")
SYNC_DATA_MAX = 64 * 1024
DEVICE_BANNER = b"device::ro.product.name=automl_peer;ro.product.model=Peer;ro.product.device=peer;features=\0"
# Device folders that live in the sandbox; any other absolute path in a
# shell command is left to the host (e.g. /bin/cat).
SANDBOX_ROOTS = ("data", "sdcard", "sys", "system")
WRITABLE_ROOTS = ("/data/local/tmp", "/sdcard")


class _Disconnected(Exception):
    """The host closed the connection (or broke the protocol)."""


@dataclass
class Packet:
    command: int
    arg0: int
    arg1: int
    data: bytes


def android_public_key(text: str) -> rsa.RSAPublicKey:
    """The RSA key in an ``adbkey.pub`` line: base64 of Android's RSAPublicKey
    struct (words, n0inv, modulus LE, rr LE, exponent), then `` user@host``."""
    blob = b64decode(text.strip().split()[0])
    words = struct.unpack_from("<I", blob)[0]
    size = words * 4
    _, _, modulus, _, exponent = struct.unpack(f"<II{size}s{size}sI", blob)
    return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "little")).public_key()


def signature_matches(key: rsa.RSAPublicKey, token: bytes, signature: bytes) -> bool:
    """Whether signature is the host's answer to token: PKCS#1 v1.5 over a
    SHA-1 DigestInfo in which the 20-byte token stands where the digest goes."""
    try:
        key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
    except (InvalidSignature, ValueError):
        return False
    return True


class _Wire:
    """Packet framing over one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.check_checksums = True  # until the host announces a version that drops them

    def _read_exactly(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            # adb-shell writes a header and its data in two sends; with Nagle on
            # its side, each second send waits for our ACK. Acknowledge at once
            # (the flag resets itself, hence on every read) instead of after
            # the 40 ms delayed-ACK timer.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise _Disconnected("host closed the connection")
            chunks += chunk
        return bytes(chunks)

    def receive(self) -> Packet:
        command, arg0, arg1, length, checksum, magic = HEADER.unpack(self._read_exactly(HEADER.size))
        if magic != command ^ 0xFFFFFFFF:
            raise _Disconnected(f"bad magic {magic:#x} for command {command:#x}")
        if length > MAX_PAYLOAD:
            raise _Disconnected(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
        data = self._read_exactly(length) if length else b""
        if self.check_checksums and sum(data) & 0xFFFFFFFF != checksum:
            raise _Disconnected("data checksum mismatch")
        return Packet(command, arg0, arg1, data)

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        header = HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        self.sock.sendall(header + data)


class AdbPeer:
    """The device: listens on 127.0.0.1:<port> until `stop()` (or the `with` block ends)."""

    def __init__(
        self,
        sandbox: Path,
        trusted_keys: Iterable[str] = (),
        accept_new_keys: bool = False,
        temperature_c: float = 35.0,
    ) -> None:
        self.sandbox = Path(sandbox).resolve()
        if re.search(r"\s", str(self.sandbox)):
            raise ValueError(f"the sandbox path must not contain whitespace: {self.sandbox}")
        self.trusted_keys = [k.strip() for k in trusted_keys]
        self.accept_new_keys = accept_new_keys
        self.drop_connections = 0  # reset this many upcoming connections after their first packet
        self.connections = 0  # connections accepted so far
        self.offered_keys: list[str] = []  # public keys hosts sent with AUTH RSAPUBLICKEY
        self.shell_commands: list[str] = []  # as the host sent them (device paths)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._processes: set[subprocess.Popen[bytes]] = set()
        for folder in ("data/local/tmp", "sdcard", "system/bin"):
            (self.sandbox / folder).mkdir(parents=True, exist_ok=True)
        self.set_temperature(temperature_c)  # the CPU's zone, the one tests change
        self.set_temperature(min(temperature_c, 30.0), zone=1)  # a cooler battery zone beside it
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.host, self.port = self._listener.getsockname()[:2]

    # -- the device's state, for tests ------------------------------------
    def set_temperature(self, celsius: float, zone: int = 0) -> None:
        """What /sys/class/thermal/thermal_zone<zone>/temp reads (millidegrees, as on phones)."""
        path = self.sandbox / f"sys/class/thermal/thermal_zone{zone}/temp"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{round(celsius * 1000)}\n")
        tmp.replace(path)  # a reader never sees a half-written value

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives on the host; ValueError if it leaves the sandbox."""
        pure = PurePosixPath(device_path)
        if not pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"not an absolute device path without '..': {device_path!r}")
        host = (self.sandbox / pure.relative_to("/")).resolve()
        if not host.is_relative_to(self.sandbox):
            raise ValueError(f"{device_path!r} leaves the device sandbox")
        return host

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> AdbPeer:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for sock in list(self._sockets):
                _shutdown(sock)
            for process in list(self._processes):
                _kill(process)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> AdbPeer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="adb-peer")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # OKAY then WRTE go out at once
            with self._lock:
                self.connections += 1
                self._sockets.add(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        try:
            _Session(self, _Wire(sock)).run()
        except (_Disconnected, OSError):
            pass
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drop_connections > 0:
                self.drop_connections -= 1
                return True
            return False

    # -- the shell ----------------------------------------------------------
    def _host_command(self, command: str) -> str:
        if re.search(r"(^|[\s/='\"])\.\.($|[\s/'\"])", command):
            raise ValueError("'..' in a path")
        roots = "|".join(SANDBOX_ROOTS)
        return re.sub(rf"(?<![\w./-])/(?=(?:{roots})(?:/|\b))", f"{self.sandbox}/", command)

    def _shell_output(self, command: str) -> Iterator[bytes]:
        """The merged stdout/stderr of command, line by line, device paths restored."""
        self.shell_commands.append(command)
        try:
            host_command = self._host_command(command)
        except ValueError as exc:
            yield f"/system/bin/sh: {exc}: refused by the device sandbox\n".encode()
            return
        env = {
            "PATH": f"{self.sandbox}/system/bin:/usr/bin:/bin",
            "HOME": str(self.sandbox / "data/local/tmp"),
            "TMPDIR": str(self.sandbox / "data/local/tmp"),
            "LANG": "C",
        }
        process = subprocess.Popen(
            ["/bin/sh", "-c", host_command], cwd=self.sandbox, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        with self._lock:
            self._processes.add(process)
        stdout = process.stdout
        if stdout is None:  # cannot happen with stdout=PIPE; keeps the type checker informed
            raise RuntimeError("no stdout pipe")
        prefix = str(self.sandbox).encode()
        try:
            for line in iter(lambda: stdout.readline(4096), b""):
                yield line.replace(prefix + b"/", b"/").replace(prefix, b"/")
            process.wait()
        finally:
            _kill(process)
            with self._lock:
                self._processes.discard(process)
            stdout.close()


class _Session:
    """One host connection: the handshake, then its streams."""

    def __init__(self, peer: AdbPeer, wire: _Wire) -> None:
        self.peer = peer
        self.wire = wire
        self.online = False
        self.token = b""
        self.host_max_payload = MAX_PAYLOAD
        self.pending: deque[Packet] = deque()  # read while waiting for an OKAY, handled later
        self.sync_streams: dict[int, _SyncService] = {}
        self.next_id = 0

    def _next_packet(self) -> Packet:
        return self.pending.popleft() if self.pending else self.wire.receive()

    def run(self) -> None:
        first = True
        while True:
            packet = self._next_packet()
            if first and self.peer._take_drop():
                # A reset (RST) rather than a clean close: what a dying adbd or
                # a flaky Wi-Fi link looks like to the host.
                self.wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            first = False
            if packet.command == CNXN:
                self._on_connect(packet)
            elif packet.command == AUTH:
                self._on_auth(packet)
            elif not self.online:
                continue  # adbd ignores stream traffic before the handshake
            elif packet.command == OPEN:
                self._on_open(packet)
            elif packet.command == WRTE:
                self._on_write(packet)
            elif packet.command == CLSE:
                if self.sync_streams.pop(packet.arg1, None) is not None:
                    self.wire.send(CLSE, packet.arg1, packet.arg0)
            # OKAY outside a wait: an acknowledgement nobody waits for.

    # -- handshake ----------------------------------------------------------
    def _on_connect(self, packet: Packet) -> None:
        self.online = False
        self.wire.check_checksums = packet.arg0 < PEER_VERSION
        self.host_max_payload = min(packet.arg1, MAX_PAYLOAD)
        self._send_token()

    def _send_token(self) -> None:
        self.token = secrets.token_bytes(TOKEN_SIZE)
        self.wire.send(AUTH, AUTH_TOKEN, 0, self.token)

    def _go_online(self) -> None:
        self.online = True
        self.wire.send(CNXN, PEER_VERSION, MAX_PAYLOAD, DEVICE_BANNER)

    def _on_auth(self, packet: Packet) -> None:
        if packet.arg0 == AUTH_SIGNATURE and self.token:
            for key_text in list(self.peer.trusted_keys):
                if signature_matches(android_public_key(key_text), self.token, packet.data):
                    self._go_online()
                    return
            self._send_token()
        elif packet.arg0 == AUTH_RSAPUBLICKEY:
            key_text = packet.data.rstrip(b"\0").decode("ascii", "replace").strip()
            self.peer.offered_keys.append(key_text)
            if self.peer.accept_new_keys:
                self.peer.trusted_keys.append(key_text)  # "Always allow from this computer"
                self._go_online()
            # Otherwise the prompt stays on the phone's screen: no answer.

    # -- streams ------------------------------------------------------------
    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _on_open(self, packet: Packet) -> None:
        host_id = packet.arg0
        service = packet.data.rstrip(b"\0").decode("utf-8", "replace")
        if service.startswith("shell:") and service != "shell:":
            self._run_shell(host_id, service[len("shell:"):])
        elif service == "sync:":
            local_id = self._new_id()
            self.sync_streams[local_id] = _SyncService(self.peer)
            self.wire.send(OKAY, local_id, host_id)
        else:
            self.wire.send(CLSE, 0, host_id)  # adbd's answer to a service it cannot start

    def _send_and_wait(self, local_id: int, host_id: int, data: bytes) -> bool:
        """WRTE data, then wait for the host's OKAY; False if the host closed the stream."""
        for start in range(0, len(data), self.host_max_payload):
            self.wire.send(WRTE, local_id, host_id, data[start:start + self.host_max_payload])
            while True:
                packet = self.wire.receive()
                if packet.arg0 == host_id and packet.arg1 == local_id and packet.command == OKAY:
                    break
                if packet.arg0 == host_id and packet.arg1 == local_id and packet.command == CLSE:
                    return False
                self.pending.append(packet)
        return True

    def _run_shell(self, host_id: int, command: str) -> None:
        local_id = self._new_id()
        self.wire.send(OKAY, local_id, host_id)
        output = self.peer._shell_output(command)
        try:
            for chunk in output:
                if not self._send_and_wait(local_id, host_id, chunk):
                    return
        finally:
            output.close()  # kills the command if the host went away first
        self.wire.send(CLSE, local_id, host_id)

    def _on_write(self, packet: Packet) -> None:
        host_id, local_id = packet.arg0, packet.arg1
        service = self.sync_streams.get(local_id)
        if service is None:
            self.wire.send(CLSE, 0, host_id)
            return
        self.wire.send(OKAY, local_id, host_id)  # acknowledge first, then answer
        reply, done = service.feed(packet.data)
        if reply and not self._send_and_wait(local_id, host_id, reply):
            done = True
        if done:
            self.sync_streams.pop(local_id, None)
            self.wire.send(CLSE, local_id, host_id)


class _SyncService:
    """The file sync protocol of one ``sync:`` stream: a byte stream of
    ``<4-byte id><uint32 length>`` requests spread over WRTE packets."""

    def __init__(self, peer: AdbPeer) -> None:
        self.peer = peer
        self.buffer = bytearray()
        self.target: Path | None = None  # the file a SEND is writing
        self.mode = 0
        self.content = bytearray()
        self.error: str | None = None  # a SEND that failed: DATA is discarded until DONE

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Consume data; returns (bytes to send back, whether the stream ends)."""
        self.buffer += data
        replies = bytearray()
        while len(self.buffer) >= SYNC_HEADER.size:
            request, length = SYNC_HEADER.unpack_from(self.buffer)
            has_payload = request != b"DONE"
            if has_payload and len(self.buffer) < SYNC_HEADER.size + length:
                break  # the rest arrives in the next WRTE
            payload = bytes(self.buffer[SYNC_HEADER.size:SYNC_HEADER.size + length]) if has_payload else b""
            del self.buffer[:SYNC_HEADER.size + (length if has_payload else 0)]
            reply, done = self._handle(request, length, payload)
            replies += reply
            if done:
                return bytes(replies), True
        return bytes(replies), False

    @staticmethod
    def _fail(message: str) -> bytes:
        text = message.encode()
        return SYNC_HEADER.pack(b"FAIL", len(text)) + text

    def _handle(self, request: bytes, length: int, payload: bytes) -> tuple[bytes, bool]:
        if request == b"SEND":
            return self._begin_send(payload.decode("utf-8", "replace")), False
        if request == b"DATA":
            if length > SYNC_DATA_MAX:
                return self._fail(f"DATA of {length} bytes exceeds {SYNC_DATA_MAX}"), True
            if self.error is None:
                self.content += payload
            return b"", False
        if request == b"DONE":
            return self._finish_send(mtime=length), False
        if request == b"STAT":
            return self._stat(payload.decode("utf-8", "replace")), False
        if request == b"QUIT":
            return b"", True
        return self._fail(f"unsupported sync request {request!r}"), True

    def _begin_send(self, spec: str) -> bytes:
        path, _, mode = spec.rpartition(",")
        self.target, self.content, self.error = None, bytearray(), None
        try:
            self.mode = int(mode)
            if not any(path == root or path.startswith(root + "/") for root in WRITABLE_ROOTS):
                raise PermissionError("Permission denied")
            self.target = self.peer.host_path(path)
        except (ValueError, PermissionError) as exc:
            self.error = f"couldn't create file {path!r}: {exc}"
        return b""

    def _finish_send(self, mtime: int) -> bytes:
        if self.error is not None or self.target is None:
            return self._fail(self.error or "DONE without SEND")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.target.with_name(f".{self.target.name}.partial")
        partial.write_bytes(self.content)
        os.chmod(partial, self.mode & 0o777)
        os.utime(partial, (time.time(), mtime))
        partial.replace(self.target)
        self.target, self.content = None, bytearray()
        return SYNC_HEADER.pack(b"OKAY", 0)

    def _stat(self, path: str) -> bytes:
        try:
            st = self.peer.host_path(path).stat()
            mode, size, mtime = st.st_mode, st.st_size, int(st.st_mtime)
        except (ValueError, OSError):
            mode = size = mtime = 0  # what adbd answers for a missing file
        return struct.pack("<4sIII", b"STAT", mode, size & 0xFFFFFFFF, mtime)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
