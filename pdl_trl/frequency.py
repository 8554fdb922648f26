"""Token counts over completion spans: counting a prepared dataset, and the JSON counts file.

Counting reads exactly what the loss trains on: next-token targets `labels[1:]` of every sequence (of every packed
sub-sequence) that are not `-100`. Prompt tokens, chat-template headers and padding are never counted.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from pdl_trl.atomic import write_text_atomically
from pdl_trl.loss import IGNORE_INDEX


COUNTS_FORMAT = "pdl-trl-counts"
COUNTS_VERSION = 1
COUNTS_FILE_NAME = "pdl_counts.json"
# Label slots shifted and counted at a time: 8 MiB of int64, small enough to stay in cache for bincount
_CHUNK_SLOTS = 2**20


def _arrow_batches(dataset: Dataset, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    """Batches of rows as Arrow tables, through the dataset's indices mapping when it has one; row order may differ.

    SFTTrainer's filter (and shuffle) leave an indices mapping, which `dataset.data` alone would ignore.
    `Dataset.iter` honours it but slices every row separately (8192 one-row chunks per batch, then a concatenation),
    which took most of the counting time. Here the mapping is read in sorted order, runs of consecutive rows (what a
    filter or shuffle of the whole dataset leaves) are zero-copy slices and anything else is one `take` per batch.
    """
    # `_indices` and `data` are private to `datasets` (pinned >= 5.2); tests/test_frequency.py checks filtered and
    # shuffled mappings against a count by hand
    table = dataset.data.table.select(columns)
    if dataset._indices is None:
        for start in range(0, table.num_rows, batch_size):
            yield table.slice(start, batch_size)
        return
    # Sorted, a shuffled mapping of all rows becomes one run; counts do not depend on the order of rows
    indices = np.sort(dataset._indices.column(0).to_numpy())
    for start in range(0, len(indices), batch_size):
        batch_indices = indices[start : start + batch_size]
        breaks = np.flatnonzero(np.diff(batch_indices) != 1) + 1
        if len(breaks) < len(batch_indices) // 32:  # runs of 32 rows or more on average
            for run in np.split(batch_indices, breaks):
                yield table.slice(int(run[0]), len(run))
        else:
            yield table.take(batch_indices)


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    # `combine_chunks` copies even a single chunk
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _label_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Flattened labels of each batch of rows, and the positions in them of every (sub-)sequence's first token."""
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            "PDL cannot count tokens of an IterableDataset (streaming) inside the trainer: count the corpus first "
            "with `pdl-trl count ... --output counts.json` and pass `pdl_counts_path='counts.json'`."
        )
    if "labels" not in dataset.column_names:
        raise ValueError(
            "The prepared dataset has no `labels` column, so PDL cannot tell completion tokens from prompt tokens. "
            "Let SFTTrainer prepare the dataset (do not set `skip_prepare_dataset=True`) or add a `labels` column "
            "with -100 on prompt tokens."
        )
    packed = "seq_lengths" in dataset.column_names
    columns = ["labels", "seq_lengths"] if packed else ["labels"]
    for table in _arrow_batches(dataset, columns, batch_size):
        labels = _single_chunk(table["labels"])
        values = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
        if packed:
            lengths = pc.list_flatten(_single_chunk(table["seq_lengths"])).to_numpy(zero_copy_only=False)
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        else:
            offsets = labels.offsets.to_numpy()
            starts = offsets[:-1] - offsets[0]
        yield values, starts[starts < len(values)]


def _target_labels(dataset: Dataset, batch_size: int) -> Iterator[np.ndarray]:
    """Flattened labels of each batch of rows, without the first position of every (sub-)sequence."""
    for values, starts in _label_batches(dataset, batch_size):
        keep = np.ones(len(values), dtype=bool)
        keep[starts] = False
        yield values[keep]


