"""The automatic client epochs count optimizer steps, not epochs (see auto_client_epochs)."""
from automl_server.engine.train.fedgkt.pipeline import FedGKTSettings, auto_client_epochs


def test_small_shards_get_enough_epochs_for_forty_steps_a_round():
    # digits, 4 clients: about 350 images a shard, batch 64 -> 6 steps an epoch -> ceil(40 / 6) = 7 epochs
    assert auto_client_epochs([300, 350, 400, 350], 64) == 7


def test_shards_of_cifar_size_keep_the_papers_single_epoch():
    # CIFAR-10 over 16 clients: 3,125 images a shard, batch 64 -> 49 steps -> 1 epoch
    assert auto_client_epochs([3125] * 16, 64) == 1


def test_tiny_shards_are_capped_rather_than_repeated_for_hundreds_of_epochs():
    assert auto_client_epochs([12, 10], 64) == 8


def test_an_explicit_value_is_kept_and_the_default_is_automatic():
    assert FedGKTSettings().client_epochs is None
    assert FedGKTSettings(client_epochs=2).client_epochs == 2
