"""
Differences between the library releases pdl-trl supports (TRL 1.14.1 to 1.16, transformers 5.17 and later), in one
place: each gate keyed on the installed version and commented with the upstream change it follows; once the minimum
versions pass a gate, its branch can go. Also the window itself (checked at import) and two bitsandbytes workarounds.
"""

import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
import trl
from packaging.version import Version
from transformers.utils import is_bitsandbytes_available, is_triton_available


class _DropRecords(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_bitsandbytes_kernel_lookup() -> None:
    """
    Drops the two log lines bitsandbytes 0.50 prints at import on CPUs with AVX512-BF16 when its optional Hub kernel
    (`kernels-community/quantization-bitsandbytes`, a faster 4-bit inference matmul) cannot be fetched: offline, or
    without the Hub, every command printed them, once or twice. The kernel speeds up only the repacked inference path
    that `keep_4bit_gradients_exact` turns off for training, so losing it changes nothing pdl-trl trains or reports.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropRecords("Failed to load CPU gemm_4bit_forward"))
    logging.getLogger("kernels._internals.hf_hub").addFilter(
        _DropRecords("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'")
    )


quiet_bitsandbytes_kernel_lookup()


def keep_4bit_gradients_exact(model) -> None:
    """
    Turns off bitsandbytes' AVX512-BF16 CPU repacking on every 4-bit layer of `model`.

    bitsandbytes 0.50 (`Linear4bit.forward`, its CPU backend): on a CPU with AVX512-BF16, an eval-mode forward
    without gradients repacks the 4-bit weight for good into a layout whose kernel (`gemv_4bit`) has no backward, so
    later gradients through frozen 4-bit layers come out silently wrong. GPUs never take this path.
    """
    if not is_bitsandbytes_available():
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _release(version: str) -> Version:
    """`1.16.0.dev0` counts as 1.16.0: a development build of a release already has its changes."""
    return Version(Version(version).base_version)


TRL_VERSION = _release(trl.__version__)
TRANSFORMERS_VERSION = _release(transformers.__version__)

# TRL 1.15.0 replaced the `chunked_nll` patched forward (`_patch_chunked_ce_lm_head`) by `add_fused_lm_head`
# (`model(..., fused_lm_head=True)` returning per-token `log_probs`, `entropy`, `is_top1`, `label_mask`), made
# `loss_type="nll"` the default (1.14: `None`, resolved to `"chunked_nll"`) with `"chunked_nll"` a deprecated alias,
# made `SFTTrainer.prediction_step` loss-only, and added `trl.data_utils.common_prefix_length` (the completion of a
# prompt-completion example starts where prompt and prompt+completion diverge; 1.14: after `len(prompt_ids)`).
TRL_AT_LEAST_1_15 = TRL_VERSION >= Version("1.15.0")
# TRL 1.16.0 gave the fused head's kernel (`trl/kernels/chunked_logprob.py`) a torch path for devices without Triton.
# In 1.15 it is Triton only: `trl.trainer.utils._ChunkedLogProbFunction` is None without Triton, and the kernel needs
# a CUDA or XPU device, so `fused_lm_head=True` fails on CPU even in `trl.SFTTrainer`.
TRL_AT_LEAST_1_16 = TRL_VERSION >= Version("1.16.0")
# transformers 5.18.0 added `Trainer.end()`: finish the trackers and destroy the process group.
TRANSFORMERS_HAS_TRAINER_END = TRANSFORMERS_VERSION >= Version("5.18.0")
# transformers 5.19.0 added `Trainer.loss_is_scaled_for_ga`; TRL 1.15's `_BaseTrainer.__init__` backports it to older
# transformers (`trl/trainer/base_trainer.py`), TRL 1.14's does not.
TRANSFORMERS_HAS_LOSS_IS_SCALED_FOR_GA = TRANSFORMERS_VERSION >= Version("5.19.0")
# transformers 5.23.0 added `TrainingArguments.activation_checkpointing`; `gradient_checkpointing` is now its alias.
TRANSFORMERS_HAS_ACTIVATION_CHECKPOINTING = TRANSFORMERS_VERSION >= Version("5.23.0")


if TRANSFORMERS_HAS_ACTIVATION_CHECKPOINTING:

    @dataclass
    class TrainingArgumentsBackports:
        pass

else:

    @dataclass
    class TrainingArgumentsBackports:
        """`activation_checkpointing(_kwargs)` of transformers >= 5.23 on older transformers, where they set
        `gradient_checkpointing(_kwargs)`, so that configs written for either release parse."""

        activation_checkpointing: bool | None = field(
            default=None,
            metadata={"help": "Enable activation checkpointing: `gradient_checkpointing` before transformers 5.23."},
        )
        activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
            default=None,
            metadata={"help": "`gradient_checkpointing_kwargs` before transformers 5.23."},
        )

        def __post_init__(self):
            if self.activation_checkpointing is not None:
                self.gradient_checkpointing = self.activation_checkpointing
            if self.activation_checkpointing_kwargs is not None:
                self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs
            super().__post_init__()
            self.activation_checkpointing = self.gradient_checkpointing
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs


def normalize_loss_type(config) -> None:
    """Before `SFTConfig.__post_init__`: on TRL < 1.15 the default `loss_type=None` would become `"chunked_nll"`,
    which PDL computes as `"nll"`; map both as TRL 1.15 does."""
    if TRL_AT_LEAST_1_15:
        return
    if config.loss_type == "chunked_nll":
        warnings.warn(
            "`loss_type='chunked_nll'` is computed as `loss_type='nll'` by PDL; TRL 1.15 deprecates it as an alias of "
            "`'nll'`, to be removed in TRL 2.0.",
            FutureWarning,
            stacklevel=4,
        )
    if config.loss_type in (None, "chunked_nll"):
        config.loss_type = "nll"


def before_trainer_init(args) -> None:
    """Before `SFTTrainer.__init__`."""
    if not TRL_AT_LEAST_1_15:
        # TRL 1.15.0 seeds before it creates the model and the PEFT adapter, whose weights are drawn at random
        # (`set_seed(args.seed)` in `SFTTrainer.__init__`); 1.14 does not, so the adapter depends on what ran before
        transformers.set_seed(args.seed)


def after_trainer_init(trainer) -> None:
    """Once `SFTTrainer.__init__` has run."""
    if not (TRL_AT_LEAST_1_15 or TRANSFORMERS_HAS_LOSS_IS_SCALED_FOR_GA) and trainer.loss_is_scaled_for_ga:
        # What TRL 1.15's `_BaseTrainer` does: the two attributes `training_step` reads before transformers 5.19, so
        # that it does not divide the step-normalized loss by the accumulation steps again
        trainer.model_accepts_loss_kwargs = False
        trainer.compute_loss_func = "non-None value to disable scaling"


def end_training(trainer) -> None:
    """`trainer.end()`, which before transformers 5.18 is `accelerator.end_training()`, what it calls."""
    if TRANSFORMERS_HAS_TRAINER_END:
        trainer.end()
    else:
        trainer.accelerator.end_training()


@dataclass
class LMHeadOutputs:
    """What PDL reads of TRL's `FusedCausalLMOutput`: per next-token target, shape `(batch, seq_len - 1)`, zero where
    the label is -100."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    is_top1: torch.Tensor
    label_mask: torch.Tensor
    aux_loss: torch.Tensor | None = None


def fused_lm_head_runs_on(device: torch.device) -> bool:
    """Whether `model(..., fused_lm_head=True)` of the installed TRL (and so `trl.SFTTrainer`) runs on `device`."""
    if TRL_AT_LEAST_1_16:
        return True
    if not TRL_AT_LEAST_1_15:
        return False
    # Unsloth (2026.10, its CPU backend), once imported, routes TRL 1.15's Triton-only kernel to torch elsewhere,
    # so that its users' SFTTrainer trains there: PDL then takes the same head as their SFTTrainer
    return (is_triton_available() and device.type in ("cuda", "xpu")) or "unsloth" in sys.modules


def lm_head_outputs(model, inputs: dict):
    """
    `model(**inputs, fused_lm_head=True)` where TRL's fused LM head runs; elsewhere (TRL 1.14, which has none, and TRL
    1.15 without Triton) the same fields, as [`LMHeadOutputs`], from the model's own logits: the full
    `(batch, seq_len, vocab)` logits are built then, in float32, as `loss_type="nll"` did before TRL 1.15.
    """
    labels = inputs["labels"]
    if fused_lm_head_runs_on(labels.device):
        return model(**inputs, fused_lm_head=True)
    # Without labels, the forward of TRL 1.15's patched model (and the unpatched one of 1.14 with `loss_type="nll"`)
    # is the model's own: logits with its softcapping and scaling applied, and `aux_loss` for MoE router logits
    outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
    logits = outputs.logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    mask = targets != -100
    log_z = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    log_probs = torch.where(mask, target_logits - log_z, 0.0)
    with torch.no_grad():
        entropy = torch.where(mask, log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1), 0.0)
        is_top1 = (logits.argmax(dim=-1) == targets) & mask
    # `aux_loss` is an output of MoE models only (a `ModelOutput` key, None when absent)
    return LMHeadOutputs(log_probs, entropy, is_top1, mask, outputs.get("aux_loss"))


