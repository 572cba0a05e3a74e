"""The FedAvg baseline: the sample-weighted average, and the time budget between rounds."""
from __future__ import annotations

import torch

from automl_server.engine.train.fedgkt.fedavg import average_states, run_fedavg
from automl_server.engine.train.fedgkt.runner import make_federation
from search_spaces import build_model

from .conftest import tiny_arch


def test_states_are_averaged_by_sample_count_and_integer_buffers_kept():
    first = {"w": torch.tensor([1.0, 4.0]), "steps": torch.tensor(3)}
    second = {"w": torch.tensor([4.0, 1.0]), "steps": torch.tensor(9)}

    averaged = average_states([first, second], [1, 2])

    assert torch.allclose(averaged["w"], torch.tensor([(1 + 2 * 4) / 3, (4 + 2 * 1) / 3]))
    assert averaged["steps"].item() == 3


def test_no_round_starts_once_the_budget_is_spent(digits):
    federation = make_federation(digits.x_train, digits.y_train, digits.x_holdout, digits.y_holdout, clients=2,
                                 partition="iid", dirichlet_alpha=0.5, num_classes=10, seed=0)
    torch.manual_seed(0)
    model = build_model(tiny_arch(digits))

    result = run_fedavg(model, federation.shards, rounds=5, client_epochs=1, lr=1e-3, batch_size=32, seed=0,
                        eval_x=digits.x_holdout, eval_y=digits.y_holdout, should_stop=lambda: True)

    assert result["rounds"] == 1 and len(result["history"]) == 1  # type: ignore[arg-type]


def test_each_round_is_reported_as_it_ends(digits):
    """The job's progress bar moves with FedAvg's rounds (the baselines run as long as FedGKT)."""
    federation = make_federation(digits.x_train, digits.y_train, digits.x_holdout, digits.y_holdout, clients=2,
                                 partition="iid", dirichlet_alpha=0.5, num_classes=10, seed=0)
    torch.manual_seed(0)
    seen: list[dict[str, object]] = []

    result = run_fedavg(build_model(tiny_arch(digits)), federation.shards[:2], rounds=2, client_epochs=1, lr=1e-3,
                        batch_size=64, seed=0, eval_x=digits.x_holdout[:50], eval_y=digits.y_holdout[:50],
                        on_round=seen.append)

    assert seen == result["history"] and [row["round"] for row in seen] == [1, 2]
