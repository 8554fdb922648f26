"""
The statistics step of a sweep: how sure a difference between two variants' metrics is. Every metric of `pdl-trl
eval`, on any resample of the prompts, from per-example sufficient statistics ([`RunStatistics`]); the paired
bootstrap over prompts, pooled across seeds ([`paired_bootstrap`]); and the rule for when a difference counts
([`Difference.shown`]). Definitions: `docs/evaluation.md`.

A resample is a multiset of prompt indices, given as each prompt's multiplicity: a prompt drawn twice counts twice,
exactly as if its row were repeated in the generations file.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdl_trl.evaluation.metrics import (
    DEFAULT_RARE_MASS,
    METRIC_NAMES,
    chrf_from_statistics,
    chrf_statistics,
    rare_token_mask,
    rouge_l_scores,
    self_information_table,
)
from pdl_trl.evaluation.tokens import completion_text, text_token_ids


CONFIDENCE = 0.95
# The n of the distinct-n metrics
DISTINCT_ORDERS = (1, 2)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, `nan` where the denominator is 0 (nothing to average over)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, math.nan)


@dataclass
class _Occurrences:
    """Distinct items (n-grams, token types) of each example: `example[k]` holds item `item[k]`, `count[k]` times."""

    example: np.ndarray
    item: np.ndarray
    count: np.ndarray
    num_items: int

    @classmethod
    def of(cls, sequences: Sequence[Sequence]) -> "_Occurrences":
        ids: dict = {}
        example, item, count = [], [], []
        for i, items in enumerate(sequences):
            counted: dict = {}
            for value in items:
                key = ids.setdefault(value, len(ids))
                counted[key] = counted.get(key, 0) + 1
            example += [i] * len(counted)
            item += list(counted)
            count += list(counted.values())
        return cls(np.array(example, dtype=np.int64), np.array(item, dtype=np.int64), np.array(count), len(ids))

    def pooled(self, multiplicities: np.ndarray) -> np.ndarray:
        """How often each item occurs in a resample: `(items,)`."""
        return np.bincount(self.item, weights=multiplicities[self.example] * self.count, minlength=self.num_items)


@dataclass
class RunStatistics:
    """
    What every metric of `pdl-trl eval` needs from each example of one run's generations, so that the metric of any
    resample of the examples is computed exactly as `pdl-trl eval` computes it on that resample's rows: sums for the
    token-weighted means (self-information, rare-token rate, reference NLL) and the micro-averaged rare-token
    recall, per-example scores for the example means (ROUGE-L), sacrebleu's per-sentence statistics for corpus chrF,
    and each example's distinct n-grams and token types for distinct-n and unigram entropy. Build it with
    [`run_statistics`].
    """

    num_examples: int
    lengths: np.ndarray
    terminated: np.ndarray | None
    ngrams: dict[int, _Occurrences]
    ngram_totals: dict[int, np.ndarray]
    token_types: _Occurrences
    self_information: np.ndarray | None = None
    rare_tokens: np.ndarray | None = None
    rare_hits: np.ndarray | None = None
    rare_reference_types: np.ndarray | None = None
    rouge_l: np.ndarray | None = None
    chrf: np.ndarray | None = None
    nll_sums: np.ndarray | None = None
    nll_tokens: np.ndarray | None = None

    def metrics(self, multiplicities: np.ndarray) -> dict[str, np.ndarray]:
        """
        The metrics of resamples of the examples.

        Args:
            multiplicities (`np.ndarray` of shape `(resamples, num_examples)`): how often each example is in each
                resample (all ones: the whole set).

        Returns:
            `dict[str, np.ndarray]`: each metric that `pdl-trl eval` computes for these rows, in the order of
            `METRIC_NAMES`, one value per resample (`nan` where undefined).
        """
        m = np.asarray(multiplicities, dtype=np.float64)
        examples = m.sum(axis=1)
        tokens = m @ self.lengths
        metrics = {
            "termination_rate": np.full(len(m), math.nan)
            if self.terminated is None
            else _ratio(m @ self.terminated, examples),
            "mean_generation_length": _ratio(tokens, examples),
        }
        for n in DISTINCT_ORDERS:
            unique = np.array([(self.ngrams[n].pooled(row) > 0).sum() for row in m], dtype=np.float64)
            metrics[f"distinct_{n}"] = _ratio(unique, m @ self.ngram_totals[n])
        metrics["unigram_entropy"] = np.array([_entropy(self.token_types.pooled(row)) for row in m])
        if self.self_information is not None:
            metrics["mean_self_information"] = _ratio(m @ self.self_information, tokens)
            metrics["rare_token_rate"] = _ratio(m @ self.rare_tokens, tokens)
        if self.rare_hits is not None:
            metrics["rare_token_recall"] = _ratio(m @ self.rare_hits, m @ self.rare_reference_types)
        if self.rouge_l is not None:
            metrics["rouge_l"] = _ratio(m @ self.rouge_l, examples)
            metrics["chrf"] = np.array([chrf_from_statistics(row) for row in m @ self.chrf])
        if self.nll_sums is not None:
            metrics["reference_nll"] = _ratio(m @ self.nll_sums, m @ self.nll_tokens)
        return {name: metrics[name] for name in METRIC_NAMES if name in metrics}


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0]
    if not len(counts):
        return math.nan
    p = counts / counts.sum()
    return float((p * np.log2(1.0 / p)).sum())


def _ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def run_statistics(
    rows: Sequence[dict],
    tokenizer,
    *,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
) -> RunStatistics:
    """
    [`RunStatistics`] of generations rows (those of a generations file), measured as `pdl-trl eval` measures them:
    the same tokenizer, counts file and `rare_mass` give the same metrics.

    `terminated` makes `termination_rate` defined; `reference` the overlap metrics (and, with `counts`, rare-token
    recall); `reference_nll_sum` and `reference_num_tokens`, written by `pdl-trl eval` with references, the
    reference NLL.
    """
    gen_ids = text_token_ids(tokenizer, [row["generation"] for row in rows])
    lengths = np.array([len(ids) for ids in gen_ids], dtype=np.float64)
    statistics = RunStatistics(
        num_examples=len(rows),
        lengths=lengths,
        terminated=np.array([row["terminated"] for row in rows], dtype=np.float64)
        if "terminated" in rows[0]
        else None,
        ngrams={n: _Occurrences.of([_ngrams(ids, n) for ids in gen_ids]) for n in DISTINCT_ORDERS},
        ngram_totals={n: np.maximum(lengths - n + 1, 0) for n in DISTINCT_ORDERS},
        token_types=_Occurrences.of(gen_ids),
    )
    references = [completion_text(row["reference"]) for row in rows] if "reference" in rows[0] else None
    if counts is not None:
        table = self_information_table(counts)
        mask = rare_token_mask(counts, rare_mass)
        statistics.self_information = np.array([table[ids].sum() for ids in gen_ids])
        statistics.rare_tokens = np.array([mask[ids].sum() for ids in gen_ids], dtype=np.float64)
        if references is not None:
            rare_references = [{t for t in ids if mask[t]} for ids in text_token_ids(tokenizer, references)]
            statistics.rare_hits = np.array(
                [len(rare & set(ids)) for rare, ids in zip(rare_references, gen_ids, strict=True)], dtype=np.float64
            )
            statistics.rare_reference_types = np.array([len(rare) for rare in rare_references], dtype=np.float64)
    if references is not None:
        generations = [row["generation"] for row in rows]
        statistics.rouge_l = rouge_l_scores(generations, references)
        statistics.chrf = chrf_statistics(generations, references).astype(np.float64)
    if "reference_nll_sum" in rows[0]:
        statistics.nll_sums = np.array([row["reference_nll_sum"] for row in rows], dtype=np.float64)
        statistics.nll_tokens = np.array([row["reference_num_tokens"] for row in rows], dtype=np.float64)
    return statistics


def bootstrap_indices(num_examples: int, resamples: int, seed: int) -> np.ndarray:
    """`(resamples, num_examples)` prompt indices drawn uniformly with replacement (numpy's PCG64 from `seed`)."""
    return np.random.default_rng(seed).integers(0, num_examples, size=(resamples, num_examples))


def multiplicities(indices: np.ndarray, num_examples: int) -> np.ndarray:
    """How often each example is in each resample: `(resamples, num_examples)` from `(resamples, size)` indices."""
    indices = np.asarray(indices)
    counts = np.zeros((len(indices), num_examples))
    np.add.at(counts, (np.arange(len(indices))[:, None], indices), 1)
    return counts


@dataclass
class Difference:
    """
    A variant's difference from the baseline on one metric and eval set.

    Attributes:
        delta (`float`): mean over seeds of the full-set difference (variant - baseline of the same seed).
        low, high (`float`): the (centred) percentile bootstrap interval (`CONFIDENCE`) of the difference.
        seed_deltas (`list[float]`): the full-set difference of each seed.
        undefined_resamples (`int`): resamples where the metric is undefined for some run (e.g. no reference with a
            rare token drawn); left out of the interval.
    """

    delta: float
    low: float
    high: float
    seed_deltas: list[float]
    undefined_resamples: int

    @property
    def shown(self) -> int:
        """
        `+1` or `-1` when the data show a difference in that direction: the interval excludes 0 and every seed's
        difference has the interval's sign (a difference inside the seed-to-seed spread is not a result); else 0.
        """
        if self.low > 0 and all(d > 0 for d in self.seed_deltas):
            return 1
        if self.high < 0 and all(d < 0 for d in self.seed_deltas):
            return -1
        return 0


def paired_bootstrap(
    variant: Sequence[RunStatistics],
    baseline: Sequence[RunStatistics],
    indices: np.ndarray,
    confidence: float = CONFIDENCE,
) -> dict[str, Difference]:
    """
    Paired bootstrap over prompts, pooled across seeds, of the difference variant - baseline on every metric both
    have.

    Resample `b` draws prompt indices `I_b` (`indices[b]`), the same for the variant and the baseline and for every
    seed; its difference is `mean_s(metric(variant_s, I_b) - metric(baseline_s, I_b))`. The interval is the
    `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles (numpy's linear interpolation) of the resamples'
    differences, shifted so that the resamples' mean difference sits at the point estimate: a resample repeats some
    prompts, and repeated generations repeat their n-grams, so corpus metrics such as distinct-n are lower on every
    resample than on the prompts themselves — unshifted, the interval of a distinct-n difference could miss its own
    estimate. For metrics that are means of the examples the shift is ~0.

    Args:
        variant, baseline (`list[RunStatistics]`): one per seed, in the same seed order, all on the same prompts
            in the same order.
        indices (`np.ndarray` of shape `(resamples, num_prompts)`): prompt indices of each resample, e.g. from
            [`bootstrap_indices`].
    """
    if not variant or len(variant) != len(baseline):
        raise ValueError(
            f"Pass one run per seed for both: got {len(variant)} variant and {len(baseline)} baseline runs."
        )
    num_examples = baseline[0].num_examples
    if any(run.num_examples != num_examples for run in [*variant, *baseline]):
        raise ValueError("Every run must be evaluated on the same prompts: their numbers of examples differ.")
    full_set = np.ones((1, num_examples))
    resampled = multiplicities(indices, num_examples)
    variant_full = [run.metrics(full_set) for run in variant]
    baseline_full = [run.metrics(full_set) for run in baseline]
    variant_resampled = [run.metrics(resampled) for run in variant]
    baseline_resampled = [run.metrics(resampled) for run in baseline]
    tail = 100 * (1 - confidence) / 2
    differences = {}
    for name in baseline_full[0]:
        if name not in variant_full[0]:
            continue
        seed_deltas = [float(v[name][0] - b[name][0]) for v, b in zip(variant_full, baseline_full, strict=True)]
        deltas = np.mean(
            [v[name] - b[name] for v, b in zip(variant_resampled, baseline_resampled, strict=True)], axis=0
        )
        defined = deltas[np.isfinite(deltas)]
        delta = float(np.mean(seed_deltas))
        low, high = np.percentile(defined, [tail, 100 - tail]) if len(defined) else (math.nan, math.nan)
        if len(defined):
            low, high = low + delta - defined.mean(), high + delta - defined.mean()
        differences[name] = Difference(
            delta=delta,
            low=float(low),
            high=float(high),
            seed_deltas=seed_deltas,
            undefined_resamples=int(len(deltas) - len(defined)),
        )
    return differences
