"""PDLSFTTrainer under Unsloth's CPU backend (unsloth 2026.10.9, trl 1.15.0, transformers 5.17.0), offline.

Runs in the Unsloth CI environment (`.ci/compat.sh`), in its own pytest process; skipped where Unsloth is not
installed:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv-unsloth/bin/python -m pytest -q tests/with_unsloth

`import unsloth` must run before trl / transformers / pdl_trl are imported (it patches them), so this module imports it
first and must not share a pytest process with modules that import trl earlier.

What is checked:
1. the class chain: PDLSFTTrainer -> Unsloth's CPU SFTTrainer -> trl.SFTTrainer, and the fused LM head served by
   Unsloth's CPU kernel;
2. pdl_alpha=0 trains exactly like the SFTTrainer Unsloth's users get (its chunked cross-entropy path), and bit for
   bit like TRL's own fused-head loss (UNSLOTH_CPU_CHUNKED_CE=0), at accumulation 1 and 2: logged losses, LoRA
   gradients of every step, final LoRA weights;
3. pdl_alpha>0: the first logged loss equals sum(w * nll) / sum(w) computed by hand (counts from tokenizing the
   completions, weights from `power_law_weights`, NLL from full logits of the untrained model), at accumulation 1
   and 2;
4. a canary on Unsloth's GPU-path rewrite of trl.SFTTrainer, built on CPU (see `test_gpu_path_trainer_rewrite_canary`).
"""

import os
import sys
from collections import Counter
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The CPU backend picks bf16 when the CPU has AVX512-BF16/AMX: pin fp32 so the run is the same on every CI machine
os.environ.setdefault("UNSLOTH_CPU_BF16", "0")

import pytest  # noqa: E402


unsloth = pytest.importorskip("unsloth")  # first: patches transformers and trl
from unsloth import FastLanguageModel  # noqa: E402


# isort: split
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback  # noqa: E402
from trl import SFTConfig  # noqa: E402

from pdl_trl import PDLSFTConfig, PDLSFTTrainer  # noqa: E402
from pdl_trl.loss import power_law_weights  # noqa: E402
from pdl_trl.trainer_mixin import PDLTrainerMixin  # noqa: E402


# The package's own offline tokenizer (tests/helpers/tiny.py)
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from helpers.tiny import SPECIAL_TOKENS, build_tokenizer, make_rows  # noqa: E402


NUM_ROWS = 8  # one optimizer step sees every row: batch 8 x accumulation 1, or 4 x 2
STEPS = 3
LORA_SEED = 3407


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dataset():
    return Dataset.from_list(make_rows(NUM_ROWS, seed=0))


def load(model_dir, chunked_ce=True):
    """Unsloth's CPU loader + LoRA, fp32. `chunked_ce=False` leaves the model's forward alone, so Unsloth's
    SFTTrainer falls back to TRL's fused-head loss."""
    previous = os.environ.get("UNSLOTH_CPU_CHUNKED_CE")
    os.environ["UNSLOTH_CPU_CHUNKED_CE"] = "1" if chunked_ce else "0"
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            str(model_dir), max_seq_length=64, dtype=torch.float32, load_in_4bit=False
        )
    finally:
        if previous is None:
            del os.environ["UNSLOTH_CPU_CHUNKED_CE"]
        else:
            os.environ["UNSLOTH_CPU_CHUNKED_CE"] = previous
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0.0, random_state=LORA_SEED)
    return model, tokenizer


