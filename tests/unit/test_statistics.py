"""The sweep's statistics: metrics of resamples equal `pdl-trl eval`'s on the resampled rows, and the paired, pooled
bootstrap interval and the verdict rule against hand computations on fixed numbers."""

import math
import random

import numpy as np
import pytest
from helpers.tiny import make_rows

from pdl_trl.evaluation import mean_token_nll, run_statistics, score, text_token_ids
from pdl_trl.evaluation.statistics import Difference, bootstrap_indices, multiplicities, paired_bootstrap


def test_resampled_metrics_equal_eval_on_the_resampled_rows(tiny_tokenizer):
    """Every metric of a resample, from per-example statistics, equals `pdl-trl eval`'s scoring of the rows of that
    resample written out (a row drawn twice, twice): corpus-level metrics included."""
    rng = random.Random(0)
    source = make_rows(40, seed=3)
    rows = [
        {
            "prompt": row["prompt"],
            # Empty, repeated and shared generations, so that distinct-n and entropy pool across examples
            "generation": source[(7 * i) % 40]["completion"] * rng.randint(0, 2),
            "terminated": rng.random() < 0.6,
            "reference": row["completion"],
            "reference_nll_sum": 10 * rng.random(),
            "reference_num_tokens": rng.randint(1, 9),
        }
        for i, row in enumerate(source[:20])
    ]
    counts = np.zeros(len(tiny_tokenizer) + 24, dtype=np.int64)
    for ids in text_token_ids(tiny_tokenizer, [row["completion"] for row in make_rows(200, seed=9)]):
        np.add.at(counts, ids, 1)
    statistics = run_statistics(rows, tiny_tokenizer, counts=counts, rare_mass=0.2)
    indices = bootstrap_indices(len(rows), 20, seed=1)
    resampled = statistics.metrics(multiplicities(indices, len(rows)))

    for b, drawn in enumerate(indices):
        sample = [rows[i] for i in drawn]
        expected, _ = score(
            [row["generation"] for row in sample],
            tiny_tokenizer,
            references=[row["reference"] for row in sample],
            counts=counts,
            rare_mass=0.2,
            terminated=[row["terminated"] for row in sample],
        )
        expected["reference_nll"] = mean_token_nll(
            [(row["reference_nll_sum"], row["reference_num_tokens"]) for row in sample]
        )
        assert set(resampled) == set(expected)
        for name, value in expected.items():
            assert resampled[name][b] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), name
    # The whole set is the all-ones resample
    whole = statistics.metrics(np.ones((1, len(rows))))
    assert whole["distinct_2"][0] == pytest.approx(
        score([row["generation"] for row in rows], tiny_tokenizer)[0]["distinct_2"], rel=1e-12
    )


def test_bootstrap_indices_and_multiplicities():
    indices = bootstrap_indices(5, 300, seed=7)
    assert indices.shape == (300, 5) and indices.min() >= 0 and indices.max() <= 4
    np.testing.assert_array_equal(indices, bootstrap_indices(5, 300, seed=7))
    assert not np.array_equal(indices, bootstrap_indices(5, 300, seed=8))
    np.testing.assert_array_equal(multiplicities([[0, 0, 2], [1, 2, 1]], 3), [[2, 0, 1], [0, 2, 1]])


def _rows(terminated, nll_sums, num_tokens):
    return [
        {
            "prompt": f"p{i}",
            "generation": " The cat",
            "terminated": bool(t),
            "reference_nll_sum": s,
            "reference_num_tokens": n,
        }
        for i, (t, s, n) in enumerate(zip(terminated, nll_sums, num_tokens, strict=True))
    ]


