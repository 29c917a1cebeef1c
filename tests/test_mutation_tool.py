"""benchmarks/mutation.py's sampled mode: the Wilson interval (known values worked out by hand) and the seeded draw."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def mutation():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mutation.py"
    spec = importlib.util.spec_from_file_location("un2clip_mutation_tool", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_wilson_interval_known_values(mutation):
    # z = 1.96: 0/10 -> [0, 3.8416 / 13.8416]; 10/10 -> [10 / 13.8416, 1];
    # 8/10 -> centre (8 + 1.9208) / 13.8416 = 0.716738, half 1.96 / 13.8416 * sqrt(1.6 + 0.9604) = 0.226581
    assert mutation.wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert mutation.wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert mutation.wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    low, high = mutation.wilson_interval(0, 0)
    assert low != low and high != high  # NaN: no trials, no interval
    with pytest.raises(ValueError, match="successes must be in"):
        mutation.wilson_interval(11, 10)


def test_sample_is_seeded_uniform_without_replacement_in_source_order(mutation):
    mutants = [mutation.Mutant(i, 0, i, i, f"f: {i} -> {i + 1}") for i in range(100)]
    a = mutation.sample_mutants(mutants, 10, seed=1)
    assert [m.index for m in a] == sorted(m.index for m in a) and len({m.index for m in a}) == 10
    assert a == mutation.sample_mutants(mutants, 10, seed=1)
    assert a != mutation.sample_mutants(mutants, 10, seed=2)
    assert mutation.sample_mutants(mutants, 100, seed=1) == mutants
    assert mutation.sample_mutants(mutants, 500, seed=1) == mutants
    # uniform: over many seeds every mutant is drawn about 10 % of the time
    counts = [0] * 100
    for seed in range(400):
        for m in mutation.sample_mutants(mutants, 10, seed):
            counts[m.index] += 1
    assert min(counts) > 15 and max(counts) < 70  # expected 40 each
    with pytest.raises(ValueError, match="sample size must be >= 1"):
        mutation.sample_mutants(mutants, 0, seed=1)