class GradCapture(TrainerCallback):
    """LoRA gradients of every optimizer step, before the optimizer uses them."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        )


def train(trainer_cls, config_cls, model, tokenizer, dataset, output_dir, accumulation=1, **config):
    args = config_cls(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=NUM_ROWS // accumulation,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        seed=0,
        max_length=64,
        dataloader_num_workers=0,
        **config,
    )
    capture = GradCapture()
    trainer = trainer_cls(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[capture]
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return trainer, losses, capture.grads, lora


def assert_close_dicts(actual, expected, rtol, atol):
    assert actual.keys() == expected.keys() and actual
    for name in expected:
        message = lambda m, n=name: f"{n}: {m}"  # noqa: E731
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=message)


def test_class_chain_and_fused_head(model_dir, dataset, tmp_path):
    # Unsloth's CPU backend subclasses trl's SFTTrainer in place of it; pdl_trl, imported later, builds on that
    assert PDLSFTTrainer.__bases__ == (PDLTrainerMixin, trl.SFTTrainer)
    assert getattr(trl.SFTTrainer, "_unsloth_cpu", False)
    assert trl.SFTTrainer.__mro__[1] is trl.trainer.sft_trainer.SFTTrainer.__mro__[1]
    # Unsloth patches TRL's compute_loss in place; PDL's override must not reach it
    assert getattr(trl.SFTTrainer.compute_loss, "_unsloth_cpu", False)
    assert "compute_loss" in vars(PDLSFTTrainer)
    # TRL 1.15's fused-head kernel is Triton only; Unsloth routes CPU tensors to a torch implementation
    assert getattr(trl.trainer.utils._ChunkedLogProbFunction, "_unsloth_cpu_dispatch", False)

    model, tokenizer = load(model_dir)
    trainer = PDLSFTTrainer(
        model=model,
        args=PDLSFTConfig(str(tmp_path), report_to="none", bf16=False, max_length=64, per_device_train_batch_size=4),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        outputs = trainer.model(**batch, fused_lm_head=True)
        logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for field in ("log_probs", "entropy", "is_top1", "label_mask"):
        assert getattr(outputs, field) is not None, field
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    assert torch.equal(outputs.label_mask, mask)
    reference = -F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, reduction="none")
    torch.testing.assert_close(outputs.log_probs, reference * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("chunked_ce", [True, False], ids=["unsloth-chunked-ce", "trl-fused-head"])
def test_alpha_zero_matches_sft(model_dir, dataset, tmp_path, accumulation, chunked_ce):
    model, tokenizer = load(model_dir, chunked_ce)
    _, sft_losses, sft_grads, sft_lora = train(
        trl.SFTTrainer, SFTConfig, model, tokenizer, dataset, tmp_path / "sft", accumulation
    )
    model, tokenizer = load(model_dir, chunked_ce)
    _, pdl_losses, pdl_grads, pdl_lora = train(
        PDLSFTTrainer, PDLSFTConfig, model, tokenizer, dataset, tmp_path / "pdl", accumulation, pdl_alpha=0.0
    )
    assert len(sft_losses) == len(pdl_losses) == STEPS
    assert len(sft_grads) == len(pdl_grads) == STEPS
    # Unsloth's chunked CE and the fused head are two implementations of the same sum; TRL's path is the same code
    tolerance = dict(rtol=1e-5, atol=1e-6) if chunked_ce else dict(rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(pdl_losses), torch.tensor(sft_losses), **tolerance)
    for step in range(STEPS):
        assert_close_dicts(pdl_grads[step], sft_grads[step], **tolerance)
    assert_close_dicts(pdl_lora, sft_lora, **tolerance)


def hand_counted_targets(tokenizer, rows):
    """Completion targets of prompt-completion rows as TRL builds them: tokens of prompt+completion after the prompt's,
    then EOS."""
    targets = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert full[: len(prompt)] == prompt
        targets += full[len(prompt) :] + [tokenizer.eos_token_id]
    return targets


@pytest.mark.parametrize("neutral_special", [False, True], ids=["paper-formula", "neutral-special"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_alpha_positive_first_loss_by_hand(model_dir, dataset, tmp_path, accumulation, neutral_special):
    alpha, epsilon = 0.5, 1.0
    model, tokenizer = load(model_dir)
    # Hand reference on the untrained model (LoRA B = 0): full logits, float64 cross-entropy
    targets = hand_counted_targets(tokenizer, list(dataset))
    vocab = model.get_output_embeddings().weight.shape[0]
    counts = torch.zeros(vocab, dtype=torch.long)
    for token, count in Counter(targets).items():
        counts[token] = count
    neutral = torch.zeros(vocab, dtype=torch.bool)
    if neutral_special:  # every special token of this tokenizer (EOS <|im_end|>, pad, ...) weighs the mean
        neutral[[tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]] = True
    weights = power_law_weights(counts, alpha, epsilon, neutral=neutral)
    numerator = denominator = 0.0
    with torch.no_grad():
        for row in dataset:
            prompt = tokenizer(row["prompt"])["input_ids"]
            ids = tokenizer(row["prompt"] + row["completion"])["input_ids"] + [tokenizer.eos_token_id]
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            nll = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")[len(prompt) - 1 :]
            w = weights[torch.tensor(ids[len(prompt) :])].double()
            numerator += (w * nll).sum().item()
            denominator += w.sum().item()
    expected = numerator / denominator

    trainer, losses, _, _ = train(
        PDLSFTTrainer,
        PDLSFTConfig,
        model,
        tokenizer,
        dataset,
        tmp_path,
        accumulation,
        pdl_alpha=alpha,
        pdl_epsilon=epsilon,
        pdl_neutral_special_tokens=neutral_special,
    )
    # The trainer counted the same targets
    assert torch.equal(torch.from_numpy(trainer.pdl_table.counts.counts)[:vocab], counts)
    assert torch.equal(trainer.pdl_table.neutral_mask.cpu()[:vocab], neutral)
    # transformers 5.17 logs the step's loss unrounded
    assert losses[0] == pytest.approx(expected, rel=1e-5)


# Unsloth's GPU path replaces trl.SFTTrainer with a source-rewritten `UnslothSFTTrainer` (unsloth/models/rl.py,
# `patch_trl_rl_trainers`, run at `import unsloth`) and, when a model is loaded, rewrites transformers.Trainer's
# `training_step`, `get_batch_samples` and `compute_loss` (`patch_gradient_accumulation_fix` in
# unsloth/models/_utils.py).
# None of it runs on a CPU host, where the CPU backend is chosen instead; UNSLOTH_ALLOW_CPU=1 imports the GPU path
# anyway but skips the rewrites, so this canary calls both by hand (private APIs) and routes TRL's Triton-only fused
# head to unsloth_zoo's CPU kernel. It checks that PDLSFTTrainer builds on the rewritten classes and that accumulation
# stays exact under them. A separate process: the GPU path and the CPU backend cannot share one.
GPU_PATH_CANARY = r"""
import os, sys, tempfile, json
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth
import transformers
from unsloth.models.rl import patch_trl_rl_trainers
from unsloth.models._utils import patch_gradient_accumulation_fix
patch_trl_rl_trainers()
patch_gradient_accumulation_fix(transformers.Trainer)
import trl
from unsloth_zoo.cpu.ops import patch_trl_fused_lm_head
assert patch_trl_fused_lm_head()
from pdl_trl import PDLSFTConfig, PDLSFTTrainer
sys.path.insert(0, sys.argv[1])
from helpers.tiny import build_tokenizer, build_model, make_rows
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

