"""Generation metrics for comparing PDL with plain SFT: diversity, informativeness, rare tokens, reference overlap.

`pdl-trl eval` generates completions for a held-out prompt-completion set (or reads a generations file) and scores
them. Every metric is a pure function of token-id lists (or texts) so that it can be checked by hand; the
definitions are in `docs/evaluation.md`.

Token ids of a text are always `tokenizer(text, add_special_tokens=False)["input_ids"]` with the tokenizer's special
tokens removed, for generations and references alike. Generations are decoded with `skip_special_tokens=True` before
they are re-encoded, so scoring a generations file gives the same numbers as the run that generated it.
"""

import argparse
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pdl_trl.atomic import write_text_atomically
from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint


EVAL_FORMAT = "pdl-trl-eval"
EVAL_VERSION = 1
DEFAULT_RARE_MASS = 0.1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Order of the metrics in metrics files, tables and plots
METRIC_NAMES = (
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


# ---------------------------------------------------------------------------------------------------------------------
# Pure metrics. An undefined value (no tokens to average over) is `nan`, written as `null` in metrics files.
# ---------------------------------------------------------------------------------------------------------------------


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


def mean_length(sequences: Sequence[Sequence[int]]) -> float:
    """Mean number of tokens per sequence; `nan` for no sequences."""
    return sum(len(ids) for ids in sequences) / len(sequences) if sequences else math.nan


def rouge_l(generations: Sequence[str], references: Sequence[str]) -> float:
    """
    Mean over examples of the ROUGE-L F-measure (`rouge-score` package, `rougeL`, no stemming; its default tokenizer
    lower-cases and keeps only `[a-z0-9]+` words). In [0, 1].
    """
    from rouge_score import rouge_scorer

    if len(generations) != len(references) or not generations:
        raise ValueError(f"ROUGE-L needs one reference per generation, got {len(generations)} and {len(references)}.")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generations, references, strict=True)]
    return float(np.mean(scores))


def chrf(generations: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 1..6-grams, beta 2, whitespace removed), in [0, 100]."""
    import sacrebleu

    if len(generations) != len(references) or not generations:
        raise ValueError(f"chrF needs one reference per generation, got {len(generations)} and {len(references)}.")
    return float(sacrebleu.corpus_chrf(list(generations), [list(references)]).score)


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """
    Sum of `-log softmax(logits)[label]` (nats) over positions whose label is not -100, and the number of them.

    Args:
        logits (`torch.Tensor` of shape `(batch, seq_len, vocab)`): already aligned with `labels` (shifted).
        labels (`torch.Tensor` of shape `(batch, seq_len)`): target ids, -100 where not scored.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return float(nll), int((labels != -100).sum())


# ---------------------------------------------------------------------------------------------------------------------
# Text, tokens and data
# ---------------------------------------------------------------------------------------------------------------------


