"""
The trainer of a run described by command-line arguments, as `trl/scripts/sft.py` builds it: the model (quantized,
with its PEFT adapter) created by name and the dataset loaded by name. Used by `pdl-trl sft`, `pdl-trl sweep` and
`pdl-trl count`.
"""

from trl import get_peft_config, get_quantization_config

from pdl_trl.data_loading import get_split, load_dataset_splits
from pdl_trl.spelling import option
from pdl_trl.trainer import PDLSFTTrainer


def set_model_init_kwargs(training_args, model_args) -> None:
    """Sets `training_args.model_init_kwargs` from `model_args`, as `trl/scripts/sft.py` does; given ones win."""
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs


def load_datasets(script_args, training_args, dataset_args) -> tuple:
    """`(train_dataset, eval_dataset)` as `trl sft` loads them; `eval_dataset` is None without evaluation."""
    splits = load_dataset_splits(
        script_args.dataset_name,
        script_args.dataset_config,
        streaming=script_args.dataset_streaming,
        mixture=dataset_args,
    )
    train_dataset = get_split(splits, script_args.dataset_train_split, option("dataset_train_split"))
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = get_split(splits, script_args.dataset_test_split, option("dataset_test_split"))
    return train_dataset, eval_dataset


def make_trainer(
    script_args, training_args, model_args, dataset_args, trainer_class: type[PDLSFTTrainer] = PDLSFTTrainer
) -> PDLSFTTrainer:
    """
    The [`PDLSFTTrainer`] that `pdl-trl sft` trains: the model created from `model_args` by name, the dataset loaded
    as `trl sft` loads it. Sets `training_args.model_init_kwargs` from `model_args`. `trainer_class` may be a
    subclass (e.g. one that adds callbacks).
    """
    set_model_init_kwargs(training_args, model_args)
    train_dataset, eval_dataset = load_datasets(script_args, training_args, dataset_args)
    return trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
