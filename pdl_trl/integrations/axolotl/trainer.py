"""
PDL in Axolotl's SFT trainer (`AxolotlTrainer`, or the class Axolotl would have used): the plugin builds
`PDL<Trainer>(AxolotlPDLMixin, <Trainer>)`.

The loss of an optimizer step is `sum(w(y) * nll) / sum(w(y))` over the trained targets of every micro-batch of the
accumulation window on every rank, exactly as in `PDLSFTTrainer` ([`~pdl_trl.trainer_mixin.PDLTrainerMixin`] takes
the step's weight sum and keeps the table's files and resume). What differs is the forward: Axolotl's trainer has no
fused LM head, so the model runs without labels and PDL scores the logits of the positions that have a trained
target (`logits_to_keep`: the LM head never runs on prompt positions).
"""

import inspect
import math

import torch
import torch.nn.functional as F

from pdl_trl.frequency import TokenCounts, has_masked_targets, tokenizer_fingerprint
from pdl_trl.integrations.axolotl.args import PDLArgs
from pdl_trl.loss import IGNORE_INDEX, power_law_decay_loss, target_weights
from pdl_trl.metrics import completion_metrics, completion_sums
from pdl_trl.spelling import YAML, option, options_written_in
from pdl_trl.trainer_mixin import PDLTrainerMixin
from pdl_trl.weights import PDLSettings


def sequence_starts(batch: dict) -> torch.Tensor | None:
    """
    Where a packed sub-sequence starts, `(batch, seq_len)` bool, or None in a batch of one sequence per row. Axolotl
    packs at batch time: `position_ids` restart at 0 for each sequence; without them, its collator numbers the
    sequences 1, 2, ... in `attention_mask`.
    """
    labels = batch["labels"]
    position_ids = batch.get("position_ids")
    if position_ids is not None and position_ids.shape == labels.shape:
        return position_ids == 0
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.max() > 1:
        starts = torch.zeros_like(attention_mask, dtype=torch.bool)
        starts[:, 1:] = attention_mask[:, 1:] != attention_mask[:, :-1]
        return starts
    return None


