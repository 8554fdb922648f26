import textwrap
import warnings
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.utils import logging
from trl import SFTTrainer

from pdl_trl.atomic import write_text_atomically
from pdl_trl.compat import (
    TRL_AT_LEAST_1_15,
    after_trainer_init,
    before_trainer_init,
    keep_4bit_gradients_exact,
    lm_head_outputs,
    loss_only_prediction_step,
)
from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint
from pdl_trl.guards import check_counts_cover_train_dataset, check_prepared_trainer, check_trainer_arguments
from pdl_trl.loss import power_law_decay_loss, target_weights
from pdl_trl.metrics import METRIC_KEYS, completion_metrics, completion_sums
from pdl_trl.spelling import option
from pdl_trl.trainer_mixin import PDLTrainerMixin


logger = logging.get_logger(__name__)


def _as_pdl_config(args, model) -> PDLSFTConfig:
    """`args` as a `PDLSFTConfig`, converted as SFTTrainer converts a `TrainingArguments`: PDL fields at defaults."""
    if args is None:
        model_name = model if isinstance(model, str) else model.config._name_or_path
        return PDLSFTConfig(f"{model_name.split('/')[-1]}-PDL")
    if isinstance(args, PDLSFTConfig):
        return args
    dict_args = args.to_dict()
    # to_dict masks every field named `*_token` with a placeholder, not only `hub_token`: an SFTConfig's
    # `eos_token` would become '<EOS_TOKEN>' and fail as "not found in the vocabulary"
    for name in dict_args:
        if name.endswith("_token"):
            dict_args[name] = getattr(args, name)
    return PDLSFTConfig(**dict_args)


