"""
The metrics step of evaluation, defined once: every metric of `pdl-trl eval` is a function of per-example sufficient
statistics ([`RunStatistics`]) and of how often each example counts (its multiplicity). The whole evaluation set is
the all-ones multiplicity; a bootstrap resample (`pdl_trl.evaluation.statistics`) is another. The list functions
(`distinct_n`, `rouge_l`, ...) compute the same metric of a whole set, from the same code. No model, no torch;
definitions in `docs/evaluation.md`.

An undefined value (no tokens to average over) is `nan`, written as `null` in metrics files.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdl_trl.extras import import_extra


DEFAULT_RARE_MASS = 0.1
# The n of the distinct-n metrics
DISTINCT_ORDERS = (1, 2)

# Order of the metrics in metrics files, tables and plots
METRIC_NAMES = (
    "termination_rate",
    "mean_generation_length",
    "distinct_1",
    "distinct_2",
    "unigram_entropy",
    "mean_self_information",
    "rare_token_rate",
    "rare_token_recall",
    "rouge_l",
    "chrf",
    "reference_nll",
)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`numerator / denominator`, `nan` where the denominator is 0 (nothing to average over)."""
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, math.nan)


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution of `counts`; `nan` for no occurrences."""
    counts = counts[counts > 0]
    if not len(counts):
        return math.nan
    p = counts / counts.sum()
    # log2(1 / p) rather than -log2(p): a single type gives 0.0, not -0.0
    return float((p * np.log2(1.0 / p)).sum())


def _ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def _whole(num_examples: int) -> np.ndarray:
    """The multiplicities of a whole set: each example once, `(1, num_examples)`."""
    return np.ones((1, num_examples))


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
        """How often each item occurs in a set of examples with these multiplicities: `(items,)`."""
        return np.bincount(self.item, weights=multiplicities[self.example] * self.count, minlength=self.num_items)


def _distinct(occurrences: _Occurrences, totals: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Distinct-n: unique n-grams / total n-grams, pooled over the examples; n-grams never cross two examples."""
    unique = np.array([(occurrences.pooled(row) > 0).sum() for row in m], dtype=np.float64)
    return _ratio(unique, m @ totals)


def _check_ids_in_counts(sequences: Sequence[Sequence[int]], vocab_size: int) -> None:
    for ids in sequences:
        if len(ids) and (min(ids) < 0 or max(ids) >= vocab_size):
            raise ValueError(
                f"Token id {max(ids)} is outside the counts file's {vocab_size} entries: the counts were made with "
                "another tokenizer. Recount with `pdl-trl count` using this model's tokenizer."
            )


def self_information_table(counts: np.ndarray) -> np.ndarray:
    """
    Self-information in bits of each vocabulary entry under the add-one (Laplace) smoothed unigram distribution of
    the counts: `I(t) = -log2((c(t) + 1) / (N + V))`, `N = sum(c)`, `V = len(counts)` (every entry of the counts
    file, i.e. every output row of the model).
    """
    counts = np.asarray(counts, dtype=np.float64)
    return -np.log2((counts + 1.0) / (counts.sum() + len(counts)))


def rare_count_threshold(counts: np.ndarray, mass: float = DEFAULT_RARE_MASS) -> int:
    """
    Largest count `k` such that the entries counted at most `k` times together hold at most `mass` of all counted
    occurrences: `max{k in {0} U counts : sum_{t: c(t) <= k} c(t) <= mass * N}`. Entries with the same count are
    all rare or all not. `k = 0` (only never-counted entries are rare) when even the rarest counted entries hold more
    than `mass`.
    """
    if not 0 <= mass < 1:
        raise ValueError(f"The rare-token mass must be in [0, 1), got {mass}. The default is {DEFAULT_RARE_MASS}.")
    counts = np.asarray(counts, dtype=np.int64)
    values, occurrences = np.unique(counts, return_counts=True)
    cumulative = np.cumsum(values * occurrences)
    # Integer comparison `cum <= mass * N` up to float rounding of the product only
    within = values[cumulative <= mass * counts.sum()]
    return int(within.max()) if len(within) else 0


