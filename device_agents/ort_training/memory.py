"""This process's resident memory, from /proc/self/status (Linux; None elsewhere)."""
from __future__ import annotations


def status_kb(field: str) -> int | None:
    """``VmHWM`` (peak resident set since the process started) or ``VmRSS`` (now), in kB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb() -> int | None:
    return status_kb("VmHWM")


def rss_kb() -> int | None:
    return status_kb("VmRSS")