def loss_only_prediction_step(trainer, model, inputs):
    """`SFTTrainer.prediction_step` of TRL >= 1.15 (loss only). TRL 1.14's goes through `Trainer.prediction_step`,
    which asks `compute_loss` for outputs (logits) and passes `_prediction_loss_only` in `inputs`."""
    inputs = trainer._prepare_inputs(inputs)
    inputs.pop("_prediction_loss_only", None)
    with torch.no_grad(), trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, inputs, return_outputs=False)
    return loss.detach(), None, None


def completion_start(prompt_ids: list[int], prompt_completion_ids: list[int]) -> int:
    """Where SFTTrainer starts the completion of a tokenized prompt-completion example."""
    if TRL_AT_LEAST_1_15:
        from trl.data_utils import common_prefix_length

        return common_prefix_length(prompt_ids, prompt_completion_ids)
    return len(prompt_ids)


# The releases pdl-trl is tested with, at both ends (docs/usage.md, "Compatibility"): older ones lack what it builds
# on (TRL's `SFTTrainer` internals changed completely between 1.10 and 1.14); newer ones are warned about
SUPPORTED = {"trl": ("1.14.1", "1.17"), "transformers": ("5.17.0", "6")}


def check_versions() -> None:
    """
    Refuses, at import, a TRL or transformers older than the supported window, and warns about a newer one: naming the
    window, instead of an `AttributeError` deep in training.
    """
    for package, installed in (("trl", TRL_VERSION), ("transformers", TRANSFORMERS_VERSION)):
        low, high = SUPPORTED[package]
        if installed < Version(low):
            raise ImportError(
                f"pdl-trl supports {package} >= {low}, < {high}; {package} {installed} is installed. Install a "
                f"supported release: `pip install '{package}>={low},<{high}'`."
            )
        if installed >= Version(high):
            warnings.warn(
                f"pdl-trl is tested with {package} >= {low}, < {high}; {package} {installed} is newer and untested: "
                f"if training fails or its loss looks wrong, install `'{package}<{high}'`.",
                UserWarning,
                stacklevel=3,
            )


check_versions()
