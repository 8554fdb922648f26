"""Evaluation metrics against hand-computed values: each metric of a whole set, from its one definition."""

import math

import numpy as np
import pytest
import torch

from pdl_trl.evaluation import (
    chrf,
    distinct_n,
    mean_length,
    mean_self_information,
    mean_token_nll,
    rare_count_threshold,
    rare_token_mask,
    rare_token_rate,
    rare_token_recall,
    rouge_l,
    self_information_table,
    termination_rate,
    text_token_ids,
    token_nll_sum,
    unigram_entropy,
)


# Counts of an 8-entry vocabulary, N = 100 occurrences
COUNTS = np.array([50, 30, 10, 5, 3, 1, 1, 0])


# ---------------------------------------------------------------------------------------------------------------------
# Pure metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_distinct_n():
    sequences = [[1, 2, 3], [1, 2, 1]]
    # unigrams: 6 tokens, types {1, 2, 3}
    assert distinct_n(sequences, 1) == 3 / 6
    # bigrams (1,2) (2,3) | (1,2) (2,1): 4, of which 3 distinct; none across the two sequences
    assert distinct_n(sequences, 2) == 3 / 4
    # trigrams (1,2,3) and (1,2,1)
    assert distinct_n(sequences, 3) == 1.0
    # a sequence shorter than n contributes nothing
    assert distinct_n([[7], [1, 2], [1, 2]], 2) == 1 / 2
    assert math.isnan(distinct_n([[1], []], 2))
    with pytest.raises(ValueError, match=">= 1"):
        distinct_n(sequences, 0)


def test_unigram_entropy():
    # p = 3/6, 2/6, 1/6 -> 0.5 * 1 + (1/3) log2 3 + (1/6) log2 6
    expected = 0.5 + math.log2(3) / 3 + math.log2(6) / 6
    assert unigram_entropy([[1, 2, 3], [1, 2, 1]]) == pytest.approx(expected, abs=1e-12)
    assert unigram_entropy([[4, 5], [6, 7]]) == pytest.approx(2.0, abs=1e-12)
    assert math.copysign(1.0, unigram_entropy([[9, 9, 9]])) == 1.0 and unigram_entropy([[9, 9, 9]]) == 0.0
    assert math.isnan(unigram_entropy([[], []]))


def test_self_information_add_one_smoothing():
    # N = 4, V = 4: p = (c + 1) / 8 = 4/8, 2/8, 1/8, 1/8 -> 1, 2, 3, 3 bits
    counts = np.array([3, 1, 0, 0])
    np.testing.assert_allclose(self_information_table(counts), [1.0, 2.0, 3.0, 3.0], atol=1e-12)
    assert mean_self_information([[0, 1], [2]], counts) == pytest.approx(2.0, abs=1e-12)
    assert mean_self_information([[0, 0, 0, 3]], counts) == pytest.approx(1.5, abs=1e-12)
    assert math.isnan(mean_self_information([[]], counts))
    with pytest.raises(ValueError, match="Recount"):
        mean_self_information([[4]], counts)