class AxolotlPDLMixin(PDLTrainerMixin):
    """Put before Axolotl's trainer class; the plugin sets `pdl_config` (the config's `pdl_*` keys) on the class."""

    pdl_config: PDLArgs
    # Axolotl logs `ppl = exp(loss)`, which is no perplexity when the loss is PDL's: `log` gives `exp(nll)` instead
    reports_token_perplexity = False

    def __init__(self, *args, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("`compute_loss_func` (Axolotl's DFT or EAFT) replaces the loss that PDL re-weights.")
        super().__init__(*args, **kwargs)
        # [sum nll, sum w, sum w^2, tokens, sum w of neutral targets] since the last log, per mode
        self._pdl_sums = {mode: torch.zeros(5, dtype=torch.float64) for mode in ("train", "eval")}
        with options_written_in(YAML):
            self.pdl_table = self.build_pdl_table(self._pdl_counts())
        forward = inspect.signature(self.accelerator.unwrap_model(self.model).forward).parameters
        self._pdl_logits_to_keep = "logits_to_keep" in forward

    def pdl_settings(self) -> PDLSettings:
        return PDLSettings.of(self.pdl_config)

    def _pdl_counts(self) -> TokenCounts:
        """The counts named by `pdl_counts_path`, else those of the prepared training set (refused when it masks no
        label: PDL would count prompt tokens)."""
        tokenizer = self.pdl_tokenizer()
        fingerprint = tokenizer_fingerprint(tokenizer)
        counts_path = self.pdl_config.pdl_counts_path
        if self.train_dataset is not None and not self.pdl_config.pdl_allow_unmasked_text:
            if not has_masked_targets(self.train_dataset):
                raise ValueError(
                    "No training label is masked (sampled from the first rows): the prepared dataset trains every "
                    "token, e.g. with `train_on_inputs: true` or a completion-type dataset, so PDL would count and "
                    "weight prompt tokens too. Set `train_on_inputs: false`, or "
                    f"{option('pdl_allow_unmasked_text', True)} if that is intended."
                )
        if counts_path:
            counts = TokenCounts.load(counts_path)
            counts.check_compatible(
                self._output_rows,
                fingerprint,
                tokenizer.name_or_path,
                f"Recount with `pdl-trl count` and this tokenizer, or drop {option('pdl_counts_path')} to count the "
                "training set.",
            )
        elif self.train_dataset is None:
            raise ValueError(
                f"PDL counts the training set's completion tokens: there is none. Set {option('pdl_counts_path')}."
            )
        else:
            # Axolotl packs at batch time, so each row of the prepared dataset is one sequence, whose first position
            # is no target: what `count_completion_tokens` skips
            counts = TokenCounts(
                self._count_train_dataset(),
                tokenizer.name_or_path,
                fingerprint,
                source="training set completion tokens (Axolotl's prepared dataset)",
            )
        return counts

    def pdl_labels(self, batch: dict) -> torch.Tensor:
        """
        The labels with the first token of every packed sub-sequence masked: it would be predicted from the end of the
        previous sequence (a prompt token, -100 already, unless `train_on_inputs: true`).
        """
        starts = sequence_starts(batch)
        return batch["labels"] if starts is None else batch["labels"].masked_fill(starts, IGNORE_INDEX)

    def _prepare_forward(self, model, inputs: dict) -> dict:
        """What `AxolotlTrainer.compute_loss` (0.21.0) does to the inputs before the forward, without the labels."""
        if self.args.include_tkps and model.training:
            self._accumulate_token_counts(inputs)
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        forward["use_cache"] = False
        return forward

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        labels = self.pdl_labels(inputs)
        forward = self._prepare_forward(model, inputs)
        trained = labels[:, 1:] != IGNORE_INDEX
        keep = None
        if self._pdl_logits_to_keep and not return_outputs:
            # Logits only where some row has a trained target
            keep = trained.any(0).nonzero().squeeze(1)
            if keep.numel() == 0:
                keep = torch.zeros(1, dtype=torch.long, device=labels.device)
            forward["logits_to_keep"] = keep
        outputs = model(**forward)
        logits = outputs.logits if keep is not None else outputs.logits[:, :-1]
        targets = labels[:, 1:] if keep is None else labels[:, 1:][:, keep]
        mask = targets != IGNORE_INDEX
        # One float32 copy of the trained positions' logits: (trained targets, vocab)
        log_probs = -F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
        token_weights = target_weights(self.pdl_table.weights, labels)
        token_weights = (token_weights if keep is None else token_weights[:, keep])[mask]
        if mode == "train":
            loss = power_law_decay_loss(log_probs, token_weights, self._pdl_step_weight_sum)
            if self.args.average_tokens_across_devices:
                # The weight sum covers every process and DDP averages gradients across processes
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        else:
            loss = power_law_decay_loss(log_probs, token_weights, token_weights.sum())
        neutral_weights = token_weights * self.pdl_table.neutral_mask[targets[mask]]
        self._pdl_sums[mode] += completion_sums(
            log_probs, token_weights, torch.ones_like(token_weights), neutral_weights
        ).cpu()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time=None):
        """Adds `nll`, `pdl_mean_weight`, `pdl_ess` and `pdl_neutral_share` of the batches since the last log, over
        every process, and the perplexity `ppl = exp(nll)` (with `eval_` in evaluation)."""
        mode = "train" if "loss" in logs else "eval"
        sums = self._pdl_sums[mode]
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
        if sums[3] > 0:
            prefix = "" if mode == "train" else "eval_"
            metrics = completion_metrics(sums)
            logs.update({f"{prefix}{key}": value for key, value in metrics.items()})
            logs[f"{prefix}ppl"] = math.exp(metrics["nll"]) if metrics["nll"] < 700 else math.inf
        self._pdl_sums[mode] = torch.zeros(5, dtype=torch.float64)
        return super().log(logs, start_time)
