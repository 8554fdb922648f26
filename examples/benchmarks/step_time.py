"""Step time and peak memory of PDLSFTTrainer against SFTTrainer on the same model, data and (Q)LoRA config.

Variants (`--variants`):

- `sft`: stock `trl.SFTTrainer` (NLL on TRL's fused LM head);
- `pdl`: `pdl_trl.PDLSFTTrainer` (the same fused head, targets weighted by `w[y]`);
- `full_logits`: the reference approach PDL replaces: full `(B, T, V)` logits, upcast to float32, then
  `F.cross_entropy(weight=w)`, normalised like `pdl` so the losses agree. Shown for its memory.

The model is a random-init one with the shape of a public config (`--shape`), created in bf16, saved to a
temporary directory and loaded back in 4-bit NF4 with double quantisation and bf16 compute when `--qlora` (the
default on CUDA), then LoRA r16 on all linear layers; gradient checkpointing on. Data: synthetic prompt-completion
rows of Zipf(1.2)-distributed token ids, given pretokenized (`input_ids` + `completion_mask`). Each variant builds
a fresh trainer in every round; rounds alternate the variant order (A B C, C B A, ...) so drifting machine load hits
every variant alike, and the first `--warmup` steps of each round are discarded.

A step is timed from one `on_step_end` to the next (CUDA synchronised), so it includes what happens between
`on_step_end` and `on_step_begin`: fetching the micro-batches and `get_batch_samples` (where PDL sums the step's
weights) and logging. Peak memory is `torch.cuda.max_memory_allocated` during `train()` (reset before each
variant); on CPU the peak RSS growth during `train()` is reported instead, which is only indicative.

Run from the repository root:

    # CPU, tiny model (CI smoke: --quick, under a minute)
    OMP_NUM_THREADS=1 python examples/benchmarks/step_time.py --quick --json
    OMP_NUM_THREADS=1 python examples/benchmarks/step_time.py --shape tiny --rounds 6 --steps 20 --json

    # GPU: Qwen2.5-0.5B shape, QLoRA, bs 8 x 1024 tokens, with the full-logits reference
    python examples/benchmarks/step_time.py --shape qwen0.5b --variants sft pdl full_logits --json

    # GPU: does an 8B model under QLoRA + PDL at 4 x 2048 tokens fit in 24 GiB?
    python examples/benchmarks/step_time.py --shape llama3-8b --variants pdl --batch_size 4 --seq_len 2048 \
        --steps 3 --warmup 1 --rounds 1 --memory_gib 24 --json
"""

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, disable_progress_bars
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    TrainerCallback,
)
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from pdl_trl import PDLSFTConfig, PDLSFTTrainer
from pdl_trl.loss import IGNORE_INDEX


# Shapes from the public configs; weights are random, nothing is downloaded.
SHAPES = {
    # Small enough for CPU, with a vocabulary large enough that the LM head and loss are a real share of the step
    "tiny": (
        Qwen2Config,
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=8192,
            tie_word_embeddings=True,
        ),
    ),
    "qwen0.5b": (  # Qwen/Qwen2.5-0.5B
        Qwen2Config,
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
        ),
    ),
    "qwen1.5b": (  # Qwen/Qwen2.5-1.5B
        Qwen2Config,
        dict(
            hidden_size=1536,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            intermediate_size=8960,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
        ),
    ),
    "llama3-8b": (  # meta-llama/Meta-Llama-3-8B
        LlamaConfig,
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            tie_word_embeddings=False,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
        ),
    ),
}
VARIANTS = ("sft", "pdl", "full_logits")
PAD_ID, EOS_ID = 0, 1


