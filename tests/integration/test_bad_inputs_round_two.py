"""Nothing silent, round two: runs that would overwrite each other, crash recovery, settings changed too late, errors
in the user's own spelling with the right fix, and the command line's one clean error. Each case is an error naming the
fix, a documented warning, or correct behaviour (docs/errors.md)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, IterableDataset
from helpers.tiny import make_rows, prompt_completion_dataset

from pdl_trl import PDLSFTTrainer, TokenCounts, tokenizer_fingerprint
from pdl_trl.cli import main as cli_main
from pdl_trl.frequency import count_completion_tokens
from pdl_trl.locking import output_dir_lock


REPO = Path(__file__).resolve().parents[2]


def trainer_for(model_dir, cpu_config, train_dataset=None, **overrides):
    return PDLSFTTrainer(
        str(model_dir),
        args=cpu_config(**overrides),
        train_dataset=prompt_completion_dataset(8) if train_dataset is None else train_dataset,
    )


def checkpoints(model_dir, cpu_config, output_dir, steps=2, **overrides):
    trainer_for(
        model_dir, cpu_config, max_steps=steps, save_strategy="steps", save_steps=1, output_dir=output_dir, **overrides
    ).train()
    return Path(output_dir)


# ------------------------------------------------------------------------------------- runs that overwrite each other


def test_a_second_run_into_an_output_dir_in_use_is_refused(tiny_model_dir, cpu_config):
    trainer = trainer_for(tiny_model_dir, cpu_config, max_steps=1)
    with output_dir_lock(trainer.args.output_dir, "another run"):
        with pytest.raises(RuntimeError, match=r"is in use by process \d+ .*would mix its files"):
            trainer.train()
    # Free again once that run ended; the lock is gone after this one too
    trainer.train()
    assert not (Path(trainer.args.output_dir) / ".pdl-trl.lock").exists()


def test_a_fresh_run_beside_another_runs_checkpoints(tiny_model_dir, cpu_config, tmp_path):
    output_dir = checkpoints(tiny_model_dir, cpu_config, tmp_path / "run", pdl_alpha=1.0)
    with pytest.raises(
        ValueError, match=r"holds checkpoints of an earlier run \(checkpoint-1, checkpoint-2\) with other"
    ):
        trainer_for(tiny_model_dir, cpu_config, output_dir=output_dir, max_steps=1).train()
    with pytest.warns(UserWarning, match="same PDL settings .* pass `resume_from_checkpoint=True`"):
        trainer_for(tiny_model_dir, cpu_config, output_dir=output_dir, max_steps=1, pdl_alpha=1.0).train()


# ----------------------------------------------------------------------------------------------------- crash recovery


def test_a_checkpoint_written_halfway_is_named_and_skipped(tiny_model_dir, cpu_config, tmp_path):
    output_dir = checkpoints(tiny_model_dir, cpu_config, tmp_path / "run")
    # A kill while checkpoint-2 was written: the model is there, Trainer's state (written last) is not
    (output_dir / "checkpoint-2" / "trainer_state.json").unlink()
    (output_dir / "checkpoint-2" / "pdl_counts.json").unlink()
    resumed = trainer_for(tiny_model_dir, cpu_config, output_dir=output_dir, max_steps=3)
    with pytest.raises(
        ValueError, match=r"checkpoint-2 is incomplete .*the run stopped while writing it.*checkpoint-1"
    ):
        resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-2"))
    with pytest.warns(UserWarning, match=r"Skipping checkpoint-2 .*Resuming from checkpoint-1"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3


def test_resume_true_on_the_command_line_takes_the_last_checkpoint(sft_yaml, tmp_path, capsys):
    from pdl_trl.scripts import sft as sft_script
    from pdl_trl.scripts.utils import parse_script_args

    path = sft_yaml(save_strategy="steps", save_steps=1)
    sft_script.main(*parse_script_args(sft_script.make_parser(), ["--config", str(path)]))
    first = {path: path.stat().st_mtime_ns for path in (tmp_path / "run").glob("checkpoint-*/*")}
    argv = ["--config", str(path), "--max_steps", "3", "--resume_from_checkpoint", "true"]
    sft_script.main(*parse_script_args(sft_script.make_parser(), argv))
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # Resumed, not restarted: the first run's checkpoints were not written again
    assert {path: path.stat().st_mtime_ns for path in first} == first


def test_the_incomplete_checkpoint_advice_is_spelled_as_a_flag_on_the_command_line(
    tiny_model_dir, cpu_config, tmp_path
):
    from pdl_trl.spelling import COMMAND_LINE, options_written_in

    output_dir = checkpoints(tiny_model_dir, cpu_config, tmp_path / "run", steps=1)
    (output_dir / "checkpoint-1" / "trainer_state.json").unlink()
    trainer = trainer_for(tiny_model_dir, cpu_config, output_dir=output_dir, max_steps=2)
    with options_written_in(COMMAND_LINE), pytest.raises(ValueError, match="`--resume_from_checkpoint` skips"):
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-1"))


# ------------------------------------------------------------------------------------- settings changed too late


def test_settings_changed_after_construction_are_refused(tiny_model_dir, cpu_config):
    trainer = trainer_for(tiny_model_dir, cpu_config, max_steps=1)
    trainer.args.pdl_alpha = 1.0
    with pytest.raises(ValueError, match="changed after the trainer was built.*Build a new PDLSFTTrainer"):
        trainer.train()


# ------------------------------------------------------------------------------------------------ data it cannot use


def test_prompts_without_completions_are_refused(tiny_model_dir, cpu_config):
    prompts_only = Dataset.from_list([{"prompt": row["prompt"]} for row in make_rows(8)])
    with pytest.raises(ValueError, match="has a `prompt` column but no `completion` column"):
        trainer_for(tiny_model_dir, cpu_config, train_dataset=prompts_only)


def test_an_empty_stream_is_refused(tiny_model_dir, cpu_config):
    empty = IterableDataset.from_generator(lambda: iter(()), features=prompt_completion_dataset(1).features)
    with pytest.raises(ValueError, match=r"`train_dataset` \(a stream\) has no rows"):
        trainer_for(tiny_model_dir, cpu_config, train_dataset=empty, max_steps=1)


def test_a_negative_label_is_named_as_such():
    dataset = Dataset.from_dict({"labels": [[-100, 4, -5, 6]], "input_ids": [[1, 4, 5, 6]]})
    with pytest.raises(ValueError, match="Label -5 is no token id: the only negative label is -100"):
        count_completion_tokens(dataset, 10)


def test_a_prompt_longer_than_max_length_gets_a_fix_that_trl_supports(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="Raise `max_length`, or shorten the prompts") as error:
        trainer_for(tiny_model_dir, cpu_config, max_length=3)
    assert "keep_end" not in str(error.value)


# ------------------------------------------------------------------------------------- the fix for where it came from


def test_eval_with_another_tokenizers_counts_names_the_runs_counts(tiny_model_dir, tiny_tokenizer, tmp_path):
    TokenCounts(np.ones(len(tiny_tokenizer) + 24, dtype=np.int64), "other", "sha256:0", "x").save(tmp_path / "o.json")
    generations = tmp_path / "gens.jsonl"
    generations.write_text(json.dumps({"prompt": "p", "generation": "The cat"}) + "\n")
    argv = ["eval", "--tokenizer", str(tiny_model_dir), "--generations", str(generations)]
    with pytest.raises(ValueError, match="Pass the counts file of the run being evaluated") as error:
        cli_main([*argv, "--pdl_counts_path", str(tmp_path / "o.json")])
    assert "drop" not in str(error.value)


def test_resuming_with_a_tokenizer_that_gained_tokens_names_the_checkpoints(tiny_model_dir, cpu_config, tmp_path):
    output_dir = checkpoints(tiny_model_dir, cpu_config, tmp_path / "run", steps=1)
    counts_path = output_dir / "checkpoint-1" / "pdl_counts.json"
    counts = TokenCounts.load(counts_path)
    TokenCounts(counts.counts, counts.tokenizer, "sha256:another", counts.source).save(counts_path)
    with pytest.raises(ValueError, match="was trained with that tokenizer: resume with it") as error:
        trainer_for(tiny_model_dir, cpu_config, output_dir=output_dir, max_steps=2).train(
            resume_from_checkpoint=str(output_dir / "checkpoint-1")
        )
    assert "pdl_counts_path" not in str(error.value)


def test_the_text_only_hint_is_spelled_as_a_flag_on_the_command_line(sft_yaml, tmp_path):
    with pytest.raises(ValueError, match="set `--pdl_allow_unmasked_text` if that is intended"):
        cli_main(["count", "--config", str(sft_yaml("text.jsonl")), "--counts_output", str(tmp_path / "t.json")])


def test_compare_says_when_frequency_metrics_were_measured_with_other_counts(tmp_path, capsys):
    def metrics_file(name, counts, rare_mass):
        content = {
            "format": "pdl-trl-eval",
            "version": 1,
            "metrics": {"distinct_1": 0.5, "rare_token_rate": 0.1},
            "details": {"rare_mass": rare_mass},
            "settings": {"counts_fingerprint": counts},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
        return str(tmp_path / f"{name}.json")

    same = [metrics_file("a", "sha256:1", 0.1), metrics_file("b", "sha256:1", 0.1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cli_main(["compare", *same])
    assert "Not comparable" not in capsys.readouterr().out
    other = [same[0], metrics_file("c", "sha256:2", 0.1), metrics_file("d", "sha256:1", 0.2)]
    with pytest.warns(UserWarning, match="were measured with different counts files or rare-token masses"):
        cli_main(["compare", *other])
    assert "Not comparable across columns" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [(b'{"format": "pdl-trl-eval", "metr', "is not readable JSON"), (b"\xff\xfe", "is not readable JSON")],
)
def test_damaged_metrics_files_are_named(tmp_path, content, message):
    (tmp_path / "m.json").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        cli_main(["compare", str(tmp_path / "m.json")])


def test_a_generations_file_that_is_not_utf8_is_named(tiny_model_dir, tmp_path):
    (tmp_path / "g.jsonl").write_bytes(b'{"generation": "\xff"}\n')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        cli_main(["eval", "--tokenizer", str(tiny_model_dir), "--generations", str(tmp_path / "g.jsonl")])


@pytest.mark.parametrize("option", ["--batch_size", "--max_new_tokens", "--max_samples"])
def test_eval_counts_below_one_are_refused_before_anything_loads(tmp_path, option, capsys):
    with pytest.raises(SystemExit):
        cli_main(["eval", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", option, "0"])
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err


def test_eval_output_that_is_a_folder_is_refused_before_generating(tmp_path):
    with pytest.raises(ValueError, match="`--metrics_output` .* is a folder: give the path of the file to write"):
        cli_main(["eval", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--metrics_output", str(tmp_path)])


# ------------------------------------------------------------------------------------------- one clean error, not 70


def test_the_console_script_prints_one_line_that_names_the_fix(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pdl_trl.cli", "sft", "--model_name_or_path", "m", "--dataset_name", "d.jsonl"]
    result = subprocess.run([*command, "--use_cpu", "--pdl_alpha", "-1"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "pdl-trl: error: `--pdl_alpha` must be a finite number >= 0, got -1.0. Use `--pdl_alpha 0.0` for plain SFT."
    )
    assert "Traceback" not in result.stderr and "gemm_4bit" not in result.stderr
    misspelled = subprocess.run([*command, "--use_cpu", "--pdl_alpah", "1"], capture_output=True, text=True, env=env)
    assert misspelled.returncode == 1 and "Did you mean: --pdl_alpah -> --pdl_alpha?" in misspelled.stderr
    assert "Traceback" not in misspelled.stderr


def test_a_misspelled_option_of_an_argparse_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        cli_main(["inspect", "--pdl_counts_path", "c.json", "--pdl_alhpa", "1"])
    assert "Did you mean: --pdl_alhpa -> --pdl_alpha?" in capsys.readouterr().err


def test_counts_files_record_the_tokenizer_they_fingerprint(tiny_tokenizer):
    # The fingerprint every fix above relies on changes with the vocabulary
    counts = TokenCounts(np.ones(4, dtype=np.int64), "t", tokenizer_fingerprint(tiny_tokenizer), "x")
    other = TokenCounts(np.ones(4, dtype=np.int64), "t", "sha256:0", "x")
    assert counts.fingerprint != other.fingerprint and counts.fingerprint.startswith("sha256:")
