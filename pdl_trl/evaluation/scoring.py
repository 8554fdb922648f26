"""
The scoring step of evaluation: generations (and their references, a counts file, a model for the reference NLL) →
metrics. [`evaluate_model`] generates first; [`score_generation_rows`] scores the rows of a generations file.
"""

from collections.abc import Sequence

import numpy as np

from pdl_trl.evaluation.generation import generate_completions, reference_nll
from pdl_trl.evaluation.metrics import (
    DEFAULT_RARE_MASS,
    chrf,
    distinct_n,
    mean_length,
    mean_self_information,
    ordered_metrics,
    rare_count_threshold,
    rare_token_mask,
    rare_token_rate,
    rare_token_recall,
    rouge_l,
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
) -> tuple[dict[str, float], dict]:
    """
    Text metrics of `generations` (and, with `references`, overlap metrics; with `counts`, frequency metrics).

    Returns:
        `(metrics, details)`: metrics keyed as in `METRIC_NAMES` (those that apply), and details of how the
        frequency metrics were computed (`rare_count_threshold`, `rare_vocab_entries`).
    """
    gen_ids = text_token_ids(tokenizer, generations)
    metrics = {
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
    Metrics of generations rows `{"prompt", "generation", "reference"}` (those of a generations file; `reference`
    in every row or in none).

    Returns:
        `(metrics, details)`: as [`score`], plus `reference_nll` when a `model` is given, the rows have references
        and `with_reference_nll` is set; in the order of `METRIC_NAMES`.
    """
    has_references = "reference" in rows[0]
    with_reference_nll = with_reference_nll and model is not None and has_references
    without_prompt = [i for i, row in enumerate(rows) if row.get("prompt") is None]
    if with_reference_nll and without_prompt:
        raise ValueError(
            f"Reference NLL needs the prompt of every row; row {without_prompt[0]} has none ({len(without_prompt)} "
            "rows in all): add `prompt`, or pass --no_reference_nll."
        )
    references = [completion_text(row["reference"]) for row in rows] if has_references else None
    metrics, details = score(
        [row["generation"] for row in rows], tokenizer, references=references, counts=counts, rare_mass=rare_mass
    )
    if with_reference_nll:
        metrics["reference_nll"] = reference_nll(
            model,
            tokenizer,
            [row["prompt"] for row in rows],
            [row["reference"] for row in rows],
            batch_size=batch_size,
            show_progress=show_progress,
        )
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
        "reference"}` for a generations file.
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
    generation_rows = [{"prompt": p, "generation": g} for p, g in zip(prompts, generations, strict=True)]
    if has_references:
        for out, row in zip(generation_rows, rows, strict=True):
            out["reference"] = row["completion"]
    metrics, details = score_generation_rows(
        generation_rows,
        tokenizer,
        model=model,
        counts=counts,
        rare_mass=rare_mass,
        with_reference_nll=with_reference_nll,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return metrics, details, generation_rows
