"""Process checks shared by the pipelines that run child processes (Flower, torchrun).

``automl_server/serve.py`` keeps its own copy of ``alive``: importing the
engine loads torch, which the serve supervisor must not pay for.
"""
from __future__ import annotations


def alive(pid: int) -> bool:
    """Running: a zombie waiting for its parent's ``wait`` counts as gone (``os.kill(pid, 0)``
    would still succeed on it, so a watcher would wait for a process that has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