class FullLogitsPDLTrainer(PDLSFTTrainer):
    """PDL computed the way the reference code does: full logits, `.float()`, `F.cross_entropy(weight=w)`.

    Normalised by the same step weight sum as `PDLSFTTrainer`, so both give the same loss; only memory and time
    differ. Train-only, no metrics: it exists to measure the cost of materialising the logits.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        # Without `labels` and `fused_lm_head` the model's original forward runs and returns (B, T, V) logits
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        logits = model(**model_inputs, use_cache=False).logits
        vocab_size = logits.size(-1)
        loss_sum = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, vocab_size),
            labels[:, 1:].reshape(-1),
            weight=self.pdl_table.weights,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        loss = loss_sum / self._pdl_step_weight_sum.clamp(min=torch.finfo(torch.float32).tiny)
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss


class StepTimer(TrainerCallback):
    """Time of every optimizer step, from the previous step's end (or the start of training) to this one's.

    Wall time, and the training thread's CPU time: on a shared CPU the latter leaves out the time other processes
    held the core, so it is the steadier measure of the work done (torch runs single-threaded there).
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.ends: list[tuple[float, float]] = []
        self.start = None

    def _now(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.thread_time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(self._now())

    @property
    def step_times(self) -> list[float]:
        return np.diff([self.start[0], *(wall for wall, _ in self.ends)]).tolist()

    @property
    def step_cpu_times(self) -> list[float]:
        return np.diff([self.start[1], *(cpu for _, cpu in self.ends)]).tolist()


class RSSPeak:
    """Peak resident set size growth while the block runs, sampled every 10 ms (CPU only; indicative)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.delta = max(self.peak, self._rss()) - self.base


def build_tokenizer() -> PreTrainedTokenizerFast:
    # The data is pretokenized, so the tokenizer only supplies the pad and EOS tokens and the PDL fingerprint
    tokenizer = Tokenizer(models.WordLevel({"<pad>": PAD_ID, "<eos>": EOS_ID, "<unk>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_dataset(num_rows: int, seq_len: int, vocab_size: int, prompt_share: float, seed: int) -> Dataset:
    """Pretokenized prompt-completion rows: Zipf(1.2) token ids over a shuffled vocabulary, EOS last.

    SFTTrainer treats a dataset with `input_ids` as tokenized and turns `completion_mask` into `labels` (-100 on
    the prompt) only when `completion_only_loss=True` is set explicitly: its automatic choice looks for `prompt` and
    `completion` columns, which a pretokenized dataset does not have.
    """
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=(num_rows, seq_len)) - 1
    ids = rng.permutation(np.arange(3, vocab_size))[ranks % (vocab_size - 3)]
    ids[:, -1] = EOS_ID
    prompt_len = max(1, int(seq_len * prompt_share))
    mask = np.zeros((num_rows, seq_len), dtype=np.int64)
    mask[:, prompt_len:] = 1
    return Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": mask.tolist()})


def create_model_dir(shape: str, directory: str, cuda: bool) -> None:
    """Random-init model of `shape` in bf16, saved so it can be loaded back quantised like a checkpoint."""
    config_class, kwargs = SHAPES[shape]
    config = config_class(**kwargs, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=EOS_ID)
    torch.manual_seed(0)
    # Initialising on the GPU takes seconds where CPU init of an 8B model takes minutes
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def load_model(directory: str, qlora: bool, cuda: bool):
    if qlora:
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        device_map = {"": torch.cuda.current_device()} if cuda else None
        return AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, quantization_config=quantization_config, device_map=device_map
        )
    # bf16 training on CPU is slow without native support; the tiny CPU benchmark trains in float32
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16 if cuda else torch.float32)


def run_variant(variant: str, model_dir: str, dataset: Dataset, args, cuda: bool, output_dir: str) -> dict:
    from peft import LoraConfig

    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.warmup + args.steps,
        max_length=args.seq_len,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        completion_only_loss=True,
        gradient_checkpointing=True,
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    if variant == "sft":
        trainer_class, config = SFTTrainer, SFTConfig(**common)
    else:
        trainer_class = PDLSFTTrainer if variant == "pdl" else FullLogitsPDLTrainer
        config = PDLSFTConfig(**common, pdl_alpha=args.pdl_alpha)
    peft_config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
    )
    timer = StepTimer(cuda)
    setup_start = time.perf_counter()
    trainer = trainer_class(
        model=load_model(model_dir, args.qlora, cuda),
        args=config,
        train_dataset=dataset,
        processing_class=build_tokenizer(),
        peft_config=peft_config,
        callbacks=[timer],
    )
    # The log lines would mix with the JSON on stdout; the losses are read from `state.log_history` instead
    trainer.remove_callback(PrinterCallback)
    setup_s = time.perf_counter() - setup_start
    result = {"setup_s": setup_s}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result["allocated_before_train_bytes"] = torch.cuda.memory_allocated()
    try:
        with RSSPeak() if not cuda else contextlib.nullcontext() as rss:
            trainer.train()
        result["error"] = None
    except torch.OutOfMemoryError as error:
        # Expected outcome of a memory-limit check that does not fit: record it rather than crash the suite
        result["error"] = f"OutOfMemoryError: {str(error).splitlines()[0]}"
    if cuda:
        torch.cuda.synchronize()
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        result["rss_peak_delta_bytes"] = rss.delta
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result["losses"] = losses
    result["step_times_s"] = timer.step_times
    result["step_cpu_times_s"] = timer.step_cpu_times
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "pdl-trl"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(cuda: bool) -> str:
    if cuda:
        return torch.cuda.get_device_name()
    model_name = platform.processor() or "cpu"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{model_name} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["sft", "pdl"])
    parser.add_argument("--batch_size", type=int, default=None, help="Per-device batch size (default 8; tiny 4).")
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=None, help="Tokens per row (default 1024; tiny 128).")
    parser.add_argument("--prompt_share", type=float, default=0.25, help="Share of each row that is prompt.")
    parser.add_argument("--steps", type=int, default=None, help="Timed optimizer steps per variant and round (10).")
    parser.add_argument("--warmup", type=int, default=None, help="Steps discarded at the start of every round (3).")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds; each builds every variant afresh (2).")
    parser.add_argument("--pdl_alpha", type=float, default=1.0)
    parser.add_argument("--qlora", action=argparse.BooleanOptionalAction, default=None, help="Default: on CUDA.")
    parser.add_argument(
        "--memory_gib", type=float, default=None, help="Emulate a card with this much memory (CUDA only)."
    )
    parser.add_argument(
        "--memory_fraction", type=float, default=None, help="Same, as a share of this card (CUDA only)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny shape, few steps: a CPU smoke run (< 1 min).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; explicit options still apply
        args.shape = "tiny"
        args.steps, args.warmup, args.rounds = (
            args.steps or 4,
            1 if args.warmup is None else args.warmup,
            args.rounds or 2,
        )
        args.batch_size = args.batch_size or 2
        args.seq_len = args.seq_len or 64
    args.steps = args.steps or 10
    args.warmup = 3 if args.warmup is None else args.warmup
    args.rounds = args.rounds or 2
    tiny = args.shape == "tiny"
    args.batch_size = args.batch_size or (4 if tiny else 8)
    args.seq_len = args.seq_len or (128 if tiny else 1024)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    # With --json, stdout holds the JSON alone: libraries may print there (DeepSpeed does when accelerate imports it)
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = _measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
    return report


def _measure(args) -> dict:
    cuda = torch.cuda.is_available()
    if args.qlora is None:
        args.qlora = cuda
    if (args.memory_gib or args.memory_fraction) and not cuda:
        raise SystemExit("--memory_gib / --memory_fraction emulate a smaller GPU and need CUDA.")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    # SFTConfig's own default (`gradient_checkpointing=True`) triggers this deprecation warning on every config
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    vocab_size = SHAPES[args.shape][1]["vocab_size"]
    num_rows = args.batch_size * args.grad_accum * (args.warmup + args.steps)
    dataset = build_dataset(num_rows, args.seq_len, vocab_size, args.prompt_share, args.seed)

    results = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="pdl-bench-") as tmp:
        model_dir = os.path.join(tmp, "model")
        create_model_dir(args.shape, model_dir, cuda)
        memory_limit = None
        if cuda:
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = args.memory_fraction or (args.memory_gib * 2**30 / total if args.memory_gib else None)
            if fraction is not None:
                # Set after the bf16 model is created and freed: the limit applies to training, as on a small card
                torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0))
                memory_limit = int(min(fraction, 1.0) * total)
        for round_index in range(args.rounds):
            order = args.variants if round_index % 2 == 0 else args.variants[::-1]
            for variant in order:
                try:
                    result = run_variant(variant, model_dir, dataset, args, cuda, os.path.join(tmp, "out"))
                except torch.OutOfMemoryError as error:
                    # Out of memory before training (loading the model, building the trainer): record, go on
                    result = {"error": f"OutOfMemoryError before training: {str(error).splitlines()[0]}"}
                    result.update(
                        setup_s=None, losses=[], step_times_s=[], step_cpu_times_s=[], rss_peak_delta_bytes=0
                    )
                    result["peak_bytes"] = torch.cuda.max_memory_allocated()
                    gc.collect()
                    torch.cuda.empty_cache()
                results[variant].append(result)
                print(
                    f"round {round_index} {variant}: median step "
                    f"{_median(result['step_times_s'][args.warmup :]) or float('nan'):.4f} s",
                    file=sys.stderr,
                )

    report = {
        "benchmark": "step_time",
        "shape": args.shape,
        "device": "cuda" if cuda else "cpu",
        "device_name": device_description(cuda),
        "versions": package_versions(),
        "config": {
            key: getattr(args, key)
            for key in (
                "batch_size",
                "grad_accum",
                "seq_len",
                "prompt_share",
                "steps",
                "warmup",
                "rounds",
                "qlora",
                "pdl_alpha",
                "memory_gib",
                "memory_fraction",
            )
        },
        "tokens_per_step": args.batch_size * args.grad_accum * args.seq_len,
        "memory_limit_bytes": memory_limit,
        "memory_metric": "cuda_max_memory_allocated" if cuda else "rss_peak_delta (indicative; no ratio)",
        "variants": {},
    }
    for variant, runs in results.items():
        steps = [t for run in runs for t in run["step_times_s"][args.warmup :]]
        cpu_steps = [t for run in runs for t in run["step_cpu_times_s"][args.warmup :]]
        errors = [run["error"] for run in runs if run["error"]]
        peaks = [run.get("peak_bytes") for run in runs if run.get("peak_bytes") is not None]
        report["variants"][variant] = {
            "median_step_s": _median(steps),
            "min_step_s": min(steps) if steps else None,
            "median_step_cpu_s": _median(cpu_steps),
            "timed_steps": len(steps),
            "tokens_per_s": args.batch_size * args.grad_accum * args.seq_len / _median(steps) if steps else None,
            "peak_bytes": max(peaks) if peaks else None,
            "peak_gib": max(peaks) / 2**30 if peaks else None,
            "rss_peak_delta_bytes": _median([run["rss_peak_delta_bytes"] for run in runs]) if not cuda else None,
            "setup_s": _median([run["setup_s"] for run in runs if run["setup_s"] is not None]),
            "first_loss": runs[0]["losses"][0] if runs[0]["losses"] else None,
            "final_loss": runs[0]["losses"][-1] if runs[0]["losses"] else None,
            "round_medians_s": [_median(run["step_times_s"][args.warmup :]) for run in runs],
            "errors": errors,
            "fits": not errors,
        }
    variants = report["variants"]

    def step(name):
        return variants[name]["median_step_s"] if name in variants else None

    def cpu(name):
        return variants[name]["median_step_cpu_s"] if name in variants else None

    def peak(name):
        return variants[name]["peak_bytes"] if name in variants else None

    report["ratio"] = _ratio(step("pdl"), step("sft"))
    report["ratio_cpu_time"] = _ratio(cpu("pdl"), cpu("sft"))
    report["memory_ratio"] = _ratio(peak("pdl"), peak("sft"))
    report["ratio_full_logits"] = _ratio(step("full_logits"), step("sft"))
    report["memory_ratio_full_logits"] = _ratio(peak("full_logits"), peak("sft"))
    # Per-round ratios: each pair ran back to back, so slow drifts in machine load cancel within a round
    if "pdl" in results and "sft" in results:
        report["round_ratios"] = [
            _ratio(_median(p["step_times_s"][args.warmup :]), _median(s["step_times_s"][args.warmup :]))
            for p, s in zip(results["pdl"], results["sft"], strict=True)
        ]
    report["fits"] = all(v["fits"] for v in variants.values())

    if not args.json:
        print(f"{report['device_name']} | {args.shape} | {report['tokens_per_step']} tokens/step | qlora={args.qlora}")
        print(f"{'variant':<12} {'median s':>10} {'min s':>10} {'peak GiB':>10} {'final loss':>11}")
        for name, v in variants.items():
            peak_text = f"{v['peak_gib']:.3f}" if v["peak_gib"] is not None else "-"
            loss_text = f"{v['final_loss']:.4f}" if v["final_loss"] is not None else "-"
            median_text = f"{v['median_step_s']:.4f}" if v["median_step_s"] is not None else "-"
            min_text = f"{v['min_step_s']:.4f}" if v["min_step_s"] is not None else "-"
            print(f"{name:<12} {median_text:>10} {min_text:>10} {peak_text:>10} {loss_text:>11}  {v['errors'] or ''}")
        for key in ("ratio", "ratio_cpu_time", "memory_ratio", "ratio_full_logits", "memory_ratio_full_logits"):
            if report[key] is not None and math.isfinite(report[key]):
                print(f"{key}: {report[key]:.4f}")
    return report


if __name__ == "__main__":
    main()
