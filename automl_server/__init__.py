"""Hardware-aware AutoML service: ProxylessNAS search specialised to a device."""
from __future__ import annotations

__version__ = "0.1.0"
