"""Smoke runs of the benchmark scripts in quick mode: they run and report finite numbers. No timing assertions: CI
machines are too noisy for them, and the numbers belong in docs/benchmarks.md."""

import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_positive_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_counting_quick(capsys):
    report = load_script("counting").main(["--quick", "--json", "--repeats", "2"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))  # stdout is the JSON alone
    assert report["completion_tokens"] >= 1_000_000
    assert report["label_slots"] > report["completion_tokens"]  # prompt spans are there and not counted
    for key in ("ratio", "count_s", "bincount_s", "count_tokens_per_s", "bincount_tokens_per_s"):
        assert is_positive_number(report[key]), key
    assert len(report["shard_s"]) == 2 and all(is_positive_number(t) for t in report["shard_s"])
    assert is_positive_number(report["shard_sum_over_full"])


def test_counting_dataset_matches_its_targets():
    counting = load_script("counting")
    dataset, targets = counting.build_prepared_dataset(20_000, vocab_size=1000, max_len=128, seed=1, shuffle=True)
    assert len(targets) >= 20_000
    labels = [label for row in dataset["labels"] for label in row[1:] if label != -100]
    assert sorted(labels) == sorted(targets.tolist())


@pytest.mark.sft_trainer
def test_step_time_quick(capsys):
    report = load_script("step_time").main(["--quick", "--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    for key in ("ratio", "memory_ratio", "variants", "device_name", "versions", "config", "fits"):
        assert key in report, key
    assert is_positive_number(report["ratio"])
    assert report["fits"] is True
    for name in ("sft", "pdl"):
        variant = report["variants"][name]
        assert variant["timed_steps"] == report["config"]["steps"] * report["config"]["rounds"]
        assert is_positive_number(variant["median_step_s"])
        assert math.isfinite(variant["final_loss"])
    assert report["versions"]["trl"] == importlib.metadata.version("trl")


@pytest.mark.parametrize("variant", ["full_logits"])
def test_step_time_full_logits_matches_pdl_loss(variant, capsys):
    # The reference variant computes the same loss as PDL from full logits: same first-step loss
    report = load_script("step_time").main(
        ["--quick", "--json", "--variants", "pdl", variant, "--rounds", "1", "--steps", "1", "--warmup", "1"]
    )
    capsys.readouterr()
    pdl, reference = report["variants"]["pdl"], report["variants"][variant]
    assert reference["first_loss"] == pytest.approx(pdl["first_loss"], rel=1e-4)


def test_generation_quick(tiny_model_dir, capsys):
    report = load_script("generation").main(["--model", str(tiny_model_dir), "--quick", "--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["prompts"] == 4 and report["max_new_tokens"] == 4
    for key in ("ratio", "ratio_cpu_time", "merge_s"):
        assert is_positive_number(report[key]), key
    # Merged into float32 weights, the adapter generates the same
    assert report["same_generations"] == 4
    assert report["reference_nll"]["merged"] == pytest.approx(report["reference_nll"]["adapter"], rel=1e-5)
