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


def test_rescore_excludes_survivors_listed_as_equivalent_after_the_run(mutation):
    module = "src/un2clip/objectives/un2clip.py"
    listed = "anchor_distance: -1 -> 1"
    assert listed in mutation.EQUIVALENT[module]
    detail = [mutation.Mutant(0, 0, 1, 1, listed, "survived"), mutation.Mutant(1, 0, 2, 2, "f: 1 -> 2", "survived"),
              mutation.Mutant(2, 0, 3, 3, "f: 2 -> 3", "killed"), mutation.Mutant(3, 0, 4, 4, "f: 3 -> 4", "pending")]
    result = mutation._summary(module, ["tests/x.py"], 1.0, detail, {"sample": 3, "seed": 7, "population": 4})
    assert (result["survived"], result["equivalent"], result["score"]) == (2, 0, 33.3)
    again = mutation.rescore(result)
    assert (again["mutants"], again["killed"], again["survived"], again["equivalent"]) == (3, 1, 1, 1)
    assert again["score"] == 50.0 and (again["sample"], again["seed"], again["population"]) == (3, 7, 4)
    assert result["survived"] == 2  # the run's own result is left as it was


def test_merge_results_lets_a_rerun_replace_the_first_runs_statuses(mutation):
    module = "src/un2clip/eval/core/metrics.py"
    first = [mutation.Mutant(0, 0, 1, 1, "f: 1 -> 2", "survived"), mutation.Mutant(1, 0, 2, 2, "f: 2 -> 3", "killed"),
             mutation.Mutant(2, 0, 3, 3, "f: 3 -> 4", "pending")]
    rerun = [mutation.Mutant(0, 0, 1, 1, "f: 1 -> 2", "killed"), mutation.Mutant(1, 0, 2, 2, "f: 2 -> 3", "pending"),
             mutation.Mutant(2, 0, 3, 3, "f: 3 -> 4", "pending")]
    a = mutation._summary(module, ["tests/a.py"], 1.0, first, {"sample": 2, "seed": 1, "population": 3})
    b = mutation._summary(module, ["tests/b.py"], 1.0, rerun)
    (merged,) = mutation.merge_results([[a], [b]])
    again = mutation.rescore(merged)
    assert (again["mutants"], again["killed"], again["survived"], again["score"]) == (2, 2, 0, 100.0)
    assert again["tests"] == ["tests/a.py", "+", "tests/b.py"] and again["sample"] == 2
    assert a["survived"] == 1  # the inputs are left as they were
