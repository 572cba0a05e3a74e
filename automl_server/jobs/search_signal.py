"""Whether the search's accuracy signal was worth anything: the supernet against the network alone.

A ProxylessNAS search steers by the supernet's accuracy and the expected
latency. When the supernet barely learns (resampling one path of a deep space
every step on a small dataset: the README's proxyless-mobile finding on digits,
0.195 on holdout against 0.967 for the chosen network trained alone), the
choice was made by the latency term and chance, and a user should be told so
rather than read the search as an accuracy-driven pick. The figure: how far the
supernet's holdout accuracy (derived path fixed) went from guessing the
majority class towards the test accuracy the chosen network reached trained
alone (a different split, both unseen in training).
"""
from __future__ import annotations

from typing import Any

# Under half of the way: the supernet's ranking of paths rested on a model that had not learned the
# task. Not a paper's figure; chosen so that the tiny space on digits (supernet 0.8-0.9 against
# 0.9-0.95 alone) passes and the 21-cell chain at 8 px (0.2 against 0.97) does not.
WEAK_BELOW = 0.5


def search_signal(results: dict[str, Any]) -> dict[str, Any] | None:
    """The report's ``search_signal`` (None when no search ran, e.g. a job adopting a parent's network)."""
    search, train = results.get("search"), results.get("train")
    if not search or not train or search.get("holdout_accuracy") is None or train.get("test_accuracy") is None:
        return None
    counts = [int(n) for n in ((results.get("validate") or {}).get("class_counts") or {}).values()]
    majority = max(counts) / sum(counts) if counts and sum(counts) else None
    supernet, alone = float(search["holdout_accuracy"]), float(train["test_accuracy"])
    signal: dict[str, Any] = {"supernet_holdout_accuracy": supernet, "network_test_accuracy": alone,
                              "majority_class_rate": majority, "share_learned": None, "weak": False}
    if majority is None or alone <= majority:
        return signal
    share = (supernet - majority) / (alone - majority)
    signal["share_learned"] = round(share, 4)
    if share < WEAK_BELOW:
        signal["weak"] = True
        signal["note"] = (f"the supernet reached {supernet:.3f} on holdout, {max(share, 0.0):.0%} of the way from "
                          f"guessing the majority class ({majority:.3f}) to the {alone:.3f} the chosen network "
                          "reached trained alone: its accuracy signal was weak, so the search chose mainly by "
                          "the latency term; a smaller space (e.g. tiny) or more data gives the search a signal")
    return signal
