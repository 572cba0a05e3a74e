"""Data-parallel training that keeps scaling over slow links: delayed and
temporally sparse SGD (Zhu et al., 2019) with Deep Gradient Compression
(Lin et al., 2018), on torch.distributed workers launched by torchrun.

Modules: ``settings`` (the pipeline's settings and checks), ``update_rule``
(the DTS update), ``dgc`` (compression), ``collective`` (async collectives),
``loop`` (one worker's training loop), ``worker`` (torchrun's entry point),
``launch`` (starts and supervises torchrun), ``pipeline`` (registration),
``netem`` (a slow emulated network between namespaces for tests and benchmarks).
"""
from __future__ import annotations
