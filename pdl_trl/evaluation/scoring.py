"""
The scoring step of evaluation: generations (and their references, a counts file, a model for the reference NLL) →
per-example statistics → metrics ([`~pdl_trl.evaluation.metrics.RunStatistics`], the one definition of every metric).
[`evaluate_model`] generates first; [`score_generation_rows`] scores the rows of a generations file.
"""

from collections.abc import Sequence

import numpy as np

from pdl_trl.evaluation.generation import generate_completions, reference_nll_sums
from pdl_trl.evaluation.metrics import (
    DEFAULT_RARE_MASS,
    RunStatistics,
    example_statistics,
    rare_count_threshold,
    rare_token_mask,
    self_information_table,
)
from pdl_trl.evaluation.tokens import completion_text, text_token_ids
from pdl_trl.frequency import COUNTS_FILE_NAME, TokenCounts, tokenizer_fingerprint


def load_counts(path: str, tokenizer, vocab_rows: int | None = None) -> TokenCounts:
    """A counts file checked against the evaluation tokenizer (and the model's output rows when a model is given)."""
    counts = TokenCounts.load(path)
    counts.check_compatible(
        counts.vocab_size if vocab_rows is None else vocab_rows,
        tokenizer_fingerprint(tokenizer),
        tokenizer.name_or_path,
        f"Pass the counts file of the run being evaluated (its {COUNTS_FILE_NAME}), or recount with `pdl-trl count "
        f"--model_name_or_path {tokenizer.name_or_path} ...`.",
    )
    return counts


def statistics_of_texts(
    generations: Sequence[str],
    tokenizer,
    *,
    references: Sequence[str] | None = None,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
    terminated: Sequence[bool] | None = None,
    nll_sums: Sequence[float] | None = None,
    nll_tokens: Sequence[int] | None = None,
) -> RunStatistics:
    """
    Per-example statistics of generated texts, measured in `tokenizer`'s tokens (special tokens removed): with
    `references` the overlap metrics, with `counts` the frequency metrics (and with both, rare-token recall), with
    `terminated` the termination rate, with the references' NLL sums and token counts the reference NLL.
    """
    information = rare_mask = reference_ids = None
    if counts is not None:
        information, rare_mask = self_information_table(counts), rare_token_mask(counts, rare_mass)
        if references is not None:
            reference_ids = text_token_ids(tokenizer, references)
    return example_statistics(
        text_token_ids(tokenizer, generations),
        terminated=terminated,
        generations=generations,
        references=references,
        information=information,
        rare_mask=rare_mask,
        reference_ids=reference_ids,
        nll_sums=nll_sums,
        nll_tokens=nll_tokens,
    )


def run_statistics(
    rows: Sequence[dict], tokenizer, *, counts: np.ndarray | None = None, rare_mass: float = DEFAULT_RARE_MASS
) -> RunStatistics:
    """
    [`statistics_of_texts`] of generations rows (those of a generations file): `terminated` makes `termination_rate`
    defined, `reference` the overlap metrics, `reference_nll_sum` and `reference_num_tokens` the reference NLL.
    """
    first = rows[0]
    return statistics_of_texts(
        [row["generation"] for row in rows],
        tokenizer,
        references=[completion_text(row["reference"]) for row in rows] if "reference" in first else None,
        counts=counts,
        rare_mass=rare_mass,
        terminated=[row["terminated"] for row in rows] if "terminated" in first else None,
        nll_sums=[row["reference_nll_sum"] for row in rows] if "reference_nll_sum" in first else None,
        nll_tokens=[row["reference_num_tokens"] for row in rows] if "reference_nll_sum" in first else None,
    )


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
        `(metrics, details)`: metrics keyed as in `METRIC_NAMES` (those that apply), and details of how they were
        computed (`num_examples`, `num_generated_tokens`; with counts `rare_count_threshold`, `rare_vocab_entries`).
    """
    statistics = statistics_of_texts(
        generations, tokenizer, references=references, counts=counts, rare_mass=rare_mass, terminated=terminated
    )
    return statistics.whole_set_metrics(), statistics_details(statistics, counts, rare_mass)


def statistics_details(statistics: RunStatistics, counts: np.ndarray | None, rare_mass: float) -> dict:
    """The `details` of a metrics file: how many examples and tokens, and the rare-token threshold of the counts."""
    details: dict = {"num_examples": statistics.num_examples, "num_generated_tokens": int(statistics.lengths.sum())}
    if counts is not None:
        details.update(
            rare_mass=rare_mass,
            rare_count_threshold=rare_count_threshold(counts, rare_mass),
            rare_vocab_entries=int(rare_token_mask(counts, rare_mass).sum()),
        )
    return details


def _add_reference_nll(model, tokenizer, rows: list[dict], batch_size: int, show_progress: bool) -> None:
    """Writes each row's reference NLL sum and token count into it (`reference_nll_sum`, `reference_num_tokens`)."""
    without_prompt = [i for i, row in enumerate(rows) if row.get("prompt") is None]
    if without_prompt:
        raise ValueError(
            f"Reference NLL needs the prompt of every row; row {without_prompt[0]} has none ({len(without_prompt)} "
            "rows in all): add `prompt`, or pass --no_reference_nll."
        )
    sums = reference_nll_sums(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        [row["reference"] for row in rows],
        batch_size=batch_size,
        show_progress=show_progress,
    )
    for row, (nll_sum, num_tokens) in zip(rows, sums, strict=True):
        row["reference_nll_sum"], row["reference_num_tokens"] = nll_sum, num_tokens


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
    `terminated` and `reference` each in every row or in none). The reference NLL is computed with `model`, when one is
    given, the rows have references and `with_reference_nll` is set; otherwise it is not reported.

    Returns:
        `(metrics, details)`: as [`score`], in the order of `METRIC_NAMES`.
    """
    rows = [{k: v for k, v in row.items() if k not in ("reference_nll_sum", "reference_num_tokens")} for row in rows]
    if with_reference_nll and model is not None and "reference" in rows[0]:
        _add_reference_nll(model, tokenizer, rows, batch_size, show_progress)
    statistics = run_statistics(rows, tokenizer, counts=counts, rare_mass=rare_mass)
    return statistics.whole_set_metrics(), statistics_details(statistics, counts, rare_mass)


def generate_rows(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    with_reference_nll: bool = True,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """
    Generates a completion for each row's `prompt`: rows `{"prompt", "generation", "terminated", "reference",
    "reference_nll_sum", "reference_num_tokens"}` for a generations file (the last three when the rows have a
    `completion`; the NLL sum in nats over the reference's scored tokens, so that any subset's `reference_nll` can be
    computed from the rows).
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
        if with_reference_nll:
            _add_reference_nll(model, tokenizer, generation_rows, batch_size, show_progress)
    return generation_rows


def evaluate_model(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    counts: np.ndarray | None = None,
    rare_mass: float = DEFAULT_RARE_MASS,
    **generation,
) -> tuple[dict[str, float], dict, list[dict]]:
    """
    Generates a completion for each row's `prompt` ([`generate_rows`], which takes the `generation` keywords) and
    scores it, against the row's `completion` when there is one.

    Returns:
        `(metrics, details, generation_rows)`: as [`score_generation_rows`], and the rows of [`generate_rows`].
    """
    generation_rows = generate_rows(model, tokenizer, rows, **generation)
    statistics = run_statistics(generation_rows, tokenizer, counts=counts, rare_mass=rare_mass)
    details = statistics_details(statistics, counts, rare_mass)
    return statistics.whole_set_metrics(), details, generation_rows