def test_paired_bootstrap_against_hand_computation(tiny_tokenizer):
    """Three prompts, two seeds, four fixed resamples. Each resample's difference is the mean over seeds of
    metric(variant_s, I) - metric(baseline_s, I) on the same indices I; the interval is numpy's linear percentile,
    shifted by the point estimate minus the resamples' mean difference."""
    baseline = [
        run_statistics(_rows([1, 1, 0], [2, 4, 9], [1, 2, 3]), tiny_tokenizer),
        run_statistics(_rows([1, 0, 1], [1, 1, 1], [1, 1, 1]), tiny_tokenizer),
    ]
    variant = [
        run_statistics(_rows([0, 0, 0], [3, 3, 3], [1, 1, 1]), tiny_tokenizer),
        run_statistics(_rows([1, 1, 0], [4, 2, 2], [2, 1, 1]), tiny_tokenizer),
    ]
    indices = np.array([[0, 0, 0], [1, 2, 2], [2, 2, 2], [0, 1, 1]])
    differences = paired_bootstrap(variant, baseline, indices)

    # termination_rate, full set: baseline 2/3 and 2/3, variant 0 and 2/3 -> seed deltas -2/3, 0
    termination = differences["termination_rate"]
    assert termination.seed_deltas == pytest.approx([-2 / 3, 0.0])
    assert termination.delta == pytest.approx(-1 / 3)
    # [0,0,0]: seed 0 0 - 1, seed 1 1 - 1 -> -1/2; [1,2,2]: 0 - 1/3, 1/3 - 2/3 -> -1/3; [2,2,2]: 0 - 0, 0 - 1 -> -1/2;
    # [0,1,1]: 0 - 1, 1 - 1/3 -> -1/6. Sorted -1/2, -1/2, -1/3, -1/6: the 2.5th percentile sits at 0.075, the
    # 97.5th at 2.925 of the 3 gaps; the resamples' mean is -1.5 / 4, so the shift is -1/3 + 3/8 = +1/24
    assert termination.low == pytest.approx(-1 / 2 + 1 / 24)
    assert termination.high == pytest.approx(-1 / 3 + 0.925 * (1 / 6) + 1 / 24)
    # The interval excludes 0, but seed 1 shows no difference: not a result
    assert termination.high < 0 and termination.shown == 0

    # reference_nll is token-weighted within a run: baseline seed 0 is 15/6 = 2.5 on the full set (the mean of the
    # per-example means would be 7/3); seed deltas 3 - 2.5 and 2 - 1
    nll = differences["reference_nll"]
    assert nll.seed_deltas == pytest.approx([0.5, 1.0])
    assert nll.delta == pytest.approx(0.75)
    # [0,0,0]: (3 - 2 + 2 - 1) / 2 = 1; [1,2,2]: baseline s0 22/8 -> (0.25 + 1) / 2; [2,2,2]: (0 + 1) / 2;
    # [0,1,1]: baseline s0 10/5, variant s1 8/4 -> 1. Sorted 0.5, 0.625, 1, 1; mean 0.78125, shift 0.75 - 0.78125
    assert nll.low == pytest.approx(0.5 + 0.075 * 0.125 - 0.03125)
    assert nll.high == pytest.approx(1.0 - 0.03125)
    assert nll.shown == 1
    assert nll.undefined_resamples == 0
    # Identical generations: no difference anywhere
    for name in ("mean_generation_length", "distinct_1", "unigram_entropy"):
        assert differences[name].delta == 0 and differences[name].low == differences[name].high == 0
        assert differences[name].shown == 0


def test_paired_bootstrap_needs_matching_runs(tiny_tokenizer):
    run = run_statistics(_rows([1, 0], [1, 1], [1, 1]), tiny_tokenizer)
    other = run_statistics(_rows([1, 0, 1], [1, 1, 1], [1, 1, 1]), tiny_tokenizer)
    with pytest.raises(ValueError, match="one run per seed"):
        paired_bootstrap([run], [run, run], np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap([other], [run], np.zeros((2, 2), dtype=int))


@pytest.mark.parametrize(
    "low, high, seeds, shown",
    [
        (0.1, 0.3, [0.2, 0.1], 1),
        (-0.3, -0.1, [-0.2, -0.05], -1),
        (-0.1, 0.3, [0.2, 0.1], 0),  # the interval holds 0
        (0.1, 0.3, [0.2, -0.01], 0),  # one seed the other way: inside the seed spread
        (math.nan, math.nan, [0.2, 0.1], 0),  # undefined
    ],
)
def test_difference_is_shown_only_when_interval_and_seeds_agree(low, high, seeds, shown):
    assert Difference(float(np.mean(seeds)), low, high, seeds, 0).shown == shown


def test_interval_of_a_distinct_n_difference_holds_its_estimate(tiny_tokenizer):
    """Distinct-n is lower on a resample than on the prompts themselves (repeated prompts repeat their n-grams):
    for a very diverse variant against a repetitive baseline, the uncentred percentile interval misses the estimate."""
    words = ["red", "blue", "green", "amber", "teal", "violet", "ochre", "crimson"]
    baseline = [run_statistics([{"prompt": "p", "generation": "red red red red"} for _ in range(8)], tiny_tokenizer)]
    variant = [run_statistics([{"prompt": "p", "generation": f"{w} {w}s {w}ish"} for w in words], tiny_tokenizer)]
    indices = bootstrap_indices(8, 500, seed=0)
    distinct = paired_bootstrap(variant, baseline, indices)["distinct_1"]
    assert distinct.low <= distinct.delta <= distinct.high