def count_completion_tokens(
    dataset: Dataset, vocab_size: int, *, batch_size: int = 8192, shard_index: int = 0, num_shards: int = 1
) -> np.ndarray:
    """
    Counts each token id among the training targets of a prepared dataset (`labels != -100`).

    Args:
        dataset ([`~datasets.Dataset`]):
            Dataset prepared by SFTTrainer: `input_ids`, `labels` (and `seq_lengths` when packed).
        vocab_size (`int`):
            Length of the returned table: the model's output-embedding rows.
        shard_index (`int`), num_shards (`int`):
            Count only this contiguous shard of the rows, so that processes can split the pass and sum.

    Returns:
        `np.ndarray` of shape `(vocab_size,)`, int64.
    """
    if num_shards > 1:
        dataset = dataset.shard(num_shards=num_shards, index=shard_index, contiguous=True)
    # Bincounts over every label slot, shifted so that -100 (and each sequence's first position, set to it) falls in
    # bin 0, other negative ids in bins 1-99 and token t in bin 100 + t. Selecting the targets with boolean masks
    # first copied the labels twice and took most of the time. The shifted copy is made into a buffer of
    # `_CHUNK_SLOTS`, counted each time it is full, so that bincount reads it from cache.
    shift = -IGNORE_INDEX
    binned = np.zeros(vocab_size + shift, dtype=np.int64)
    chunk = np.empty(_CHUNK_SLOTS, dtype=np.int64)
    filled = 0

    def flush() -> bool:
        """Adds the buffer's counts; False if it holds an id outside [0, vocab_size) other than -100."""
        nonlocal filled
        try:
            chunk_binned = np.bincount(chunk[:filled], minlength=vocab_size + shift)
        except ValueError:  # an id below -100
            return False
        filled = 0
        if len(chunk_binned) > len(binned) or chunk_binned[1:shift].any():
            return False
        np.add(binned, chunk_binned, out=binned)
        return True

    for values, starts in _label_batches(dataset, batch_size):
        low = 0
        while low < len(values):
            size = min(len(values) - low, len(chunk) - filled)
            shifted = chunk[filled : filled + size]
            np.add(values[low : low + size], shift, out=shifted, casting="unsafe")
            shifted[starts[np.searchsorted(starts, low) : np.searchsorted(starts, low + size)] - low] = 0
            filled += size
            low += size
            if filled == len(chunk) and not flush():
                return _count_masked(dataset, vocab_size, batch_size)
    if filled and not flush():
        return _count_masked(dataset, vocab_size, batch_size)
    return binned[shift:]


def _count_masked(dataset: Dataset, vocab_size: int, batch_size: int) -> np.ndarray:
    """Counts by selecting the targets first: slower, and raises on the first batch with an id out of range."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for targets in _target_labels(dataset, batch_size):
        targets = targets[targets != IGNORE_INDEX]
        negative = targets[targets < 0]
        if negative.size:
            raise ValueError(
                f"Label {int(negative[0])} is no token id: the only negative label is {IGNORE_INDEX}, which masks a "
                f"position. Set the positions that are not trained to {IGNORE_INDEX} in `labels`."
            )
        if targets.size and targets.max() >= vocab_size:
            raise ValueError(
                f"Label id {int(targets.max())} is outside the model's {vocab_size} output rows. The tokenizer does "
                "not match the model: resize the embeddings (`model.resize_token_embeddings(len(tokenizer))`)."
            )
        counts += np.bincount(targets, minlength=vocab_size)
    return counts


def count_streamed_completion_tokens(
    stream: IterableDataset, vocab_size: int, *, batch_size: int = 1024, show_progress: bool = True
) -> np.ndarray:
    """
    [`count_completion_tokens`] of a prepared `IterableDataset` (streaming), read once, batch by batch: for
    `pdl-trl count`, since a trainer does not read a whole stream before training.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    with tqdm(desc="Counting completion tokens", unit=" rows", disable=not show_progress) as bar:
        for batch in stream.iter(batch_size=batch_size):
            # A mapped stream does not know its columns in advance: keep those counting reads
            batch = {column: batch[column] for column in ("labels", "seq_lengths") if column in batch}
            counts += count_completion_tokens(Dataset.from_dict(batch), vocab_size)
            bar.update(len(batch["labels"]))
    return counts


