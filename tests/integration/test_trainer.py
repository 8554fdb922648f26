"""PDLSFTTrainer on CPU with the real TRL / transformers / PEFT / bitsandbytes stack and the tiny Qwen2 model."""

import json
import logging
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers.tiny import (
    conversational_dataset,
    count_targets_by_hand,
    make_rows,
    prompt_completion_dataset,
    text_dataset,
)
from helpers.trainers import table_counts
from transformers import AutoModelForCausalLM, TrainingArguments
from trl import SFTConfig, SFTTrainer

from pdl_trl import PDLSFTConfig, PDLSFTTrainer, TokenCounts, power_law_weights, tokenizer_fingerprint
from pdl_trl.frequency import COUNTS_FILE_NAME


# One plain SGD step per optimizer step, rows in dataset order, no clipping: two runs that compute the same gradient
# end with the same parameters, and a gradient scaled wrongly (e.g. by the accumulation steps) shows.
EXACT_SGD = {
    "optim": "sgd",
    "learning_rate": 0.1,
    "lr_scheduler_type": "constant",
    "max_grad_norm": 0.0,
    "train_sampling_strategy": "sequential",
}

# The exactness tests also run on CUDA, where TRL's fused head takes its Triton "compact" path (never run on CPU)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def on(device: str) -> dict:
    return {"use_cpu": device == "cpu"}


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def output_rows(trainer) -> int:
    return trainer.model.get_output_embeddings().weight.shape[0]


def completion_token_counts(tokenizer, rows) -> Counter:
    """Completion tokens straight from the tokenizer, without TRL: `prompt + completion + eos` after the prompt."""
    counts = Counter()
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
        assert full[: len(prompt)] == prompt
        counts.update(full[len(prompt) :])
    return counts


