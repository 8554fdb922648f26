"""
The statistics step of a sweep: how sure a difference between two variants' metrics is. Every metric of `pdl-trl
eval` on any resample of the prompts comes from per-example sufficient statistics
([`~pdl_trl.evaluation.metrics.RunStatistics`]); here are the paired bootstrap over prompts, pooled across seeds
([`paired_bootstrap`]), and the rule for when a difference counts ([`Difference.shown`]). Definitions:
`docs/evaluation.md`.

A resample is a multiset of prompt indices, given as each prompt's multiplicity: a prompt drawn twice counts twice,
exactly as if its row were repeated in the generations file.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdl_trl.evaluation.metrics import RunStatistics


CONFIDENCE = 0.95


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
    def interval(self) -> int:
        """`+1` or `-1` when the interval excludes 0 on that side, else 0 (whatever the seeds say)."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

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