class PDLSFTTrainer(PDLTrainerMixin, SFTTrainer):
    """
    [`~trl.SFTTrainer`] with the Power-Law Decay Loss on completion tokens.

    Takes the same arguments and datasets as `SFTTrainer` (prompt-completion, conversational with
    `assistant_only_loss`, packing, padding-free, PEFT and 4-bit QLoRA) with a [`PDLSFTConfig`]. After the datasets
    are prepared, counts how often each token is a training target (or loads `args.pdl_counts_path`) and builds its
    weight table, `pdl_table` ([`~pdl_trl.weights.WeightTable`]: counts, weights and neutral mask, one entry per row
    of the model's output embedding, identical on every process).

    The training loss is `sum(w * nll) / sum(w)` where both sums run over every micro-batch of the optimizer step on
    every process, so batch size x accumulation x processes can be traded without changing loss or gradients. The
    evaluation loss is the same ratio per evaluation batch. Logged beside TRL's metrics: `nll` (unweighted
    completion NLL, comparable with plain SFT), `pdl_mean_weight`, `pdl_ess` and `pdl_neutral_share`.

    Example:

    ```python
    from datasets import load_dataset
    from pdl_trl import PDLSFTConfig, PDLSFTTrainer

    trainer = PDLSFTTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        args=PDLSFTConfig(output_dir="out"),  # PDL at its defaults: pdl_alpha=0.25, special tokens neutral
        train_dataset=load_dataset("trl-lib/tldr", split="train"),
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "sft", "pdl"]
    _name = "PDL SFT"
    _paper = {
        "title": "Power-Law Decay Loss for Large Language Model Finetuning: A Theory Perspective",
        "id": "2505.16900",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @misc{shao2025powerlawdecayloss,
                title        = {{Power-Law Decay Loss for Large Language Model Finetuning: A Theory Perspective}},
                author       = {Jintian Shao},
                year         = 2025,
                eprint       = {2505.16900},
                archivePrefix= {arXiv},
                primaryClass = {cs.CL},
            }"""),
    }

    def __init__(self, model, args: PDLSFTConfig | TrainingArguments | None = None, **kwargs):
        args = _as_pdl_config(args, model)
        check_trainer_arguments(args, kwargs)
        counts = None if args.pdl_counts_path is None else TokenCounts.load(args.pdl_counts_path)

        before_trainer_init(args)
        super().__init__(model, args, **kwargs)
        after_trainer_init(self)

        check_prepared_trainer(self)
        keep_4bit_gradients_exact(self.model)
        if counts is not None:
            counts.check_compatible(
                self._output_rows,
                tokenizer_fingerprint(self._tokenizer),
                self._tokenizer.name_or_path,
                f"Recount with `pdl-trl count --model_name_or_path {self._tokenizer.name_or_path} ...`, or drop "
                f"{option('pdl_counts_path')} to count the training set.",
            )
        else:
            counts = TokenCounts(
                self._count_train_dataset(),
                self._tokenizer.name_or_path,
                tokenizer_fingerprint(self._tokenizer),
                source="training set completion tokens",
            )
        self.pdl_table = self.build_pdl_table(counts)
        logger.info(self.pdl_table.describe())
        if args.pdl_counts_path is not None and self.train_dataset is not None:
            check_counts_cover_train_dataset(self.train_dataset, counts.counts, args.pdl_counts_path)
        self._pdl_step_weight_sum = None
        self._pdl_metric_prefix = "eval"

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

        outputs = lm_head_outputs(model, inputs)
        token_weights = target_weights(self.pdl_table.weights, inputs["labels"])
        loss_weights = token_weights
        if self.args.loss_type == "dft":
            # DFT: https://huggingface.co/papers/2508.05629 — each token's loss also times its detached probability,
            # as in SFTTrainer; the normaliser stays the PDL weight sum, so at pdl_alpha=0 this is SFTTrainer's DFT
            loss_weights = token_weights * outputs.log_probs.exp().detach()
        if mode == "train":
            loss = power_law_decay_loss(outputs.log_probs, loss_weights, self._pdl_step_weight_sum)
            # The weight sum covers every process and DDP averages gradients across processes
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        else:
            loss = power_law_decay_loss(outputs.log_probs, loss_weights, token_weights.sum())
        if self.aux_loss_enabled:
            # A per-micro-batch mean, as in SFTTrainer: averaged over the accumulation steps in training
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps

        self._log_sft_metrics(mode, inputs, outputs)
        neutral_weights = token_weights * target_weights(self.pdl_table.neutral_mask, inputs["labels"])
        sums = completion_sums(outputs.log_probs, token_weights, outputs.label_mask, neutral_weights)
        for key, value in completion_metrics(self.accelerator.gather_for_metrics(sums[None]).sum(0)).items():
            self._metrics[mode][key].append(value)
        return loss

    def _log_sft_metrics(self, mode: str, inputs: dict, outputs) -> None:
        """
        SFTTrainer's own metrics of a batch: `entropy`, `mean_token_accuracy`, `num_tokens` and, for MoE models,
        `aux_loss`. A copy of the metric bookkeeping at the end of `SFTTrainer.compute_loss` in trl 1.16.0
        (`trl/trainer/sft_trainer.py`, after the loss branches), which PDL cannot call without TRL's loss.
        """
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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Evaluates as SFTTrainer does; PDL's metrics take the prefix of their dataset (`eval_<name>_nll`)."""
        # Trainer calls this again for each dataset of a dict, with `eval_<name>` as prefix
        self._pdl_metric_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._pdl_metric_prefix = "eval"

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The fused LM head builds no logits: every prediction step is loss-only (`predict()` returns no predictions)
        if not TRL_AT_LEAST_1_15:
            return loss_only_prediction_step(self, model, inputs)
        return super().prediction_step(model, inputs, True, ignore_keys)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Predicts as SFTTrainer does, but loss-only: `predictions` and `label_ids` are None, since the fused LM head
        builds no logits. The metrics of these batches come back in the output instead of being left to the next
        `evaluate()`."""
        if not self.args.prediction_loss_only:
            warnings.warn(
                "PDLSFTTrainer.predict() returns the loss and metrics only (`predictions=None`): the fused LM head "
                "builds no logits. Generate with `model.generate` or `pdl-trl eval` for outputs; set "
                "`prediction_loss_only=True` to silence this.",
                UserWarning,
                stacklevel=2,
            )
        output = super().predict(test_dataset, ignore_keys, metric_key_prefix)
        metrics = self._metrics["eval"]
        output.metrics.update({f"{metric_key_prefix}_{key}": sum(v) / len(v) for key, v in metrics.items() if v})
        metrics.clear()
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self.model.training:
            metrics = self._metrics["eval"]
            for key in METRIC_KEYS:
                values = metrics.pop(key, None)
                if values:
                    logs[f"{self._pdl_metric_prefix}_{key}"] = sum(values) / len(values)
        super().log(logs, start_time)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card (with the PDL paper), plus the PDL settings of this run."""
        super().create_model_card(model_name, dataset_name, tags)
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "README.md"
        table = self.pdl_table
        neutral = ", ".join(f"`{self._tokenizer.decode([i])!r}` ({i})" for i in table.neutral_ids) or "none"
        counts = table.counts
        section = textwrap.dedent(f"""

            ## PDL settings

            Trained with the Power-Law Decay Loss (pdl-trl's `PDLSFTTrainer`):
            `w(t) = 1 / (count(t) + pdl_epsilon) ^ pdl_alpha`, mixed with plain SFT by `pdl_mix`.

            | setting | value |
            |---|---|
            | `pdl_alpha` | {table.settings.pdl_alpha} |
            | `pdl_epsilon` | {table.settings.pdl_epsilon} |
            | `pdl_mix` | {table.settings.pdl_mix} |
            | neutral tokens (mean weight) | {neutral} |
            | counts | {counts.source}: {counts.num_tokens} tokens, {int((counts.counts > 0).sum())} types |
            """)
        write_text_atomically(path, path.read_text(encoding="utf-8") + section)

    def pdl_tokenizer(self):
        # SFTTrainer keeps the tokenizer of a processor apart
        return self._tokenizer
