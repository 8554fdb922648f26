"""The `pdl-trl` command line: sft (in-process and through `accelerate launch`), count, inspect, help, examples.

Subprocesses cost seconds of imports each, so most commands run in-process through `pdl_trl.cli.main` or the
script modules; one QLoRA run goes through the real launcher, and the `distributed` tests use torchrun.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import make_rows

from pdl_trl import PDLSFTConfig, PDLSFTTrainer, TokenCounts
from pdl_trl.cli import main as cli_main
from pdl_trl.data_loading import load_dataset_splits
from pdl_trl.frequency import COUNTS_FILE_NAME
from pdl_trl.scripts import count as count_script
from pdl_trl.scripts import sft as sft_script
from pdl_trl.scripts.inspect_counts import weight_report
from pdl_trl.scripts.utils import config_launch_args, parse_script_args


REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# `trl sft`-style YAML for the tiny model on CPU: two optimizer steps, nothing else saved but the final model
CPU_YAML = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "activation_checkpointing": False,
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversational_rows(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in make_rows(n)
    ]


def write_yaml(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_jsonl(directory / "pc.jsonl", make_rows(32))
    write_jsonl(directory / "chat.jsonl", conversational_rows(32))
    write_jsonl(directory / "text.jsonl", [{"text": r["prompt"] + r["completion"]} for r in make_rows(16)])
    return directory


@pytest.fixture
def sft_yaml(tmp_path, tiny_model_dir, data_dir):
    """Factory: a training config file for the tiny model and a local jsonl, with `overrides`."""

    def factory(dataset="pc.jsonl", **overrides):
        values = {
            "model_name_or_path": str(tiny_model_dir),
            "dataset_name": str(data_dir / dataset),
            "output_dir": str(tmp_path / "run"),
            **CPU_YAML,
            "pdl_alpha": 0.5,
            **overrides,
        }
        return write_yaml(tmp_path / "sft.yaml", **values)

    return factory


def run_sft_in_process(argv: list[str]) -> None:
    """What `python -m pdl_trl.scripts.sft ARGS` runs, in this process."""
    sft_script.main(*parse_script_args(sft_script.make_parser(), argv))


# ---------------------------------------------------------------------------------------------------- help, parsing


@pytest.mark.parametrize("command", [[], ["sft"], ["count"], ["inspect"], ["eval"], ["compare"], ["sweep"]])
def test_help_exits_zero(command, capsys):
    # Help strings go through %-formatting: a stray `%` in any dataclass help would raise here
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "count", "inspect", "eval", "compare", "sweep"):
        assert command in out


def test_every_script_is_a_command_run_alike(tmp_path, capsys):
    """`cli.py` holds only the table: every module of `pdl_trl/scripts/` is a command, entered through `run(argv)`."""
    import importlib

    from pdl_trl.cli import COMMANDS

    scripts = {f"pdl_trl.scripts.{p.stem}" for p in (REPO / "pdl_trl/scripts").glob("*.py")} - {
        "pdl_trl.scripts.__init__",
        "pdl_trl.scripts.utils",
    }
    assert sorted(module for module, _ in COMMANDS.values()) == sorted(scripts)
    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(module).run)
    # The command's argv reaches its `run`, whose return value is the exit code
    metrics = tmp_path / "a.json"
    metrics.write_text(json.dumps({"format": "pdl-trl-eval", "version": 1, "metrics": {"distinct_1": 0.5}}))
    assert cli_main(["compare", str(metrics), "--labels", "A"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == ["| metric | A |", "|---|---:|", "| distinct_1 | 0.5000 |"]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    # --use_cpu: the examples set bf16, which TrainingArguments refuses on a machine without a GPU otherwise
    script_args, training_args, model_args, dataset_args = parse_script_args(
        sft_script.make_parser(), ["--config", str(path), "--use_cpu"]
    )
    assert model_args.model_name_or_path and (script_args.dataset_name or dataset_args.datasets)
    assert training_args.pdl_alpha >= 0
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and ("pdl-trl sft" in first_line or "-m pdl_trl.scripts.sft" in first_line)
    assert f"--config examples/{path.name}" in first_line
    # The same file drives `pdl-trl count`
    parse_script_args(count_script.make_parser(), ["--config", str(path), "--output", "counts.json"])


def test_sharded_qlora_example_stores_4bit_in_bf16():
    _, _, model_args, _ = parse_script_args(
        sft_script.make_parser(), ["--config", str(REPO / "examples/qlora_sharded.yaml"), "--use_cpu"]
    )
    assert model_args.load_in_4bit and model_args.bnb_4bit_quant_storage == model_args.dtype == "bfloat16"


@pytest.mark.parametrize("path", sorted((REPO / "examples/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # raises on a key accelerate does not know
    assert path.read_text().startswith("# accelerate launch") or path.read_text().startswith("# pdl-trl sft")
    if path.name == "fsdp_qlora.yaml":
        assert config.fsdp_config["fsdp_version"] == 1
        assert config.fsdp_config["fsdp_use_orig_params"] is False
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    if path.name == "multi_node.yaml":
        assert config.num_machines == 2 and config.main_process_ip and config.machine_rank == 0


def test_misspelled_config_key_is_refused(sft_yaml):
    path = sft_yaml(pdl_alpah=0.3)
    with pytest.raises(ValueError, match="pdl_alpah"):
        parse_script_args(sft_script.make_parser(), ["--config", str(path)])


def test_config_launch_keys_become_launch_args():
    config_remaining = ["--multi_gpu", "True", "--num_processes", "2", "--same_network", "False"]
    assert config_launch_args(config_remaining) == ["--multi_gpu", "--num_processes", "2"]
    with pytest.raises(ValueError, match="num_proceses"):
        config_launch_args(["--num_proceses", "2"])


def test_cli_overrides_config(sft_yaml):
    _, training_args, _, _ = parse_script_args(
        sft_script.make_parser(), ["--config", str(sft_yaml()), "--pdl_alpha", "0.7"]
    )
    assert training_args.pdl_alpha == 0.7


# ----------------------------------------------------------------------------------------------------- local data


def test_local_dataset_files(tmp_path, data_dir):
    from datasets import Dataset

    rows = make_rows(6)
    Dataset.from_list(rows).to_parquet(tmp_path / "d.parquet")
    Dataset.from_list(rows).to_csv(tmp_path / "d.csv", index=False)
    Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    for name in ("d.parquet", "d.csv", "saved"):
        dataset = load_dataset_splits(str(tmp_path / name))
        assert dataset["train"].column_names == ["prompt", "completion"] and len(dataset["train"]) == 6
    streamed = load_dataset_splits(str(data_dir / "pc.jsonl"), streaming=True)
    assert next(iter(streamed["train"])) == make_rows(1)[0]
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_dataset_splits(str(tmp_path / "d.xml"))


def test_split_selection_is_the_same_for_every_command(tmp_path, data_dir, sft_yaml, tiny_model_dir):
    """A single file is one split, `train`; a named split must exist; `eval` defaults to the only split, else test."""
    from datasets import Dataset, DatasetDict

    from pdl_trl.evaluation import load_eval_rows, load_eval_split

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", make_rows(4))
    write_jsonl(folder / "test.jsonl", make_rows(6)[4:])
    Dataset.from_list(make_rows(3)).save_to_disk(tmp_path / "saved_dataset")
    DatasetDict({"train": Dataset.from_list(make_rows(2)), "test": Dataset.from_list(make_rows(5)[2:])}).save_to_disk(
        tmp_path / "saved_dict"
    )
    # source: (splits, the split eval takes by default, its rows)
    expected = {
        data_dir / "pc.jsonl": (["train"], "train", make_rows(32)),
        folder: (["test", "train"], "test", make_rows(6)[4:]),
        tmp_path / "saved_dataset": (["train"], "train", make_rows(3)),
        tmp_path / "saved_dict": (["test", "train"], "test", make_rows(5)[2:]),
    }
    for source, (splits, default, rows) in expected.items():
        dataset = load_dataset_splits(str(source))
        assert sorted(dataset) == splits and load_eval_split(str(source))[0] == default
        assert load_eval_rows(str(source)) == rows
        assert load_eval_rows(str(source), "train", max_samples=2) == [dict(row) for row in dataset["train"]][:2]

    # An explicitly named split that is not there: every command says which splits there are and which option to change
    generate = ["eval", "--model_name_or_path", str(tiny_model_dir), "--dataset"]
    with pytest.raises(ValueError, match=r"no split 'test'; it has only `train`: a single file.*`--split`"):
        cli_main([*generate, str(data_dir / "pc.jsonl"), "--split", "test"])
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\].*`--split`"):
        cli_main([*generate, str(tmp_path / "saved_dict"), "--split", "validation"])
    with pytest.raises(ValueError, match=r"no split 'test'; it has only `train`.*`--dataset_test_split`"):
        run_sft_in_process(["--config", str(sft_yaml()), "--eval_strategy", "steps", "--eval_steps", "1"])
    with pytest.raises(ValueError, match=r"no split 'train_sft'; it has \['test', 'train'\].*`--dataset_train_split`"):
        cli_main(
            ["count", "--config", str(sft_yaml(str(folder))), "--dataset_train_split", "train_sft"]
            + ["--output", str(tmp_path / "c.json")]
        )
    with pytest.raises(FileNotFoundError, match="No file"):
        load_eval_rows(str(tmp_path / "missing.jsonl"))


# ------------------------------------------------------------------------------------------------------------ sft


def test_sft_saves_model_tokenizer_and_counts(sft_yaml, tmp_path):
    run_sft_in_process(["--config", str(sft_yaml())])
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and (run / "config.json").is_file()
    assert (run / "tokenizer.json").is_file()
    counts = TokenCounts.load(run / COUNTS_FILE_NAME)
    assert counts.num_tokens > 0


def test_sft_qlora_through_launcher(sft_yaml, tmp_path):
    # The console path: parse here, then `accelerate launch -m pdl_trl.scripts.sft` in a subprocess
    path = sft_yaml()
    argv = ["sft", "--config", str(path), "--load_in_4bit", "--use_peft", "--lora_target_modules", "all-linear"]
    assert cli_main([*argv, "--num_processes", "1"]) == 0
    run = tmp_path / "run"
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and (run / "adapter_model.safetensors").is_file()
    assert (run / "tokenizer.json").is_file()
    assert TokenCounts.load(run / COUNTS_FILE_NAME).num_tokens > 0


def test_sft_refuses_counts_of_another_tokenizer(sft_yaml, tmp_path, tiny_model_dir):
    other = TokenCounts(np.ones(424, dtype=np.int64), "other-org/other-tokenizer", "sha256:0", source="test")
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other-org/other-tokenizer"):
        run_sft_in_process(["--config", str(sft_yaml()), "--pdl_counts_path", str(tmp_path / "other.json")])


# ---------------------------------------------------------------------------------------------------------- count


@pytest.mark.parametrize(
    "dataset, settings",
    [
        ("pc.jsonl", {"max_length": 14}),  # truncation cuts completions and drops fully masked rows
        ("chat.jsonl", {"assistant_only_loss": True, "packing": True, "max_length": 64}),
    ],
    ids=["prompt_completion_truncated", "conversational_assistant_only_packed"],
)
def test_count_equals_trainer_table(dataset, settings, sft_yaml, tmp_path, tiny_model_dir, data_dir, cpu_config):
    from datasets import load_dataset

    output = tmp_path / "counts" / "c.json"
    assert cli_main(["count", "--config", str(sft_yaml(dataset, **settings)), "--output", str(output)]) == 0
    counted = TokenCounts.load(output)

    trainer = PDLSFTTrainer(
        model=str(tiny_model_dir),
        args=cpu_config(pdl_alpha=0.5, **settings),
        train_dataset=load_dataset("json", data_files=str(data_dir / dataset))["train"],
    )
    np.testing.assert_array_equal(counted.counts, trainer.pdl_counts.numpy())
    assert counted.tokenizer_fingerprint == trainer._pdl_fingerprint
    assert counted.vocab_size == trainer.model.get_output_embeddings().weight.shape[0]
    assert "completion tokens of" in counted.source and "max_length=" in counted.source
    # The run's counts can be fed back: the trainer accepts the file as its table
    trainer_from_file = PDLSFTTrainer(
        model=str(tiny_model_dir),
        args=cpu_config(pdl_alpha=0.5, pdl_counts_path=str(output), **settings),
        train_dataset=load_dataset("json", data_files=str(data_dir / dataset))["train"],
    )
    torch.testing.assert_close(trainer_from_file.pdl_weights, trainer.pdl_weights)


def test_count_streaming_equals_count(sft_yaml, tmp_path):
    path = sft_yaml()
    cli_main(["count", "--config", str(path), "--output", str(tmp_path / "a.json")])
    cli_main(["count", "--config", str(path), "--dataset_streaming", "--output", str(tmp_path / "b.json")])
    np.testing.assert_array_equal(
        TokenCounts.load(tmp_path / "a.json").counts, TokenCounts.load(tmp_path / "b.json").counts
    )


def test_count_plain_text_needs_flag(sft_yaml, tmp_path, tiny_tokenizer, data_dir):
    path = sft_yaml("text.jsonl")
    with pytest.raises(ValueError, match="pdl_allow_unmasked_text"):
        cli_main(["count", "--config", str(path), "--output", str(tmp_path / "t.json")])
    cli_main(["count", "--config", str(path), "--pdl_allow_unmasked_text", "--output", str(tmp_path / "t.json")])
    # Every token but each sequence's first is a target; SFTTrainer appends the EOS token to text
    rows = [json.loads(line)["text"] for line in (data_dir / "text.jsonl").read_text().splitlines()]
    expected = sum(len(tiny_tokenizer(text + tiny_tokenizer.eos_token)["input_ids"]) - 1 for text in rows)
    assert TokenCounts.load(tmp_path / "t.json").num_tokens == expected


def test_count_needs_output(sft_yaml):
    with pytest.raises(ValueError, match="--output"):
        cli_main(["count", "--config", str(sft_yaml())])


# -------------------------------------------------------------------------------------------------------- inspect


def test_weight_report_alpha_zero_is_uniform():
    counts = np.array([0, 50, 30, 10, 5, 3, 1, 1], dtype=np.int64)
    report = weight_report(counts, alpha=0.0, epsilon=1.0, batch_tokens=4096)
    assert report["ess"] == pytest.approx(4096)
    for rarest in report["rarest"]:
        assert rarest["weight_share"] == pytest.approx(rarest["token_share"])
    skewed = weight_report(counts, alpha=1.0, epsilon=1.0, batch_tokens=4096)
    assert skewed["ess"] < 4096
    assert skewed["rarest"][1]["weight_share"] > skewed["rarest"][1]["token_share"]


def test_inspect_prints_shares_and_writes_png(sft_yaml, tmp_path, capsys):
    counts_path = tmp_path / "c.json"
    cli_main(["count", "--config", str(sft_yaml()), "--output", str(counts_path)])
    capsys.readouterr()
    png = tmp_path / "w.png"
    assert cli_main(["inspect", str(counts_path), "--alpha", "0.5", "--epsilon", "1", "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "rarest 1% of seen types" in out and "rarest 10% of seen types" in out
    assert "Kish effective sample size of a 4096-token batch" in out
    assert "' The'" in out  # decoded with the tokenizer named in the counts file
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_weight_report_neutral_tokens_keep_their_plain_sft_share():
    counts = np.array([0, 50, 30, 10, 5, 3, 1, 1], dtype=np.int64)
    report = weight_report(counts, alpha=1.0, epsilon=1.0, batch_tokens=4096, neutral_ids=[1], mix=0.5)
    (row,) = report["neutral"]
    assert row["id"] == 1 and row["weight"] == 1.0
    assert row["weight_share"] == pytest.approx(row["token_share"]) == pytest.approx(50 / counts.sum())
    assert report["neutral_weight_share"] == pytest.approx(50 / counts.sum())
    assert report["weights"].min() >= 0.5 - 1e-6  # the mix keeps every weight above 1 - mix


def test_inspect_shows_the_neutral_tokens(sft_yaml, tmp_path, capsys):
    counts_path = tmp_path / "c.json"
    cli_main(["count", "--config", str(sft_yaml()), "--output", str(counts_path)])
    capsys.readouterr()
    # Special tokens are neutral by default, as in the trainer
    assert cli_main(["inspect", str(counts_path), "--alpha", "1", "--neutral_tokens", " The"]) == 0
    out = capsys.readouterr().out
    assert "neutral tokens weigh the mean (1); the 2 counted carry" in out
    assert "'<|im_end|>'" in out and "in plain SFT)" in out
    least = out.split("least weighted (most frequent)")[1]
    assert "'<|im_end|>'" not in least and "' The'" not in least

    assert cli_main(["inspect", str(counts_path), "--alpha", "1", "--no_neutral_special_tokens"]) == 0
    out = capsys.readouterr().out
    assert "neutral tokens" not in out
    assert "'<|im_end|>'" in out.split("least weighted (most frequent)")[1]  # the formula weighs it down


def test_inspect_and_demo_defaults_are_the_trainers():
    from pdl_trl.demo import parse_args as demo_args
    from pdl_trl.scripts.inspect_counts import make_parser as inspect_parser

    trainer_defaults = (PDLSFTConfig.pdl_alpha, PDLSFTConfig.pdl_neutral_special_tokens, PDLSFTConfig.pdl_mix)
    inspect = inspect_parser().parse_args(["counts.json"])
    for args in (inspect, demo_args([])):
        assert (args.alpha, args.neutral_special_tokens, args.mix) == trainer_defaults
    assert inspect.epsilon == PDLSFTConfig.pdl_epsilon
    assert inspect_parser().parse_args(["c.json", "--no_neutral_special_tokens"]).neutral_special_tokens is False
    assert demo_args(["--no-neutral-special-tokens"]).neutral_special_tokens is False


def test_sft_command_turns_neutral_special_tokens_off(tmp_path):
    argv = ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", str(tmp_path), "--use_cpu"]
    _, training_args, _, _ = parse_script_args(sft_script.make_parser(), argv)
    assert training_args.pdl_neutral_special_tokens is True  # the default, as PDLSFTConfig's
    paper_argv = argv + ["--pdl_alpha", "1.0", "--no_pdl_neutral_special_tokens"]
    _, paper, _, _ = parse_script_args(sft_script.make_parser(), paper_argv)
    assert paper.pdl_neutral_special_tokens is False and paper.pdl_alpha == 1.0


def test_inspect_without_the_tokenizer_names_the_fix(tmp_path, capsys):
    counts = TokenCounts(np.arange(424, dtype=np.int64), "missing-org/missing-tokenizer", "sha256:0", source="test")
    counts.save(tmp_path / "c.json")
    with pytest.raises(OSError, match="--tokenizer PATH.*--no_neutral_special_tokens"):
        cli_main(["inspect", str(tmp_path / "c.json")])
    # Without neutral tokens the weights need no tokenizer: ids only, with a note
    assert cli_main(["inspect", str(tmp_path / "c.json"), "--no_neutral_special_tokens"]) == 0
    assert "Showing token ids: cannot load the counts' tokenizer" in capsys.readouterr().out


def test_inspect_refuses_another_tokenizer(tmp_path, tiny_model_dir):
    other = TokenCounts(np.arange(424, dtype=np.int64), "other-org/other-tokenizer", "sha256:0", source="test")
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other-org/other-tokenizer"):
        cli_main(["inspect", str(tmp_path / "other.json"), "--tokenizer", str(tiny_model_dir)])


# ------------------------------------------------------------------------------------------------ several processes

RANK_TABLES_SCRIPT = textwrap.dedent(
    """
    # `python -m pdl_trl.scripts.sft`, but each rank also writes the PDL table it trained with
    import faulthandler
    import sys

    import numpy as np

    import pdl_trl
    from pdl_trl.scripts import sft
    from pdl_trl.scripts.utils import parse_script_args


    class RankTablesTrainer(pdl_trl.PDLSFTTrainer):
        def save_model(self, output_dir=None, _internal_call=False):
            rank = self.accelerator.process_index
            np.save(f"{self.args.output_dir}/counts_rank{rank}.npy", self.pdl_counts.numpy())
            np.save(f"{self.args.output_dir}/weights_rank{rank}.npy", self.pdl_weights.cpu().numpy())
            super().save_model(output_dir, _internal_call)


    pdl_trl.PDLSFTTrainer = RankTablesTrainer
    # A rank that hangs (seen rarely in the gloo teardown after the model was saved) prints where and exits,
    # instead of holding the test until its timeout; the run itself takes seconds
    faulthandler.dump_traceback_later(120, exit=True)
    sft.main(*parse_script_args(sft.make_parser(), sys.argv[1:]))
    """
)


def torchrun(args: list[str], cwd: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    # One retry: a rare deadlock inside torch's gloo teardown can hang a rank at exit after the run's work is done
    # (docs/distributed.md); a real failure fails both times
    for _ in range(2):
        result = subprocess.run(
            command, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=300
        )
        if result.returncode == 0:
            return
    assert result.returncode == 0, result.stderr.decode()[-4000:]


@pytest.mark.distributed
def test_sft_two_processes_share_one_table(sft_yaml, tmp_path):
    path = sft_yaml()
    cli_main(["count", "--config", str(path), "--output", str(tmp_path / "one_process.json")])
    (tmp_path / "rank_tables.py").write_text(RANK_TABLES_SCRIPT)
    torchrun([str(tmp_path / "rank_tables.py"), "--config", str(path)], cwd=tmp_path)

    run = tmp_path / "run"
    one_process = TokenCounts.load(tmp_path / "one_process.json").counts
    np.testing.assert_array_equal(np.load(run / "counts_rank0.npy"), np.load(run / "counts_rank1.npy"))
    np.testing.assert_array_equal(np.load(run / "weights_rank0.npy"), np.load(run / "weights_rank1.npy"))
    np.testing.assert_array_equal(np.load(run / "counts_rank0.npy"), one_process)
    np.testing.assert_array_equal(TokenCounts.load(run / COUNTS_FILE_NAME).counts, one_process)
    assert (run / "model.safetensors").is_file()


@pytest.mark.distributed
def test_count_two_processes_equals_one(sft_yaml, tmp_path):
    path = sft_yaml("chat.jsonl", assistant_only_loss=True)
    cli_main(["count", "--config", str(path), "--output", str(tmp_path / "one.json")])
    torchrun(["-m", "pdl_trl.scripts.count", "--config", str(path), "--output", str(tmp_path / "two.json")], tmp_path)
    np.testing.assert_array_equal(
        TokenCounts.load(tmp_path / "two.json").counts, TokenCounts.load(tmp_path / "one.json").counts
    )
