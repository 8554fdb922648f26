"""
The scoring step of evaluation: generations (and their references, a counts file, a model for the reference NLL) →
metrics. [`evaluate_model`] generates first; [`score_generation_rows`] scores the rows of a generations file.
"""

import math
from collections.abc import Sequence

import numpy as np

from pdl_trl.evaluation.generation import generate_completions, reference_nll_sums
from pdl_trl.evaluation.metrics import (
    DEFAULT_RARE_MASS,
    chrf,
    distinct_n,
    mean_length,
    mean_self_information,
    mean_token_nll,
    ordered_metrics,
    rare_count_threshold,
    rare_token_mask,
    rare_token_rate,
    rare_token_recall,
    rouge_l,
    termination_rate,
    unigram_entropy,
)
from pdl_trl.evaluation.tokens import completion_text, text_token_ids
from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint


def load_counts(path: str, tokenizer, vocab_rows: int | None = None) -> TokenCounts:
    """A counts file checked against the evaluation tokenizer (and the model's output rows when a model is given)."""
    counts = TokenCounts.load(path)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if vocab_rows is not None:
        counts.check_compatible(vocab_rows, fingerprint, tokenizer.name_or_path)
    elif counts.tokenizer_fingerprint != fingerprint:
        raise ValueError(
            f"{path} was counted with tokenizer {counts.tokenizer!r} ({counts.tokenizer_fingerprint}), not with "
            f"{tokenizer.name_or_path!r} ({fingerprint}). Recount with `pdl-trl count --model_name_or_path "
            f"{tokenizer.name_or_path} ...`, or pass the counts file of the run being evaluated."
        )
    return counts


def score(
    generations: Sequence[str],
    tokenizer,
    *,
    references: Sequence[str] | None = None,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
    terminated: Sequence[bool] | None = None,
) -> tuple[dict[str, float], dict]:
    """
    Text metrics of `generations` (and, with `references`, overlap metrics; with `counts`, frequency metrics).
    `termination_rate` is computed from `terminated` (one flag per generation), and is `nan` without it: whether a
    text ended at EOS or at the token limit cannot be told from the text.

    Returns:
        `(metrics, details)`: metrics keyed as in `METRIC_NAMES` (those that apply), and details of how the
        frequency metrics were computed (`rare_count_threshold`, `rare_vocab_entries`).
    """
    gen_ids = text_token_ids(tokenizer, generations)
    metrics = {
        "termination_rate": math.nan if terminated is None else termination_rate(terminated),
        "mean_generation_length": mean_length(gen_ids),
        "distinct_1": distinct_n(gen_ids, 1),
        "distinct_2": distinct_n(gen_ids, 2),
        "unigram_entropy": unigram_entropy(gen_ids),
    }
    details: dict = {"num_examples": len(generations), "num_generated_tokens": sum(len(ids) for ids in gen_ids)}
    if counts is not None:
        mask = rare_token_mask(counts, rare_mass)
        metrics["mean_self_information"] = mean_self_information(gen_ids, counts)
        metrics["rare_token_rate"] = rare_token_rate(gen_ids, mask)
        details.update(
            rare_mass=rare_mass,
            rare_count_threshold=rare_count_threshold(counts, rare_mass),
            rare_vocab_entries=int(mask.sum()),
        )
    if references is not None:
        if counts is not None:
            metrics["rare_token_recall"] = rare_token_recall(gen_ids, text_token_ids(tokenizer, references), mask)
        metrics["rouge_l"] = rouge_l(generations, references)
        metrics["chrf"] = chrf(generations, references)
    return metrics, details


def _reference_nll_sums(model, tokenizer, rows: Sequence[dict], batch_size: int, show_progress: bool):
    without_prompt = [i for i, row in enumerate(rows) if row.get("prompt") is None]
    if without_prompt:
        raise ValueError(
            f"Reference NLL needs the prompt of every row; row {without_prompt[0]} has none ({len(without_prompt)} "
            "rows in all): add `prompt`, or pass --no_reference_nll."
        )
    return reference_nll_sums(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        [row["reference"] for row in rows],
        batch_size=batch_size,
        show_progress=show_progress,
    )


def score_generation_rows(
    rows: Sequence[dict],
    tokenizer,
    *,
    model=None,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
    with_reference_nll: bool = True,
    batch_size: int = 8,
    show_progress: bool = True,
) -> tuple[dict[str, float], dict]:
    """
    Metrics of generations rows `{"prompt", "generation", "terminated", "reference"}` (those of a generations file;
    `terminated` and `reference` each in every row or in none).

    Returns:
        `(metrics, details)`: as [`score`], plus `reference_nll` when a `model` is given, the rows have references
        and `with_reference_nll` is set; in the order of `METRIC_NAMES`.
    """
    references = [completion_text(row["reference"]) for row in rows] if "reference" in rows[0] else None
    metrics, details = score(
        [row["generation"] for row in rows],
        tokenizer,
        references=references,
        counts=counts,
        rare_mass=rare_mass,
        terminated=[row["terminated"] for row in rows] if "terminated" in rows[0] else None,
    )
    if with_reference_nll and model is not None and references is not None:
        sums = _reference_nll_sums(model, tokenizer, rows, batch_size, show_progress)
        metrics["reference_nll"] = mean_token_nll(sums)
    return ordered_metrics(metrics), details


def evaluate_model(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
    with_reference_nll: bool = True,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[dict[str, float], dict, list[dict]]:
    """
    Generates a completion for each row's `prompt` and scores it, against the row's `completion` when there is one.

    Returns:
        `(metrics, details, generation_rows)`: as [`score_generation_rows`], and rows `{"prompt", "generation",
        "terminated", "reference", "reference_nll_sum", "reference_num_tokens"}` for a generations file (the last
        three with references; the NLL sum in nats over the reference's scored tokens, so that any subset's
        `reference_nll` can be computed from the rows).
    """
    prompts = [row["prompt"] for row in rows]
    has_references = "completion" in rows[0]
    if any(("completion" in row) != has_references for row in rows):
        raise ValueError("Some rows have a `completion` and some do not: give every row one, or none.")
    generations = generate_completions(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
        show_progress=show_progress,
    )
    generation_rows = [
        {"prompt": p, "generation": g.text, "terminated": g.terminated}
        for p, g in zip(prompts, generations, strict=True)
    ]
    if has_references:
        for out, row in zip(generation_rows, rows, strict=True):
            out["reference"] = row["completion"]
    metrics, details = score_generation_rows(generation_rows, tokenizer, counts=counts, rare_mass=rare_mass)
    if with_reference_nll and has_references:
        sums = _reference_nll_sums(model, tokenizer, generation_rows, batch_size, show_progress)
        for out, (nll_sum, num_tokens) in zip(generation_rows, sums, strict=True):
            out["reference_nll_sum"], out["reference_num_tokens"] = nll_sum, num_tokens
        metrics["reference_nll"] = mean_token_nll(sums)
    return ordered_metrics(metrics), details, generation_rows
