"""Choosing a scheme under a memory budget.

``auto`` is the paper's search (Lin et al. 2022, Sec. 3.2): maximise
ΔAcc_b[:k] + Σ_i ΔAcc_W(i, r_i) subject to Memory(k, {i, r_i}) <= budget, by
evolutionary search over (k, a ratio per layer), weights only among the last
k (bias) layers as in the reference. ``bias-only``, ``last-k`` and ``full``
are the fixed schemes the paper compares with: the most bias layers, or the
most fully updated last layers, that fit the budget, or everything.
"""
from __future__ import annotations

import random
from typing import Callable

from automl_server.engine.train.sparse_update.contribution import Contributions
from automl_server.engine.train.sparse_update.scheme import (
    SparseScheme,
    bias_only,
    full,
    last_k,
)

MemoryFn = Callable[[SparseScheme], int]  # bytes of one training step of a scheme

# Evolution settings (the paper does not state its own; these follow the
# population/parent/mutation shape of MCUNet/OFA's evolutionary finder).
POPULATION = 100
GENERATIONS = 40
PARENT_RATIO = 0.25
MUTATION_PROB = 0.1


class BudgetTooSmall(ValueError):
    def __init__(self, budget_bytes: int, needed_bytes: int) -> None:
        super().__init__(f"a memory budget of {budget_bytes / 1024:.1f} kB is below what the smallest scheme "
                         f"(bias of the last layer + classifier) needs: {needed_bytes / 1024:.1f} kB")
        self.needed_bytes = needed_bytes


def minimum_scheme() -> SparseScheme:
    """The smallest scheme with any conv update: the last layer's bias (and the classifier)."""
    return bias_only(1)


def largest_fitting(make: Callable[[int], SparseScheme], n_layers: int, memory: MemoryFn, budget: int) -> int:
    """The largest k in 0..n with make(k) within the budget (memory grows with k)."""
    best = 0
    for k in range(1, n_layers + 1):
        if memory(make(k)) <= budget:
            best = k
        else:
            break
    return best


def fixed_scheme(kind: str, n_layers: int, memory: MemoryFn, budget: int) -> SparseScheme:
    if kind == "full":
        return full(n_layers)
    if kind == "bias-only":
        return bias_only(max(largest_fitting(bias_only, n_layers, memory, budget), 1))
    if kind == "last-k":
        return last_k(n_layers, largest_fitting(lambda k: last_k(n_layers, k), n_layers, memory, budget))
    raise ValueError(f"unknown fixed scheme {kind!r}; fixed schemes: full, bias-only, last-k")


Genome = tuple[int, tuple[float, ...]]  # (bias layers k, weight ratio per layer; 0 = frozen weight)


def evolutionary_search(n_layers: int, gains: Contributions, memory: MemoryFn, budget: int, *,
                        seed: int = 0, population: int = POPULATION, generations: int = GENERATIONS) -> SparseScheme:
    """The scheme of highest summed gain within the budget. Only measured (feasible)
    weight candidates are genes; the result is never over the budget."""
    rng = random.Random(seed)
    options: list[list[float]] = [[0.0] + sorted(r for (i, r) in gains.weight_gain if i == layer)
                                  for layer in range(n_layers)]

    def scheme_of(genome: Genome) -> SparseScheme:
        k, ratios = genome
        return SparseScheme(k, tuple((i, r) for i, r in enumerate(ratios) if r > 0 and i >= n_layers - k),
                            kind="auto")

    cache: dict[Genome, float] = {}

    def fitness(genome: Genome) -> float:
        if genome not in cache:
            scheme = scheme_of(genome)
            if memory(scheme) > budget:
                cache[genome] = float("-inf")
            else:
                cache[genome] = gains.bias_gain_at(scheme.bias_layers) + sum(
                    gains.weight_gain[(i, r)] for i, r in scheme.weight_ratios)
        return cache[genome]

    def normalise(k: int, ratios: list[float]) -> Genome:
        k = min(max(k, 1), n_layers)
        return k, tuple(r if i >= n_layers - k else 0.0 for i, r in enumerate(ratios))

    def random_genome() -> Genome:
        k = rng.randint(1, n_layers)
        return normalise(k, [rng.choice(options[i]) if rng.random() < 0.2 else 0.0 for i in range(n_layers)])

    def mutate(genome: Genome) -> Genome:
        k, ratios = genome
        if rng.random() < MUTATION_PROB * 3:
            k += rng.randint(-max(n_layers // 8, 1), max(n_layers // 8, 1))
        new = [rng.choice(options[i]) if rng.random() < MUTATION_PROB else r for i, r in enumerate(ratios)]
        return normalise(k, new)

    def crossover(a: Genome, b: Genome) -> Genome:
        return normalise(rng.choice((a[0], b[0])), [rng.choice(pair) for pair in zip(a[1], b[1])])

    # Seeds that fit whenever anything fits: the bias-only schemes within the budget.
    best_bias = max(largest_fitting(bias_only, n_layers, memory, budget), 1)
    pool: list[Genome] = [normalise(best_bias, [0.0] * n_layers), normalise(1, [0.0] * n_layers)]
    pool += [random_genome() for _ in range(population - len(pool))]
    n_parents = max(int(population * PARENT_RATIO), 2)
    for _ in range(generations):
        pool = sorted(set(pool), key=lambda g: (fitness(g), -g[0]), reverse=True)
        parents = [g for g in pool[:n_parents] if fitness(g) > float("-inf")] or pool[:2]
        children: list[Genome] = []
        while len(parents) + len(children) < population:
            if rng.random() < 0.5:
                children.append(mutate(rng.choice(parents)))
            else:
                children.append(crossover(rng.choice(parents), rng.choice(parents)))
        pool = parents + children
    best = max(pool, key=fitness)
    if fitness(best) == float("-inf"):
        raise BudgetTooSmall(budget, memory(minimum_scheme()))
    return scheme_of(best)
