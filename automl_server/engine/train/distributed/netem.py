"""A slow network between network namespaces, for the tests and the benchmark.

This kernel has no netem, so: every node is a network namespace with one TAP
device (10.213.0.<i+1>/24); the TAP's egress is limited by a ``tbf`` qdisc
(bandwidth); a userspace forwarder in this process (a learning switch over
the TAP file descriptors) holds every frame for half the round-trip time
before writing it to the destination's TAP (latency). Every packet between
nodes, the rendezvous store's and gloo's alike, waits.

Why TAP devices and not veth pairs: a veth pair joins two stacks inside the
kernel, with no place for a userspace delay; a TAP hands every frame to the
forwarder (and, unlike a packet socket on a veth, never hands it segmentation-
offloaded super-frames). Why a module of the engine and not of bench/: the
tests and the benchmark share it, and tests import only packages.

Leaves nothing behind: TAP devices are not persistent (they vanish when this
process's descriptors close, crash or not); namespaces carry the creating
pid in their name (``dtsnet<pid>x<i>``) and are deleted on exit, by atexit, and
by the next SlowNetwork of any process if their creator is dead.

Requires root (CAP_NET_ADMIN) and ``ip``/``tc`` (iproute2).
"""
from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000
_CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^dtsnet(\d+)x(\d+)$")
SUBNET = "10.213.0"


class NamespacesUnavailable(RuntimeError):
    """This host cannot make network namespaces (not root, no iproute2, no /dev/net/tun)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_available() -> str | None:
    """None when SlowNetwork can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    probe = f"dtsnet{os.getpid()}x99"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns add failed: {exc.stderr.strip()}"
    return None


def sweep_stale() -> None:
    """Delete namespaces left by a SlowNetwork whose process is gone."""
    netns_dir = Path("/run/netns")
    for entry in netns_dir.iterdir() if netns_dir.exists() else []:
        match = _NAME.match(entry.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True)


@contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Run the block's socket creation in namespace ``name`` (this thread only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        try:
            yield
        finally:
            libc.setns(own, _CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


class _DelaySwitch(threading.Thread):
    """Learning switch between TAP descriptors that delays every frame by ``one_way_s``."""

    def __init__(self, fds: list[int], one_way_s: float) -> None:
        super().__init__(daemon=True, name="dts-delay-switch")
        self.fds, self.one_way_s = fds, one_way_s
        self.where: dict[bytes, int] = {}  # MAC -> fd
        self.queue: deque[tuple[float, int, bytes]] = deque()  # constant delay: release times stay ordered
        self.stop_read, self.stop_write = os.pipe()
        self.frames = 0

    def run(self) -> None:
        while True:
            timeout = max(self.queue[0][0] - time.monotonic(), 0.0) if self.queue else None
            readable, _, _ = select.select([*self.fds, self.stop_read], [], [], timeout)
            if self.stop_read in readable:
                return
            now = time.monotonic()
            for fd in readable:
                while True:
                    try:
                        frame = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if len(frame) < 14:
                        continue
                    self.where[frame[6:12]] = fd
                    target = self.where.get(frame[0:6])
                    for out in ([target] if target is not None else [f for f in self.fds if f != fd]):
                        self.queue.append((now + self.one_way_s, out, frame))
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, out, frame = self.queue.popleft()
                try:
                    os.write(out, frame)
                    self.frames += 1
                except OSError:
                    pass  # a full TAP queue drops the frame, as a congested link would

    def stop(self) -> None:
        os.write(self.stop_write, b"x")
        self.join(timeout=5)
        os.close(self.stop_read)
        os.close(self.stop_write)


@dataclass(frozen=True)
class Measured:
    rtt_ms: float  # median of ICMP echo round trips
    bandwidth_mbit: float  # TCP goodput once the window has opened


class SlowNetwork:
    """``nodes`` namespaces joined by a link of ``rtt_ms`` and ``rate_mbit``.

    with SlowNetwork(nodes=2, rtt_ms=100, rate_mbit=15) as net:
        net.namespaces, net.addresses, net.interface   # run workers with `ip netns exec`
        print(net.measure())
    """

    def __init__(self, nodes: int = 2, rtt_ms: float = 100.0, rate_mbit: float | None = 15.0) -> None:
        self.nodes, self.rtt_ms, self.rate_mbit = nodes, rtt_ms, rate_mbit
        tag = f"{os.getpid()}x"
        # A second SlowNetwork of the same process gets other numbers.
        base = len([p for p in Path("/run/netns").glob(f"dtsnet{tag}*")]) if Path("/run/netns").exists() else 0
        self.namespaces = [f"dtsnet{tag}{base + i}" for i in range(nodes)]
        self.taps = [f"dtst{os.getpid() % 100000}x{base + i}" for i in range(nodes)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(nodes)]
        self.interface = "dts0"  # the TAP's name inside every namespace (GLOO_SOCKET_IFNAME)
        self._fds: list[int] = []
        self._switch: _DelaySwitch | None = None

    def __enter__(self) -> SlowNetwork:
        why = namespaces_available()
        if why is not None:
            raise NamespacesUnavailable(why)
        sweep_stale()
        atexit.register(self.close)
        try:
            for ns, tap, address in zip(self.namespaces, self.taps, self.addresses):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                self._fds.append(_open_tap(tap))
                _ip("link", "set", tap, "netns", ns)
                _ip("-n", ns, "link", "set", tap, "name", self.interface)
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", self.interface)
                _ip("-n", ns, "link", "set", self.interface, "up")
                if self.rate_mbit:
                    # burst: a few full frames; limit: the queue a router would hold (~400 ms at the rate).
                    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", self.interface, "root",
                                    "tbf", "rate", f"{self.rate_mbit}mbit", "burst", "16kb", "latency", "400ms"],
                                   check=True, capture_output=True)
            self._switch = _DelaySwitch(self._fds, self.rtt_ms / 2000.0)
            self._switch.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._switch is not None:
            self._switch.stop()
            self._switch = None
        for fd in self._fds:
            os.close(fd)  # the TAP devices go with their descriptors
        self._fds = []
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        atexit.unregister(self.close)

    @property
    def frames_forwarded(self) -> int:
        """Frames the delay bridge has delivered so far."""
        return self._switch.frames if self._switch is not None else 0

    def exec_prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node]]

    def measure(self, pings: int = 5, seconds: float = 1.5) -> Measured:
        """Round trip by ICMP echo and bandwidth by a TCP transfer, node 0 -> node 1."""
        return Measured(self._ping(pings), self._bandwidth(seconds))

    def _ping(self, count: int) -> float:
        with in_namespace(self.namespaces[0]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.settimeout(5 + self.rtt_ms / 1000)
        rtts = []
        try:
            for seq in range(count):
                header = struct.pack("!BBHHH", 8, 0, 0, 0x4454, seq)
                payload = b"dts-ping" * 4
                checksum = _checksum(header + payload)
                packet = struct.pack("!BBHHH", 8, 0, checksum, 0x4454, seq) + payload
                sent = time.perf_counter()
                sock.sendto(packet, (self.addresses[1], 0))
                while True:
                    data = sock.recv(2048)
                    icmp = data[(data[0] & 0x0F) * 4:]
                    if icmp[0] == 0 and struct.unpack("!H", icmp[6:8])[0] == seq:
                        break
                rtts.append((time.perf_counter() - sent) * 1000)
        finally:
            sock.close()
        return sorted(rtts)[len(rtts) // 2]

    def _bandwidth(self, seconds: float) -> float:
        total = int(max((self.rate_mbit or 1000) * 1e6 / 8 * seconds, 256 * 1024))
        with in_namespace(self.namespaces[1]):
            server = socket.socket()
        server.bind((self.addresses[1], 0))
        server.listen(1)
        marks: list[tuple[float, int]] = []

        def sink() -> None:
            conn, _ = server.accept()
            received = 0
            while received < total:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
                marks.append((time.perf_counter(), received))
            conn.close()

        reader = threading.Thread(target=sink)
        reader.start()
        with in_namespace(self.namespaces[0]):
            client = socket.socket()
        client.connect(server.getsockname())
        client.sendall(b"\0" * total)
        reader.join(timeout=60)
        client.close()
        server.close()
        # Goodput over the last three quarters: slow start over a long round trip is not the link's rate.
        start = next(m for m in marks if m[1] >= total // 4)
        end = marks[-1]
        return (end[1] - start[1]) * 8 / max(end[0] - start[0], 1e-9) / 1e6


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


if __name__ == "__main__":  # python -m automl_server.engine.train.distributed.netem [RTT_MS] [MBIT]
    import sys

    rtt = float(sys.argv[1]) if len(sys.argv) > 1 else 100.0
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    with SlowNetwork(2, rtt, rate) as net:
        print(f"namespaces {net.namespaces}: asked RTT {rtt} ms, {rate} Mb/s; measured {net.measure()}")
