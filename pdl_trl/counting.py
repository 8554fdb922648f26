"""
Counting a corpus exactly as training would prepare it (`pdl-trl count`): a [`PDLSFTTrainer`] is built with the model
on the meta device (no weight is read) and counts its prepared training set with the code training uses, so the
counts file equals the table of a training run with the same data and preparation arguments (chat template,
`assistant_only_loss`, `completion_only_loss`, `max_length`, `truncation_mode`, packing, `eos_token`, ...).
"""

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate.logging import get_logger
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

from pdl_trl.atomic import check_writable
from pdl_trl.compat import end_training
from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import TokenCounts, count_streamed_completion_tokens
from pdl_trl.trainer import PDLSFTTrainer
from pdl_trl.training import load_datasets


logger = get_logger(__name__)


@dataclass
class PDLCountConfig(PDLSFTConfig):
    """
    [`PDLSFTConfig`] for counting. The training-only settings are pinned, because nothing is trained: the model
    stays on the meta device on the CPU (no GPU, no bf16 check), nothing is pushed, reported or saved except the
    counts file, and the output directory is the counts file's folder.
    """

    counts_output: str | None = field(
        default=None,
        metadata={"help": "Path of the counts file to write (JSON), e.g. `counts.json`. Required."},
    )
    output: str | None = field(default=None, metadata={"help": "Deprecated spelling of `--counts_output`."})

    def __post_init__(self):
        if self.output is not None:
            warnings.warn(
                "`--output` of `pdl-trl count` is deprecated and will be removed in the next release: use "
                "`--counts_output`.",
                FutureWarning,
                stacklevel=2,
            )
            self.counts_output, self.output = self.output, None
        if self.counts_output is None:
            raise ValueError("`pdl-trl count` needs `--counts_output PATH`: where to write the counts file.")
        # Before the dataset is prepared and counted, which can take long
        check_writable(self.counts_output, "--counts_output")
        self.output_dir = str(Path(self.counts_output).absolute().parent)
        self.use_cpu = True
        self.fp16 = False
        self.push_to_hub = False
        self.report_to = "none"
        self.save_strategy = "no"
        self.eval_strategy = "no"
        # Trainer requires a step count for an IterableDataset (streaming); counting never trains
        self.max_steps = 1
        super().__post_init__()

    @property
    def place_model_on_device(self) -> bool:
        # The hook `TrainingArguments` documents for keeping `Trainer` from moving the model: a model on the meta
        # device has no data to move.
        return False


class _CountingTrainer(PDLSFTTrainer):
    """PDLSFTTrainer that also counts a streamed (`IterableDataset`) training set, batch by batch."""

    def _count_train_dataset(self) -> np.ndarray:
        if not isinstance(self.train_dataset, IterableDataset):
            return super()._count_train_dataset()
        # Each process reads its own part of the stream; the tables are summed as for a `Dataset`
        stream = split_dataset_by_node(
            self.train_dataset, rank=self.accelerator.process_index, world_size=self.accelerator.num_processes
        )
        counts = count_streamed_completion_tokens(
            stream, self._output_rows, show_progress=self.is_world_process_zero()
        )
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(torch.from_numpy(counts).to(self.accelerator.device), reduction="sum")
            counts = total.cpu().numpy()
        return counts


def meta_model(model_args, training_args):
    """The model as `SFTTrainer` would create it from its name, but on the meta device: no weight is read."""
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    # Same architecture choice as `trl.trainer.utils.create_model_from_path`
    architecture = getattr(transformers, config.architectures[0], None) if config.architectures else None
    with torch.device("meta"):
        if architecture is None:
            return AutoModelForCausalLM.from_config(config, trust_remote_code=training_args.trust_remote_code)
        return architecture._from_config(config)


def _source(script_args, dataset_args, training_args) -> str:
    if dataset_args.datasets:
        data = " + ".join(f"{d.path}[{d.split}]" for d in dataset_args.datasets)
    else:
        data = f"{script_args.dataset_name}[{script_args.dataset_train_split}]"
    settings = {
        "max_length": training_args.max_length,
        "truncation_mode": training_args.truncation_mode,
        "packing": training_args.packing,
        "completion_only_loss": training_args.completion_only_loss,
        "assistant_only_loss": training_args.assistant_only_loss,
    }
    return f"pdl-trl count: completion tokens of {data} ({', '.join(f'{k}={v}' for k, v in settings.items())})"


def count_corpus(script_args, training_args: PDLCountConfig, model_args, dataset_args) -> TokenCounts:
    """
    Counts the training split named by the arguments, prepared as `pdl-trl sft` would prepare it, and writes the
    counts file `training_args.counts_output` (from the main process, once every process has counted its shard).

    Returns:
        [`TokenCounts`]: the counts, their `source` naming the data and the preparation settings.
    """
    if training_args.pdl_counts_path is not None:
        logger.warning(
            f"Ignoring `pdl_counts_path={training_args.pdl_counts_path}`: `pdl-trl count` counts the dataset.",
            main_process_only=True,
        )
        training_args.pdl_counts_path = None
    train_dataset, _ = load_datasets(script_args, training_args, dataset_args)
    # Loaded as SFTTrainer loads it for a model given by name
    processing_class = AutoProcessor.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    trainer = _CountingTrainer(
        model=meta_model(model_args, training_args),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
    )
    # The trainer counted (split over the processes and summed); one process writes the file
    counts = replace(trainer.pdl_table.counts, source=_source(script_args, dataset_args, training_args))
    if trainer.is_world_process_zero():
        counts.save(training_args.counts_output)
    # Every process tears the process group down together, once process 0 has written the file
    trainer.accelerator.wait_for_everyone()
    end_training(trainer)
    return counts
