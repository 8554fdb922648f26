"""QLoRA on CUDA in bf16 (GPU tier): skipped without a CUDA device.

Checks what CPU runs cannot: bitsandbytes' CUDA 4-bit kernels, bf16 mixed precision and the fused LM head's CUDA
path, against a full-logits `F.cross_entropy(weight=...)` reference on the same weights.
"""

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny import prompt_completion_dataset, save_tiny_model
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from pdl_trl import PDLSFTConfig, PDLSFTTrainer


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def make_qlora_trainer(model_dir: Path, **config) -> PDLSFTTrainer:
    args = PDLSFTConfig(
        output_dir=tempfile.mkdtemp(),
        bf16=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        pdl_alpha=0.5,
        per_device_train_batch_size=8,
        **config,
    )
    return PDLSFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=prompt_completion_dataset(64),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )


@pytest.fixture(scope="module")
def model_dir():
    return save_tiny_model(Path(tempfile.mkdtemp()))


def test_cuda_qlora_loss_and_gradients_match_full_logits_reference(model_dir):
    trainer = make_qlora_trainer(model_dir, max_steps=1)
    model = trainer.model
    model.train()
    batch = {k: v.to(trainer.args.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}
    halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
    lora = [p for p in model.parameters() if p.requires_grad]

    # Whole batch as one micro-batch, then as two accumulation micro-batches: same loss, same gradients
    trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
    with trainer.compute_loss_context_manager(), trainer.autocast_smart_context_manager():
        loss_full = trainer.compute_loss(model, dict(batch))
    grads_full = torch.autograd.grad(loss_full, lora)
    trainer.get_batch_samples(iter(halves), 2, trainer.args.device)
    losses, grads_split = [], None
    for half in halves:
        with trainer.compute_loss_context_manager(), trainer.autocast_smart_context_manager():
            loss = trainer.compute_loss(model, dict(half))
        grads = torch.autograd.grad(loss, lora)
        grads_split = grads if grads_split is None else [a + b for a, b in zip(grads_split, grads, strict=True)]
        losses.append(loss.detach())
    torch.testing.assert_close(sum(losses), loss_full.detach(), rtol=1e-2, atol=0)
    for split, full in zip(grads_split, grads_full, strict=True):
        torch.testing.assert_close(split.float(), full.float(), rtol=5e-2, atol=1e-4)

    # Full-logits class-weighted cross-entropy on the same 4-bit weights, in fp32
    with torch.no_grad(), trainer.autocast_smart_context_manager():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    reference = F.cross_entropy(
        logits[:, :-1].flatten(0, 1),
        batch["labels"][:, 1:].flatten(),
        weight=trainer.pdl_table.weights,
        ignore_index=-100,
    )
    torch.testing.assert_close(loss_full.detach().float(), reference, rtol=1e-2, atol=0)


def test_cuda_qlora_trains_only_lora_parameters(model_dir):
    trainer = make_qlora_trainer(model_dir, max_steps=3, learning_rate=1e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed, "no parameter changed"
    assert all("lora_" in n for n in changed), sorted(changed - {n for n in changed if "lora_" in n})
    assert any("lora_B" in n for n in changed)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert all("nll" in log and "pdl_ess" in log for log in trainer.state.log_history if "loss" in log)
