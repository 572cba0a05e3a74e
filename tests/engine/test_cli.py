"""`automl spaces` and `automl search`: the engine from the command line, no server."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from automl_server.cli import main
from search_spaces import Arch


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_spaces_list_names_every_registered_space():
    result = run("spaces", "list", "--json")

    names = [s["name"] for s in json.loads(result.output)]
    assert result.exit_code == 0
    assert {"proxyless-mobile", "proxyless-cpu", "proxyless-gpu", "tiny"} <= set(names)


def test_spaces_sample_is_deterministic_and_valid():
    args = ("spaces", "sample", "--space", "proxyless-mobile", "--n", "3", "--seed", "7", "--resolution", "32",
            "--num-classes", "10", "--json")

    first, second = run(*args), run(*args)

    archs = [Arch.from_dict(d) for d in json.loads(first.output)]
    assert first.output == second.output and len(archs) == 3
    assert all(a.resolution == 32 and len(a.blocks) == 21 for a in archs)


def test_spaces_sample_unknown_space_lists_the_known_ones():
    result = CliRunner().invoke(main, ["spaces", "sample", "--space", "nope"])

    assert result.exit_code == 2
    assert "proxyless-mobile" in result.output


def test_search_writes_an_architecture_that_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 8, 8, 1), dtype=np.uint8)
    y = np.arange(120) % 3
    x[y == 1, :4] = 255  # make the classes learnable
    dataset = tmp_path / "toy.npz"
    np.savez(dataset, x=x, y=y)
    out = tmp_path / "arch.json"

    result = run("search", "--space", "tiny", "--dataset", str(dataset), "--target-ms", "0.05", "--epochs", "1",
                 "--warmup-epochs", "1", "--batch-size", "32", "--out", str(out), "--json")

    summary = json.loads(result.output)
    arch = Arch.from_json(out.read_text())
    assert result.exit_code == 0
    assert arch.to_dict() == summary["arch"] and arch.num_classes == 3 and arch.resolution == 8
    assert summary["expected_latency_ms"] > 0 and 0 <= summary["holdout_accuracy"] <= 1


def test_search_with_unknown_dataset_says_what_is_accepted():
    result = CliRunner().invoke(main, ["search", "--dataset", "imagenet", "--target-ms", "1"])

    assert result.exit_code == 2
    assert "digits" in result.output and "mnist-5k" in result.output


def toy_dataset(tmp_path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 8, 8, 1), dtype=np.uint8)
    y = np.arange(120) % 3
    x[y == 1, :4] = 255
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    return str(tmp_path / "toy.npz")


def test_search_refuses_mul_log_for_a_target_far_above_the_space_before_searching(tmp_path):
    result = CliRunner().invoke(main, ["search", "--space", "tiny", "--dataset", toy_dataset(tmp_path),
                                       "--target-ms", "500", "--loss", "mul#log", "--epochs", "1"])

    assert result.exit_code == 2
    assert "far above this space's networks" in result.output and "--loss auto" in result.output


def test_search_with_a_target_every_network_meets_says_accuracy_alone_counts(tmp_path):
    result = CliRunner().invoke(main, ["search", "--space", "tiny", "--dataset", toy_dataset(tmp_path),
                                       "--target-ms", "500", "--epochs", "1", "--warmup-epochs", "1",
                                       "--batch-size", "32"])

    assert result.exit_code == 0, result.output
    assert "accuracy alone counts" in result.output
    assert "architecture:" in result.output
