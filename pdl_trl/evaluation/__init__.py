"""
Evaluation of what a fine-tuned model generates, one module per step of `pdl-trl eval`, `compare` and `sweep`:

- `heldout`: a held-out prompt-completion set → rows;
- `generation`: model (+ adapter) → completions for the prompts, and the reference NLL;
- `tokens`: prompts, completions and texts → token ids, as TRL's SFTTrainer builds them (for generation and
  scoring);
- `metrics`: per-example statistics → every metric, defined once for a whole set and for any resample of it;
- `scoring`: generations (+ references, counts) → per-example statistics → metrics;
- `files`: generations jsonl and metrics JSON, written and read back;
- `report`: the metrics of several runs → a markdown table and a bar chart;
- `statistics`: the runs' per-example statistics → paired bootstrap intervals of differences between runs, and the
  rule for when a difference counts (`pdl-trl sweep`).

The commands on top are `pdl_trl/scripts/eval.py`, `compare.py` and `sweep.py`. Every public name is re-exported
here, so `from pdl_trl.evaluation import distinct_n` works as it always did.
"""

from pdl_trl.evaluation.files import (
    EVAL_FORMAT,
    EVAL_VERSION,
    eval_result,
    json_text,
    load_metrics,
    read_generations,
    write_generations,
    write_json,
)
from pdl_trl.evaluation.generation import (
    DTYPES,
    Generation,
    generate_completions,
    load_model,
    merge_lora_for_inference,
    reference_nll,
    reference_nll_sums,
    token_nll_sum,
)
from pdl_trl.evaluation.heldout import eval_rows, load_eval_rows, load_eval_split
from pdl_trl.evaluation.metrics import (
    DEFAULT_RARE_MASS,
    METRIC_NAMES,
    RunStatistics,
    chrf,
    chrf_from_statistics,
    chrf_statistics,
    distinct_n,
    example_statistics,
    mean_length,
    mean_self_information,
    mean_token_nll,
    ordered_metrics,
    rare_count_threshold,
    rare_token_mask,
    rare_token_rate,
    rare_token_recall,
    rouge_l,
    rouge_l_scores,
    self_information_table,
    termination_rate,
    unigram_entropy,
)
from pdl_trl.evaluation.report import default_labels, markdown_table, metric_names, plot
from pdl_trl.evaluation.scoring import (
    evaluate_model,
    load_counts,
    run_statistics,
    score,
    score_generation_rows,
    statistics_of_texts,
)
from pdl_trl.evaluation.statistics import Difference, bootstrap_indices, multiplicities, paired_bootstrap
from pdl_trl.evaluation.tokens import completion_text, prompt_token_ids, reference_token_ids, text_token_ids


__all__ = [
    "DEFAULT_RARE_MASS",
    "DTYPES",
    "EVAL_FORMAT",
    "EVAL_VERSION",
    "METRIC_NAMES",
    "Difference",
    "Generation",
    "RunStatistics",
    "bootstrap_indices",
    "chrf",
    "chrf_from_statistics",
    "chrf_statistics",
    "completion_text",
    "default_labels",
    "distinct_n",
    "eval_result",
    "eval_rows",
    "evaluate_model",
    "example_statistics",
    "generate_completions",
    "json_text",
    "load_counts",
    "load_eval_rows",
    "load_eval_split",
    "load_metrics",
    "load_model",
    "markdown_table",
    "mean_length",
    "mean_self_information",
    "mean_token_nll",
    "merge_lora_for_inference",
    "metric_names",
    "multiplicities",
    "ordered_metrics",
    "paired_bootstrap",
    "plot",
    "prompt_token_ids",
    "rare_count_threshold",
    "rare_token_mask",
    "rare_token_rate",
    "rare_token_recall",
    "read_generations",
    "reference_nll",
    "reference_nll_sums",
    "reference_token_ids",
    "rouge_l",
    "rouge_l_scores",
    "run_statistics",
    "score",
    "score_generation_rows",
    "self_information_table",
    "statistics_of_texts",
    "termination_rate",
    "text_token_ids",
    "token_nll_sum",
    "unigram_entropy",
    "write_generations",
    "write_json",
]
