"""
The metrics step of evaluation: diversity, informativeness, rare tokens and reference overlap, as pure functions of
token-id lists (or texts), so that each can be checked by hand; no model, no torch. The definitions are in
`docs/evaluation.md`.

An undefined value (no tokens to average over) is `nan`, written as `null` in metrics files.
"""

import importlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


DEFAULT_RARE_MASS = 0.1

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


def import_extra(module: str, extra: str):
    """Imports an optional dependency, or says which extra of pdl-trl installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"`{module.split('.')[0]}` is not installed; the reference metrics (ROUGE-L, chrF) and plots need it: "
            f"`pip install 'pdl-trl[{extra}]'`."
        ) from error


def check_eval_extra() -> None:
    """Raises before any model is loaded when the `eval` extra's packages are missing."""
    for module in ("rouge_score.rouge_scorer", "sacrebleu.metrics"):
        import_extra(module, "eval")


def _ngrams(ids: Sequence[int], n: int) -> Iterable[tuple[int, ...]]:
    return (tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """
    Distinct-n: unique n-grams / total n-grams, pooled over all sequences; n-grams never cross two sequences.

    Args:
        sequences (`list[list[int]]`): token ids of each generation, special tokens already removed.
        n (`int`): n-gram order, >= 1.

    Returns:
        `float` in (0, 1]; `nan` when no sequence has n tokens.
    """
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}.")
    unique: set[tuple[int, ...]] = set()
    total = 0
    for ids in sequences:
        grams = list(_ngrams(ids, n))
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else math.nan


def unigram_entropy(sequences: Sequence[Sequence[int]]) -> float:
    """
    Shannon entropy in bits of the empirical token distribution of all sequences pooled: `-sum_t p(t) log2 p(t)`,
    `p(t)` = occurrences of `t` / all tokens.

    Returns:
        `float` >= 0; `nan` when there are no tokens.
    """
    counts = Counter(t for ids in sequences for t in ids)
    total = sum(counts.values())
    if total == 0:
        return math.nan
    p = np.fromiter(counts.values(), dtype=np.float64) / total
    # log2(1 / p) rather than -log2(p): a single token type gives 0.0, not -0.0
    return float((p * np.log2(1.0 / p)).sum())


def _check_ids_in_counts(sequences: Sequence[Sequence[int]], vocab_size: int) -> None:
    for ids in sequences:
        if ids and (min(ids) < 0 or max(ids) >= vocab_size):
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


def mean_self_information(sequences: Sequence[Sequence[int]], counts: np.ndarray) -> float:
    """
    Mean self-information in bits of all tokens of all sequences (token-weighted), from [`self_information_table`].

    Returns:
        `float` > 0; `nan` when there are no tokens.
    """
    _check_ids_in_counts(sequences, len(counts))
    table = self_information_table(counts)
    values = [table[t] for ids in sequences for t in ids]
    return float(np.mean(values)) if values else math.nan


def rare_count_threshold(counts: np.ndarray, mass: float = DEFAULT_RARE_MASS) -> int:
    """
    Largest count `k` such that the entries counted at most `k` times together hold at most `mass` of all counted
    occurrences: `max{k in {0} U counts : sum_{t: c(t) <= k} c(t) <= mass * N}`. Entries with the same count are
    all rare or all not. `k = 0` (only never-counted entries are rare) when even the rarest counted entries hold more
    than `mass`.

    Args:
        counts (`np.ndarray` of shape `(vocab_size,)`): token counts from a counts file.
        mass (`float`): share of counted occurrences, in [0, 1).
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


def rare_token_rate(sequences: Sequence[Sequence[int]], rare_mask: np.ndarray) -> float:
    """
    Share of all tokens of all sequences (token-weighted) that are rare according to `rare_mask`.

    Returns:
        `float` in [0, 1]; `nan` when there are no tokens.
    """
    _check_ids_in_counts(sequences, len(rare_mask))
    flags = [bool(rare_mask[t]) for ids in sequences for t in ids]
    return sum(flags) / len(flags) if flags else math.nan


def rare_token_recall(
    generations: Sequence[Sequence[int]], references: Sequence[Sequence[int]], rare_mask: np.ndarray
) -> float:
    """
    Micro-averaged recall of the references' rare token types: `sum_i |R_i & G_i| / sum_i |R_i|`, where `R_i` is the
    set of distinct rare token ids of reference `i` and `G_i` the set of token ids of generation `i`.

    Returns:
        `float` in [0, 1]; `nan` when no reference contains a rare token.
    """
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations but {len(references)} references: pass one per example.")
    _check_ids_in_counts(generations, len(rare_mask))
    _check_ids_in_counts(references, len(rare_mask))
    hits = total = 0
    for gen, ref in zip(generations, references, strict=True):
        rare_ref = {t for t in ref if rare_mask[t]}
        total += len(rare_ref)
        hits += len(rare_ref & set(gen))
    return hits / total if total else math.nan


def termination_rate(terminated: Sequence[bool]) -> float:
    """
    Share of generations that ended with an EOS token before the token limit (`terminated` holds one flag per
    generation, as [`~pdl_trl.evaluation.generate_completions`] reports them).

    Returns:
        `float` in [0, 1]; `nan` for no generations.
    """
    return sum(map(bool, terminated)) / len(terminated) if len(terminated) else math.nan


def mean_length(sequences: Sequence[Sequence[int]]) -> float:
    """Mean number of tokens per sequence; `nan` for no sequences."""
    return sum(len(ids) for ids in sequences) / len(sequences) if sequences else math.nan


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


def rouge_l(generations: Sequence[str], references: Sequence[str]) -> float:
    """Mean over examples of [`rouge_l_scores`], in [0, 1]."""
    return float(np.mean(rouge_l_scores(generations, references)))


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


def chrf(generations: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 1..6-grams, beta 2, whitespace removed), in [0, 100]."""
    return chrf_from_statistics(chrf_statistics(generations, references).sum(axis=0))


def mean_token_nll(sums: Sequence[tuple[float, int]]) -> float:
    """
    Token-weighted mean NLL pooled over examples, `sum(nll) / sum(tokens)`, from each example's `(NLL sum, number of
    tokens)` ([`~pdl_trl.evaluation.reference_nll_sums`]).

    Returns:
        `float`; `nan` when there are no tokens.
    """
    total = sum(n for _, n in sums)
    return sum(nll for nll, _ in sums) / total if total else math.nan


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` in the order of [`METRIC_NAMES`], those it has."""
    return {name: metrics[name] for name in METRIC_NAMES if name in metrics}
