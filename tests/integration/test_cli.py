"""The `pdl-trl` command line: sft (in-process and through `accelerate launch`), count, inspect, help, examples.

Subprocesses cost seconds of imports each, so most commands run in-process through `pdl_trl.cli.main` or the
script modules; one QLoRA run goes through the real launcher, and the `distributed` tests use torchrun.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.files import write_jsonl
from helpers.tiny import make_rows
from helpers.trainers import table_counts

from pdl_trl import PDLSFTConfig, PDLSFTTrainer, TokenCounts, tokenizer_fingerprint
from pdl_trl.cli import main as cli_main
from pdl_trl.data_loading import load_dataset_splits
from pdl_trl.frequency import COUNTS_FILE_NAME
from pdl_trl.scripts import count as count_script
from pdl_trl.scripts import sft as sft_script
from pdl_trl.scripts.utils import config_launch_args, parse_script_args


REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    parse_script_args(count_script.make_parser(), ["--config", str(path), "--counts_output", "counts.json"])


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
    generate = ["eval", "--model_name_or_path", str(tiny_model_dir), "--dataset_name"]
    with pytest.raises(
        ValueError, match=r"no split 'test'; it has only `train`: a single file.*`--dataset_test_split`"
    ):
        cli_main([*generate, str(data_dir / "pc.jsonl"), "--dataset_test_split", "test"])
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\].*`--dataset_test_split`"):
        cli_main([*generate, str(tmp_path / "saved_dict"), "--dataset_test_split", "validation"])
    with pytest.raises(ValueError, match=r"no split 'test'; it has only `train`.*`--dataset_test_split`"):
        run_sft_in_process(["--config", str(sft_yaml()), "--eval_strategy", "steps", "--eval_steps", "1"])
    with pytest.raises(ValueError, match=r"no split 'train_sft'; it has \['test', 'train'\].*`--dataset_train_split`"):
        cli_main(
            ["count", "--config", str(sft_yaml(str(folder))), "--dataset_train_split", "train_sft"]
            + ["--counts_output", str(tmp_path / "c.json")]
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
    assert cli_main(["count", "--config", str(sft_yaml(dataset, **settings)), "--counts_output", str(output)]) == 0
    counted = TokenCounts.load(output)

    trainer = PDLSFTTrainer(
        model=str(tiny_model_dir),
        args=cpu_config(pdl_alpha=0.5, **settings),
        train_dataset=load_dataset("json", data_files=str(data_dir / dataset))["train"],
    )
    np.testing.assert_array_equal(counted.counts, table_counts(trainer).numpy())
    assert counted.tokenizer_fingerprint == tokenizer_fingerprint(trainer.processing_class)
    assert counted.vocab_size == trainer.model.get_output_embeddings().weight.shape[0]
    assert "completion tokens of" in counted.source and "max_length=" in counted.source
    # The run's counts can be fed back: the trainer accepts the file as its table
    trainer_from_file = PDLSFTTrainer(
        model=str(tiny_model_dir),
        args=cpu_config(pdl_alpha=0.5, pdl_counts_path=str(output), **settings),
        train_dataset=load_dataset("json", data_files=str(data_dir / dataset))["train"],
    )
    torch.testing.assert_close(trainer_from_file.pdl_table.weights, trainer.pdl_table.weights)


def test_count_streaming_equals_count(sft_yaml, tmp_path):
    path = sft_yaml()
    cli_main(["count", "--config", str(path), "--counts_output", str(tmp_path / "a.json")])
    cli_main(["count", "--config", str(path), "--dataset_streaming", "--counts_output", str(tmp_path / "b.json")])
    np.testing.assert_array_equal(
        TokenCounts.load(tmp_path / "a.json").counts, TokenCounts.load(tmp_path / "b.json").counts
    )


def test_count_plain_text_needs_flag(sft_yaml, tmp_path, tiny_tokenizer, data_dir):
    path = sft_yaml("text.jsonl")
    with pytest.raises(ValueError, match="pdl_allow_unmasked_text"):
        cli_main(["count", "--config", str(path), "--counts_output", str(tmp_path / "t.json")])
    cli_main(
        ["count", "--config", str(path), "--pdl_allow_unmasked_text", "--counts_output", str(tmp_path / "t.json")]
    )
    # Every token but each sequence's first is a target; SFTTrainer appends the EOS token to text
    rows = [json.loads(line)["text"] for line in (data_dir / "text.jsonl").read_text().splitlines()]
    expected = sum(len(tiny_tokenizer(text + tiny_tokenizer.eos_token)["input_ids"]) - 1 for text in rows)
    assert TokenCounts.load(tmp_path / "t.json").num_tokens == expected


def test_count_needs_output(sft_yaml):
    with pytest.raises(ValueError, match="--counts_output"):
        cli_main(["count", "--config", str(sft_yaml())])


# -------------------------------------------------------------------------------------------------------- inspect


def test_inspect_prints_shares_and_writes_png(sft_yaml, tmp_path, capsys):
    counts_path = tmp_path / "c.json"
    cli_main(["count", "--config", str(sft_yaml()), "--counts_output", str(counts_path)])
    capsys.readouterr()
    png = tmp_path / "w.png"
    inspect = ["inspect", "--pdl_counts_path", str(counts_path), "--pdl_alpha", "0.5", "--pdl_epsilon", "1"]
    assert cli_main([*inspect, "--plot_output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "rarest 1% of seen types" in out and "rarest 10% of seen types" in out
    assert "Kish effective sample size of a 4096-token batch" in out
    assert "' The'" in out  # decoded with the tokenizer named in the counts file
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_inspect_shows_the_neutral_tokens(sft_yaml, tmp_path, capsys):
    counts_path = tmp_path / "c.json"
    cli_main(["count", "--config", str(sft_yaml()), "--counts_output", str(counts_path)])
    capsys.readouterr()
    # Special tokens are neutral by default, as in the trainer
    inspect = ["inspect", "--pdl_counts_path", str(counts_path), "--pdl_alpha", "1"]
    assert cli_main([*inspect, "--pdl_neutral_tokens", " The"]) == 0
    out = capsys.readouterr().out
    assert "neutral tokens weigh the mean (1); the 2 counted carry" in out
    assert "'<|im_end|>'" in out and "in plain SFT)" in out
    least = out.split("least weighted (most frequent)")[1]
    assert "'<|im_end|>'" not in least and "' The'" not in least

    assert cli_main([*inspect, "--no_pdl_neutral_special_tokens"]) == 0
    out = capsys.readouterr().out
    assert "neutral tokens" not in out
    assert "'<|im_end|>'" in out.split("least weighted (most frequent)")[1]  # the formula weighs it down


def test_inspect_and_demo_defaults_are_the_trainers():
    from pdl_trl.demo import parse_args as demo_args
    from pdl_trl.scripts.inspect_counts import make_parser as inspect_parser

    trainer_defaults = (PDLSFTConfig.pdl_alpha, PDLSFTConfig.pdl_neutral_special_tokens, PDLSFTConfig.pdl_mix)
    inspect = inspect_parser().parse_args(["--pdl_counts_path", "counts.json"])
    for args in (inspect, demo_args([])):
        assert (args.pdl_alpha, args.pdl_neutral_special_tokens, args.pdl_mix) == trainer_defaults
        assert args.pdl_epsilon == PDLSFTConfig.pdl_epsilon
    paper = ["--pdl_counts_path", "c.json", "--no_pdl_neutral_special_tokens"]
    assert inspect_parser().parse_args(paper).pdl_neutral_special_tokens is False
    assert demo_args(["--no_pdl_neutral_special_tokens"]).pdl_neutral_special_tokens is False


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
    with pytest.raises(OSError, match="--tokenizer PATH.*--no_pdl_neutral_special_tokens"):
        cli_main(["inspect", "--pdl_counts_path", str(tmp_path / "c.json")])
    # Without neutral tokens the weights need no tokenizer: ids only, with a note
    assert cli_main(["inspect", "--pdl_counts_path", str(tmp_path / "c.json"), "--no_pdl_neutral_special_tokens"]) == 0
    assert "Showing token ids: cannot load the counts' tokenizer" in capsys.readouterr().out


def test_inspect_refuses_another_tokenizer(tmp_path, tiny_model_dir):
    other = TokenCounts(np.arange(424, dtype=np.int64), "other-org/other-tokenizer", "sha256:0", source="test")
    other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other-org/other-tokenizer"):
        cli_main(["inspect", "--pdl_counts_path", str(tmp_path / "other.json"), "--tokenizer", str(tiny_model_dir)])


# ------------------------------------------------------------------------------------------------ renamed options


def test_old_spellings_work_for_this_release_with_a_warning_naming_the_new(sft_yaml, tmp_path, capsys):
    from pdl_trl.demo import parse_args as demo_args
    from pdl_trl.scripts.eval import parse_args as eval_args

    counts = tmp_path / "c.json"
    with pytest.warns(FutureWarning, match="`--output` of `pdl-trl count` is deprecated.*`--counts_output`"):
        cli_main(["count", "--config", str(sft_yaml()), "--output", str(counts)])
    assert TokenCounts.load(counts).num_tokens > 0

    png = tmp_path / "w.png"
    with pytest.warns(FutureWarning) as caught:
        old = [str(counts), "--alpha", "1", "--epsilon", "2", "--mix", "0.5", "--no_neutral_special_tokens"]
        report = cli_main(["inspect", *old, "--neutral_tokens", " The", "--output", str(png)])
    assert report == 0 and png.is_file()
    messages = " ".join(str(w.message) for w in caught)
    for old_name, new_name in [
        ("--alpha", "--pdl_alpha"),
        ("--epsilon", "--pdl_epsilon"),
        ("--mix", "--pdl_mix"),
        ("--no_neutral_special_tokens", "--no_pdl_neutral_special_tokens"),
        ("--neutral_tokens", "--pdl_neutral_tokens"),
        ("--output", "--plot_output"),
    ]:
        assert f"`{old_name}` is deprecated and will be removed in the next release: use `{new_name}`" in messages
    assert "positional counts file" in messages
    out = capsys.readouterr().out
    assert "alpha=1 epsilon=2 mix=0.5" in out and "1 neutral tokens weigh the mean" in out

    with pytest.warns(FutureWarning, match="`--dataset` is deprecated"):
        args = eval_args(["--model_name_or_path", "m", "--dataset", "d.jsonl", "--counts", "c", "--split", "x"])
    assert (args.dataset_name, args.pdl_counts_path, args.dataset_test_split) == ("d.jsonl", "c", "x")
    with pytest.warns(FutureWarning, match="`--no-neutral-special-tokens` is deprecated"):
        args = demo_args(["--alpha", "0.5", "--no-neutral-special-tokens", "--steps", "3", "--output-dir", "o"])
    assert (args.pdl_alpha, args.pdl_neutral_special_tokens, args.max_steps, str(args.output_dir)) == (
        0.5,
        False,
        3,
        "o",
    )


def test_neutral_special_tokens_flag_takes_a_value_and_settings_are_checked_as_flags(tmp_path):
    from pdl_trl.scripts.inspect_counts import make_parser as inspect_parser

    parser = inspect_parser()
    assert (
        parser.parse_args(
            ["--pdl_counts_path", "c", "--pdl_neutral_special_tokens", "false"]
        ).pdl_neutral_special_tokens
        is False
    )
    assert (
        parser.parse_args(["--pdl_counts_path", "c", "--pdl_neutral_special_tokens"]).pdl_neutral_special_tokens
        is True
    )
    TokenCounts(np.arange(8, dtype=np.int64), "t", "sha256:0", source="test").save(tmp_path / "c.json")
    with pytest.raises(ValueError, match="`--pdl_alpha` must be a finite number >= 0"):
        cli_main(["inspect", "--pdl_counts_path", str(tmp_path / "c.json"), "--pdl_alpha", "-1"])
