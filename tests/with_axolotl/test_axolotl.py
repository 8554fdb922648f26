"""
The PDL plugin in real Axolotl 0.21 training (LoRA on a tiny Llama, CPU), in the Axolotl CI environment
(`.ci/compat.sh test axolotl`); skipped where Axolotl is not installed.

Every training runs in a process of its own (`run_axolotl.py`, as `axolotl train` would): Axolotl keeps its plugins
in a process-wide singleton. Config validation runs in this process.

What is checked:
1. `pdl_alpha: 0` trains exactly as plain Axolotl (the same config without the plugin), with and without sample
   packing, at gradient accumulation 2: logged losses and final LoRA weights;
2. `pdl_alpha: 0.25`: the first logged loss is `sum(w * nll) / sum(w)` computed by hand over the first step's
   micro-batches (counts by hand from the prepared rows, weights by the formula, NLL of the untrained model), with and
   without packing (the first target of every packed sequence is left out: it would be predicted across sequences),
   on an Alpaca and a chat-template dataset; the counts saved beside the model are the hand counts;
3. two processes at accumulation 1 train exactly as one at accumulation 2;
4. resuming from a checkpoint trains exactly as the run that was not interrupted, and the PDL files are beside every
   checkpoint and the final adapter;
5. bad `pdl_` values and options PDL cannot run with are refused when the config is validated, in the YAML's
   spelling; `pdl_` keys without the plugin are refused; an unmasked training set is refused before training.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml


pytest.importorskip("axolotl")

from helpers.files import conversational_rows, write_jsonl  # noqa: E402
from helpers.tiny import count_targets_by_hand, make_rows  # noqa: E402
from helpers.tiny_models import save_causal_lm  # noqa: E402


PLUGIN = "pdl_trl.integrations.axolotl.PDLPlugin"
DRIVER = Path(__file__).with_name("run_axolotl.py")
ROWS = 24


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """The tiny Llama, an Alpaca and a chat dataset, and the config of a plain LoRA run on them."""
    root = tmp_path_factory.mktemp("axolotl")
    model = save_causal_lm("llama", root / "tiny-llama")
    alpaca = [{"instruction": r["prompt"], "input": "", "output": r["completion"].strip()} for r in make_rows(ROWS)]
    write_jsonl(root / "alpaca.jsonl", alpaca)
    write_jsonl(root / "chat.jsonl", conversational_rows(ROWS))
    config = {
        "base_model": str(model),
        "model_type": "LlamaForCausalLM",
        "tokenizer_type": "PreTrainedTokenizerFast",
        "datasets": [{"path": str(root / "alpaca.jsonl"), "ds_type": "json", "type": "alpaca"}],
        "dataset_prepared_path": str(root / "prepared"),
        "val_set_size": 0,
        "sequence_len": 128,
        "sample_packing": False,
        "train_on_inputs": False,
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        # Axolotl's fused LoRA kernels need Triton (CUDA)
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "lora_embedding_kernel": False,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 4,
        "num_epochs": 1,
        "learning_rate": 0.01,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "seed": 42,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sdp_attention": False,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "strict": False,
    }
    (root / "plain.yaml").write_text(yaml.safe_dump(config))
    (root / "pdl.yaml").write_text(yaml.safe_dump({**config, "plugins": [PLUGIN], "pdl_alpha": 0.25}))
    chat = {"path": str(root / "chat.jsonl"), "ds_type": "json", "type": "chat_template", "field_messages": "messages"}
    (root / "pdl_chat.yaml").write_text(
        yaml.safe_dump(
            {
                **config,
                "plugins": [PLUGIN],
                "pdl_alpha": 0.25,
                "datasets": [chat],
                "chat_template": "tokenizer_default",
            }
        )
    )
    return root


def environment(**extra) -> dict:
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def train(config: Path, output_dir: Path, *, processes: int = 1, env: dict | None = None, **overrides) -> Path:
    """One Axolotl training of `config` with `overrides`, in a process of its own; returns the output folder."""
    args = [f"{key}={json.dumps(value)}" for key, value in {**overrides, "output_dir": str(output_dir)}.items()]
    if processes == 1:
        command = [sys.executable, str(DRIVER), str(config), *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master_port=29571",
        ]
        command += [str(DRIVER), str(config), *args, "ddp_backend=gloo"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment(**(env or {})))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    return output_dir


def training_failure(config: Path, output_dir: Path, **overrides) -> str:
    """The output of a training expected to fail."""
    args = [f"{key}={json.dumps(value)}" for key, value in {**overrides, "output_dir": str(output_dir)}.items()]
    result = subprocess.run(
        [sys.executable, str(DRIVER), str(config), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=environment(),
    )
    assert result.returncode != 0, "the training should have failed"
    return result.stdout + result.stderr


def logged(run: Path) -> dict[int, dict]:
    return {entry["step"]: entry for entry in json.loads((run / "log_history.json").read_text()) if "loss" in entry}


def adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter_model.safetensors")


def assert_same_training(expected: Path, actual: Path, steps=None) -> None:
    expected_log, actual_log = logged(expected), logged(actual)
    for step in steps or sorted(expected_log):
        assert actual_log[step]["loss"] == pytest.approx(expected_log[step]["loss"], rel=1e-6, abs=1e-7), step
        assert actual_log[step]["grad_norm"] == pytest.approx(expected_log[step]["grad_norm"], rel=1e-5), step
    expected_weights, actual_weights = adapter(expected), adapter(actual)
    assert expected_weights.keys() == actual_weights.keys()
    for name, weight in expected_weights.items():
        torch.testing.assert_close(actual_weights[name], weight, rtol=1e-5, atol=1e-7, msg=name)


def hand_weights(counts: np.ndarray, alpha: float, epsilon: float, neutral: list[int]) -> np.ndarray:
    """The PDL table by its definition: `(count + epsilon) ** -alpha`, tokens never counted as the rarest counted one,
    scaled to a count-weighted mean of 1 over counted tokens that are not neutral; neutral tokens 1."""
    seen = counts > 0
    weights = (counts + epsilon) ** -alpha
    weights[~seen] = (counts[seen].min() + epsilon) ** -alpha
    reference = seen.copy()
    reference[neutral] = False
    weights = weights / ((counts[reference] * weights[reference]).sum() / counts[reference].sum())
    weights[neutral] = 1.0
    return weights


@pytest.mark.parametrize("packing", [False, True], ids=["rows", "packed"])
def test_alpha_zero_trains_as_plain_axolotl(assets, tmp_path, packing):
    settings = {"sample_packing": packing, "sequence_len": 512 if packing else 128}
    plain = train(assets / "plain.yaml", tmp_path / "plain", **settings)
    pdl = train(assets / "pdl.yaml", tmp_path / "pdl", pdl_alpha=0.0, **settings)
    assert json.loads((pdl / "train_rows.json").read_text())["trainer_class"] == "PDLAxolotlTrainer"
    assert_same_training(plain, pdl)
    assert logged(pdl)[1]["pdl_mean_weight"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "config, packing",
    [("pdl.yaml", False), ("pdl.yaml", True), ("pdl_chat.yaml", False)],
    ids=["alpaca-rows", "alpaca-packed", "chat-rows"],
)
def test_first_step_loss_by_hand(assets, tmp_path, config, packing):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batches_file = tmp_path / "first_step.pt"
    settings = {"sample_packing": packing, "sequence_len": 512 if packing else 128, "max_steps": 1}
    run = train(assets / config, tmp_path / "run", env={"FIRST_STEP_BATCHES": str(batches_file)}, **settings)
    model = AutoModelForCausalLM.from_pretrained(assets / "tiny-llama", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets / "tiny-llama")
    vocab = model.get_output_embeddings().weight.shape[0]

    # Axolotl packs at batch time: each prepared row is one sequence
    rows = json.loads((run / "train_rows.json").read_text())["rows"]
    counts = np.array(count_targets_by_hand(rows, vocab), dtype=np.float64)
    saved = json.loads((run / "pdl_counts.json").read_text())["counts"]
    assert saved == counts.astype(int).tolist()
    neutral = sorted(
        set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    )
    weights = torch.from_numpy(hand_weights(counts, 0.25, 1.0, neutral))

    weighted_nll = weight_sum = 0.0
    batches = torch.load(batches_file)
    assert ("position_ids" in batches[0]) == packing
    with torch.no_grad():
        for batch in batches:
            labels = batch["labels"]
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            logits = model(**inputs).logits.double()[:, :-1]
            targets = labels[:, 1:]
            trained = targets != -100
            if packing:
                # The first token of every packed sequence is predicted from the previous sequence: no target
                trained &= batch["position_ids"][:, 1:] != 0
            nll = F.cross_entropy(logits[trained], targets[trained], reduction="none")
            token_weights = weights[targets[trained]]
            weighted_nll += (token_weights * nll).sum().item()
            weight_sum += token_weights.sum().item()
    first = logged(run)[1]
    assert first["loss"] == pytest.approx(weighted_nll / weight_sum, rel=1e-6)
    # Axolotl's `ppl` would be exp(loss): the plugin logs the perplexity of the data, exp(nll)
    assert first["ppl"] == pytest.approx(math.exp(first["nll"]), rel=1e-6) and first["nll"] != first["loss"]


@pytest.mark.distributed
def test_two_processes_train_as_one_with_accumulation(assets, tmp_path):
    one = train(assets / "pdl.yaml", tmp_path / "one", gradient_accumulation_steps=2)
    two = train(assets / "pdl.yaml", tmp_path / "two", processes=2, gradient_accumulation_steps=1)
    assert_same_training(one, two)


def test_resume_trains_as_the_uninterrupted_run(assets, tmp_path):
    checkpoints = {"save_strategy": "steps", "save_steps": 2}
    whole = train(assets / "pdl.yaml", tmp_path / "whole", **checkpoints)
    for folder in (whole / "checkpoint-2", whole / "checkpoint-4", whole):
        assert (folder / "pdl_counts.json").is_file() and (folder / "pdl_settings.json").is_file(), folder
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = train(
        assets / "pdl.yaml", resumed_dir, resume_from_checkpoint=str(resumed_dir / "checkpoint-2"), **checkpoints
    )
    assert_same_training(whole, resumed, steps=[3, 4])
    # A changed setting is refused: the checkpoint's table was built with the other one
    changed = tmp_path / "changed"
    shutil.copytree(whole / "checkpoint-2", changed / "checkpoint-2")
    output = training_failure(
        assets / "pdl.yaml",
        changed,
        pdl_alpha=0.5,
        resume_from_checkpoint=str(changed / "checkpoint-2"),
        **checkpoints,
    )
    assert "pdl_alpha" in output


def test_unmasked_training_set_is_refused_before_training(assets, tmp_path):
    output = training_failure(assets / "pdl.yaml", tmp_path / "run", train_on_inputs=True)
    assert "pdl_allow_unmasked_text: true" in output and "train_on_inputs: false" in output
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def validate(assets: Path, config: str, **changes):
    """Axolotl's validation of `config` with `changes` written into the YAML file (`load_cfg`'s own overrides would be
    cast to the type of the file's value first)."""
    from axolotl.cli.config import load_cfg

    # Axolotl writes its debug.log into `output_dir`: not into the working directory
    values = {**yaml.safe_load((assets / config).read_text()), **changes, "output_dir": str(assets / "validated")}
    changed = assets / "validate.yaml"
    changed.write_text(yaml.safe_dump(values))
    return load_cfg(str(changed))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pdl_alpha": -1}, "`pdl_alpha` must be a finite number >= 0, got -1. Use `pdl_alpha: 0.0` for plain SFT"),
        ({"pdl_alpha": "0.5"}, "`pdl_alpha` must be a number, got '0.5'"),
        ({"pdl_neutral_special_tokens": "yes"}, "`pdl_neutral_special_tokens` must be true or false"),
        ({"pdl_neutral_tokens": "<|im_end|>"}, "write `['<|im_end|>']`"),
        ({"use_dft": True}, "cannot run with: `use_dft`"),
        ({"chunked_cross_entropy": True, "use_dft": True}, "`use_dft` (DFT sets"),
        ({"context_parallel_size": 2}, "`context_parallel_size`"),
        ({"rl": "dpo"}, "`rl` (PDL is an SFT loss"),
    ],
)
def test_config_refusals(assets, overrides, message):
    with pytest.raises(Exception) as error:
        validate(assets, "pdl.yaml", **overrides)
    assert message in str(error.value)


