"""
The first step of every command: the dataset it names → its splits. One loader for `pdl-trl sft`, `count` and
`eval`, with TRL's semantics (`trl/scripts/sft.py`), that also reads local files and `save_to_disk` folders.
"""

from pathlib import Path

from accelerate.logging import get_logger
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk
from trl import DatasetMixtureConfig, get_dataset


logger = get_logger(__name__)

# `datasets` packaged builders for a single local file, by extension
LOCAL_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}


def _data_file_suffix(path: Path) -> str:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _local_file_builder(path: Path) -> str:
    suffix = _data_file_suffix(path)
    if suffix not in LOCAL_FILE_BUILDERS:
        raise ValueError(
            f"Cannot tell the format of {path}: use one of the extensions {sorted(LOCAL_FILE_BUILDERS)} (optionally "
            f"compressed: {sorted(_COMPRESSION_SUFFIXES)}), or describe it in the config file with "
            "`datasets: [{path: json, data_files: ...}]`."
        )
    return LOCAL_FILE_BUILDERS[suffix]


def load_dataset_splits(
    name: str | None,
    config: str | None = None,
    *,
    streaming: bool = False,
    mixture: DatasetMixtureConfig | None = None,
) -> DatasetDict | IterableDatasetDict:
    """
    Loads a dataset as `trl/scripts/sft.py` does, and also accepts a local file or folder as its name.

    - A mixture (`datasets:` in a config file) wins over `name`, as in TRL.
    - A local file is read with the matching packaged builder (`data.jsonl` → `load_dataset("json",
      data_files=...)`); it is one split, `train`, as `datasets` names it.
    - A folder written by `save_to_disk` is read with `load_from_disk`; a saved `Dataset` is one split, `train`.
    - Any other folder or name goes to `load_dataset` (a data folder such as `train.jsonl` + `test.jsonl`, or a Hub
      dataset with its `config`).

    Args:
        name (`str` or `None`): local file, folder or Hub dataset (`--dataset_name`, `--dataset`).
        config (`str` or `None`, *optional*): Hub dataset config (`--dataset_config`).
        streaming (`bool`, *optional*, defaults to `False`): iterable splits, read lazily (`--dataset_streaming`).
        mixture ([`~trl.DatasetMixtureConfig`] or `None`, *optional*): the `datasets:` of a config file.

    Returns:
        [`~datasets.DatasetDict`], or [`~datasets.IterableDatasetDict`] when streaming: every split there is; pick
        one with [`get_split`].
    """
    if mixture is not None and mixture.datasets:
        if name:
            logger.warning(
                "Both `datasets` and `dataset_name` are provided. The `datasets` argument will be used to load the "
                "dataset and `dataset_name` will be ignored."
            )
        return get_dataset(mixture)
    if not name:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    path = Path(name)
    if path.is_file():
        return load_dataset(_local_file_builder(path), name=config, data_files=str(path), streaming=streaming)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = load_from_disk(str(path))
        if isinstance(dataset, Dataset):
            dataset = DatasetDict({"train": dataset})
        if streaming:
            dataset = IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in dataset.items()})
        return dataset
    if not path.exists() and _data_file_suffix(path) in LOCAL_FILE_BUILDERS:
        # A data-file name is never a Hub dataset: say so here rather than after a failed Hub lookup
        raise FileNotFoundError(f"No file {name}: pass an existing data file, a dataset folder or a Hub dataset.")
    return load_dataset(name, name=config, streaming=streaming)


def get_split(dataset: DatasetDict | IterableDatasetDict, split: str, option: str) -> Dataset | IterableDataset:
    """`dataset[split]`, with an error that names the splits there are and the option that chose it, as the user
    wrote it (`--dataset_train_split`, or a config key)."""
    if split not in dataset:
        splits = sorted(dataset)
        if splits == ["train"]:
            splits = "only `train`: a single file, or a `Dataset` saved with `save_to_disk`, is one split"
        raise ValueError(f"The dataset has no split {split!r}; it has {splits}. Choose one with {option}.")
    return dataset[split]