def text_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the metrics see them: no added BOS/EOS, special tokens removed."""
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[t for t in ids if t not in special] for ids in encoded]


def _is_conversational(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def completion_text(completion: str | list[dict]) -> str:
    """The reference text of a completion: the string itself, or the contents of its messages joined by newlines."""
    if isinstance(completion, str):
        return completion
    if _is_conversational(completion):
        return "\n".join(message["content"] for message in completion)
    raise ValueError(
        f"A completion must be a string or a list of messages with `role` and `content`, got {completion!r}."
    )


def prompt_token_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """
    Prompt tokens as TRL's SFTTrainer builds them for prompt-completion data, so that evaluation conditions on the
    context the model was trained on: the chat template with the generation prompt for a conversational prompt,
    the tokenizer's plain encoding (with its own special tokens, e.g. BOS) for a string.
    """
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    if _is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)[
            "input_ids"
        ]
    raise ValueError(f"A prompt must be a string or a list of messages with `role` and `content`, got {prompt!r}.")


def reference_token_ids(tokenizer, prompt: str | list[dict], completion: str | list[dict]) -> tuple[list[int], int]:
    """
    `(prompt + completion ids, completion start)` as TRL's SFTTrainer tokenizes a prompt-completion example: the
    chat template over prompt + completion messages, or the two strings joined with the EOS token appended; the
    completion starts where the tokenized prompt and the whole diverge. The completion tokens are the ones the
    training loss (and its `nll` metric) scores.
    """
    from trl.data_utils import common_prefix_length

    prompt_ids = prompt_token_ids(tokenizer, prompt)
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        ids = tokenizer(text=prompt + completion)["input_ids"]
    elif _is_conversational(prompt) and _is_conversational(completion):
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    else:
        raise ValueError(
            "Prompt and completion must be both strings or both lists of messages, as in TRL's prompt-completion "
            f"format; got {type(prompt).__name__} and {type(completion).__name__}."
        )
    return ids, common_prefix_length(prompt_ids, ids)


def load_eval_rows(path: str, split: str = "test", max_samples: int | None = None) -> list[dict]:
    """
    Prompt-completion rows of a held-out set: a `.jsonl`/`.json` file, a folder written by `Dataset.save_to_disk`,
    or a folder of data files (`datasets.load_dataset(folder)`, split `split`). Each row keeps `prompt` and, when
    present, `completion`.
    """
    import datasets

    p = Path(path)
    if p.is_file():
        dataset = datasets.load_dataset("json", data_files=str(p), split="train")
    elif p.is_dir():
        if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            dataset = datasets.load_from_disk(str(p))
        else:
            dataset = datasets.load_dataset(str(p))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path} has splits {list(dataset)}, not {split!r}: pass `--split` with one of them.")
            dataset = dataset[split]
    else:
        raise FileNotFoundError(f"No dataset at {path}: pass a prompt-completion .jsonl file or a dataset folder.")
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"{path} has columns {dataset.column_names}; evaluation needs a `prompt` column (and `completion` for "
            "reference metrics), as in TRL's prompt-completion format."
        )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return [{c: row[c] for c in columns} for row in dataset]


def _json_value(value):
    # JSON has no NaN: an undefined metric is written as null
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def write_json(path: str | os.PathLike, content: dict) -> None:
    """Writes JSON atomically (temp file + `os.replace`), NaN as null."""
    write_text_atomically(path, json.dumps(_json_value(content), indent=2, ensure_ascii=False))


def write_generations(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Writes a generations jsonl (`prompt`, `generation`, optional `reference`) atomically."""
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_generations(path: str | os.PathLike) -> list[dict]:
    """Reads a generations jsonl: every row has `generation`, and either every row or none has `reference`."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ValueError(f"{path} has no rows.")
    for i, row in enumerate(rows):
        if not isinstance(row.get("generation"), str):
            raise ValueError(f"Row {i} of {path} has no string `generation`: each row needs one.")
    with_reference = sum("reference" in row for row in rows)
    if with_reference not in (0, len(rows)):
        raise ValueError(
            f"{with_reference} of {len(rows)} rows of {path} have a `reference`: give every row one, or none."
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Model side: generation and reference NLL
# ---------------------------------------------------------------------------------------------------------------------


def _progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _eos_token_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    if not eos:
        raise ValueError("Neither the model's generation config nor the tokenizer names an EOS token: set one.")
    return eos


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    show_progress: bool = True,
) -> list[str]:
    """
    Completions for `prompts`, in order: left-padded batches, stopped at EOS, decoded without special tokens.

    Greedy by default. Prompts are batched longest first to waste little padding; with sampling, the seed is set once
    before the first batch, so results depend on `seed`, `batch_size` and the prompt set together.
    """
    from transformers import set_seed

    set_seed(seed)
    eos_ids = _eos_token_ids(model, tokenizer)
    # Padded positions are masked out, so any id works; the tokenizer's pad token, else EOS as HF generate does
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.get_input_embeddings().weight.device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    if not do_sample:
        # Unset the checkpoint's sampling defaults so that greedy decoding does not warn about ignored values
        sampling.update(temperature=None, top_p=None, top_k=None)
    outputs: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in _progress(batches, len(batches), "generating") if show_progress else batches:
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention_mask[row, width - len(encoded[i]) :] = 1
            with torch.no_grad():
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sampling,
                )
            for row, i in enumerate(batch):
                new = generated[row, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in eos_ids), len(new))
                outputs[i] = tokenizer.decode(new[:end], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [outputs[i] for i in range(len(encoded))]


def reference_nll(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    completions: Sequence[str | list[dict]],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
) -> float:
    """
    Mean NLL in nats per reference completion token given its prompt, pooled over all examples (token-weighted).
    Tokens are those the training loss scores ([`reference_token_ids`]), EOS and template tokens included, so for
    unpacked, untruncated data it equals SFT's logged `nll` on the same examples.
    """
    examples = [reference_token_ids(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    device = model.get_input_embeddings().weight.device
    # Right padding is masked and never a label, so its id is irrelevant
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll_sum, num_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in _progress(batches, len(batches), "reference NLL") if show_progress else batches:
            width = max(len(ids) for ids, _ in batch)
            # Right padding: positions stay those of an unpadded sequence
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                labels[row, start : len(ids)] = torch.tensor(ids[start:])
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            batch_sum, batch_tokens = token_nll_sum(logits[:, :-1], labels[:, 1:].to(logits.device))
            nll_sum += batch_sum
            num_tokens += batch_tokens
    finally:
        model.train(was_training)
    return nll_sum / num_tokens if num_tokens else math.nan


# ---------------------------------------------------------------------------------------------------------------------
# Scoring and CLI
# ---------------------------------------------------------------------------------------------------------------------


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


def ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {name: metrics[name] for name in METRIC_NAMES if name in metrics}


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
        `(metrics, details, generation_rows)`: as [`score`] (plus `reference_nll` with references and
        `with_reference_nll`), and rows `{"prompt", "generation", "reference"}` for a generations file.
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
    references = None
    if has_references:
        for out, row in zip(generation_rows, rows, strict=True):
            out["reference"] = row["completion"]
        references = [completion_text(row["completion"]) for row in rows]
    metrics, details = score(generations, tokenizer, references=references, counts=counts, rare_mass=rare_mass)
    if has_references and with_reference_nll:
        metrics["reference_nll"] = reference_nll(
            model,
            tokenizer,
            prompts,
            [row["completion"] for row in rows],
            batch_size=batch_size,
            show_progress=show_progress,
        )
    return ordered_metrics(metrics), details, generation_rows


def eval_result(metrics: dict[str, float], details: dict, settings: dict) -> dict:
    """Content of a metrics file, as `pdl-trl compare` reads it."""
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "metrics": ordered_metrics(metrics),
        "details": details,
        "settings": settings,
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdl-trl eval",
        description="Generate completions for a held-out prompt-completion set (or read a generations file) and score "
        "diversity, informativeness, rare-token use and reference overlap. Metric definitions: docs/evaluation.md.",
    )
    parser.add_argument("--model_name_or_path", help="Base model (and tokenizer) folder or Hub id.")
    parser.add_argument("--adapter", help="PEFT adapter folder to load on top of the base model.")
    parser.add_argument("--tokenizer", help="Tokenizer to score a --generations file with, when no model is given.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="Held-out prompt-completion .jsonl/.json file or dataset folder.")
    source.add_argument(
        "--generations", help="Score this jsonl (rows with prompt, generation, optional reference) instead."
    )
    parser.add_argument("--split", default="test", help="Split of a dataset folder with several (default: test).")
    parser.add_argument("--max_samples", type=int, help="Evaluate only the first N rows.")
    parser.add_argument("--counts", help="pdl-trl counts file (pdl_counts.json) for the frequency-based metrics.")
    parser.add_argument(
        "--rare_mass",
        type=float,
        default=DEFAULT_RARE_MASS,
        help="Rare tokens: the rarest entries of the counts file holding at most this share of counted occurrences "
        f"(default: {DEFAULT_RARE_MASS}).",
    )
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --do_sample).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (with --do_sample).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu).")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        help="Model dtype (default: bfloat16 on CUDA, float32 on CPU).",
    )
    parser.add_argument("--no_reference_nll", action="store_true", help="Skip the reference NLL forward passes.")
    parser.add_argument("--output", help="Metrics JSON to write (atomically). Printed either way.")
    parser.add_argument(
        "--generations_output",
        help="Generations jsonl to write when generating (default: <output stem>.generations.jsonl beside --output).",
    )
    return parser


def load_model(model_name_or_path: str, adapter: str | None, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval()


def main(argv: Sequence[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    from transformers import AutoTokenizer

    if args.dataset is not None and args.model_name_or_path is None:
        raise SystemExit("Generating needs a model: pass --model_name_or_path (or --generations to only score).")
    if args.adapter is not None and args.model_name_or_path is None:
        raise SystemExit("--adapter needs the base model: pass --model_name_or_path too.")
    tokenizer_source = args.tokenizer or args.model_name_or_path
    if tokenizer_source is None:
        raise SystemExit("Scoring needs the tokenizer the generations are measured in: pass --tokenizer.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")]
    model = None
    if args.model_name_or_path is not None:
        model = load_model(args.model_name_or_path, args.adapter, device, dtype)
    counts = None
    if args.counts is not None:
        vocab_rows = model.get_output_embeddings().weight.shape[0] if model is not None else None
        counts = load_counts(args.counts, tokenizer, vocab_rows).counts

    settings: dict = {
        "model_name_or_path": args.model_name_or_path,
        "adapter": args.adapter,
        "tokenizer": tokenizer_source,
        "counts": args.counts,
    }
    if args.generations is not None:
        rows = read_generations(args.generations)
        if args.max_samples is not None:
            rows = rows[: args.max_samples]
        generations = [row["generation"] for row in rows]
        prompts = [row.get("prompt") for row in rows]
        references = [completion_text(row["reference"]) for row in rows] if "reference" in rows[0] else None
        raw_references = [row["reference"] for row in rows] if references is not None else None
        settings["generations"] = args.generations
        metrics, details = score(
            generations, tokenizer, references=references, counts=counts, rare_mass=args.rare_mass
        )
        if model is not None and raw_references is not None and not args.no_reference_nll:
            if any(p is None for p in prompts):
                raise ValueError(
                    f"Reference NLL needs the prompt of every row of {args.generations}: add `prompt`, or pass "
                    "--no_reference_nll."
                )
            metrics["reference_nll"] = reference_nll(
                model, tokenizer, prompts, raw_references, batch_size=args.batch_size
            )
    else:
        rows = load_eval_rows(args.dataset, args.split, args.max_samples)
        generation = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "temperature": args.temperature if args.do_sample else None,
            "top_p": args.top_p if args.do_sample else None,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
        metrics, details, out_rows = evaluate_model(
            model,
            tokenizer,
            rows,
            counts=counts,
            rare_mass=args.rare_mass,
            with_reference_nll=not args.no_reference_nll,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        settings.update(dataset=args.dataset, split=args.split, generation=generation)
        generations_path = args.generations_output
        if generations_path is None and args.output is not None:
            output = Path(args.output)
            generations_path = output.with_name(f"{output.stem}.generations.jsonl")
        if generations_path is not None:
            write_generations(generations_path, out_rows)
            settings["generations_output"] = str(generations_path)

    result = eval_result(metrics, details, settings)
    print(json.dumps(_json_value(result["metrics"]), indent=2))
    if args.output is not None:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
