"""`pdl-trl sweep` on the tiny model: two variants x two seeds end to end, a restart that redoes only the run whose
files were deleted, and the configs it refuses before training."""

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.tiny import make_rows
from transformers import AutoTokenizer

from pdl_trl.cli import main as cli_main
from pdl_trl.evaluation.generation import generate_completions, load_model, merge_lora_for_inference
from pdl_trl.scripts.sweep import main as sweep_main


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("sft", "pdl")
SEEDS = (0, 1)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def sweep_config(tmp_path, tiny_model_dir):
    """Factory: a sweep config file for the tiny model (LoRA, 2 CPU steps per run), with `overrides` (None deletes)."""
    # 20 distinct prompts: as few as a verdict is drawn from
    held_out = list({row["prompt"]: row for row in make_rows(80, seed=7)}.values())[:20]
    data = {
        "train": write_jsonl(tmp_path / "train.jsonl", make_rows(32)),
        "heldout": write_jsonl(tmp_path / "heldout.jsonl", held_out),
        "prompts": write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in held_out[:4]]),
    }

    def factory(**overrides):
        values = {
            "model_name_or_path": str(tiny_model_dir),
            "dataset_name": data["train"],
            "output_dir": str(tmp_path / "sweep"),
            "use_cpu": True,
            "bf16": False,
            "report_to": "none",
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 0.01,
            "activation_checkpointing": False,
            "save_strategy": "no",
            "disable_tqdm": True,
            "use_peft": True,
            "lora_r": 4,
            "lora_target_modules": "all-linear",
            "seeds": list(SEEDS),
            "baseline": "sft",
            "variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_alpha": 1.0, "pdl_neutral_special_tokens": True}},
            "eval_datasets": {
                "heldout": {"path": data["heldout"]},
                "prompts": {"path": data["prompts"], "max_new_tokens": 3},
            },
            "max_new_tokens": 4,
            "eval_batch_size": 4,
            "bootstrap_resamples": 100,
            "side_by_side": 2,
            **overrides,
        }
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({key: value for key, value in values.items() if value is not None}))
        return path

    return factory


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_sweep_end_to_end_and_restart(sweep_config, tmp_path, capsys):
    config = sweep_config()
    report = sweep_main(["--config", str(config)])
    sweep = tmp_path / "sweep"

    # One folder per run: the adapter, the counts and settings it trained with, per eval set the generations and
    # metrics files, and run.json
    for variant in VARIANTS:
        for seed in SEEDS:
            run = sweep / variant / f"seed-{seed}"
            for name in ("adapter_model.safetensors", "pdl_counts.json", "pdl_settings.json", "run.json"):
                assert (run / name).is_file(), run / name
            content = read_json(run / "run.json")
            assert content["settings"]["training"]["seed"] == content["settings"]["training"]["data_seed"] == seed
            assert content["training"]["steps"] == 2
            for eval_set in ("heldout", "prompts"):
                metrics = read_json(run / "eval" / f"{eval_set}.metrics.json")
                # Every run is measured with its own counts, which are the same for every run (fingerprinted)
                assert metrics["settings"]["counts"] == str(run / "pdl_counts.json")
                assert metrics["metrics"] == content["metrics"][eval_set]
                assert metrics["settings"]["generation"]["dtype"] == "float32"
                rows = [json.loads(line) for line in (run / "eval" / f"{eval_set}.generations.jsonl").open()]
                assert all(isinstance(row["terminated"], bool) for row in rows)
                assert list(metrics["metrics"])[0] == "termination_rate"
    assert read_json(sweep / "pdl" / "seed-0" / "pdl_settings.json")["pdl_alpha"] == 1.0
    assert read_json(sweep / "sft" / "seed-0" / "pdl_settings.json")["pdl_alpha"] == 0.0

    # The report's full-set numbers are those of the runs' metrics files: same definitions as `pdl-trl eval`
    assert read_json(sweep / "report.json") == json.loads(json.dumps(report))
    assert report["seeds"] == list(SEEDS) and report["baseline"] == "sft"
    heldout, prompts = report["results"]["heldout"], report["results"]["prompts"]
    assert heldout["num_prompts"] == 20 and prompts["num_prompts"] == 4 and prompts["max_new_tokens"] == 3
    # Four distinct prompts cannot carry a verdict; twenty can
    assert heldout["no_verdict"] is None and "4 distinct prompt(s), fewer than 20" in prompts["no_verdict"]
    assert "prompts: no verdict (4 distinct prompt(s)" in report["verdicts"]["pdl"]
    assert report["missing_runs"] == [] and report["eval_datasets"]["heldout"]["label"].startswith("all rows of ")
    run_metrics = {
        (variant, seed): read_json(sweep / variant / f"seed-{seed}" / "run.json")["metrics"]
        for variant in VARIANTS
        for seed in SEEDS
    }
    for eval_set, result in report["results"].items():
        for variant in VARIANTS:
            for metric, mean in result["means"][variant].items():
                values = [run_metrics[variant, seed][eval_set][metric] for seed in SEEDS]
                if any(value is None for value in values):
                    assert mean is None
                else:
                    assert mean == pytest.approx(sum(values) / len(values), rel=1e-9, abs=1e-12), metric
        for metric, difference in result["differences"]["pdl"].items():
            seed_deltas = [
                run_metrics["pdl", seed][eval_set][metric] - run_metrics["sft", seed][eval_set][metric]
                for seed in SEEDS
            ]
            assert difference["seed_deltas"] == pytest.approx(seed_deltas, abs=1e-9)
            assert difference["delta"] == pytest.approx(sum(seed_deltas) / 2, abs=1e-9)
            assert difference["low"] <= difference["high"]
            assert difference["shown"] in (-1, 0, 1) and difference["seeds"] == list(SEEDS)
            assert difference["interval"] == (1 if difference["low"] > 0 else -1 if difference["high"] < 0 else 0)
            assert difference["shown"] in (0, difference["interval"])
    # Prompts without references: the reference-free metrics only
    assert "rouge_l" in heldout["means"]["sft"] and "reference_nll" in heldout["means"]["sft"]
    assert set(prompts["means"]["sft"]).isdisjoint({"rouge_l", "chrf", "rare_token_recall", "reference_nll"})
    assert report["verdicts"]["pdl"].startswith("**pdl** against sft: heldout: ")
    assert report["bootstrap"]["resamples"] == 100 and report["environment"]["versions"]["trl"] == version("trl")
    markdown = (sweep / "report.md").read_text()
    assert report["verdicts"]["pdl"] in markdown and "Side by side" in markdown and "seeds: [0, 1]" in markdown
    assert markdown.count("| reference |") == 2  # two prompts side by side for the set with references
    assert "[train]" not in markdown and "all rows of" in markdown
    # Each run's statistics: numbers only, with the fingerprints of what they were scored against
    statistics = np.load(sweep / "pdl" / "seed-0" / "eval" / "heldout.statistics.npz")
    header = json.loads(str(statistics["header"]))
    assert set(header["fingerprints"]) == {"eval_rows", "distinct_prompts", "counts", "tokenizer", "rare_mass"}
    assert all(statistics[name].dtype.kind in "iuf" for name in statistics.files if name != "header")
    assert (sweep / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not list(sweep.rglob(".*.tmp"))

    # Restart after one run's files are deleted (all but a stray file): only that run is redone, from scratch
    redone = sweep / "pdl" / "seed-1"
    generations_before = (redone / "eval" / "heldout.generations.jsonl").read_text()
    kept = {path: path.stat().st_mtime_ns for path in sweep.glob("*/seed-*/run.json") if path.parent != redone}
    assert len(kept) == 3
    for path in redone.rglob("*"):
        if path.is_file():
            path.unlink()
    (redone / "stray.txt").write_text("left by an interrupted run")
    capsys.readouterr()
    assert cli_main(["sweep", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert "pdl/seed-1: trained and evaluated" in out.err + out.out
    assert (out.err + out.out).count("finished earlier, kept") == 3
    assert (redone / "run.json").is_file() and not (redone / "stray.txt").exists()
    # Same seed, same initial adapter and data order: the redone run generates what it generated before
    assert (redone / "eval" / "heldout.generations.jsonl").read_text() == generations_before
    assert read_json(sweep / "report.json")["results"] == json.loads(json.dumps(report["results"]))

    # A restart with other settings would mix incomparable runs: refused, naming the run and the setting
    with pytest.raises(
        ValueError, match=r"sft/seed-0 .*finished with other settings \(training.max_steps: 2 there, 3"
    ):
        sweep_main(["--config", str(config), "--max_steps", "3"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"seeds": []}, r"`seeds` is empty"),
        ({"seeds": [0, 0]}, r"distinct integers"),
        ({"variants": {}}, r"`variants` is empty"),
        ({"eval_datasets": {}}, r"`eval_datasets` is empty"),
        ({"baseline": None}, r"Name the plain-SFT `baseline`"),
        ({"baseline": "base"}, r"`baseline: base` is no variant"),
        ({"baseline": "pdl"}, r"baseline 'pdl' is not plain SFT .*pdl_alpha: 0.0"),
        ({"variants": {"sft": {"pdl_alpha": 0.0}}}, r"only the baseline"),
        (
            {"variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_alpha": 1.0, "learning_rate": 0.1}}},
            r"Variant 'pdl' sets `learning_rate`: a variant may set only `pdl_\*` fields and `loss_type`.*top level",
        ),
        (
            {"variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_alpah": 1.0}}},
            r"`pdl_alpah`, which is no PDLSFTConfig field",
        ),
        ({"variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_mix": 2.0}}}, r"Variant 'pdl': `pdl_mix` must be in"),
        (
            {"variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_neutral_special_tokens": "yes"}}},
            r"`pdl_neutral_special_tokens` to 'yes': it takes bool",
        ),
        (
            {"variants": {"sft": {"pdl_alpha": 0.0}, "pdl": {"pdl_counts_path": "c.json"}}},
            r"sets `pdl_counts_path`.*top level",
        ),
        ({"variants": {"sft": {"pdl_alpha": 0.0}, "a/b": {}}}, r"variant name 'a/b' is used as a file name"),
        ({"variants": {"sft": {"pdl_alpha": 0.0}, "report.md": {}}}, r"'report.md' is a file the sweep writes"),
        ({"variants": {"sft": {"pdl_alpha": 0.0}, "dft": {"loss_type": "pdl"}}}, r"Variant 'dft': `loss_type` must"),
        (
            {"baseline": "dft", "variants": {"dft": {"pdl_alpha": 0.0, "loss_type": "dft"}, "sft": {}}},
            r"loss_type: nll",
        ),
        ({"seeds": 1}, r"`seeds` is a list of seeds, got 1: write `seeds: \[1\]`"),
        ({"runs": "sft:7"}, r"`runs` entry 'sft:7' is no run of this sweep"),
        ({"runs": "sft:0,sft:0"}, r"`runs` names a run twice"),
        ({"runs": "sft:0", "report_only": True}, r"`report_only` trains nothing"),
        ({"bootstrap_resample": 500}, r"Unknown keys in the config file: \['bootstrap_resample'\]"),
        ({"num_processes": 2}, r"Unknown keys in the config file: \['num_processes'\]"),
        ({"bootstrap_resamples": 10}, r"`bootstrap_resamples` must be >= 100"),
        ({"seed": 3}, r"sets `seed`; the sweep sets it for every run from `seeds`"),
        ({"dataset_name": "missing.jsonl"}, r"No file missing.jsonl"),
        ({"eval_datasets": {"heldout": {"path": "missing.jsonl"}}}, r"Eval set 'heldout': No file missing.jsonl"),
        (
            {"eval_datasets": {"heldout": {"path": "x.jsonl", "max_sample": 3}}},
            r"Eval set 'heldout' has unknown keys \['max_sample'\]",
        ),
        ({"eval_datasets": {"heldout": "x.jsonl"}}, r"Eval set 'heldout' must be a mapping with a `path`"),
        ({"eval_datasets": {"heldout": {"path": "x.jsonl", "max_new_tokens": 0}}}, r"`max_new_tokens` must be an"),
    ],
)
def test_bad_configs_are_refused_before_training(sweep_config, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        sweep_main(["--config", str(sweep_config(**overrides))])
    assert not (tmp_path / "sweep").exists()


def test_repeated_names_are_refused(sweep_config, tmp_path):
    path = sweep_config()
    text = path.read_text().replace("variants:\n", "variants:\n  sft:\n    pdl_alpha: 0.5\n", 1)
    path.write_text(text)
    with pytest.raises(ValueError, match=r"gives \['sft'\] twice"):
        sweep_main(["--config", str(path)])
    assert not (tmp_path / "sweep").exists()


def test_example_sweep_config_plans(tmp_path, monkeypatch):
    """The shipped sweep config parses and plans: SFT and alpha = 1 with and without neutral special tokens, two
    seeds, the bundled data (its paths are relative to the repository root)."""
    from pdl_trl.scripts.sweep import make_parser
    from pdl_trl.scripts.utils import parse_script_args
    from pdl_trl.sweep import check_config_file, plan_sweep

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    config = repo / "examples" / "sweeps" / "pydoc_qa.yaml"
    assert check_config_file(config).startswith("# pdl-trl sweep --config examples/sweeps/pydoc_qa.yaml")
    argv = ["--config", str(config), "--output_dir", str(tmp_path / "sweep")]
    sweep = plan_sweep(*parse_script_args(make_parser(), argv, launch_options=False))
    assert [run.name for run in sweep.runs] == [
        f"{variant}/seed-{seed}" for seed in (0, 1) for variant in ("sft", "pdl-1", "pdl-1-neutral")
    ]
    assert [(run.config.pdl_alpha, run.config.pdl_neutral_special_tokens) for run in sweep.runs[:3]] == [
        (0.0, False),
        (1.0, False),
        (1.0, True),
    ]
    assert [len(eval_set.rows) for eval_set in sweep.eval_sets] == [95]
    assert sweep.model_args.use_peft and sweep.runs[0].config.max_steps == 60


def test_bf16_sweep_evaluates_in_bf16(sweep_config, tmp_path):
    """A bf16 mixed-precision sweep generates with its merged model cast to bf16 and records it; the generations are
    those of the saved adapter loaded, merged in float32 and cast to bf16."""
    sweep_main(["--config", str(sweep_config(bf16=True, seeds=[0]))])
    run = tmp_path / "sweep" / "pdl" / "seed-0"
    metrics = read_json(run / "eval" / "heldout.metrics.json")
    assert metrics["settings"]["generation"]["dtype"] == "bfloat16"
    base = metrics["settings"]["model_name_or_path"]
    model = merge_lora_for_inference(load_model(base, str(run), "cpu", torch.float32)).to(torch.bfloat16)
    rows = [json.loads(line) for line in (run / "eval" / "heldout.generations.jsonl").open()]
    generations = generate_completions(
        model,
        AutoTokenizer.from_pretrained(base),
        [row["prompt"] for row in rows],
        max_new_tokens=4,
        batch_size=4,
        show_progress=False,
    )
    assert [g.text for g in generations] == [row["generation"] for row in rows]


def test_sweep_split_over_machines_pools_into_the_same_report(sweep_config, tmp_path):
    """Each "machine" runs its share (`--runs`) into its own folder; the runs' `run.json` and statistics files alone,
    gathered into one folder, give the report that one sweep of all runs gives."""
    whole = sweep_main(["--config", str(sweep_config(seeds=[0, 1]))])
    shares = {"a": "sft:0,pdl:0", "b": "pdl:1,sft:1"}
    for machine, runs in shares.items():
        sweep_main(["--config", str(sweep_config()), "--output_dir", str(tmp_path / machine), "--runs", runs])
    # Machine a's report, before b's runs are in: the seed it has, and the runs it misses named
    partial = read_json(tmp_path / "a" / "report.json")
    assert partial["missing_runs"] == ["sft/seed-1", "pdl/seed-1"]
    assert partial["results"]["heldout"]["differences"]["pdl"]["rouge_l"]["seeds"] == [0]

    gathered = tmp_path / "gathered"
    for machine in shares:
        for run_json in (tmp_path / machine).glob("*/seed-*/run.json"):
            target = gathered / run_json.parent.relative_to(tmp_path / machine)
            (target / "eval").mkdir(parents=True)
            (target / "run.json").write_bytes(run_json.read_bytes())
            for statistics in (run_json.parent / "eval").glob("*.statistics.npz"):
                (target / "eval" / statistics.name).write_bytes(statistics.read_bytes())
    pooled = sweep_main(["--config", str(sweep_config()), "--output_dir", str(gathered), "--report_only"])
    assert pooled["results"] == whole["results"] and pooled["verdicts"] == whole["verdicts"]
    # No generations were gathered: nothing to show side by side
    assert pooled["side_by_side"]["heldout"]["examples"] == []

    # A run scored against other counts (here: another rare-token mass) cannot be pooled with the others
    path = gathered / "pdl" / "seed-1" / "eval" / "heldout.statistics.npz"
    with np.load(path) as content:
        arrays = {name: content[name] for name in content.files}
    header = json.loads(str(arrays["header"]))
    header["fingerprints"]["rare_mass"] = 0.2
    arrays["header"] = np.array(json.dumps(header))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    with pytest.raises(ValueError, match=r"scored against different data or counts \(rare_mass: 0.1 in .*0.2 in "):
        sweep_main(["--config", str(sweep_config()), "--output_dir", str(gathered), "--report_only"])


def test_no_verdict_without_training_or_prompts_enough(sweep_config, tmp_path):
    """Zero training steps, or one prompt repeated: the report shows the numbers and draws no verdict."""
    repeated = write_jsonl(tmp_path / "repeated.jsonl", [make_rows(1, seed=3)[0]] * 24)
    report = sweep_main(
        ["--config", str(sweep_config(seeds=[0], max_steps=None, num_train_epochs=0))]
        + ["--eval_datasets", json.dumps({"repeated": {"path": repeated}})]
    )
    result = report["results"]["repeated"]
    assert result["num_prompts"] == 24 and result["distinct_prompts"] == 1
    assert "sft/seed-0, pdl/seed-0 trained 0 steps" in result["no_verdict"]
    assert report["verdicts"]["pdl"] == f"**pdl** against sft: repeated: no verdict ({result['no_verdict']})."


def test_a_second_sweep_on_the_same_folder_is_refused(sweep_config, tmp_path):
    import subprocess
    import sys

    from pdl_trl.locking import LOCK_FILE_NAME, output_dir_lock

    sweep = tmp_path / "sweep"
    with output_dir_lock(sweep, "another pdl-trl sweep"):
        with pytest.raises(RuntimeError, match=r"is in use by process \d+ on .*Wait for it to finish"):
            sweep_main(["--config", str(sweep_config())])
    assert not (sweep / LOCK_FILE_NAME).exists()
    # A lock left by a process that is gone is taken over, with a warning
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (sweep / LOCK_FILE_NAME).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="is gone"):
        with output_dir_lock(sweep, "pdl-trl sweep"):
            pass
