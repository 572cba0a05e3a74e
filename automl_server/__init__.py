"""Hardware-aware AutoML service: ProxylessNAS search specialised to a device."""
from __future__ import annotations

import os

__version__ = "0.1.0"

# PyTorch's CPU kernels run on OpenMP threads, and libgomp's default lets a
# waiting thread spin. Here the worker trains while the embedded agent
# measures, the web server answers and other jobs' processes (torchrun
# workers, Flower clients) run on the same cores: a spinning thread holds a
# core that the thread it waits for needs, and every small kernel pays a
# scheduler time slice. Measured on this 2-core VM at load average 6-7 (a
# warm-up epoch of the tiny space on digits, 17 steps, 2 threads): 34.3 s
# spinning, 5.9 s passive (1 thread: 2.5-4.0 s). Passive threads cost
# little on an idle machine. It must be set before libgomp loads (the first
# `import torch`): every process of the service imports this package first;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
