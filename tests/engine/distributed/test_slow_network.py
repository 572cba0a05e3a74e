"""Two workers in two network namespaces, every packet through the delay bridge."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automl_server.engine.data import split_arrays
from automl_server.engine.train.distributed.launch import nodes_across_hosts, run_workers, write_spec
from automl_server.engine.train.distributed.netem import SlowNetwork, namespaces_available
from automl_server.engine.train.distributed.settings import DelayedSGDSettings
from search_spaces import Arch, build_model


def require_namespaces() -> None:
    why = namespaces_available()
    if why is not None:
        if os.environ.get("AUTOML_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"network namespaces unavailable ({why}) and AUTOML_TEST_REQUIRE_SERVICES=1")
        pytest.skip(f"network namespaces unavailable: {why}")


def test_the_emulated_link_has_the_asked_round_trip_and_rate_and_leaves_nothing_behind():
    require_namespaces()
    with SlowNetwork(nodes=2, rtt_ms=40, rate_mbit=15) as net:
        measured = net.measure(pings=3, seconds=0.5)
        names = list(net.namespaces)

    assert 38 <= measured.rtt_ms <= 80
    assert 8 <= measured.bandwidth_mbit <= 16.5
    assert not any(os.path.exists(f"/run/netns/{name}") for name in names)


def test_two_workers_in_two_namespaces_train_through_the_delay_bridge(tmp_path):
    require_namespaces()
    raw = load_digits()
    x = np.rint(raw.images * 255 / 16).astype(np.uint8)[..., None][:300]
    data = split_arrays(x, raw.target[:300].astype(np.int64), seed=0)
    torch.manual_seed(0)
    model = build_model(Arch("tiny", data.resolution, data.num_classes, data.in_channels, ("mb3_k3",) * 8))
    settings = DelayedSGDSettings(workers=2, delay=2, period=2, compression=0.05, sparsity_warmup_epochs=0,
                                  collective_timeout_s=30)
    spec = write_spec(tmp_path / "dts" / "spec.pt", model=model,
                      data={"x_train": data.x_train, "y_train": data.y_train, "x_holdout": data.x_holdout,
                            "y_holdout": data.y_holdout},
                      settings=settings.model_dump(), epochs=1, batch_size=16, seed=0, max_shift=1)
    events: list[dict[str, Any]] = []

    with SlowNetwork(nodes=2, rtt_ms=20, rate_mbit=15) as net:
        nodes = nodes_across_hosts(spec, [net.exec_prefix(i) for i in range(2)], net.addresses[0],
                                   interface=net.interface)
        run_workers(nodes, tmp_path / "dts", on_event=events.append, check_cancelled=lambda: None)
        frames = net.frames_forwarded

    epochs = [e for e in events if e["type"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["workers"] == 2
    assert epochs[0]["comm_wait_s"] >= 0 and epochs[0]["bytes_sent_per_step"] > 0
    assert frames > 50  # the workers' traffic went through the bridge
    assert (tmp_path / "dts" / "final.pt").exists()