def first_targets(dataset: Dataset | IterableDataset, rows: int = 1024) -> np.ndarray:
    """The next-token targets (labels after each sequence's first position, `-100` included) of the first `rows`
    rows: a cheap sample for checks made before counting."""
    if isinstance(dataset, IterableDataset):
        # A mapped stream may not know its columns (`column_names` is None): take them from the rows
        columns = ("labels", "seq_lengths")
        dataset = Dataset.from_list([{c: row[c] for c in columns if c in row} for row in dataset.take(rows)])
    else:
        dataset = dataset.select(range(min(rows, len(dataset))))
    if len(dataset) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(list(_target_labels(dataset, rows)))


def has_masked_targets(dataset: Dataset | IterableDataset, rows: int = 1024) -> bool:
    """Whether any target among the first `rows` rows is -100: false for plain language-model text."""
    return bool((first_targets(dataset, rows) == IGNORE_INDEX).any())


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the token-to-id map, added tokens included: two tokenizers that agree on it count alike."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return "sha256:" + hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


@dataclass
class TokenCounts:
    """Completion-token counts with what they were counted with; the content of a counts file."""

    counts: np.ndarray
    tokenizer: str
    tokenizer_fingerprint: str
    source: str

    @property
    def vocab_size(self) -> int:
        return len(self.counts)

    @property
    def num_tokens(self) -> int:
        return int(self.counts.sum())

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON counts file atomically: a reader sees the old file or the whole new one."""
        content = {
            "format": COUNTS_FORMAT,
            "version": COUNTS_VERSION,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "num_tokens": self.num_tokens,
            "source": self.source,
            "counts": self.counts.tolist(),
        }
        write_text_atomically(path, json.dumps(content))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenCounts":
        """Reads a counts file; any way it can be wrong is a `ValueError` (or `FileNotFoundError`) naming the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No counts file at {path}. Write one with `pdl-trl count ... --output {path}`, or drop "
                "`pdl_counts_path` to count the training set."
            )
        try:
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{path} is not readable JSON ({error}): the file is damaged or not a counts file. Recount with "
                "`pdl-trl count`, or use the `pdl_counts.json` a training run saved."
            ) from error
        if (
            not isinstance(content, dict)
            or content.get("format") != COUNTS_FORMAT
            or content.get("version") != COUNTS_VERSION
        ):
            raise ValueError(
                f"{path} is not a pdl-trl counts file (format {COUNTS_FORMAT!r}, version {COUNTS_VERSION}). Write one "
                "with `pdl-trl count` or `PDLSFTTrainer.save_model`."
            )
        try:
            counts = np.asarray(content["counts"], dtype=np.int64)
            vocab_size, num_tokens = content["vocab_size"], content["num_tokens"]
            tokenizer, fingerprint, source = content["tokenizer"], content["tokenizer_fingerprint"], content["source"]
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"{path} is damaged: {error!r}. Recount with `pdl-trl count`.") from error
        if counts.ndim != 1 or len(counts) != vocab_size or (counts < 0).any() or int(counts.sum()) != num_tokens:
            raise ValueError(
                f"{path} is damaged: its counts disagree with its `vocab_size` or `num_tokens`. Recount with "
                "`pdl-trl count`."
            )
        return cls(counts, tokenizer, fingerprint, source)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the counts and their tokenizer's fingerprint: results measured with other counts differ."""
        digest = hashlib.sha256(self.tokenizer_fingerprint.encode())
        digest.update(np.ascontiguousarray(self.counts, dtype="<i8").tobytes())
        return "sha256:" + digest.hexdigest()

    def check_compatible(self, vocab_size: int, fingerprint: str, tokenizer_name: str, fix: str) -> None:
        """
        Raises when these counts were made for another vocabulary than the one in use (`vocab_size` rows,
        `fingerprint`); `fix` is the sentence that tells the user what to do where the counts came from.
        """
        if self.vocab_size != vocab_size or self.tokenizer_fingerprint != fingerprint:
            raise ValueError(
                f"The PDL counts were made with tokenizer {self.tokenizer!r} ({self.vocab_size} rows, "
                f"{self.tokenizer_fingerprint}), but this run uses {tokenizer_name!r} ({vocab_size} rows, "
                f"{fingerprint}). {fix}"
            )
