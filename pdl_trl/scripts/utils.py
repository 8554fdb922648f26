"""Helpers shared by the `pdl-trl` scripts: loading the dataset named on the command line."""

from pathlib import Path

from accelerate.logging import get_logger
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk
from trl import DatasetMixtureConfig, ScriptArguments, get_dataset


logger = get_logger(__name__)

# `datasets` packaged builders for a single local file, by extension
LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}


def _local_file_builder(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in LOCAL_FILE_BUILDERS:
        raise ValueError(
            f"Cannot tell the format of {path}: use one of the extensions {sorted(LOCAL_FILE_BUILDERS)} (optionally "
            f"compressed: {sorted(_COMPRESSION_SUFFIXES)}), or describe it in the config file with "
            "`datasets: [{path: json, data_files: ...}]`."
        )
    return LOCAL_FILE_BUILDERS[suffix]


def load_script_dataset(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig
) -> DatasetDict | IterableDatasetDict:
    """
    Loads the datasets of a script, as `trl/scripts/sft.py` does, and also accepts a local file or folder as
    `--dataset_name`.

    - `datasets:` (a mixture, in the config file) wins over `--dataset_name`, as in TRL.
    - A local file is read with the matching packaged builder (`data.jsonl` → `load_dataset("json",
      data_files=...)`); it gives one split, `train`.
    - A folder written by `Dataset.save_to_disk` is read with `load_from_disk`; any other folder or name goes to
      `load_dataset` (a data folder such as `train.jsonl` + `test.jsonl`, or a Hub dataset).
    """
    if dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning(
                "Both `datasets` and `dataset_name` are provided. The `datasets` argument will be used to load the "
                "dataset and `dataset_name` will be ignored."
            )
        return get_dataset(dataset_args)
    if not script_args.dataset_name:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    path = Path(script_args.dataset_name)
    if path.is_file():
        return load_dataset(
            _local_file_builder(path),
            name=script_args.dataset_config,
            data_files=str(path),
            streaming=script_args.dataset_streaming,
        )
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = load_from_disk(str(path))
        if isinstance(dataset, Dataset):
            dataset = DatasetDict({"train": dataset})
        if script_args.dataset_streaming:
            dataset = IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in dataset.items()})
        return dataset
    return load_dataset(
        script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
    )


def get_split(dataset: DatasetDict | IterableDatasetDict, split: str, option: str) -> Dataset | IterableDataset:
    """`dataset[split]`, with an error that names the splits there are and the option that chose it."""
    if split not in dataset:
        raise ValueError(
            f"The dataset has no split {split!r} (it has {sorted(dataset)}). Choose one with `--{option}`; a single "
            "local file has only `train`, so evaluate with `--eval_strategy no` or use a folder with a test file."
        )
    return dataset[split]


def launch_option_names() -> set[str]:
    """Option names of `accelerate launch` (`--num_processes`, ...)."""
    from accelerate.commands.launch import launch_command_parser

    return {name for action in launch_command_parser()._actions for name in action.option_strings}


def config_launch_args(config_remaining: list[str]) -> list[str]:
    """
    The `accelerate launch` arguments among the config-file keys that no dataclass took (`["--num_processes", "2"]`).

    Boolean launch flags become bare flags: `multi_gpu: true` must be `--multi_gpu`, not `--multi_gpu True` (which
    `accelerate launch` would read as the script name). Any other key is an error.
    """
    from accelerate.commands.launch import launch_command_parser

    actions = {name: action for action in launch_command_parser()._actions for name in action.option_strings}
    unknown = [key.removeprefix("--") for key in config_remaining[::2] if key not in actions]
    if unknown:
        raise ValueError(
            f"Unknown keys in the config file: {unknown}. They are neither arguments of this command nor "
            "`accelerate launch` options: fix their spelling or remove them."
        )
    launch_args = []
    for key, value in zip(config_remaining[::2], config_remaining[1::2], strict=True):
        # A flag takes no value (accelerate has its own store-true action class, so test the arity)
        if actions[key].nargs == 0:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"The config file sets the launch flag `{key[2:]}` to {value!r}: use true or false.")
            launch_args += [key] if value.lower() == "true" else []
        else:
            launch_args += [key, value]
    return launch_args


def parse_script_args(parser, args: list[str] | None = None) -> tuple:
    """
    Parses a script's arguments and `--config` file like `TrlParser.parse_args_and_config`, but stricter than
    `trl/scripts/*.py`: unknown command-line arguments are errors, and a config-file key that is no argument must
    be an `accelerate launch` option (`pdl-trl sft` passes those to the launcher). So a misspelled key such as
    `pdl_alpah` fails instead of being ignored.
    """
    *dataclasses, config_remaining, cli_remaining = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True
    )
    if cli_remaining:
        raise ValueError(
            f"Unknown arguments: {cli_remaining}. Check their spelling; `accelerate launch` options go before the "
            "script (`accelerate launch --num_processes 2 -m pdl_trl.scripts.sft ...`) or to `pdl-trl sft`."
        )
    config_launch_args(config_remaining)  # validates them; the launcher got them from `pdl-trl sft`
    return tuple(dataclasses)
