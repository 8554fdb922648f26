"""Bad, unusual and hostile inputs, as a new user would try them: each gets a clear error naming the fix (before any
expensive step where possible), a documented warning, or correct behaviour — never a silent change of what is
trained. docs/errors.md lists the messages.

Each case is one row of a table below; the trainer cases use the tiny model of `tests/tiny.py`.
"""

import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers.tiny import make_rows, prompt_completion_dataset
from helpers.trainers import table_counts

from pdl_trl import PDLSFTConfig, PDLSFTTrainer, TokenCounts, tokenizer_fingerprint
from pdl_trl.frequency import COUNTS_FILE_NAME


def counts_file(path, tokenizer, counts) -> str:
    TokenCounts(np.asarray(counts, dtype=np.int64), "tiny", tokenizer_fingerprint(tokenizer), "test").save(path)
    return str(path)


def make_trainer(model_dir, cpu_config, train_dataset=None, **overrides):
    eval_dataset = overrides.pop("eval_dataset", None)
    return PDLSFTTrainer(
        str(model_dir),
        args=cpu_config(**overrides),
        train_dataset=prompt_completion_dataset(8) if train_dataset is None else train_dataset,
        eval_dataset=eval_dataset,
    )


# --------------------------------------------------------------------------------------------------- config values