def rare_token_mask(counts: np.ndarray, mass: float = DEFAULT_RARE_MASS) -> np.ndarray:
    """Boolean mask of rare vocabulary entries: count <= [`rare_count_threshold`] (never-counted entries included)."""
    counts = np.asarray(counts, dtype=np.int64)
    return counts <= rare_count_threshold(counts, mass)


def rouge_l_scores(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """
    ROUGE-L F-measure of each generation against its reference (`rouge-score` package, `rougeL`, no stemming; its
    default tokenizer lower-cases and keeps only `[a-z0-9]+` words). Each in [0, 1].
    """
    rouge_scorer = import_extra("rouge_score.rouge_scorer", "eval")
    if len(generations) != len(references) or not generations:
        raise ValueError(f"ROUGE-L needs one reference per generation, got {len(generations)} and {len(references)}.")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array(
        [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generations, references, strict=True)]
    )


def _chrf_metric():
    # sacrebleu's defaults, those of `sacrebleu.corpus_chrf`
    return import_extra("sacrebleu.metrics", "eval").CHRF()


def chrf_statistics(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """
    Per-example chrF statistics of sacrebleu (character n-gram counts of generation, reference and matches, per
    order), of shape `(examples, statistics)`: summed over any set of examples they give that set's corpus chrF
    ([`chrf_from_statistics`]), as sacrebleu computes it.
    """
    if len(generations) != len(references) or not generations:
        raise ValueError(f"chrF needs one reference per generation, got {len(generations)} and {len(references)}.")
    return np.array(_chrf_metric()._extract_corpus_statistics(list(generations), [list(references)]), dtype=np.int64)


def chrf_from_statistics(statistics: np.ndarray) -> float:
    """Corpus chrF, in [0, 100], from [`chrf_statistics`] summed over the examples (integer-valued)."""
    return float(_chrf_metric()._compute_score_from_stats([int(round(value)) for value in statistics]).score)


# The statistics a run may lack (no references, no counts file, ...): the metrics they define are then undefined
_OPTIONAL_STATISTICS = (
    "terminated",
    "self_information",
    "rare_tokens",
    "rare_hits",
    "rare_reference_types",
    "rouge_l",
    "chrf",
    "nll_sums",
    "nll_tokens",
)


@dataclass
class RunStatistics:
    """
    What every metric of `pdl-trl eval` needs from each example of one run's generations: sums for the token-weighted
    means (self-information, rare-token rate, reference NLL) and the micro-averaged rare-token recall, per-example
    scores for the example means (ROUGE-L), sacrebleu's per-sentence statistics for corpus chrF, and each example's
    distinct n-grams and token types for distinct-n and unigram entropy. Build it with [`example_statistics`]; its
    [`metrics`] are the metrics of any multiset of its examples.
    """

    num_examples: int
    lengths: np.ndarray
    # n -> each example's distinct n-grams; those of n = 1 are its token types
    ngrams: dict[int, _Occurrences]
    terminated: np.ndarray | None = None
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
        The metrics of sets of the examples.

        Args:
            multiplicities (`np.ndarray` of shape `(sets, num_examples)`): how often each example is in each set (all
                ones: the whole set; a bootstrap resample draws some twice and some not).

        Returns:
            `dict[str, np.ndarray]`: each metric these statistics define, in the order of `METRIC_NAMES`, one value
            per set (`nan` where undefined).
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
            metrics[f"distinct_{n}"] = _distinct(self.ngrams[n], np.maximum(self.lengths - n + 1, 0), m)
        metrics["unigram_entropy"] = np.array([_entropy(self.ngrams[1].pooled(row)) for row in m])
        if self.self_information is not None:
            metrics["mean_self_information"] = _ratio(m @ self.self_information, tokens)
        if self.rare_tokens is not None:
            metrics["rare_token_rate"] = _ratio(m @ self.rare_tokens, tokens)
        if self.rare_hits is not None:
            metrics["rare_token_recall"] = _ratio(m @ self.rare_hits, m @ self.rare_reference_types)
        if self.rouge_l is not None:
            metrics["rouge_l"] = _ratio(m @ self.rouge_l, examples)
            metrics["chrf"] = np.array([chrf_from_statistics(row) for row in m @ self.chrf])
        if self.nll_sums is not None:
            metrics["reference_nll"] = _ratio(m @ self.nll_sums, m @ self.nll_tokens)
        return {name: metrics[name] for name in METRIC_NAMES if name in metrics}

    def arrays(self) -> dict[str, np.ndarray]:
        """The statistics as flat numeric arrays (no text: n-grams are numbered per run), for a statistics file."""
        arrays = {"num_examples": np.array(self.num_examples), "lengths": self.lengths}
        for n, occurrences in self.ngrams.items():
            for name in ("example", "item", "count"):
                arrays[f"ngrams_{n}_{name}"] = getattr(occurrences, name)
            arrays[f"ngrams_{n}_num_items"] = np.array(occurrences.num_items)
        for name in _OPTIONAL_STATISTICS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "RunStatistics":
        """The statistics that [`arrays`] gave."""
        ngrams = {
            n: _Occurrences(
                arrays[f"ngrams_{n}_example"],
                arrays[f"ngrams_{n}_item"],
                arrays[f"ngrams_{n}_count"],
                int(arrays[f"ngrams_{n}_num_items"]),
            )
            for n in DISTINCT_ORDERS
        }
        optional = {name: arrays[name] for name in _OPTIONAL_STATISTICS if name in arrays}
        return cls(int(arrays["num_examples"]), arrays["lengths"], ngrams=ngrams, **optional)

    def whole_set_metrics(self) -> dict[str, float]:
        """[`metrics`] of the whole set, as floats (`math.nan` where undefined): what `pdl-trl eval` reports."""
        metrics = self.metrics(_whole(self.num_examples))
        return {name: math.nan if math.isnan(values[0]) else float(values[0]) for name, values in metrics.items()}


def example_statistics(
    generation_ids: Sequence[Sequence[int]],
    *,
    terminated: Sequence[bool] | None = None,
    generations: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    information: np.ndarray | None = None,
    rare_mask: np.ndarray | None = None,
    reference_ids: Sequence[Sequence[int]] | None = None,
    nll_sums: Sequence[float] | None = None,
    nll_tokens: Sequence[int] | None = None,
) -> RunStatistics:
    """
    [`RunStatistics`] of one run's examples; each optional argument makes more metrics defined.

    Args:
        generation_ids: token ids of each generation, special tokens removed.
        terminated: whether each generation ended with EOS (`termination_rate`).
        generations, references: texts of each generation and its reference (ROUGE-L, chrF).
        information: the [`self_information_table`] of a counts file (`mean_self_information`).
        rare_mask: the [`rare_token_mask`] of a counts file (`rare_token_rate`; with `reference_ids`, the token ids
            of each reference, `rare_token_recall`).
        nll_sums, nll_tokens: each reference's NLL sum and token count (`reference_nll`).
    """
    lengths = np.array([len(ids) for ids in generation_ids], dtype=np.float64)
    statistics = RunStatistics(
        num_examples=len(generation_ids),
        lengths=lengths,
        terminated=None if terminated is None else np.array(terminated, dtype=np.float64),
        ngrams={n: _Occurrences.of([_ngrams(ids, n) for ids in generation_ids]) for n in DISTINCT_ORDERS},
    )
    if information is not None:
        _check_ids_in_counts(generation_ids, len(information))
        statistics.self_information = np.array([information[list(ids)].sum() for ids in generation_ids])
    if rare_mask is not None:
        _check_ids_in_counts(generation_ids, len(rare_mask))
        statistics.rare_tokens = np.array([rare_mask[list(ids)].sum() for ids in generation_ids], dtype=np.float64)
        if reference_ids is not None:
            _check_ids_in_counts(reference_ids, len(rare_mask))
            rare_references = [{t for t in ids if rare_mask[t]} for ids in reference_ids]
            statistics.rare_hits = np.array(
                [len(rare & set(ids)) for rare, ids in zip(rare_references, generation_ids, strict=True)],
                dtype=np.float64,
            )
            statistics.rare_reference_types = np.array([len(rare) for rare in rare_references], dtype=np.float64)
    if references is not None:
        statistics.rouge_l = rouge_l_scores(generations, references)
        statistics.chrf = chrf_statistics(generations, references).astype(np.float64)
    if nll_sums is not None:
        statistics.nll_sums = np.array(nll_sums, dtype=np.float64)
        statistics.nll_tokens = np.array(nll_tokens, dtype=np.float64)
    return statistics


# The metrics of a whole set, one function each, computed by the definitions above


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n of token-id sequences (special tokens removed): `nan` when no sequence has n tokens."""
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}.")
    lengths = np.array([len(ids) for ids in sequences], dtype=np.float64)
    occurrences = _Occurrences.of([_ngrams(ids, n) for ids in sequences])
    return float(_distinct(occurrences, np.maximum(lengths - n + 1, 0), _whole(len(sequences)))[0])


def unigram_entropy(sequences: Sequence[Sequence[int]]) -> float:
    """Entropy in bits of the token distribution of all sequences pooled; `nan` when there are no tokens."""
    return example_statistics(sequences).whole_set_metrics()["unigram_entropy"]


def mean_self_information(sequences: Sequence[Sequence[int]], counts: np.ndarray) -> float:
    """Mean self-information in bits of all tokens (token-weighted), from [`self_information_table`]."""
    statistics = example_statistics(sequences, information=self_information_table(counts))
    return statistics.whole_set_metrics()["mean_self_information"]


def rare_token_rate(sequences: Sequence[Sequence[int]], rare_mask: np.ndarray) -> float:
    """Share of all tokens (token-weighted) that are rare according to `rare_mask` ([`rare_token_mask`])."""
    return example_statistics(sequences, rare_mask=rare_mask).whole_set_metrics()["rare_token_rate"]


def rare_token_recall(
    generations: Sequence[Sequence[int]], references: Sequence[Sequence[int]], rare_mask: np.ndarray
) -> float:
    """
    Micro-averaged recall of the references' rare token types: `sum_i |R_i & G_i| / sum_i |R_i|`, where `R_i` is the
    set of distinct rare token ids of reference `i` and `G_i` the set of token ids of generation `i`; `nan` when no
    reference contains a rare token.
    """
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations but {len(references)} references: pass one per example.")
    statistics = example_statistics(generations, rare_mask=rare_mask, reference_ids=references)
    return statistics.whole_set_metrics()["rare_token_recall"]


def termination_rate(terminated: Sequence[bool]) -> float:
    """Share of generations that ended with an EOS token before the token limit; `nan` for no generations."""
    return example_statistics([[] for _ in terminated], terminated=terminated).whole_set_metrics()["termination_rate"]


def mean_length(sequences: Sequence[Sequence[int]]) -> float:
    """Mean number of tokens per sequence; `nan` for no sequences."""
    return example_statistics(sequences).whole_set_metrics()["mean_generation_length"]


def rouge_l(generations: Sequence[str], references: Sequence[str]) -> float:
    """Mean over examples of [`rouge_l_scores`], in [0, 1]."""
    return float(_ratio(_whole(len(generations)) @ rouge_l_scores(generations, references), len(generations))[0])


def chrf(generations: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 1..6-grams, beta 2, whitespace removed), in [0, 100]."""
    return chrf_from_statistics(chrf_statistics(generations, references).sum(axis=0))


def mean_token_nll(sums: Sequence[tuple[float, int]]) -> float:
    """Token-weighted mean NLL pooled over examples, `sum(nll) / sum(tokens)`; `nan` when there are no tokens."""
    statistics = example_statistics(
        [[] for _ in sums], nll_sums=[nll for nll, _ in sums], nll_tokens=[n for _, n in sums]
    )
    return statistics.whole_set_metrics()["reference_nll"]


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` in the order of [`METRIC_NAMES`], those it has."""
    return {name: metrics[name] for name in METRIC_NAMES if name in metrics}
