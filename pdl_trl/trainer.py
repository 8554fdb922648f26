import os
import warnings
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_bitsandbytes_available, logging
from trl import SFTTrainer

from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import (
    COUNTS_FILE_NAME,
    TokenCounts,
    count_completion_tokens,
    has_masked_targets,
    tokenizer_fingerprint,
)
from pdl_trl.loss import power_law_decay_loss, power_law_weights, target_weights
from pdl_trl.metrics import completion_metrics, completion_sums


logger = logging.get_logger(__name__)

# Below this share of the largest weight, the end-of-sequence token is down-weighted enough to stop the model ending
# its answers: 0.0014 (alpha 1) did and 0.038 (alpha 0.5) half did on the bundled data; 0.19 (alpha 0.25) did not
EOS_WEIGHT_WARNING = 0.05


class PDLSFTTrainer(SFTTrainer):
    """
    [`~trl.SFTTrainer`] with the Power-Law Decay Loss on completion tokens.

    Takes the same arguments and datasets as `SFTTrainer` (prompt-completion, conversational with
    `assistant_only_loss`, packing, padding-free, PEFT and 4-bit QLoRA) with a [`PDLSFTConfig`]. After the datasets
    are prepared, counts how often each token is a training target (or loads `args.pdl_counts_path`) and builds
    `pdl_counts` and `pdl_weights`, one entry per row of the model's output embedding, identical on every process.

    The training loss is `sum(w * nll) / sum(w)` where both sums run over every micro-batch of the optimizer step on
    every process, so batch size x accumulation x processes can be traded without changing loss or gradients. The
    evaluation loss is the same ratio per evaluation batch. Logged beside TRL's metrics: `nll` (unweighted
    completion NLL, comparable with plain SFT), `pdl_mean_weight` and `pdl_ess`.

    Example:

    ```python
    from datasets import load_dataset
    from pdl_trl import PDLSFTConfig, PDLSFTTrainer

    trainer = PDLSFTTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        args=PDLSFTConfig(output_dir="out", pdl_alpha=0.25),
        train_dataset=load_dataset("trl-lib/tldr", split="train"),
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "sft", "pdl"]
    _name = "PDL SFT"
    # The training loss is divided by the weight sum of the whole optimizer step (see `get_batch_samples`): Trainer
    # must not divide it again by the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: PDLSFTConfig | TrainingArguments | None = None, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "`compute_loss_func` replaces the loss that PDL re-weights. Drop it, or use `trl.SFTTrainer`."
            )
        if kwargs.get("compute_metrics") is not None or kwargs.get("preprocess_logits_for_metrics") is not None:
            raise ValueError(
                "PDLSFTTrainer computes the loss on TRL's fused LM head, which builds no logits for `compute_metrics` "
                "or `preprocess_logits_for_metrics`. Drop them; `eval_nll`, `eval_entropy` and "
                "`eval_mean_token_accuracy` are logged, and `pdl-trl eval` scores generations."
            )
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = PDLSFTConfig(f"{model_name.split('/')[-1]}-PDL")
        elif not isinstance(args, PDLSFTConfig):
            # Like SFTTrainer with a TrainingArguments: keep every field set, PDL fields at their defaults
            dict_args = args.to_dict()
            # to_dict masks every field named `*_token` with a placeholder, not only `hub_token`: an SFTConfig's
            # `eos_token` would become '<EOS_TOKEN>' and fail as "not found in the vocabulary"
            for name in dict_args:
                if name.endswith("_token"):
                    dict_args[name] = getattr(args, name)
            args = PDLSFTConfig(**dict_args)
        super().__init__(model, args, **kwargs)

        if self.get_cp_size() > 1 or self.get_sp_size() > 1:
            raise ValueError(
                "PDL does not support context or sequence parallelism: they split sequences after the step's weight "
                "sum is taken. Set `parallelism_config` without cp/sp, or use data parallelism."
            )
        if isinstance(self.model, PeftModel) and self.model.active_peft_config.is_prompt_learning:
            raise ValueError(
                f"{self.model.active_peft_config.peft_type} pads the labels with virtual tokens, which misaligns "
                "PDL's per-target weights. Use LoRA (`peft.LoraConfig`) or another adapter that keeps the sequence."
            )
        if is_bitsandbytes_available():
            import bitsandbytes as bnb

            for module in self.model.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    # On AVX512-BF16 CPUs an eval-mode forward repacks the 4-bit weight for good into a layout whose
                    # kernel has no backward: later gradients through frozen 4-bit layers come out silently wrong.
                    module.support_avx512bf16_for_cpu = False

        if not self.args.pdl_allow_unmasked_text and not has_masked_targets(self.train_dataset):
            raise ValueError(
                "No training label is masked: the dataset looks like plain language-model text, so PDL would count "
                "and train prompt tokens too. Use prompt-completion data (`completion_only_loss`) or conversational "
                "data with `assistant_only_loss=True`, or set `pdl_allow_unmasked_text=True` if that is intended."
            )
        self._pdl_fingerprint = tokenizer_fingerprint(self._tokenizer)
        if self.args.pdl_counts_path is None:
            token_counts = TokenCounts(
                self._count_train_dataset(),
                self._tokenizer.name_or_path,
                self._pdl_fingerprint,
                source="training set completion tokens",
            )
        else:
            token_counts = TokenCounts.load(self.args.pdl_counts_path)
        self._set_pdl_table(token_counts)
        self._pdl_step_weight_sum = None

    @property
    def _output_rows(self) -> int:
        weight = self.model.get_output_embeddings().weight
        # ZeRO-3 partitions parameters at load time: the local tensor is empty and `ds_shape` holds the full shape
        return weight.ds_shape[0] if is_deepspeed_zero3_enabled() else weight.shape[0]

    def _count_train_dataset(self) -> np.ndarray:
        """Counts the prepared training set, each process one shard, summed so every process holds the same table."""
        counts = count_completion_tokens(
            self.train_dataset,
            self._output_rows,
            shard_index=self.accelerator.process_index,
            num_shards=self.accelerator.num_processes,
        )
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(torch.from_numpy(counts).to(self.accelerator.device), reduction="sum")
            counts = total.cpu().numpy()
        return counts

    def _set_pdl_table(self, token_counts: TokenCounts) -> None:
        token_counts.check_compatible(self._output_rows, self._pdl_fingerprint, self._tokenizer.name_or_path)
        self._pdl_token_counts = token_counts
        self.pdl_counts = torch.from_numpy(token_counts.counts)
        self.pdl_weights = power_law_weights(self.pdl_counts, self.args.pdl_alpha, self.args.pdl_epsilon).to(
            self.accelerator.device
        )
        eos_share = (self.pdl_weights[self._tokenizer.eos_token_id] / self.pdl_weights.max()).item()
        if eos_share < EOS_WEIGHT_WARNING:
            # Every example ends with this token, so it is the most frequent target there is: weighted down this far,
            # the model stops learning to end its answers (measured in docs/results.md)
            warnings.warn(
                f"PDL weights the end-of-sequence token {self._tokenizer.eos_token!r} at {eos_share:.3g} of the "
                f"rarest tokens (pdl_alpha={self.args.pdl_alpha}); the trained model may not stop generating. "
                "A smaller pdl_alpha (e.g. 0.25) keeps it learning to stop; check `mean_generation_length` with "
                "`pdl-trl eval`.",
                UserWarning,
                stacklevel=2,
            )
        seen = self.pdl_counts > 0
        logger.info(
            f"PDL table from {token_counts.source}: {token_counts.num_tokens} tokens, {int(seen.sum())} of "
            f"{len(seen)} types seen; alpha={self.args.pdl_alpha}, epsilon={self.args.pdl_epsilon}, weights "
            f"{self.pdl_weights.min().item():.3g}..{self.pdl_weights.max().item():.3g}"
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also takes the PDL weight sum of the whole optimizer step: every micro-batch, every process."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        weight_sum = torch.zeros((), device=self.pdl_weights.device)
        for batch in batch_samples:
            weight_sum += target_weights(self.pdl_weights, batch["labels"].to(self.pdl_weights.device)).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            weight_sum = self.accelerator.gather(weight_sum.to(device)).sum()
        self._pdl_step_weight_sum = weight_sum
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError(
                "PDLSFTTrainer computes the loss on the fused LM head and returns no logits. Leave "
                "`prediction_loss_only` unset (no `compute_metrics` / `preprocess_logits_for_metrics`)."
            )
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True

        outputs = model(**inputs, fused_lm_head=True)
        token_weights = target_weights(self.pdl_weights, inputs["labels"])
        if mode == "train":
            loss = power_law_decay_loss(outputs.log_probs, token_weights, self._pdl_step_weight_sum)
            # The weight sum covers every process and DDP averages gradients across processes
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if self.aux_loss_enabled:
                # A per-micro-batch mean: average it over the accumulation steps, as SFTTrainer does
                aux = self.router_aux_loss_coef * outputs.aux_loss
                loss = loss + aux / self.current_gradient_accumulation_steps
        else:
            loss = power_law_decay_loss(outputs.log_probs, token_weights)

        # SFTTrainer's metrics, then PDL's
        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                num_tokens_in_batch = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            else:  # padding-free batches carry position_ids instead
                local_num_tokens = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                num_tokens_in_batch = self.accelerator.gather_for_metrics(local_num_tokens).sum().item()
            self._total_train_tokens += num_tokens_in_batch // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        sums = completion_sums(outputs.log_probs, token_weights, outputs.label_mask)
        for key, value in completion_metrics(self.accelerator.gather_for_metrics(sums[None]).sum(0)).items():
            self._metrics[mode][key].append(value)
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model as SFTTrainer does, plus the PDL counts (`pdl_counts.json`) used by this run."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self._pdl_token_counts.save(Path(output_dir or self.args.output_dir) / COUNTS_FILE_NAME)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trains as SFTTrainer does; resuming also restores the checkpoint's PDL counts, so the table is identical."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint:
            counts_path = os.path.join(checkpoint, COUNTS_FILE_NAME)
            if not os.path.exists(counts_path):
                raise FileNotFoundError(
                    f"{checkpoint} has no {COUNTS_FILE_NAME}: it was not written by PDLSFTTrainer, so the PDL "
                    "table of that run is unknown. To start PDL from its weights, load them as the model."
                )
            token_counts = TokenCounts.load(counts_path)
            if not np.array_equal(token_counts.counts, self._pdl_token_counts.counts):
                logger.warning(
                    f"The counts saved in {checkpoint} differ from this run's ({self._pdl_token_counts.source}); "
                    "resuming with the checkpoint's, so the weights stay those the run started with."
                )
            self._set_pdl_table(token_counts)
        return super().train(resume_from_checkpoint, *args, **kwargs)
