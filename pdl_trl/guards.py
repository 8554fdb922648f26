"""
What `PDLSFTTrainer` refuses or warns about, each as early as it can be known: arguments and raw datasets before the
datasets are prepared (which can take long), the prepared training set, the engine accelerate set up, and a counts
file that does not cover the training data.
"""

import os
import warnings

from accelerate.utils import DistributedType
from datasets import Dataset, IterableDataset
from peft import PeftModel

from pdl_trl.frequency import first_targets, has_masked_targets
from pdl_trl.loss import IGNORE_INDEX
from pdl_trl.spelling import option


# Columns of raw datasets that SFTTrainer tokenizes: a null there fails deep inside the tokenizer or the chat template
TEXT_COLUMNS = ("text", "prompt", "completion", "messages")
# A counts file that leaves more than this share of the training targets uncounted weighs them all as the rarest token
UNSEEN_TARGETS_WARNING = 0.1


def check_trainer_arguments(args, kwargs: dict) -> None:
    """Refuses, before any preparation, the trainer arguments PDL cannot honour, and raw datasets it cannot count."""
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
    train_dataset = kwargs.get("train_dataset")
    if train_dataset is None and args.pdl_counts_path is None:
        raise ValueError(
            f"PDL counts the completion tokens of `train_dataset`: pass one, or pass {option('pdl_counts_path')} to "
            "evaluate with the counts of a previous run."
        )
    _check_raw_dataset(train_dataset, "train_dataset")
    eval_dataset = kwargs.get("eval_dataset")
    eval_datasets = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
    for name, dataset in eval_datasets.items():
        _check_raw_dataset(dataset, f"eval_dataset[{name!r}]" if name else "eval_dataset")


def _check_raw_dataset(dataset, name: str) -> None:
    """Refuses what SFTTrainer would fail on obscurely or PDL cannot count."""
    if isinstance(dataset, IterableDataset):
        # SFTTrainer reads the first row to tell the dataset's kind: an empty stream would stop it with StopIteration
        if next(iter(dataset.take(1)), None) is None:
            raise ValueError(f"`{name}` (a stream) has no rows: pass a dataset with at least one example.")
        return
    if not isinstance(dataset, Dataset):
        return
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: pass a dataset with at least one example.")
    if "image" in dataset.column_names or "images" in dataset.column_names:
        raise ValueError(
            f"`{name}` holds images. SFTTrainer prepares vision-language examples in the collator, batch by batch, "
            "so the completion tokens PDL would count and weight are not known before training: PDL does not support "
            "vision-language training. Use `trl.SFTTrainer` for it."
        )
    columns = set(dataset.column_names)
    for present, missing in (("prompt", "completion"), ("completion", "prompt")):
        if present in columns and missing not in columns and not columns & {"messages", "text", "input_ids"}:
            raise ValueError(
                f"`{name}` has a `{present}` column but no `{missing}` column: prompt-completion data needs both (the "
                "completion is what PDL counts and trains). Add it, or use conversational `messages`."
            )
    for column in TEXT_COLUMNS:
        if column in dataset.column_names and dataset.data.column(column).null_count:
            nulls = dataset.data.column(column).null_count
            raise ValueError(
                f"`{name}` has {nulls} row(s) whose `{column}` is None. Drop or fill them first, e.g. "
                f"`dataset.filter(lambda row: row['{column}'] is not None)`."
            )


def check_prepared_trainer(trainer) -> None:
    """Refuses, once SFTTrainer has built the model and prepared the data, what would make PDL's loss wrong."""
    _warn_if_engine_dropped(trainer.accelerator)
    if trainer.get_cp_size() > 1 or trainer.get_sp_size() > 1:
        raise ValueError(
            "PDL does not support context or sequence parallelism: they split sequences after the step's weight "
            "sum is taken. Set `parallelism_config` without cp/sp, or use data parallelism."
        )
    if isinstance(trainer.model, PeftModel) and trainer.model.active_peft_config.is_prompt_learning:
        raise ValueError(
            f"{trainer.model.active_peft_config.peft_type} pads the labels with virtual tokens, which misaligns "
            "PDL's per-target weights. Use LoRA (`peft.LoraConfig`) or another adapter that keeps the sequence."
        )
    if trainer.train_dataset is not None:
        _check_prepared_train_dataset(trainer)


def _warn_if_engine_dropped(accelerator) -> None:
    for variable, engine in (
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED),
    ):
        # accelerate 1.15 turns FSDP and DeepSpeed into DDP on CPU processes without a word
        if os.environ.get(variable, "").lower() == "true" and accelerator.distributed_type != engine:
            warnings.warn(
                f"The launcher asked for {engine.value} ({variable}=true), but accelerate set up "
                f"{accelerator.distributed_type.value}: this run is not sharded as configured. On CPU "
                "accelerate does this for FSDP and for DeepSpeed with `use_cpu=True`; see docs/distributed.md.",
                UserWarning,
                stacklevel=4,
            )


def _check_prepared_train_dataset(trainer) -> None:
    args = trainer.args
    if isinstance(trainer.train_dataset, Dataset) and len(trainer.train_dataset) == 0:
        raise ValueError(
            "No training example has a completion token left after preparation: SFTTrainer drops examples whose "
            f"labels are all masked, e.g. when {option('max_length', args.max_length)} cuts every completion away "
            f"after its prompt. Raise {option('max_length')}, or shorten the prompts."
        )
    # Prompt-completion data (completion_only_loss) and assistant-only data are masked by construction, even where
    # truncation left only completion tokens. Other data is plain language-model text unless its own `labels` mask
    # something.
    masked_by_preparation = trainer.completion_only_loss or args.assistant_only_loss
    if not (args.pdl_allow_unmasked_text or masked_by_preparation or has_masked_targets(trainer.train_dataset)):
        raise ValueError(
            "No training label is masked: the dataset is plain language-model text, so PDL would count and "
            "train prompt tokens too. Use prompt-completion data (`completion_only_loss`) or conversational "
            f"data with {option('assistant_only_loss', True)}, or set {option('pdl_allow_unmasked_text', True)} if "
            "that is intended."
        )


def check_counts_cover_train_dataset(train_dataset, counts, counts_path: str) -> None:
    """A counts file that misses the training targets weighs them all as the rarest token: PDL would be void."""
    targets = first_targets(train_dataset)
    targets = targets[(targets != IGNORE_INDEX) & (targets < len(counts))]
    if len(targets) == 0:
        return
    unseen = float((counts[targets] == 0).mean())
    if unseen == 1.0:
        raise ValueError(
            f"{counts_path} counts none of the training targets (sampled from the first rows): every target would "
            "weigh the same and PDL would train as plain SFT. Count this kind of data with `pdl-trl count`, or drop "
            f"{option('pdl_counts_path')} to count the training set."
        )
    if unseen > UNSEEN_TARGETS_WARNING:
        warnings.warn(
            f"{unseen:.0%} of the training targets (sampled from the first rows) are never counted in {counts_path}; "
            "each weighs as much as the rarest counted token. Check that the counts were made from data like this, "
            "with the same chat template.",
            UserWarning,
            stacklevel=3,
        )
