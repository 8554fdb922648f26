"""
What a PDL run saves beside its weights — the counts (`pdl_counts.json`) and the settings (`pdl_settings.json`) its
table was built from — and what resuming from a checkpoint checks against them, for any trainer that holds a
[`~pdl_trl.weights.WeightTable`].
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from pdl_trl.atomic import write_text_atomically
from pdl_trl.frequency import COUNTS_FILE_NAME, TokenCounts, tokenizer_fingerprint
from pdl_trl.spelling import option
from pdl_trl.weights import WeightTable


logger = logging.get_logger(__name__)

SETTINGS_FILE_NAME = "pdl_settings.json"
SETTINGS_FORMAT = "pdl-trl-settings"


def save_table_files(table: WeightTable, directory: str | os.PathLike) -> None:
    """Writes `pdl_counts.json` and `pdl_settings.json` of `table` into `directory`, each atomically."""
    directory = Path(directory)
    table.counts.save(directory / COUNTS_FILE_NAME)
    settings = {"format": SETTINGS_FORMAT, "version": 1, **table.record}
    write_text_atomically(directory / SETTINGS_FILE_NAME, json.dumps(settings, indent=2))


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """Whether Trainer finished writing `checkpoint`: it writes `trainer_state.json` last."""
    return (Path(checkpoint) / TRAINER_STATE_NAME).is_file()


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by step."""
    folders = [path for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir()]
    return sorted(
        (path for path in folders if path.name.rsplit("-", 1)[1].isdigit()),
        key=lambda path: int(path.name.rsplit("-", 1)[1]),
    )


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The last checkpoint of `output_dir` that was written completely, warning about later ones that were not (a run
    stopped while writing them); None when `output_dir` has no checkpoint, and an error when it has only incomplete
    ones.
    """
    incomplete = []
    for checkpoint in reversed(_checkpoints(output_dir)):
        if is_complete(checkpoint):
            if incomplete:
                warnings.warn(
                    f"Skipping {', '.join(incomplete)} of {output_dir}: written incompletely (the run stopped while "
                    f"writing them). Resuming from {checkpoint.name}; delete the incomplete ones when done.",
                    UserWarning,
                    stacklevel=3,
                )
            return str(checkpoint)
        incomplete.append(checkpoint.name)
    if incomplete:
        raise ValueError(
            f"Every checkpoint of {output_dir} ({', '.join(incomplete)}) was written incompletely: the run stopped "
            "while writing it. Delete them and start the run again."
        )
    return None


def table_to_resume(checkpoint: str | os.PathLike, table: WeightTable, tokenizer, trainer_name: str) -> WeightTable:
    """
    The table to resume `checkpoint` with: this run's settings on the checkpoint's counts, so that a run continues
    with the table it started with. Refuses a checkpoint that is incomplete or has no counts, counts of another
    tokenizer, and settings other than the checkpoint's.

    Args:
        checkpoint: the `checkpoint-N` folder.
        table ([`WeightTable`]): the table this run built.
        tokenizer: the training tokenizer, to check the checkpoint's counts against.
        trainer_name (`str`): the class whose checkpoints carry the PDL files, for the error message.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {checkpoint}. Pass a `checkpoint-N` folder of `output_dir`, or "
            f"{option('resume_from_checkpoint', True)} for the last one."
        )
    if not is_complete(checkpoint):
        last = next((path for path in reversed(_checkpoints(checkpoint.parent)) if is_complete(path)), None)
        alternative = f"resume from {last}" if last else "start the run again"
        raise ValueError(
            f"{checkpoint} is incomplete (no {TRAINER_STATE_NAME}): the run stopped while writing it. Delete it and "
            f"{alternative}; {option('resume_from_checkpoint', True)} skips incomplete checkpoints."
        )
    counts_path = checkpoint / COUNTS_FILE_NAME
    if not counts_path.exists():
        raise FileNotFoundError(
            f"{checkpoint} has no {COUNTS_FILE_NAME}: it was not written by {trainer_name}, so the PDL table of that "
            "run is unknown. To start PDL from its weights, load them as the model."
        )
    counts = TokenCounts.load(counts_path)
    counts.check_compatible(
        len(table.weights),
        tokenizer_fingerprint(tokenizer),
        tokenizer.name_or_path,
        f"{checkpoint} was trained with that tokenizer: resume with it (the run's `output_dir` holds it), or start a "
        "new run.",
    )
    if not np.array_equal(counts.counts, table.counts.counts):
        logger.warning(
            f"The counts saved in {checkpoint} differ from this run's ({table.counts.source}); resuming with the "
            "checkpoint's, so the weights stay those the run started with."
        )
    resumed = WeightTable.build(counts, table.settings, tokenizer).to(table.weights.device)
    _check_settings(checkpoint, resumed)
    return resumed


def check_fresh_output_dir(output_dir: str | os.PathLike, table: WeightTable) -> None:
    """
    A run that starts afresh (no resume) in a folder holding an earlier run's checkpoints: refused when that run had
    other PDL settings (its checkpoints would sit beside this run's, and resuming would later pick whichever is last),
    warned about when it had the same.
    """
    checkpoints = [path for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir()]
    if not checkpoints:
        return
    last = get_last_checkpoint(str(output_dir)) or str(max(checkpoints))
    settings_path = Path(last) / SETTINGS_FILE_NAME
    saved = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else None
    names = ", ".join(sorted(path.name for path in checkpoints))
    if saved is None or any(saved.get(key) != value for key, value in table.record.items()):
        raise ValueError(
            f"{output_dir} holds checkpoints of an earlier run ({names}) with other or unknown PDL settings: this "
            "run's checkpoints would sit beside them, and resuming would pick whichever is last. Use another "
            "`output_dir`, or delete those checkpoints."
        )
    warnings.warn(
        f"{output_dir} holds checkpoints of an earlier run with the same PDL settings ({names}). This run starts "
        "afresh and replaces those of the steps it reaches; to continue that run instead, pass "
        "`resume_from_checkpoint=True`.",
        UserWarning,
        stacklevel=3,
    )


def _check_settings(checkpoint: Path, table: WeightTable) -> None:
    path = checkpoint / SETTINGS_FILE_NAME
    if not path.exists():
        logger.warning(f"{checkpoint} has no {SETTINGS_FILE_NAME}: the PDL settings it trained with are unknown.")
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    changed = [
        f"{key} {saved.get(key)!r} there, {value!r} now"
        for key, value in table.record.items()
        if saved.get(key) != value
    ]
    if changed:
        raise ValueError(
            f"{checkpoint} was trained with other PDL settings ({'; '.join(changed)}). Resume with the settings it "
            "started with, or start a new run from its weights."
        )
