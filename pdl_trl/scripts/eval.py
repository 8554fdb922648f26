"""
`pdl-trl eval`: generates completions for a held-out prompt-completion set (or reads a generations file), scores
them and writes a metrics file. Metric definitions: `docs/evaluation.md`.

```bash
pdl-trl eval --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --adapter outputs/pdl \
    --dataset_name test.jsonl --pdl_counts_path outputs/pdl/pdl_counts.json \
    --metrics_output outputs/pdl/eval/metrics.json
pdl-trl eval --tokenizer HuggingFaceTB/SmolLM2-135M-Instruct --generations gens.jsonl --metrics_output metrics.json
```
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from pdl_trl.atomic import check_writable
from pdl_trl.evaluation.files import eval_result, json_text, read_generations, write_generations, write_json
from pdl_trl.evaluation.generation import DTYPES, load_model, merge_lora_for_inference
from pdl_trl.evaluation.heldout import eval_rows, load_eval_split
from pdl_trl.evaluation.metrics import DEFAULT_RARE_MASS
from pdl_trl.evaluation.scoring import evaluate_model, load_counts, score_generation_rows
from pdl_trl.extras import check_eval_extra
from pdl_trl.scripts.utils import add_deprecated_option, parse_command_args, run_command
from pdl_trl.spelling import command_line


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdl-trl eval",
        description="Generate completions for a held-out prompt-completion set (or read a generations file) and score "
        "diversity, informativeness, rare-token use and reference overlap. Metric definitions: docs/evaluation.md.",
        allow_abbrev=False,
    )
    parser.add_argument("--model_name_or_path", help="Base model (and tokenizer) folder or Hub id.")
    parser.add_argument("--adapter", help="PEFT adapter folder to load on top of the base model.")
    parser.add_argument("--tokenizer", help="Tokenizer to score a --generations file with, when no model is given.")
    parser.add_argument(
        "--dataset_name",
        help="Held-out prompt-completion set: data file, dataset folder or Hub dataset, as for `sft`.",
    )
    parser.add_argument(
        "--generations", help="Score this jsonl (rows with prompt, generation, optional reference) instead."
    )
    parser.add_argument("--dataset_config", help="Config of a Hub --dataset_name (as for `pdl-trl sft`).")
    parser.add_argument(
        "--dataset_test_split",
        help="Split to evaluate; it must exist (default: the dataset's only split, or `test` when it has several).",
    )
    parser.add_argument("--max_samples", type=int, help="Evaluate only the first N rows.")
    parser.add_argument(
        "--pdl_counts_path", help="pdl-trl counts file (a run's pdl_counts.json) for the frequency-based metrics."
    )
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
    parser.add_argument("--metrics_output", help="Metrics JSON to write (atomically). Printed either way.")
    parser.add_argument(
        "--generations_output",
        help="Generations jsonl to write when generating (default: <metrics stem>.generations.jsonl beside "
        "--metrics_output).",
    )
    for old, new in (
        ("--dataset", "--dataset_name"),
        ("--split", "--dataset_test_split"),
        ("--counts", "--pdl_counts_path"),
        ("--output", "--metrics_output"),
    ):
        add_deprecated_option(parser, old, new, dest=new[2:])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, with every check that needs no file: a wrong combination fails before anything is loaded."""
    parser = make_parser()
    args = parse_command_args(parser, argv)
    if (args.dataset_name is None) == (args.generations is None):
        parser.error("give one of --dataset_name (to generate) and --generations (to score a generations file)")
    if args.dataset_name is not None and args.model_name_or_path is None:
        parser.error("generating needs a model: pass --model_name_or_path (or --generations to only score)")
    if args.adapter is not None and args.model_name_or_path is None:
        parser.error("--adapter needs the base model: pass --model_name_or_path too")
    if (args.tokenizer or args.model_name_or_path) is None:
        parser.error("scoring needs the tokenizer the generations are measured in: pass --tokenizer")
    for name in ("max_new_tokens", "batch_size", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if not 0 <= args.rare_mass < 1:
        parser.error(f"--rare_mass must be in [0, 1), got {args.rare_mass}")
    if args.generations_output is None and args.metrics_output is not None and args.dataset_name is not None:
        output = Path(args.metrics_output)
        args.generations_output = str(output.with_name(f"{output.stem}.generations.jsonl"))
    # Checked now, not after generating: a folder or an unwritable path would lose the work
    for name in ("metrics_output", "generations_output"):
        if getattr(args, name) is not None:
            check_writable(getattr(args, name), f"--{name}")
    return args


def _load_rows(args) -> tuple[list[dict], dict]:
    """The rows to score or generate for, and the settings that name them."""
    if args.generations is not None:
        return read_generations(args.generations)[: args.max_samples], {"generations": args.generations}
    split, dataset, _ = load_eval_split(
        args.dataset_name, args.dataset_test_split, args.dataset_config, "`--dataset_test_split`"
    )
    return eval_rows(dataset, args.max_samples), {"dataset": args.dataset_name, "split": split}


def _load_model(args):
    """The model to generate and score the reference NLL with (adapter merged), or None to score texts only."""
    if args.model_name_or_path is None:
        return None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")]
    # Merged into float32 weights, the adapter generates the same, faster
    return merge_lora_for_inference(load_model(args.model_name_or_path, args.adapter, device, dtype))


@command_line
def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    check_eval_extra()
    from transformers import AutoTokenizer

    # The data first: a wrong path or split fails before a model is loaded
    rows, data_settings = _load_rows(args)
    tokenizer_source = args.tokenizer or args.model_name_or_path
    settings: dict = {
        "model_name_or_path": args.model_name_or_path,
        "adapter": args.adapter,
        "tokenizer": tokenizer_source,
        "counts": args.pdl_counts_path,
        **data_settings,
    }
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model = _load_model(args)
    counts = None
    if args.pdl_counts_path is not None:
        vocab_rows = model.get_output_embeddings().weight.shape[0] if model is not None else None
        token_counts = load_counts(args.pdl_counts_path, tokenizer, vocab_rows)
        counts = token_counts.counts
        settings["counts_fingerprint"] = token_counts.fingerprint

    scoring = {"counts": counts, "rare_mass": args.rare_mass, "with_reference_nll": not args.no_reference_nll}
    if args.generations is not None:
        metrics, details = score_generation_rows(rows, tokenizer, model=model, batch_size=args.batch_size, **scoring)
    else:
        generation = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
        metrics, details, out_rows = evaluate_model(model, tokenizer, rows, **scoring, **generation)
        if not args.do_sample:
            generation.update(temperature=None, top_p=None)
        settings["generation"] = generation
        if args.generations_output is not None:
            write_generations(args.generations_output, out_rows)
            settings["generations_output"] = args.generations_output

    result = eval_result(metrics, details, settings)
    print(json_text(result["metrics"]))
    if args.metrics_output is not None:
        write_json(args.metrics_output, result)
    return result


def run(argv: list[str]) -> int:
    """What `pdl-trl eval ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl eval", main))
