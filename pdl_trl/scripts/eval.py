"""
`pdl-trl eval`: generates completions for a held-out prompt-completion set (or reads a generations file), scores
them and writes a metrics file. Metric definitions: `docs/evaluation.md`.

```bash
pdl-trl eval --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct --adapter outputs/pdl \
    --dataset test.jsonl --counts outputs/pdl/pdl_counts.json --output outputs/pdl/eval/metrics.json
pdl-trl eval --tokenizer HuggingFaceTB/SmolLM2-135M-Instruct --generations gens.jsonl --output metrics.json
```
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from pdl_trl.evaluation.files import eval_result, json_text, read_generations, write_generations, write_json
from pdl_trl.evaluation.generation import DTYPES, load_model, merge_lora_for_inference
from pdl_trl.evaluation.heldout import eval_rows, load_eval_split
from pdl_trl.evaluation.metrics import DEFAULT_RARE_MASS, check_eval_extra
from pdl_trl.evaluation.scoring import evaluate_model, load_counts, score_generation_rows


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
    source.add_argument(
        "--dataset", help="Held-out prompt-completion set: data file, dataset folder or Hub dataset, as for `sft`."
    )
    source.add_argument(
        "--generations", help="Score this jsonl (rows with prompt, generation, optional reference) instead."
    )
    parser.add_argument("--dataset_config", help="Config of a Hub --dataset (as `--dataset_config` of `pdl-trl sft`).")
    parser.add_argument(
        "--split",
        help="Split to evaluate; it must exist (default: the dataset's only split, or `test` when it has several).",
    )
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
    settings: dict = {
        "model_name_or_path": args.model_name_or_path,
        "adapter": args.adapter,
        "tokenizer": tokenizer_source,
        "counts": args.counts,
    }
    check_eval_extra()
    # The data first: a wrong path or split fails before a model is loaded
    if args.generations is not None:
        rows = read_generations(args.generations)[: args.max_samples]
        settings["generations"] = args.generations
    else:
        split, dataset = load_eval_split(args.dataset, args.split, args.dataset_config)
        rows = eval_rows(dataset, args.max_samples)
        settings.update(dataset=args.dataset, split=split)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")]
    model = None
    if args.model_name_or_path is not None:
        # Merged into float32 weights, the adapter generates the same, faster
        model = merge_lora_for_inference(load_model(args.model_name_or_path, args.adapter, device, dtype))
    counts = None
    if args.counts is not None:
        vocab_rows = model.get_output_embeddings().weight.shape[0] if model is not None else None
        counts = load_counts(args.counts, tokenizer, vocab_rows).counts

    if args.generations is not None:
        metrics, details = score_generation_rows(
            rows,
            tokenizer,
            model=model,
            counts=counts,
            rare_mass=args.rare_mass,
            with_reference_nll=not args.no_reference_nll,
            batch_size=args.batch_size,
        )
    else:
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
        settings["generation"] = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "temperature": args.temperature if args.do_sample else None,
            "top_p": args.top_p if args.do_sample else None,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }
        generations_path = args.generations_output
        if generations_path is None and args.output is not None:
            output = Path(args.output)
            generations_path = output.with_name(f"{output.stem}.generations.jsonl")
        if generations_path is not None:
            write_generations(generations_path, out_rows)
            settings["generations_output"] = str(generations_path)

    result = eval_result(metrics, details, settings)
    print(json_text(result["metrics"]))
    if args.output is not None:
        write_json(args.output, result)
    return result


def run(argv: list[str]) -> int:
    """What `pdl-trl eval ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    main()
