"""
The run step of a sweep: one variant with one seed, trained in this process as `pdl-trl sft` trains it, saved, then
evaluated on every eval set with `pdl-trl eval`'s functions. Its `run.json`, written last (atomically), marks it
finished; a run without it is redone from scratch.
"""

import gc
import os
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import set_seed

from pdl_trl.compat import end_training
from pdl_trl.evaluation.files import eval_result, write_generations, write_json, write_statistics
from pdl_trl.evaluation.generation import merge_lora_for_inference
from pdl_trl.evaluation.scoring import generate_rows, run_statistics, statistics_details
from pdl_trl.frequency import COUNTS_FILE_NAME, TokenCounts, tokenizer_fingerprint
from pdl_trl.sweep.grid import RUN_FILE, RUN_FORMAT, Run, Sweep
from pdl_trl.training import make_trainer


PACKAGES = ("pdl-trl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "sacrebleu", "rouge-score")


def _git_commit() -> str | None:
    """The pdl-trl commit, when the package runs from a git checkout (`+ changes` when it has uncommitted ones)."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit} + changes" if status.strip() else commit


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(use_cpu: bool) -> dict:
    """Date, hardware, Python and package versions and the pdl-trl commit, for a run file or a report."""
    if torch.cuda.is_available() and not use_cpu:
        hardware = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        hardware = (
            f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch thread(s)"
        )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware,
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in PACKAGES},
        "pdl_trl_commit": _git_commit(),
    }


def _training_summary(trainer, seconds: float) -> dict:
    history = trainer.state.log_history
    logged = [entry for entry in history if "nll" in entry]
    return {
        "steps": trainer.state.global_step,
        "seconds": round(seconds, 1),
        "train_loss": next((entry["train_loss"] for entry in history if "train_loss" in entry), None),
        "last_logged": {key: logged[-1][key] for key in ("step", "loss", "nll") if key in logged[-1]}
        if logged
        else None,
    }


def _run_counts(sweep: Sweep, run: Run) -> TokenCounts:
    """
    This run's counts, which measure its frequency metrics: checked equal to those of any other run already finished
    here, since every run counts the same training set (on another machine, the report compares their fingerprints).
    """
    counts = TokenCounts.load(run.directory / COUNTS_FILE_NAME)
    for other in sweep.runs:
        if other is not run and other.finished and (other.directory / COUNTS_FILE_NAME).is_file():
            if TokenCounts.load(other.directory / COUNTS_FILE_NAME).fingerprint != counts.fingerprint:
                raise RuntimeError(
                    f"Run {run.name} counted another training set than run {other.name}: its frequency metrics would "
                    "not be comparable. Nothing but `pdl_*` fields and `loss_type` may differ between runs; check "
                    "that the training data and tokenizer did not change while the sweep ran."
                )
            break
    return counts


def evaluation_dtype(args) -> torch.dtype | None:
    """
    The half precision a run trained in under mixed precision (`bf16` / `fp16`), or None for float32. The sweep
    evaluates in it too, so that a half-precision sweep generates in half precision like the model it trained; on a
    CPU with bf16 instructions that is also several times faster than float32.
    """
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return None


def _train(sweep: Sweep, run: Run):
    """Trains and saves one run (adapter, counts, settings) into its folder; returns the trainer and a summary."""
    started = time.perf_counter()
    # SFTTrainer creates the model and its LoRA adapter before Trainer seeds: seed first, so that every variant of a
    # seed starts from the same adapter, whatever ran before in this process
    set_seed(run.seed)
    trainer = make_trainer(sweep.script_args, run.config, sweep.model_args, sweep.dataset_args)
    trainer.train()
    trainer.save_model()
    return trainer, _training_summary(trainer, time.perf_counter() - started)


def _inference_model(trainer):
    """The trained model, ready to generate: LoRA merged, cast to the half precision it trained in (if any)."""
    # The adapter is saved: merging it now only makes generation faster
    model = merge_lora_for_inference(trainer.model)
    dtype = evaluation_dtype(trainer.args)
    if dtype is not None:
        # Cast after merging: the adapter's update is merged in float32, then the whole model rounded once
        model = model.to(dtype)
    return model, dtype


def _evaluate(sweep: Sweep, run: Run, model, tokenizer, dtype, counts: TokenCounts) -> tuple[dict, dict]:
    """
    Evaluates on every eval set, writing each set's generations, metrics and statistics files (the statistics with
    the fingerprints of what they were scored against, for the report); returns the metrics and timings.
    """
    metrics, timings = {}, {}
    for eval_set in sweep.eval_sets:
        eval_started = time.perf_counter()
        rows = generate_rows(
            model,
            tokenizer,
            eval_set.rows,
            max_new_tokens=eval_set.max_new_tokens,
            batch_size=sweep.arguments.eval_batch_size,
            seed=run.seed,
        )
        statistics = run_statistics(rows, tokenizer, counts=counts.counts, rare_mass=sweep.arguments.rare_mass)
        write_generations(run.generations_path(eval_set.name), rows)
        fingerprints = {
            "eval_rows": eval_set.fingerprint,
            "distinct_prompts": eval_set.num_distinct_prompts,
            "counts": counts.fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "rare_mass": sweep.arguments.rare_mass,
        }
        write_statistics(run.statistics_path(eval_set.name), statistics, fingerprints)
        settings = {
            "model_name_or_path": sweep.model_args.model_name_or_path,
            "adapter": str(run.directory) if sweep.model_args.use_peft else None,
            "counts": str(run.directory / COUNTS_FILE_NAME),
            "counts_fingerprint": counts.fingerprint,
            "dataset": eval_set.path,
            "split": eval_set.split,
            "generation": {
                "max_new_tokens": eval_set.max_new_tokens,
                "do_sample": False,
                "batch_size": sweep.arguments.eval_batch_size,
                "seed": run.seed,
                "dtype": str(dtype or torch.float32).removeprefix("torch."),
            },
            "generations_output": str(run.generations_path(eval_set.name)),
        }
        details = statistics_details(statistics, counts.counts, sweep.arguments.rare_mass)
        metrics[eval_set.name] = statistics.whole_set_metrics()
        write_json(run.metrics_path(eval_set.name), eval_result(metrics[eval_set.name], details, settings))
        timings[f"eval_{eval_set.name}"] = round(time.perf_counter() - eval_started, 1)
    return metrics, timings


def train_and_evaluate(sweep: Sweep, run: Run) -> dict:
    """
    Trains, saves and evaluates one run, and writes its `run.json` last. An earlier unfinished attempt's folder is
    deleted first, so that nothing of it mixes in. Frequency metrics use the run's own counts, checked equal to those
    of the other runs (every run counts the same training set).

    Returns:
        `dict`: the content of the run's `run.json`.
    """
    if run.directory.exists():
        shutil.rmtree(run.directory)
    trainer, training = _train(sweep, run)
    counts = _run_counts(sweep, run)
    model, dtype = _inference_model(trainer)
    metrics, timings = _evaluate(sweep, run, model, trainer.processing_class, dtype, counts)
    content = {
        "format": RUN_FORMAT,
        "version": 1,
        "variant": run.variant,
        "seed": run.seed,
        "settings": run.settings,
        "training": training,
        "metrics": metrics,
        "timings_s": {"train": training["seconds"], **timings},
        "environment": environment(run.config.use_cpu),
    }
    write_json(run.directory / RUN_FILE, content)
    end_training(trainer)
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return content
