"""
`pdl-trl count`: counts how often each token is a training target (a completion token) in a corpus, and writes the
counts file that `--pdl_counts_path` reads.

Takes the arguments of `pdl-trl sft` (so the training config file can be reused as is) plus `--output`. The data is
prepared by the trainer itself: a [`PDLSFTTrainer`] is built with the model on the meta device (no weights are read)
and counts its prepared training set with the code that training uses, so the file equals the table of a training
run with the same data and preparation arguments (chat template, `assistant_only_loss`, `completion_only_loss`,
`max_length`, `truncation_mode`, packing, `eos_token`, ...).

```bash
pdl-trl count --config examples/conversational_assistant_only.yaml --output capybara_counts.json
pdl-trl count --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name data.jsonl --output counts.json
```
"""

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from accelerate.logging import get_logger
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from pdl_trl import PDLSFTConfig, PDLSFTTrainer
from pdl_trl.atomic import check_writable
from pdl_trl.data_loading import get_split, load_dataset_splits
from pdl_trl.frequency import count_completion_tokens
from pdl_trl.scripts.utils import parse_script_args


logger = get_logger(__name__)


@dataclass
class PDLCountConfig(PDLSFTConfig):
    """
    [`PDLSFTConfig`] for counting. The training-only settings are pinned, because nothing is trained: the model
    stays on the meta device on the CPU (no GPU, no bf16 check), nothing is pushed, reported or saved except the
    counts file, and the output directory is the counts file's folder.
    """

    output: str | None = field(
        default=None,
        metadata={"help": "Path of the counts file to write (JSON), e.g. `counts.json`. Required."},
    )

    def __post_init__(self):
        if self.output is None:
            raise ValueError("`pdl-trl count` needs `--output PATH`: where to write the counts file.")
        # Before the dataset is prepared and counted, which can take long
        check_writable(self.output, "--output")
        self.output_dir = str(Path(self.output).absolute().parent)
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
        counts = np.zeros(self._output_rows, dtype=np.int64)
        with tqdm(desc="Counting completion tokens", unit=" rows", disable=not self.is_world_process_zero()) as bar:
            for batch in stream.iter(batch_size=1024):
                # A mapped stream does not know its columns in advance: keep those counting reads
                batch = {column: batch[column] for column in ("labels", "seq_lengths") if column in batch}
                counts += count_completion_tokens(Dataset.from_dict(batch), self._output_rows)
                bar.update(len(batch["labels"]))
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(torch.from_numpy(counts).to(self.accelerator.device), reduction="sum")
            counts = total.cpu().numpy()
        return counts


def _meta_model(model_args, training_args):
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


def main(script_args, training_args, model_args, dataset_args):
    if training_args.pdl_counts_path is not None:
        logger.warning(
            f"Ignoring `pdl_counts_path={training_args.pdl_counts_path}`: `pdl-trl count` counts the dataset.",
            main_process_only=True,
        )
        training_args.pdl_counts_path = None

    splits = load_dataset_splits(
        script_args.dataset_name,
        script_args.dataset_config,
        streaming=script_args.dataset_streaming,
        mixture=dataset_args,
    )
    dataset = get_split(splits, script_args.dataset_train_split, "dataset_train_split")
    # Loaded as SFTTrainer loads it for a model given by name
    processing_class = AutoProcessor.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    trainer = _CountingTrainer(
        model=_meta_model(model_args, training_args),
        args=training_args,
        train_dataset=dataset,
        processing_class=processing_class,
    )
    # The trainer counted (split over the processes and summed); one process writes the file
    token_counts = replace(trainer._pdl_token_counts, source=_source(script_args, dataset_args, training_args))
    if trainer.is_world_process_zero():
        token_counts.save(training_args.output)
        seen = int((token_counts.counts > 0).sum())
        print(
            f"Counted {token_counts.num_tokens} completion tokens ({seen} of {token_counts.vocab_size} types seen) "
            f"into {training_args.output}."
        )
    # Every process tears the process group down together, once process 0 has written the file
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return token_counts


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    dataclass_types = (ScriptArguments, PDLCountConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser(
            "count", help="Count the completion tokens of a corpus", dataclass_types=dataclass_types
        )
    else:
        parser = TrlParser(dataclass_types, prog=prog)
    return parser


def run(argv: list[str]) -> int:
    """
    What `pdl-trl count ARGS` runs, in this process; under a launcher use `torchrun -m pdl_trl.scripts.count` (see
    docs/distributed.md).
    """
    main(*parse_script_args(make_parser(prog="pdl-trl count"), argv))
    return 0


if __name__ == "__main__":
    main(*parse_script_args(make_parser(prog="pdl-trl count")))
