"""
What PDL adds to a transformers `Trainer`, whatever builds it (TRL's `SFTTrainer` in [`~pdl_trl.PDLSFTTrainer`],
Axolotl's trainer in `pdl_trl.integrations.axolotl`): the weight sum of the whole optimizer step, the table's files
beside every saved model and checkpoint, and resuming with the table a run started with. The loss itself, which needs
the host's forward, stays with each trainer.

A host puts `PDLTrainerMixin` before its trainer class and, in its `__init__`, sets `self.pdl_table` from the counts
it loads or takes (`self.build_pdl_table(counts)`).
"""

from contextlib import nullcontext

import numpy as np
import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from pdl_trl.checkpoints import check_fresh_output_dir, last_complete_checkpoint, save_table_files, table_to_resume
from pdl_trl.frequency import TokenCounts, count_completion_tokens
from pdl_trl.locking import output_dir_lock
from pdl_trl.loss import target_weights
from pdl_trl.weights import PDLSettings, WeightTable


class PDLTrainerMixin:
    # The training loss is divided by the weight sum of the whole optimizer step (see `get_batch_samples`): Trainer
    # must not divide it again by the number of accumulation steps.
    loss_is_scaled_for_ga = True
    pdl_table: WeightTable
    _pdl_step_weight_sum: torch.Tensor | None = None

    @property
    def _output_rows(self) -> int:
        weight = self.model.get_output_embeddings().weight
        # A parameter ZeRO-3 has partitioned is an empty local tensor with the full shape in `ds_shape` (read as PEFT
        # does). Not every one is: transformers skips partitioning at load (zero.Init) for quantized models
        partitioned = is_deepspeed_zero3_enabled() and hasattr(weight, "ds_shape")
        return weight.ds_shape[0] if partitioned else weight.shape[0]

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

    def build_pdl_table(self, counts: TokenCounts) -> WeightTable:
        """The weight table of `counts` under the host's PDL settings, on the training device; warns when it would
        weigh the end of an answer down."""
        tokenizer = self.pdl_tokenizer()
        table = WeightTable.build(counts, self.pdl_settings(), tokenizer)
        table.warn_if_degenerate(tokenizer.eos_token_id, tokenizer.eos_token)
        return table.to(self.accelerator.device)

    def pdl_labels(self, batch: dict) -> torch.Tensor:
        """The labels PDL weighs: `batch["labels"]`, -100 where no target is trained. A host whose batches mark
        trained targets otherwise (packed sequences) overrides this."""
        return batch["labels"]

    def pdl_tokenizer(self):
        """The tokenizer of the training data: it names the neutral tokens and fingerprints the counts."""
        return self.processing_class

    def pdl_settings(self) -> PDLSettings:
        """The PDL settings the host's config holds now."""
        return PDLSettings.of(self.args)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also takes the PDL weight sum of the whole optimizer step: every micro-batch, every process."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        weights = self.pdl_table.weights
        weight_sum = torch.zeros((), device=weights.device)
        for batch in batch_samples:
            weight_sum += target_weights(weights, self.pdl_labels(batch).to(weights.device)).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            weight_sum = self.accelerator.gather(weight_sum.to(device)).sum()
        self._pdl_step_weight_sum = weight_sum
        return batch_samples, num_items_in_batch

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model as the host does, plus what the PDL table was built from: the counts (`pdl_counts.json`) and
        the settings (`pdl_settings.json`) of this run; checkpoints save their model through here too."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            save_table_files(self.pdl_table, output_dir or self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trains as the host does; resuming also restores the checkpoint's PDL counts, so the table is identical, and
        refuses PDL settings other than the checkpoint's. The process that saves holds the output folder meanwhile."""
        settings = self.pdl_settings()
        if settings != self.pdl_table.settings:
            raise ValueError(
                f"The PDL settings changed after the trainer was built ({settings} now, {self.pdl_table.settings} in "
                f"its weight table). Build a new {type(self).__name__} with the new settings."
            )
        if resume_from_checkpoint is True:
            # The last checkpoint written completely (Trainer's own choice would be the last, even a half-written one);
            # none at all is left to Trainer, which says so
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir) or True
        checkpoint = resume_from_checkpoint if resume_from_checkpoint is not True else None
        if checkpoint:
            self.pdl_table = table_to_resume(checkpoint, self.pdl_table, self.pdl_tokenizer(), type(self).__name__)
        elif self.args.should_save:
            check_fresh_output_dir(self.args.output_dir, self.pdl_table)
        # A second run into the same folder fails instead of replacing this one's files
        lock = output_dir_lock(self.args.output_dir, type(self).__name__) if self.args.should_save else nullcontext()
        with lock:
            return super().train(resume_from_checkpoint, *args, **kwargs)
