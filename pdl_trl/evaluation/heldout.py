"""
The data step of evaluation: a held-out prompt-completion set → rows `{"prompt", "completion"}`, loaded as `pdl-trl
sft` loads its dataset ([`~pdl_trl.data_loading.load_dataset_splits`]).
"""

from datasets import Dataset

from pdl_trl.data_loading import get_split, load_dataset_splits


def load_eval_split(
    name: str, split: str | None = None, config: str | None = None, option: str = "`split`"
) -> tuple[str, Dataset, bool]:
    """
    `(split, dataset, whole)`: the split of a held-out set to evaluate, its name, and whether it is all the set has
    (its only split, chosen by default: e.g. a data file's `train`). The set is a data file (one split, `train`), a
    `save_to_disk` folder, a data folder or a Hub dataset (with `config`). A given `split` must exist; by default it is
    the set's only split, or `test` when it has several. `option` is how the user chose the split, for the error that
    names the splits there are.
    """
    splits = load_dataset_splits(name, config)
    whole = split is None and len(splits) == 1
    if split is None:
        split = next(iter(splits)) if len(splits) == 1 else "test"
    return split, get_split(splits, split, option), whole


def eval_rows(dataset: Dataset, max_samples: int | None = None) -> list[dict]:
    """The first `max_samples` rows (all by default), each with `prompt` and, when the set has one, `completion`."""
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"The held-out set has columns {dataset.column_names}; evaluation needs a `prompt` column (and "
            "`completion` for reference metrics), as in TRL's prompt-completion format."
        )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    columns = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return [{c: row[c] for c in columns} for row in dataset]


def load_eval_rows(
    name: str, split: str | None = None, max_samples: int | None = None, config: str | None = None
) -> list[dict]:
    """The rows of [`load_eval_split`], the first `max_samples` of them (all by default)."""
    return eval_rows(load_eval_split(name, split, config)[1], max_samples)