CONFIG_CASES = [
    ({"pdl_alpha": float("nan")}, "`pdl_alpha` must be a finite number >= 0"),
    ({"pdl_alpha": -1.0}, "`pdl_alpha` must be a finite number >= 0"),
    ({"pdl_alpha": float("inf")}, "`pdl_alpha` must be a finite number >= 0"),
    ({"pdl_alpha": "0.5"}, "`pdl_alpha` must be a number, got '0.5'"),
    ({"pdl_alpha": True}, "`pdl_alpha` must be a number"),
    ({"pdl_epsilon": 0.0}, "`pdl_epsilon` must be a finite number > 0"),
    ({"pdl_epsilon": float("nan")}, "`pdl_epsilon` must be a finite number > 0"),
    ({"pdl_epsilon": float("inf")}, "`pdl_epsilon` must be a finite number > 0"),
    ({"pdl_mix": 1.5}, "`pdl_mix` must be in \\[0, 1\\]"),
    ({"pdl_mix": -0.1}, "`pdl_mix` must be in \\[0, 1\\]"),
    ({"pdl_mix": float("nan")}, "`pdl_mix` must be in \\[0, 1\\]"),
    ({"pdl_neutral_tokens": [1.5]}, "takes token strings or integer ids"),
    ({"pdl_neutral_tokens": [True]}, "takes token strings or integer ids"),
    ({"pdl_neutral_tokens": "<|im_end|>"}, "is a list of tokens"),
    ({"loss_type": "pdl"}, "`loss_type` must be 'nll' \\(PDL\\) or 'dft'"),
    ({"label_smoothing_factor": 0.1}, "Set `label_smoothing_factor=0.0`"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_bad_config_value_is_refused(cpu_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        cpu_config(**overrides)


def test_deprecated_chunked_nll_is_plain_nll(cpu_config):
    with pytest.warns(FutureWarning, match="chunked_nll"):
        args = cpu_config(loss_type="chunked_nll")
    assert args.loss_type == "nll"


# -------------------------------------------------------------------------------------------------- dataset shapes


def rows_with(**changes) -> Dataset:
    rows = make_rows(8)
    rows[3] = {**rows[3], **changes}
    return Dataset.from_list(rows)


DATASET_CASES = [
    ("empty", lambda: Dataset.from_list([]).add_column("prompt", []).add_column("completion", []), "is empty"),
    ("prompt None", lambda: rows_with(prompt=None), "row\\(s\\) whose `prompt` is None"),
    ("completion None", lambda: rows_with(completion=None), "row\\(s\\) whose `completion` is None"),
    ("text None", lambda: Dataset.from_list([{"text": "a b"}, {"text": None}]), "whose `text` is None"),
    (
        "images",
        lambda: Dataset.from_list([{**r, "images": []} for r in make_rows(4)]),
        "PDL does not support vision-language training",
    ),
    (
        "plain text",
        lambda: Dataset.from_list([{"text": r["prompt"] + r["completion"]} for r in make_rows(8)]),
        "pdl_allow_unmasked_text=True",
    ),
    (
        "messages without assistant_only_loss",
        lambda: Dataset.from_list(
            [
                {
                    "messages": [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["completion"]},
                    ]
                }
                for r in make_rows(8)
            ]
        ),
        "assistant_only_loss=True",
    ),
]


@pytest.mark.parametrize(("dataset", "message"), [c[1:] for c in DATASET_CASES], ids=[c[0] for c in DATASET_CASES])
def test_bad_train_dataset_is_refused(tiny_model_dir, cpu_config, dataset, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny_model_dir, cpu_config, train_dataset=dataset())


def test_bad_dataset_is_refused_before_the_model_is_loaded(cpu_config, tmp_path):
    # The model path does not exist: the dataset error must come first, before any loading or preparation
    with pytest.raises(ValueError, match="whose `prompt` is None"):
        make_trainer(tmp_path / "no-model", cpu_config, train_dataset=rows_with(prompt=None))


def test_no_train_dataset_and_no_counts_is_refused(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="pass one, or pass `pdl_counts_path`"):
        PDLSFTTrainer(str(tiny_model_dir), args=cpu_config())


@pytest.mark.parametrize("eval_dataset", ["empty", "dict with an empty one"])
def test_empty_eval_dataset_is_refused(tiny_model_dir, cpu_config, eval_dataset):
    empty = prompt_completion_dataset(4).select([])
    value = empty if eval_dataset == "empty" else {"good": prompt_completion_dataset(4), "bad": empty}
    with pytest.raises(ValueError, match="eval_dataset(\\['bad'\\])?` is empty"):
        make_trainer(tiny_model_dir, cpu_config, eval_dataset=value)


def test_truncation_that_leaves_no_completion_names_max_length(tiny_model_dir, cpu_config):
    long_prompts = Dataset.from_list([{"prompt": "What is " + "one plus " * 20 + "one?", "completion": " Two."}] * 4)
    with pytest.raises(ValueError, match="No training example has a completion token left.*Raise `max_length`"):
        make_trainer(tiny_model_dir, cpu_config, train_dataset=long_prompts, max_length=8)


def test_keep_end_truncation_that_leaves_only_completion_tokens_trains(tiny_model_dir, cpu_config):
    rows = Dataset.from_list([{"prompt": "Describe it.", "completion": " The cat is red and small" * 4 + "."}] * 4)
    with pytest.warns(FutureWarning, match="keep_end"):
        args = cpu_config(max_length=8, truncation_mode="keep_end", max_steps=1)
    trainer = PDLSFTTrainer(str(tiny_model_dir), args=args, train_dataset=rows)
    # Every kept label is a completion token: not "plain language-model text"
    assert all(-100 not in labels for labels in trainer.train_dataset["labels"])
    trainer.train()
    assert np.isfinite(trainer.state.log_history[0]["loss"])


# ---------------------------------------------------------------------------------------------------- counts files


def test_missing_counts_file_is_refused_before_the_model_is_loaded(cpu_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="No counts file at .*pdl-trl count"):
        make_trainer(tmp_path / "no-model", cpu_config, pdl_counts_path=str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "pdl-trl-counts", "version": 1, "counts": [1, 2', "not readable JSON"),
        ("\x00\xff\xfe binary", "not readable JSON"),
        ("[1, 2, 3]", "is not a pdl-trl counts file"),
        ('{"format": "pdl-trl-counts", "version": 1}', "is damaged: KeyError"),
        ('{"format": "pdl-trl-counts", "version": 2, "counts": []}', "version 1"),
    ],
    ids=["truncated", "binary", "list", "no counts", "future version"],
)
def test_damaged_counts_file_names_the_file_and_the_fix(cpu_config, tmp_path, content, message):
    path = tmp_path / "counts.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=message) as error:
        make_trainer(tmp_path / "no-model", cpu_config, pdl_counts_path=str(path))
    assert str(path) in str(error.value)


def test_counts_of_nothing_are_refused(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    path = counts_file(tmp_path / "zeros.json", tiny_tokenizer, np.zeros(len(tiny_tokenizer) + 24))
    with pytest.raises(ValueError, match="count no token: every weight would be the same"):
        make_trainer(tiny_model_dir, cpu_config, pdl_counts_path=path)


def test_counts_disjoint_from_the_training_targets_are_refused(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    counts = np.zeros(len(tiny_tokenizer) + 24)
    counts[-1] = 100  # only a padding row, never a target
    path = counts_file(tmp_path / "disjoint.json", tiny_tokenizer, counts)
    with pytest.raises(ValueError, match="counts none of the training targets"):
        make_trainer(tiny_model_dir, cpu_config, pdl_counts_path=path)


def test_counts_missing_many_training_targets_are_warned_about(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    trainer = make_trainer(tiny_model_dir, cpu_config)
    counts = table_counts(trainer).numpy().copy()
    counts[np.argsort(counts)[-3:]] = 0  # the three most frequent targets
    path = counts_file(tmp_path / "partial.json", tiny_tokenizer, counts)
    with pytest.warns(UserWarning, match="of the training targets .* are never counted"):
        make_trainer(tiny_model_dir, cpu_config, pdl_counts_path=path)


def test_counts_of_another_tokenizer_are_refused(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    TokenCounts(np.ones(len(tiny_tokenizer) + 24, dtype=np.int64), "other", "sha256:0", "x").save(tmp_path / "o.json")
    with pytest.raises(ValueError, match="Recount with `pdl-trl count"):
        make_trainer(tiny_model_dir, cpu_config, pdl_counts_path=str(tmp_path / "o.json"))


# ----------------------------------------------------------------------------------------------------- the weights


def test_weights_beyond_float32_are_refused(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="more than float32 sums safely"):
        make_trainer(tiny_model_dir, cpu_config, train_dataset=prompt_completion_dataset(64), pdl_alpha=40.0)


def test_flat_weights_are_warned_about(tiny_model_dir, cpu_config):
    # epsilon far above every count: the formula is the same for every token, so PDL is plain SFT
    with pytest.warns(UserWarning, match="differ by less than 1%.*trains like plain SFT"):
        make_trainer(tiny_model_dir, cpu_config, pdl_epsilon=1e9)


def test_huge_epsilon_still_gives_the_plain_sft_loss(tiny_model_dir, cpu_config):
    """Scale safety: the formula's absolute weights underflow float32 (1e-40), yet the loss is the plain mean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        huge = make_trainer(tiny_model_dir, cpu_config, pdl_epsilon=1e40, max_steps=1, per_device_train_batch_size=8)
    plain = make_trainer(
        tiny_model_dir,
        cpu_config,
        pdl_alpha=0.0,
        max_steps=1,
        per_device_train_batch_size=8,
        output_dir=cpu_config().output_dir + "-plain",
    )
    assert torch.all(huge.pdl_table.weights == 1.0)
    huge.train()
    plain.train()
    assert huge.state.log_history[0]["loss"] == pytest.approx(plain.state.log_history[0]["loss"], rel=1e-6)


def test_end_of_sequence_weighted_away_is_warned_about(tiny_model_dir, cpu_config):
    with pytest.warns(UserWarning, match="pdl_neutral_special_tokens=True"):
        make_trainer(
            tiny_model_dir,
            cpu_config,
            train_dataset=prompt_completion_dataset(128),
            pdl_alpha=1.0,
            pdl_neutral_special_tokens=False,
        )


def test_defaults_keep_the_end_of_sequence_weight_without_a_warning(tiny_model_dir, cpu_config):
    # The same data at alpha 1: the default neutral special tokens keep EOS at the mean weight, so nothing to warn
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*end-of-sequence token.*")
        trainer = make_trainer(tiny_model_dir, cpu_config, train_dataset=prompt_completion_dataset(128), pdl_alpha=1.0)
    eos_id = trainer.processing_class.eos_token_id
    assert trainer.pdl_table.neutral_mask[eos_id] and trainer.pdl_table.weights[eos_id] == 1.0


# ---------------------------------------------------------------------------------------------------------- resume


@pytest.fixture
def checkpoint(tiny_model_dir, cpu_config):
    args_dir = cpu_config().output_dir + "-first"
    make_trainer(
        tiny_model_dir, cpu_config, max_steps=1, save_strategy="steps", save_steps=1, output_dir=args_dir
    ).train()
    return os.path.join(args_dir, "checkpoint-1")


def test_resume_from_a_path_that_does_not_exist(tiny_model_dir, cpu_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint folder at"):
        make_trainer(tiny_model_dir, cpu_config).train(resume_from_checkpoint=str(tmp_path / "nowhere"))


def test_resume_with_nothing_to_resume(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        make_trainer(tiny_model_dir, cpu_config).train(resume_from_checkpoint=True)


def test_resume_with_another_alpha_is_refused(tiny_model_dir, cpu_config, checkpoint):
    with pytest.raises(ValueError, match=f"pdl_alpha {PDLSFTConfig.pdl_alpha} there, 0.5 now"):
        make_trainer(tiny_model_dir, cpu_config, max_steps=2, pdl_alpha=0.5).train(resume_from_checkpoint=checkpoint)


def test_resume_from_a_checkpoint_with_damaged_counts(tiny_model_dir, cpu_config, checkpoint):
    with open(os.path.join(checkpoint, COUNTS_FILE_NAME), "w") as f:
        f.write('{"format": "pdl-trl-counts", "ver')
    with pytest.raises(ValueError, match="not readable JSON"):
        make_trainer(tiny_model_dir, cpu_config, max_steps=2).train(resume_from_checkpoint=checkpoint)


def test_resume_from_a_checkpoint_without_settings_warns(tiny_model_dir, cpu_config, checkpoint, caplog):
    os.remove(os.path.join(checkpoint, "pdl_settings.json"))
    trainer = make_trainer(tiny_model_dir, cpu_config, max_steps=2)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert "the PDL settings it trained with are unknown" in caplog.text
    assert trainer.state.global_step == 2


def test_saved_settings_are_readable_json(checkpoint):
    with open(os.path.join(checkpoint, "pdl_settings.json")) as f:
        settings = json.load(f)
    assert settings["format"] == "pdl-trl-settings" and settings["pdl_alpha"] == PDLSFTConfig.pdl_alpha


# ------------------------------------------------------------------------------------------------- command line


def count_argv(model_dir, data_path, output) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(data_path), "--counts_output", str(output)]


@pytest.mark.parametrize("output", ["folder", "under a file"])
def test_count_output_that_cannot_be_written_is_refused_before_counting(tmp_path, output):
    from pdl_trl.scripts.count import make_parser
    from pdl_trl.scripts.utils import parse_script_args

    (tmp_path / "a-file").write_text("")
    target = tmp_path if output == "folder" else tmp_path / "a-file" / "counts.json"
    # Neither the model nor the data exist: the output is checked first, while parsing
    with pytest.raises(ValueError, match="`--counts_output`"):
        parse_script_args(make_parser(), count_argv(tmp_path / "no-model", tmp_path / "no-data.jsonl", target))


def test_an_engine_accelerate_drops_on_cpu_is_warned_about(tiny_model_dir, cpu_config, monkeypatch):
    # What `accelerate launch --config_file fsdp2.yaml` sets; on CPU accelerate trains without FSDP instead
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="asked for FSDP .* not sharded as configured"):
        make_trainer(tiny_model_dir, cpu_config)


@pytest.mark.parametrize("module", ["rouge_score", "sacrebleu"])
def test_eval_without_the_eval_extra_names_it_before_loading_a_model(tmp_path, monkeypatch, module):
    from pdl_trl.cli import main as cli_main

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps({"prompt": "What is 1 plus 1?", "completion": " 2."}) + "\n")
    with pytest.raises(ModuleNotFoundError, match="pip install 'pdl-trl\\[eval\\]'"):
        cli_main(["eval", "--model_name_or_path", str(tmp_path / "no-model"), "--dataset_name", str(data)])
    with pytest.raises(ModuleNotFoundError, match="pip install 'pdl-trl\\[eval\\]'"):
        cli_main(["sweep", "--config", str(tmp_path / "no-config.yaml")])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"generation": "a"}', "{not json"], "Line 2 of"),
        (['["a list"]'], "not a JSON object"),
        (['{"prompt": "p"}'], "no string `generation`"),
        ([], "has no rows"),
    ],
    ids=["malformed line", "not an object", "no generation", "empty"],
)
def test_bad_generations_file_names_the_file(tmp_path, lines, message):
    from pdl_trl.evaluation import read_generations

    path = tmp_path / "gens.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(ValueError, match=message) as error:
        read_generations(path)
    assert str(path) in str(error.value)
