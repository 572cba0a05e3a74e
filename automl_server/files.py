"""Small file helpers shared by the dataset store and the job stages."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (datasets can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Below this much free space, a failed write is taken for a full disk.
NEARLY_FULL_BYTES = 1 << 20


def disk_full(exc: BaseException, data_dir: Path | None = None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or an exhausted quota.
    PyTorch reports a failed write as a RuntimeError without an errno ("file
    write failed", "unexpected pos 64 vs 0"): such an error counts when the
    disk of ``data_dir`` is (nearly) full now."""
    import errno

    if data_dir is not None and isinstance(exc, (OSError, RuntimeError)):
        free = free_bytes(data_dir)
        if free is not None and free < NEARLY_FULL_BYTES:
            return True

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, RuntimeError) and ("file write failed" in str(current)
                                                  or "No space left on device" in str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def disk_full_detail(data_dir: Path, doing: str) -> str:
    """What a user reads when ``doing`` found the data directory's disk full."""
    free = free_bytes(data_dir)
    left = f"{free / 1024:.0f} KiB free" if free is not None else "free space unknown"
    return (f"the server's data directory ({data_dir}) is full ({left}) while {doing}; "
            "free space on its disk (or move AUTOML_DATA_DIR to a larger one), then try again")