def test_rare_count_threshold():
    # Mass at count <= k: k=0 -> 0, k=1 -> 2, k=3 -> 5, k=5 -> 10, k=10 -> 20
    assert rare_count_threshold(COUNTS, 0.10) == 5
    assert rare_count_threshold(COUNTS, 0.05) == 3
    assert rare_count_threshold(COUNTS, 0.19) == 5
    assert rare_count_threshold(COUNTS, 0.20) == 10
    # The two count-1 entries hold 2% together: both in or both out
    assert rare_count_threshold(COUNTS, 0.015) == 0
    assert rare_count_threshold(COUNTS, 0.0) == 0
    np.testing.assert_array_equal(rare_token_mask(COUNTS, 0.10), [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(rare_token_mask(COUNTS, 0.015), [0, 0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rare_count_threshold(COUNTS, 1.0)


def test_rare_token_rate():
    mask = rare_token_mask(COUNTS, 0.10)  # ids 3..7 rare
    assert rare_token_rate([[0, 3, 4], [1, 7]], mask) == 3 / 5
    assert rare_token_rate([[0, 1, 2]], mask) == 0.0
    assert math.isnan(rare_token_rate([[]], mask))
    with pytest.raises(ValueError, match="Recount"):
        rare_token_rate([[8]], mask)


def test_rare_token_recall():
    mask = rare_token_mask(COUNTS, 0.10)  # ids 3..7 rare
    references = [[3, 4, 0, 3], [1, 2], [5, 6]]
    generations = [[3, 0], [1], [2]]
    # rare reference types {3, 4} (1 found), {} , {5, 6} (0 found): micro-average 1 / 4
    assert rare_token_recall(generations, references, mask) == 1 / 4
    assert rare_token_recall([[4, 3], [], [6, 5, 5]], references, mask) == 1.0
    assert math.isnan(rare_token_recall([[3]], [[0, 1]], mask))
    with pytest.raises(ValueError, match="one per example"):
        rare_token_recall([[3]], references, mask)


def test_termination_rate():
    assert termination_rate([True, False, True, True]) == 3 / 4
    assert termination_rate([False]) == 0.0
    assert math.isnan(termination_rate([]))


def test_mean_token_nll_is_token_weighted():
    # (2 + 9) nats over (1 + 3) tokens, not the mean of the per-example means (2 and 3)
    assert mean_token_nll([(2.0, 1), (9.0, 3)]) == 11 / 4
    assert math.isnan(mean_token_nll([(0.0, 0)]))


def test_mean_length():
    assert mean_length([[1, 2], [3], []]) == 1.0
    assert math.isnan(mean_length([]))


def test_rouge_l():
    # LCS "the cat" = 2 of 3 words both ways -> F = 2/3; identical -> 1
    assert rouge_l(["the cat sat", "a b"], ["the cat ran", "a b"]) == pytest.approx((2 / 3 + 1) / 2, abs=1e-12)
    # P = 2/2, R = 2/4 -> F = 2 P R / (P + R) = 2/3; the generation is the first argument
    assert rouge_l(["the cat"], ["the cat sat down"]) == pytest.approx(2 / 3, abs=1e-12)
    assert rouge_l(["x"], ["y"]) == 0.0


def test_chrf():
    # Character unigrams: 4 hyp, 4 ref, 3 match -> P = R = 3/4; bigrams "ab","xy" vs "ac","xy": 1/2. Orders 3..6 have
    # no n-grams and are left out of the average: P = R = (3/4 + 1/2) / 2 = 0.625 -> F_beta = 62.5
    assert chrf(["ab", "xy"], ["ac", "xy"]) == pytest.approx(62.5, abs=1e-9)
    assert chrf(["same text"], ["same text"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    # Summed per-sentence statistics are sacrebleu's corpus chrF, not a mean of sentence scores
    import sacrebleu

    generations, references = ["the cat sat", "ab", "a dog"], ["a cat sat down", "ac", "the dog ran"]
    assert chrf(generations, references) == sacrebleu.corpus_chrf(generations, [references]).score


def test_token_nll_sum():
    # Row 0: p(label 1) = 3 / (1 + 3) -> nll ln(4/3); the -100 position is not scored. Row 1: uniform over 2 -> ln 2
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 0.0]], [[0.0, 0.0], [1.0, 2.0]]])
    labels = torch.tensor([[1, -100], [0, -100]])
    total, count = token_nll_sum(logits, labels)
    assert count == 2
    assert total == pytest.approx(math.log(4 / 3) + math.log(2), abs=1e-6)


def test_text_token_ids_drop_special_tokens(tiny_tokenizer):
    ids = text_token_ids(tiny_tokenizer, ["The cat<|im_end|>", "The cat"])
    assert ids[0] == ids[1]
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") not in ids[0]