def weighted_cross_entropy_reference(model_dir, dataset, weights, dft: bool = False) -> float:
    """`F.cross_entropy(weight=w)` over the full logits of the untrained model on all rows of `dataset`: the PDL
    loss of one optimizer step that sees exactly these rows. With `dft`, each token's term also times its
    probability (DFT), over the same weight sum."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    weights = weights.cpu()
    total, weight_sum = 0.0, 0.0
    for row in dataset:
        input_ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"])
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0, :-1].double()
        nll = F.cross_entropy(logits, labels[1:], weight=weights.double(), reduction="none")
        if dft:
            nll = nll * torch.exp(-F.cross_entropy(logits, labels[1:], reduction="none"))
        total += nll.sum().item()
        weight_sum += weights[labels[1:][labels[1:] != -100]].double().sum().item()
    return total / weight_sum


def train(model_dir, args, train_dataset, trainer_class=PDLSFTTrainer, **kwargs):
    trainer = trainer_class(str(model_dir), args=args, train_dataset=train_dataset, **kwargs)
    trainer.train()
    return trainer


# The table


def test_table_is_sized_to_the_output_rows_and_counts_completion_tokens(tiny_model_dir, tiny_tokenizer, cpu_config):
    rows = make_rows(16)
    # The paper's formula, so that every entry is the formula's
    args = cpu_config(pdl_alpha=1.0, pdl_neutral_special_tokens=False)
    trainer = PDLSFTTrainer(str(tiny_model_dir), args=args, train_dataset=prompt_completion_dataset(16))

    assert output_rows(trainer) == len(tiny_tokenizer) + 24
    assert table_counts(trainer).dtype == torch.int64 and table_counts(trainer).shape == (len(tiny_tokenizer) + 24,)
    weights = trainer.pdl_table.weights
    assert weights.dtype == torch.float32 and weights.shape == table_counts(trainer).shape
    expected = completion_token_counts(tiny_tokenizer, rows)
    assert {i: c for i, c in enumerate(table_counts(trainer).tolist()) if c} == dict(expected)
    assert table_counts(trainer).tolist() == count_targets_by_hand(trainer.train_dataset, output_rows(trainer))
    torch.testing.assert_close(trainer.pdl_table.weights, power_law_weights(table_counts(trainer), 1.0, 1.0))
    # The 24 padding rows are never targets: they take the rarest seen token's weight
    assert table_counts(trainer)[len(tiny_tokenizer) :].sum() == 0
    assert trainer.pdl_table.weights[-1] == trainer.pdl_table.weights.max()


# Exactness of the normalisation


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_size_and_gradient_accumulation_give_the_same_step(tiny_model_dir, cpu_config, device, loss_type):
    rows = prompt_completion_dataset(8)
    runs = {}
    for batch_size, accumulation in [(8, 1), (4, 2), (2, 4)]:
        args = cpu_config(
            output_dir=cpu_config().output_dir + f"-{batch_size}x{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            pdl_alpha=1.0,
            loss_type=loss_type,
            **EXACT_SGD,
            **on(device),
        )
        runs[batch_size, accumulation] = train(tiny_model_dir, args, rows)

    full = runs[8, 1]
    # PDL, or PDL x DFT: sum(w * p * nll) / sum(w), by hand from the full logits
    reference = weighted_cross_entropy_reference(
        tiny_model_dir, full.train_dataset, full.pdl_table.weights, dft=loss_type == "dft"
    )
    assert logged(full, "loss")[0] == pytest.approx(reference, rel=1e-5)
    for key in [(4, 2), (2, 4)]:
        assert logged(runs[key], "loss")[0] == pytest.approx(logged(full, "loss")[0], rel=1e-5), key
        assert max_abs_diff(parameters(runs[key].model), parameters(full.model)) < 1e-6, key
    # The step moved the parameters far beyond that tolerance. DFT scales each token's gradient by its probability,
    # about 1/424 on the untrained model, so its step is that much smaller
    moved = 1e-3 if loss_type == "nll" else 3e-5
    assert (
        max_abs_diff(parameters(full.model), parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))) > moved
    )


@pytest.mark.sft_trainer
@pytest.mark.parametrize("loss_type", ["nll", "dft"])
@pytest.mark.parametrize("device", DEVICES)
def test_alpha_zero_reproduces_sft_trainer(tiny_model_dir, cpu_config, device, loss_type):
    rows = prompt_completion_dataset(16)
    common = {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "loss_type": loss_type,
        **EXACT_SGD,
        **on(device),
    }
    sft = train(
        tiny_model_dir, cpu_config(SFTConfig, output_dir=cpu_config().output_dir + "-sft", **common), rows, SFTTrainer
    )
    pdl = train(tiny_model_dir, cpu_config(pdl_alpha=0.0, **common), rows)

    for key in ["loss", "entropy", "mean_token_accuracy", "num_tokens"]:
        assert logged(pdl, key) == pytest.approx(logged(sft, key), rel=1e-5), key
    assert len(logged(pdl, "loss")) == 3
    assert max_abs_diff(parameters(pdl.model), parameters(sft.model)) < 1e-6


@pytest.mark.sft_trainer
def test_positive_alpha_changes_loss_and_update(tiny_model_dir, cpu_config):
    rows = prompt_completion_dataset(8)
    common = {"per_device_train_batch_size": 8, "max_steps": 1, **EXACT_SGD}
    sft = train(
        tiny_model_dir, cpu_config(SFTConfig, output_dir=cpu_config().output_dir + "-sft", **common), rows, SFTTrainer
    )
    pdl = train(tiny_model_dir, cpu_config(pdl_alpha=1.0, **common), rows)

    # The untrained model is near-uniform over the vocabulary, so every token's NLL is close to log(V) and the
    # weighted mean differs from the plain one by a few thousandths only: far above float noise (~1e-6)
    assert abs(logged(pdl, "loss")[0] - logged(sft, "loss")[0]) > 1e-3
    assert max_abs_diff(parameters(pdl.model), parameters(sft.model)) > 1e-4
    # PDL's unweighted `nll` is the SFT loss on the same untrained model
    assert logged(pdl, "nll")[0] == pytest.approx(logged(sft, "loss")[0], rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_packing_matches_padded_batch(tiny_model_dir, cpu_config, device):
    rows = prompt_completion_dataset(8)
    common = {"max_steps": 1, "pdl_alpha": 0.7, **EXACT_SGD, **on(device)}
    padded = train(tiny_model_dir, cpu_config(per_device_train_batch_size=8, **common), rows)
    # All eight rows in one packed sequence (bfd packing is padding-free): the same step as the padded batch
    packed = train(
        tiny_model_dir,
        cpu_config(
            output_dir=cpu_config().output_dir + "-packed",
            packing=True,
            max_length=1024,
            per_device_train_batch_size=1,
            **common,
        ),
        rows,
    )

    assert len(packed.train_dataset) == 1 and len(packed.train_dataset[0]["seq_lengths"]) == 8
    assert torch.equal(table_counts(packed), table_counts(padded))
    assert logged(packed, "loss")[0] == pytest.approx(logged(padded, "loss")[0], rel=1e-5)
    assert max_abs_diff(parameters(packed.model), parameters(padded.model)) < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_padding_free_matches_padded_batch(tiny_model_dir, cpu_config, device):
    rows = prompt_completion_dataset(8)
    common = {
        "max_steps": 1,
        "pdl_alpha": 0.7,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        **on(device),
    }
    padded = train(tiny_model_dir, cpu_config(**common, **EXACT_SGD), rows)
    padding_free = train(
        tiny_model_dir,
        cpu_config(
            output_dir=cpu_config().output_dir + "-pf", padding_free=True, max_length=None, **common, **EXACT_SGD
        ),
        rows,
    )

    assert logged(padding_free, "loss")[0] == pytest.approx(logged(padded, "loss")[0], rel=1e-5)
    assert max_abs_diff(parameters(padding_free.model), parameters(padded.model)) < 1e-6


@pytest.mark.gpu
def test_bf16_on_cuda_keeps_the_table_on_the_labels_device(tiny_model_dir, cpu_config):
    """bf16 autocast on CUDA: the weight table must live where the labels are (indexing a CPU table with CUDA
    labels raises), and accumulation still matches the full batch to bf16 precision."""
    rows = prompt_completion_dataset(8)
    runs = {}
    for batch_size, accumulation in [(8, 1), (2, 4)]:
        args = cpu_config(
            output_dir=cpu_config().output_dir + f"-{batch_size}x{accumulation}",
            use_cpu=False,
            bf16=True,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            **EXACT_SGD,
        )
        runs[batch_size, accumulation] = train(tiny_model_dir, args, rows)
    assert runs[8, 1].pdl_table.weights.device.type == "cuda"
    assert logged(runs[2, 4], "loss")[0] == pytest.approx(logged(runs[8, 1], "loss")[0], rel=1e-2)


# Datasets


def test_conversational_assistant_only_counts_only_assistant_tokens(tiny_model_dir, tiny_tokenizer, cpu_config):
    trainer = train(
        tiny_model_dir,
        cpu_config(assistant_only_loss=True, max_steps=1),
        conversational_dataset(16),
    )
    counts = table_counts(trainer)

    assert counts.tolist() == count_targets_by_hand(trainer.train_dataset, output_rows(trainer))
    for word in ["What", "Describe", " plus", "<|im_start|>"]:
        (token,) = tiny_tokenizer.encode(word)
        assert counts[token] == 0, f"{word!r} is outside the assistant turns but was counted"
    # The assistant turn, end-of-turn included, is exactly the prompt-completion completion plus EOS
    expected = completion_token_counts(tiny_tokenizer, make_rows(16))
    assert {i: c for i, c in enumerate(counts.tolist()) if c} == dict(expected)
    assert math.isfinite(logged(trainer, "loss")[0])


def test_plain_text_is_refused_unless_allowed(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="pdl_allow_unmasked_text=True"):
        PDLSFTTrainer(str(tiny_model_dir), args=cpu_config(), train_dataset=text_dataset(8))

    trainer = train(tiny_model_dir, cpu_config(pdl_allow_unmasked_text=True, max_steps=1), text_dataset(8))
    # Every token but the first of each row is a target
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert int(table_counts(trainer).sum()) == sum(lengths) - len(lengths)
    assert math.isfinite(logged(trainer, "loss")[0])


# PEFT


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def test_lora_trains_only_the_adapter(tiny_model_dir, cpu_config):
    trainer = PDLSFTTrainer(
        str(tiny_model_dir),
        args=cpu_config(max_steps=2, **EXACT_SGD),
        train_dataset=prompt_completion_dataset(8),
        peft_config=lora_config(),
    )
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)

    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora = {name for name in before if "lora_" in name}
    assert lora and changed <= lora
    assert {name for name in lora if "lora_B" in name} <= changed


def test_qlora_4bit_trains_only_the_adapter_and_survives_eval(tiny_model_dir, cpu_config):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    def make_trainer(output_suffix, **overrides):
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        args = cpu_config(
            output_dir=cpu_config().output_dir + output_suffix,
            model_init_kwargs={"quantization_config": quantization},
            max_steps=2,
            **EXACT_SGD,
            **overrides,
        )
        return PDLSFTTrainer(
            str(tiny_model_dir),
            args=args,
            train_dataset=prompt_completion_dataset(8),
            eval_dataset=prompt_completion_dataset(4, seed=1),
            peft_config=lora_config(),
        )

    trainer = make_trainer("-eval", eval_strategy="steps", eval_steps=1)
    linear_4bit = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear_4bit, "the model was not quantized"
    assert all(m.support_avx512bf16_for_cpu is False for m in linear_4bit)
    quantized_before = [m.weight.detach().clone() for m in linear_4bit]
    before = parameters(trainer.model)
    trainer.train()
    after = parameters(trainer.model)

    assert all(torch.equal(m.weight, q) for m, q in zip(linear_4bit, quantized_before, strict=True))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora = {name for name in before if "lora_" in name}
    assert lora and changed <= lora
    assert {name for name in lora if "lora_B" in name} <= changed
    assert len(logged(trainer, "eval_loss")) == 2 and all(math.isfinite(x) for x in logged(trainer, "eval_loss"))

    # An eval forward between the steps must not change the second step's gradients (on AVX512-BF16 CPUs
    # bitsandbytes would otherwise repack the 4-bit weights into a layout without a backward)
    no_eval = make_trainer("-no-eval")
    no_eval.train()
    assert logged(trainer, "loss") == pytest.approx(logged(no_eval, "loss"), rel=1e-5)
    assert max_abs_diff(after, parameters(no_eval.model)) < 1e-6


# Metrics


def test_metrics_reach_the_log_history(tiny_model_dir, cpu_config):
    trainer = train(
        tiny_model_dir,
        cpu_config(pdl_alpha=1.0, pdl_neutral_special_tokens=False, max_steps=2, eval_strategy="steps", eval_steps=2),
        prompt_completion_dataset(8),
        eval_dataset=prompt_completion_dataset(4, seed=1),
    )
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == 2
    for entry in train_logs:
        for key in ["nll", "pdl_mean_weight", "pdl_ess", "entropy", "mean_token_accuracy", "num_tokens"]:
            assert math.isfinite(entry[key]), key
        assert 0 < entry["pdl_ess"] <= 1
        # alpha=1 without neutral tokens: EOS, most frequent, weighs far below the mean of the types
        assert 0 < entry["pdl_mean_weight"] < 1
    (eval_log,) = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    for key in ["eval_loss", "eval_nll", "eval_pdl_mean_weight", "eval_pdl_ess", "eval_entropy"]:
        assert math.isfinite(eval_log[key]), key
    assert not math.isclose(eval_log["eval_loss"], eval_log["eval_nll"], rel_tol=1e-4)


def test_alpha_zero_nll_equals_loss(tiny_model_dir, cpu_config):
    trainer = train(
        tiny_model_dir,
        cpu_config(pdl_alpha=0.0, max_steps=2, eval_strategy="steps", eval_steps=2),
        prompt_completion_dataset(8),
        eval_dataset=prompt_completion_dataset(4, seed=1),  # one eval batch: eval_loss is that batch's mean
    )
    assert logged(trainer, "nll") == pytest.approx(logged(trainer, "loss"), rel=1e-5)
    assert logged(trainer, "pdl_ess") == pytest.approx([1.0, 1.0])
    assert logged(trainer, "pdl_mean_weight") == pytest.approx([1.0, 1.0])
    assert logged(trainer, "eval_nll") == pytest.approx(logged(trainer, "eval_loss"), rel=1e-5)


# Refused configurations


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pdl_alpha": float("nan")}, "`pdl_alpha` must be a finite number >= 0"),
        ({"pdl_alpha": -0.5}, "`pdl_alpha` must be a finite number >= 0"),
        ({"pdl_alpha": float("inf")}, "`pdl_alpha` must be a finite number >= 0"),
        ({"pdl_epsilon": 0.0}, "`pdl_epsilon` must be a finite number > 0"),
        ({"pdl_epsilon": -1.0}, "`pdl_epsilon` must be a finite number > 0"),
        ({"label_smoothing_factor": 0.1}, "Set `label_smoothing_factor=0.0`"),
    ],
)
def test_bad_config_raises(cpu_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        cpu_config(**overrides)


def test_streaming_dataset_needs_a_counts_file(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    with pytest.raises(ValueError, match="pdl_counts_path='counts.json'"):
        PDLSFTTrainer(
            str(tiny_model_dir), args=cpu_config(), train_dataset=prompt_completion_dataset(8).to_iterable_dataset()
        )

    counts = np.ones(len(tiny_tokenizer) + 24, dtype=np.int64)
    TokenCounts(counts, str(tiny_model_dir), tokenizer_fingerprint(tiny_tokenizer), "test").save(tmp_path / "c.json")
    trainer = train(
        tiny_model_dir,
        cpu_config(pdl_counts_path=str(tmp_path / "c.json"), max_steps=2),
        prompt_completion_dataset(8).to_iterable_dataset(),
    )
    assert table_counts(trainer).tolist() == counts.tolist()
    assert len(logged(trainer, "loss")) == 2

    # The prompt-mask check also reads a stream
    with pytest.raises(ValueError, match="No training label is masked"):
        PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(pdl_counts_path=str(tmp_path / "c.json")),
            train_dataset=text_dataset(8).to_iterable_dataset(),
        )


@pytest.mark.parametrize("config_class", [TrainingArguments, SFTConfig])
def test_other_configs_are_converted_with_pdl_defaults(tiny_model_dir, cpu_config, config_class):
    extra = {"eos_token": "<|im_end|>"} if config_class is SFTConfig else {}
    args = cpu_config(config_class, per_device_train_batch_size=3, **extra)
    trainer = PDLSFTTrainer(str(tiny_model_dir), args=args, train_dataset=prompt_completion_dataset(8))
    assert isinstance(trainer.args, PDLSFTConfig)
    assert trainer.args.per_device_train_batch_size == 3
    pdl_fields = ("pdl_alpha", "pdl_epsilon", "pdl_neutral_special_tokens", "pdl_mix")
    assert [getattr(trainer.args, name) for name in pdl_fields] == [getattr(PDLSFTConfig, name) for name in pdl_fields]
    # `TrainingArguments.to_dict` masks every `*_token` field; the converted config must keep the real values
    assert trainer.args.hub_token == args.hub_token
    if config_class is SFTConfig:
        assert (trainer.args.eos_token, trainer.args.pad_token) == ("<|im_end|>", args.pad_token)


def test_compute_metrics_is_refused(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="builds no logits"):
        PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(),
            train_dataset=prompt_completion_dataset(8),
            compute_metrics=lambda eval_prediction: {},
        )


def test_compute_loss_func_is_refused(tiny_model_dir, cpu_config):
    with pytest.raises(ValueError, match="`compute_loss_func` replaces the loss"):
        PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(),
            train_dataset=prompt_completion_dataset(8),
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.loss,
        )


def test_prompt_tuning_is_refused(tiny_model_dir, cpu_config):
    from peft import PromptTuningConfig

    with pytest.raises(ValueError, match="PROMPT_TUNING pads the labels"):
        PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(),
            train_dataset=prompt_completion_dataset(8),
            peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        )


def test_counts_file_for_another_tokenizer_is_refused(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    foreign = TokenCounts(np.ones(len(tiny_tokenizer) + 24, dtype=np.int64), "other/tokenizer", "sha256:0", "test")
    foreign.save(tmp_path / "foreign.json")
    with pytest.raises(ValueError, match="tokenizer 'other/tokenizer'"):
        PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(pdl_counts_path=str(tmp_path / "foreign.json")),
            train_dataset=prompt_completion_dataset(8),
        )


# Counts file in, counts file out


def test_counts_path_gives_that_table(tiny_model_dir, tiny_tokenizer, cpu_config, tmp_path):
    reference_counts = np.arange(len(tiny_tokenizer) + 24, dtype=np.int64) % 5
    TokenCounts(reference_counts, str(tiny_model_dir), tokenizer_fingerprint(tiny_tokenizer), "reference").save(
        tmp_path / "reference.json"
    )
    trainer = train(
        tiny_model_dir,
        cpu_config(
            pdl_counts_path=str(tmp_path / "reference.json"),
            pdl_alpha=0.5,
            pdl_epsilon=2.0,
            pdl_neutral_special_tokens=False,
            max_steps=1,
        ),
        prompt_completion_dataset(8),
    )
    assert table_counts(trainer).tolist() == reference_counts.tolist()
    expected = power_law_weights(torch.from_numpy(reference_counts), 0.5, 2.0)
    torch.testing.assert_close(trainer.pdl_table.weights, expected)


def test_save_model_writes_the_counts(tiny_model_dir, cpu_config, tmp_path):
    trainer = train(tiny_model_dir, cpu_config(max_steps=1), prompt_completion_dataset(8))
    trainer.save_model()
    trainer.save_model(str(tmp_path / "elsewhere"))

    for directory in [trainer.args.output_dir, tmp_path / "elsewhere"]:
        saved = TokenCounts.load(os.path.join(directory, COUNTS_FILE_NAME))
        assert saved.counts.tolist() == table_counts(trainer).tolist()
        assert saved.tokenizer_fingerprint == tokenizer_fingerprint(trainer.processing_class)


def test_checkpoints_hold_the_counts_and_resume_restores_them(tiny_model_dir, cpu_config, caplog):
    args = cpu_config(max_steps=2, save_strategy="steps", save_steps=1, **EXACT_SGD)
    first = train(tiny_model_dir, args, prompt_completion_dataset(8))
    checkpoints = sorted(d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    for checkpoint in checkpoints:
        saved = TokenCounts.load(os.path.join(args.output_dir, checkpoint, COUNTS_FILE_NAME))
        assert saved.counts.tolist() == table_counts(first).tolist()

    # Resume with other training data: the table must stay the one the run started with
    resumed = PDLSFTTrainer(
        str(tiny_model_dir),
        args=cpu_config(max_steps=3, save_strategy="steps", save_steps=1, **EXACT_SGD),
        train_dataset=prompt_completion_dataset(8, seed=7),
    )
    assert not torch.equal(table_counts(resumed), table_counts(first))
    with caplog.at_level(logging.WARNING, logger="pdl_trl"):
        resumed.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-1"))
    assert "resuming with the checkpoint's" in caplog.text
    assert torch.equal(table_counts(resumed), table_counts(first))
    torch.testing.assert_close(resumed.pdl_table.weights, first.pdl_table.weights)
    assert resumed.state.global_step == 3

    # resume_from_checkpoint=True finds the last checkpoint (now checkpoint-3) and its counts
    again = PDLSFTTrainer(
        str(tiny_model_dir),
        args=cpu_config(max_steps=4, **EXACT_SGD),
        train_dataset=prompt_completion_dataset(8, seed=8),
    )
    again.train(resume_from_checkpoint=True)
    assert torch.equal(table_counts(again), table_counts(first))


def test_resume_from_checkpoint_without_counts_raises(tiny_model_dir, cpu_config):
    args = cpu_config(max_steps=1, save_strategy="steps", save_steps=1)
    train(tiny_model_dir, args, prompt_completion_dataset(8))
    checkpoint = os.path.join(args.output_dir, "checkpoint-1")
    os.remove(os.path.join(checkpoint, COUNTS_FILE_NAME))

    trainer = PDLSFTTrainer(
        str(tiny_model_dir), args=cpu_config(max_steps=2), train_dataset=prompt_completion_dataset(8)
    )
    with pytest.raises(FileNotFoundError, match=f"has no {COUNTS_FILE_NAME}"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_down_weighted_end_of_sequence_token_is_warned_about(tiny_model_dir, cpu_config):
    rows = prompt_completion_dataset(128)
    # Every completion ends with EOS, so alpha=1 weighs it at (c + 1) / 129 of the rarest token (count c, a few here):
    # below the 0.05 threshold; alpha=0.25 keeps it above
    formula = {"pdl_neutral_special_tokens": False, "max_steps": 1}
    with pytest.warns(UserWarning, match="end-of-sequence token '<\\|im_end\\|>'"):
        PDLSFTTrainer(model=str(tiny_model_dir), args=cpu_config(pdl_alpha=1.0, **formula), train_dataset=rows)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*end-of-sequence token.*")
        PDLSFTTrainer(model=str(tiny_model_dir), args=cpu_config(pdl_alpha=0.25, **formula), train_dataset=rows)


def test_eval_tokens_never_counted_do_not_dominate_the_eval_loss(tiny_model_dir, cpu_config):
    from datasets import Dataset

    # Completions made of prompt-only words: targets the training completions never contain
    unseen_rows = [{"prompt": "What is 3 plus 4?", "completion": " What Describe plus"} for _ in range(2)]
    eval_rows = Dataset.from_list(make_rows(6, seed=7) + unseen_rows)
    # The paper code's epsilon: an uncapped unseen target would weigh 1e7 against at most 1 for a counted one
    args = cpu_config(pdl_alpha=1.0, pdl_epsilon=1e-7, per_device_eval_batch_size=len(eval_rows))
    trainer = PDLSFTTrainer(
        str(tiny_model_dir), args=args, train_dataset=prompt_completion_dataset(32), eval_dataset=eval_rows
    )
    metrics = trainer.evaluate()

    targets = torch.cat([torch.tensor(row["labels"][1:]) for row in trainer.eval_dataset])
    targets = targets[targets != -100]
    unseen = table_counts(trainer)[targets] == 0
    assert unseen.sum() >= 6
    weights = trainer.pdl_table.weights.cpu()[targets]
    assert torch.all(weights[unseen] == trainer.pdl_table.weights.max().cpu())
    assert weights[unseen].sum() / weights.sum() < 0.5
    # The whole eval set is one batch, so eval_loss is exactly the capped weighted cross-entropy
    reference = weighted_cross_entropy_reference(tiny_model_dir, trainer.eval_dataset, trainer.pdl_table.weights)
    assert metrics["eval_loss"] == pytest.approx(reference, rel=1e-5)
    assert math.isfinite(metrics["eval_nll"])


# Neutral tokens and the mix toward plain SFT


def neutral_special_ids(tokenizer) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def test_neutral_special_tokens_weigh_the_mean_and_keep_their_sft_share(tiny_model_dir, tiny_tokenizer, cpu_config):
    rows = prompt_completion_dataset(128)
    with warnings.catch_warnings():
        # At alpha=1 the end-of-sequence warning fires without the option (test above), never with it
        warnings.filterwarnings("error", message=".*end-of-sequence token.*")
        trainer = PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(pdl_alpha=1.0, pdl_neutral_special_tokens=True, max_steps=1),
            train_dataset=rows,
        )
    counts, weights = table_counts(trainer), trainer.pdl_table.weights.cpu()
    neutral = trainer.pdl_table.neutral_mask.cpu()
    assert set(torch.nonzero(neutral).squeeze(1).tolist()) == neutral_special_ids(tiny_tokenizer)
    assert weights[tiny_tokenizer.eos_token_id] == 1.0 and torch.all(weights[neutral] == 1.0)
    # Same formula as without the option elsewhere, rescaled so that the other targets' count-weighted mean is 1
    counted = (counts > 0) & ~neutral
    formula = power_law_weights(counts, 1.0, 1.0)
    torch.testing.assert_close(
        weights[counted], formula[counted] / formula[counted].mul(counts[counted]).sum() * counts[counted].sum()
    )
    # So the end-of-sequence token carries the share of the training set's weight it has in plain SFT
    eos = tiny_tokenizer.eos_token_id
    assert (counts[eos] * weights[eos] / (counts * weights).sum()).item() == pytest.approx(
        (counts[eos] / counts.sum()).item(), rel=1e-5
    )


def test_neutral_share_metric_is_the_neutral_targets_share_of_the_step_weight(tiny_model_dir, cpu_config):
    trainer = train(
        tiny_model_dir,
        cpu_config(pdl_alpha=1.0, pdl_neutral_special_tokens=True, per_device_train_batch_size=8, max_steps=1),
        prompt_completion_dataset(8),
    )
    # One step over all eight rows: the share by hand from the prepared labels
    targets = torch.cat([torch.tensor(row["labels"][1:]) for row in trainer.train_dataset])
    targets = targets[targets != -100]
    weights = trainer.pdl_table.weights.cpu()[targets]
    expected = weights[trainer.pdl_table.neutral_mask.cpu()[targets]].sum() / weights.sum()
    assert 0 < expected < 1
    assert logged(trainer, "pdl_neutral_share")[0] == pytest.approx(expected.item(), rel=1e-5)

    no_neutral = train(
        tiny_model_dir,
        cpu_config(output_dir=cpu_config().output_dir + "-no-neutral", pdl_neutral_special_tokens=False, max_steps=1),
        prompt_completion_dataset(8),
    )
    assert logged(no_neutral, "pdl_neutral_share") == [0.0]


def test_named_neutral_tokens(tiny_model_dir, tiny_tokenizer, cpu_config):
    (the,) = tiny_tokenizer.encode(" The")
    (dot,) = tiny_tokenizer.encode(".")
    trainer = PDLSFTTrainer(
        str(tiny_model_dir),
        # A vocabulary entry, a text of one token and an id; the special tokens not neutral, to see only these
        args=cpu_config(pdl_neutral_special_tokens=False, pdl_neutral_tokens=["<|im_end|>", " The", dot]),
        train_dataset=prompt_completion_dataset(16),
    )
    assert torch.nonzero(trainer.pdl_table.neutral_mask).squeeze(1).tolist() == sorted(
        {tiny_tokenizer.eos_token_id, the, dot}
    )
    assert torch.all(trainer.pdl_table.weights[trainer.pdl_table.neutral_mask] == 1.0)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [([" The sum is"], "is 3 tokens"), ([10**6], "outside the model's"), ([-1], "outside the model's")],
)
def test_bad_neutral_tokens_are_refused(tiny_model_dir, cpu_config, tokens, message):
    with pytest.raises(ValueError, match=message):
        PDLSFTTrainer(
            str(tiny_model_dir), args=cpu_config(pdl_neutral_tokens=tokens), train_dataset=prompt_completion_dataset(8)
        )


@pytest.mark.sft_trainer
def test_mix_zero_reproduces_sft_trainer_at_any_alpha(tiny_model_dir, cpu_config):
    rows = prompt_completion_dataset(16)
    common = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 2, **EXACT_SGD}
    sft = train(
        tiny_model_dir, cpu_config(SFTConfig, output_dir=cpu_config().output_dir + "-sft", **common), rows, SFTTrainer
    )
    pdl = train(
        tiny_model_dir, cpu_config(pdl_alpha=2.0, pdl_mix=0.0, pdl_neutral_special_tokens=True, **common), rows
    )

    for key in ["loss", "entropy", "mean_token_accuracy", "num_tokens"]:
        assert logged(pdl, key) == pytest.approx(logged(sft, key), rel=1e-5), key
    assert max_abs_diff(parameters(pdl.model), parameters(sft.model)) < 1e-6


def test_options_keep_accumulation_exact(tiny_model_dir, cpu_config):
    rows = prompt_completion_dataset(8)
    options = {"pdl_alpha": 1.0, "pdl_neutral_special_tokens": True, "pdl_mix": 0.5}
    runs = {}
    for batch_size, accumulation in [(8, 1), (2, 4)]:
        args = cpu_config(
            output_dir=cpu_config().output_dir + f"-{batch_size}x{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            **options,
            **EXACT_SGD,
        )
        runs[batch_size, accumulation] = train(tiny_model_dir, args, rows)

    full = runs[8, 1]
    reference = weighted_cross_entropy_reference(tiny_model_dir, full.train_dataset, full.pdl_table.weights)
    assert logged(full, "loss")[0] == pytest.approx(reference, rel=1e-5)
    assert logged(runs[2, 4], "loss")[0] == pytest.approx(reference, rel=1e-5)
    assert max_abs_diff(parameters(runs[2, 4].model), parameters(full.model)) < 1e-6
    # The options did change the step: not plain PDL
    plain = train(
        tiny_model_dir,
        cpu_config(
            output_dir=cpu_config().output_dir + "-pdl",
            per_device_train_batch_size=8,
            max_steps=1,
            pdl_alpha=1.0,
            **EXACT_SGD,
        ),
        rows,
    )
    assert abs(logged(plain, "loss")[0] - logged(full, "loss")[0]) > 1e-4


# Settings saved with the model, checked on resume, shown on the model card


def test_resume_with_other_pdl_settings_is_refused(tiny_model_dir, cpu_config):
    args = cpu_config(max_steps=1, save_strategy="steps", save_steps=1, pdl_alpha=1.0)
    first = train(tiny_model_dir, args, prompt_completion_dataset(8))
    checkpoint = os.path.join(args.output_dir, "checkpoint-1")
    with open(os.path.join(checkpoint, "pdl_settings.json")) as f:
        saved = json.load(f)
    assert saved["pdl_alpha"] == 1.0 and saved["neutral_token_ids"] == first.pdl_table.neutral_ids

    for changed in [{"pdl_alpha": 0.5}, {"pdl_mix": 0.5}, {"pdl_neutral_special_tokens": False}, {"pdl_epsilon": 2.0}]:
        trainer = PDLSFTTrainer(
            str(tiny_model_dir),
            args=cpu_config(max_steps=2, **{"pdl_alpha": 1.0, **changed}),
            train_dataset=prompt_completion_dataset(8),
        )
        with pytest.raises(ValueError, match="was trained with other PDL settings"):
            trainer.train(resume_from_checkpoint=checkpoint)

    same = PDLSFTTrainer(
        str(tiny_model_dir), args=cpu_config(max_steps=2, pdl_alpha=1.0), train_dataset=prompt_completion_dataset(8)
    )
    same.train(resume_from_checkpoint=checkpoint)
    assert same.state.global_step == 2


def test_missing_checkpoint_folder_is_named_as_such(tiny_model_dir, cpu_config, tmp_path):
    trainer = PDLSFTTrainer(str(tiny_model_dir), args=cpu_config(), train_dataset=prompt_completion_dataset(8))
    with pytest.raises(FileNotFoundError, match="No checkpoint folder at"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-7"))


def test_model_card_cites_the_paper_and_records_the_settings(tiny_model_dir, cpu_config):
    args = cpu_config(
        max_steps=1, save_strategy="steps", save_steps=1, pdl_alpha=0.5, pdl_mix=0.75, pdl_neutral_special_tokens=True
    )
    trainer = train(tiny_model_dir, args, prompt_completion_dataset(8))
    card = (Path(args.output_dir) / "README.md").read_text()
    assert "2505.16900" in card and "Power-Law Decay Loss" in card and "@misc{shao2025powerlawdecayloss" in card
    assert "| `pdl_alpha` | 0.5 |" in card and "| `pdl_mix` | 0.75 |" in card
    assert "'<|im_end|>'" in card
    assert f"{table_counts(trainer).sum().item()} tokens" in card


def test_each_eval_dataset_gets_its_own_pdl_metrics_and_predict_leaves_none_behind(tiny_model_dir, cpu_config):
    short = Dataset.from_list([{"prompt": "What is 3 plus 4?", "completion": " 7."}] * 4)
    trainer = PDLSFTTrainer(
        str(tiny_model_dir),
        args=cpu_config(pdl_alpha=1.0, per_device_eval_batch_size=4),
        train_dataset=prompt_completion_dataset(16),
        eval_dataset={"long": prompt_completion_dataset(4, seed=1), "short": short},
    )
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_long_nll"]) and math.isfinite(metrics["eval_short_nll"])
    assert metrics["eval_long_nll"] != metrics["eval_short_nll"]
    prepared_short = trainer.eval_dataset["short"]
    alone = trainer.evaluate(eval_dataset=prepared_short, metric_key_prefix="eval_short")
    assert alone["eval_short_nll"] == pytest.approx(metrics["eval_short_nll"], rel=1e-6)

    with pytest.warns(UserWarning, match="returns the loss and metrics only"):
        prediction = trainer.predict(prepared_short)
    assert prediction.predictions is None
    assert prediction.metrics["test_nll"] == pytest.approx(metrics["eval_short_nll"], rel=1e-6)
    # Nothing of predict() is left over to be averaged into the next evaluation
    after = trainer.evaluate(eval_dataset=trainer.eval_dataset["long"])
    assert after["eval_nll"] == pytest.approx(metrics["eval_long_nll"], rel=1e-6)
