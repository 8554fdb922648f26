"""Greedy generation with a LoRA adapter (a PEFT model) against the same adapter merged into float32 weights
(`pdl_trl.evaluation.merge_lora_for_inference`, what `pdl-trl eval --adapter` and `pdl-trl sweep` do before
generating): wall and CPU time of `generate_completions`, and whether the generations and the reference NLL agree.

The adapter is a LoRA r8 / alpha 16 on all linear layers with random A and B (B scaled by 0.01, so that it changes
the model's output without destroying it), seeded. Prompts are the first `--prompts` rows of the bundled pydoc_qa
held-out set. Rounds alternate the order (adapter, merged; merged, adapter; ...) so drifting machine load hits both.

Run from the repository root:

    # CPU, SmolLM2-135M-Instruct converted by `python -m pdl_trl.demo` (the default model)
    OMP_NUM_THREADS=1 python examples/benchmarks/generation.py --prompts 32 --max_new_tokens 64 --rounds 2 --json

    # CI smoke run on any small model folder
    OMP_NUM_THREADS=1 python examples/benchmarks/generation.py --model TINY_DIR --quick --json
"""

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from importlib.resources import files
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from pdl_trl.evaluation import generate_completions, load_eval_rows, merge_lora_for_inference, reference_nll
from pdl_trl.sweep import environment


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="Model folder (default: the demo's converted SmolLM2-135M-Instruct)."
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="Timed rounds per variant.")
    parser.add_argument("--quick", action="store_true", help="4 prompts, 4 new tokens, 1 round: a smoke run.")
    parser.add_argument("--json", action="store_true", help="Print only the JSON result.")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.rounds = 4, 4, 1
    if args.model is None:
        from pdl_trl.demo import MODEL_FOLDER, default_cache_dir

        args.model = default_cache_dir() / MODEL_FOLDER
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    # With --json, stdout holds the JSON alone: libraries may print there (DeepSpeed does when accelerate imports it)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = _measure(args)
    print(json.dumps(report, indent=None if args.json else 2))
    return report


def _measure(args) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), lora)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.01)
    merge_started = time.perf_counter()
    merged = merge_lora_for_inference(copy.deepcopy(adapter))
    merge_s = time.perf_counter() - merge_started
    rows = load_eval_rows(str(files("pdl_trl.data") / "pydoc_qa_test.jsonl"), max_samples=args.prompts)
    prompts = [row["prompt"] for row in rows]

    models = {"adapter": adapter, "merged": merged}
    wall, cpu, generations = {"adapter": [], "merged": []}, {"adapter": [], "merged": []}, {}
    for round_index in range(args.rounds):
        for name in ("adapter", "merged") if round_index % 2 == 0 else ("merged", "adapter"):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            generations[name] = generate_completions(
                models[name],
                tokenizer,
                prompts,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                show_progress=False,
            )
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    references = [row["completion"] for row in rows]
    nll = {
        name: reference_nll(model, tokenizer, prompts, references, show_progress=False)
        for name, model in models.items()
    }
    report = {
        "model": str(args.model),
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "merge_s": merge_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": {name: statistics.median(times) for name, times in wall.items()},
        "median_cpu_s": {name: statistics.median(times) for name, times in cpu.items()},
        "ratio": statistics.median(wall["merged"]) / statistics.median(wall["adapter"]),
        "ratio_cpu_time": statistics.median(cpu["merged"]) / statistics.median(cpu["adapter"]),
        "same_generations": sum(a == b for a, b in zip(generations["adapter"], generations["merged"], strict=True)),
        "ran_into_the_limit": sum(not g.terminated for g in generations["adapter"]),
        "reference_nll": nll,
        "environment": environment(use_cpu=not torch.cuda.is_available()),
    }
    return report


if __name__ == "__main__":
    main()