class Grads(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.first = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

tokenizer = build_tokenizer()
dataset = Dataset.from_list(make_rows(8))
result = {
    "mro": [c.__name__ for c in PDLSFTTrainer.__mro__[:5]],
    "patched": [transformers.Trainer.training_step.__name__, transformers.Trainer.get_batch_samples.__name__],
}
grads = {}
runs = (
    ("sft-ga2", trl.SFTTrainer, trl.SFTConfig, 2, {}),
    ("pdl0-ga2", PDLSFTTrainer, PDLSFTConfig, 2, {"pdl_alpha": 0.0}),
    ("pdl-ga1", PDLSFTTrainer, PDLSFTConfig, 1, {"pdl_alpha": 0.5}),
    ("pdl-ga2", PDLSFTTrainer, PDLSFTConfig, 2, {"pdl_alpha": 0.5}),
)
for name, cls, config_cls, accumulation, extra in runs:
    args = config_cls(tempfile.mkdtemp(), max_steps=2, report_to="none", use_cpu=True, bf16=False, fp16=False,
                      optim="adamw_torch", per_device_train_batch_size=8 // accumulation,
                      gradient_accumulation_steps=accumulation, learning_rate=1e-2, lr_scheduler_type="constant",
                      logging_steps=1, gradient_checkpointing=False, save_strategy="no", disable_tqdm=True, **extra)
    capture = Grads()
    trainer = cls(model=build_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer,
                  callbacks=[capture], peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    trainer.train()
    result[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    grads[name] = capture.first
for a, b in (("sft-ga2", "pdl0-ga2"), ("pdl-ga1", "pdl-ga2")):
    result[f"{a} vs {b}"] = max((grads[a][k] - grads[b][k]).abs().max().item() for k in grads[a])
print("RESULT " + json.dumps(result))
"""


def test_gpu_path_trainer_rewrite_canary(tmp_path):
    import json
    import subprocess

    script = tmp_path / "canary.py"
    script.write_text(GPU_PATH_CANARY)
    done = subprocess.run(
        [sys.executable, str(script), str(TESTS)], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["mro"][:4] == ["PDLSFTTrainer", "PDLTrainerMixin", "UnslothSFTTrainer", "_UnslothSFTTrainer"]
    assert result["patched"] == ["_unsloth_training_step", "_unsloth_get_batch_samples"]
    # Unsloth's SFT loss is the model's own forward (Trainer.compute_loss), PDL's the fused head: float32 apart
    assert result["pdl0-ga2"] == pytest.approx(result["sft-ga2"], rel=1e-5)
    assert result["sft-ga2 vs pdl0-ga2"] < 1e-6
    # Unsloth's rewritten training_step leaves PDL's step-wide normaliser alone: accumulation changes nothing
    assert result["pdl-ga2"] == pytest.approx(result["pdl-ga1"], rel=1e-5)
    assert result["pdl-ga1 vs pdl-ga2"] < 1e-6