def test_pdl_keys_need_the_plugin(assets):
    with pytest.raises(Exception) as error:
        validate(assets, "plain.yaml", pdl_alpha=0.5)
    assert f"Add `{PLUGIN}` under `plugins`" in str(error.value)
    # The installed plugin adds its keys to every config: one without them is untouched
    cfg = validate(assets, "plain.yaml")
    assert not cfg.plugins


def test_plugin_settings_reach_the_config(assets):
    cfg = validate(assets, "pdl.yaml", pdl_neutral_tokens=["<|im_end|>", 198], pdl_mix=0.5)
    assert (cfg.pdl_alpha, cfg.pdl_mix, cfg.pdl_neutral_tokens) == (0.25, 0.5, ["<|im_end|>", 198])


def test_cpu_example_trains(assets, tmp_path):
    """examples/axolotl/cpu-smollm2-pdl.yaml, as docs/axolotl.md runs it, on the tiny model and chat rows."""
    example = yaml.safe_load((Path(__file__).parents[2] / "examples/axolotl/cpu-smollm2-pdl.yaml").read_text())
    example["datasets"][0]["path"] = str(assets / "chat.jsonl")
    example.update(
        base_model=str(assets / "tiny-llama"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        max_steps=2,
        logging_steps=1,
    )
    (tmp_path / "example.yaml").write_text(yaml.safe_dump(example))
    run = train(tmp_path / "example.yaml", tmp_path / "run")
    assert logged(run)[2]["pdl_mean_weight"] > 0
    assert (run / "adapter_model.safetensors").is_file() and (run / "pdl_counts.json").is_file()


def test_example_config_validates(assets):
    """examples/axolotl/qlora-pdl.yaml as Axolotl checks it, with the tiny model in place of the Hub's."""
    example = yaml.safe_load((Path(__file__).parents[2] / "examples/axolotl/qlora-pdl.yaml").read_text())
    example.update(base_model=str(assets / "tiny-llama"), model_type="LlamaForCausalLM")
    (assets / "example.yaml").write_text(yaml.safe_dump(example))
    cfg = validate(assets, "example.yaml")
    assert cfg.plugins == [PLUGIN] and cfg.pdl_alpha == 0.25 and cfg.adapter == "qlora"
