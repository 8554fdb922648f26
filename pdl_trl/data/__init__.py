"""The bundled demo dataset: questions about Python's standard library answered from CPython's docstrings.

See `DATA.md` beside this file for its source, licence and how `examples/build_demo_dataset.py` builds it.
"""

import json
from importlib.resources import files

from datasets import Dataset


DEMO_FILES = {"train": "pydoc_qa_train.jsonl", "test": "pydoc_qa_test.jsonl"}


def load_demo_dataset(split: str = "train") -> Dataset:
    """
    Loads a split of the bundled conversational prompt-completion dataset.

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` or `"test"` (held-out questions about other names; see `DATA.md`).

    Returns:
        [`~datasets.Dataset`] with columns `prompt` (one user message) and `completion` (one assistant message).
    """
    if split not in DEMO_FILES:
        raise ValueError(f"Unknown split {split!r}: the demo dataset has {sorted(DEMO_FILES)}.")
    path = files(__name__) / DEMO_FILES[split]
    # `from_json` would cache an Arrow copy under ~/.cache/huggingface; the file is small enough to parse directly
    return Dataset.from_list([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])
