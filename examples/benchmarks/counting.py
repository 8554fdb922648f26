"""Throughput of PDL's completion-token counting against a raw `np.bincount` over the same targets.

Builds a dataset shaped like SFTTrainer's prepared `train_dataset`: `input_ids` and `labels` list columns (int64,
-100 on each row's prompt span), rows of varying length. As SFTTrainer does, rows whose labels are all -100 are
dropped, which leaves an indices mapping over the stored rows; `--shuffle` also shuffles it, as
`shuffle_dataset=True` does (off by default in TRL), so that rows must be gathered. Token ids are Zipf(1.2)-
distributed. The table is built with numpy and Arrow directly, not row by row.

Then, in the same process and interleaved over `--repeats` rounds:

- `count_completion_tokens(dataset, vocab_size)`: the whole pass PDLSFTTrainer makes (Arrow batches through the
  indices mapping, flatten, drop each row's first position and -100, bincount);
- `np.bincount` over the already-flattened targets in memory: the floor for any counting pass;
- `count_completion_tokens(..., shard_index=i, num_shards=--shards)` for every shard, one after the other: each
  process of a multi-process run counts one contiguous shard and the counts are summed.

`ratio` = counting throughput / bincount throughput (completion tokens per second, medians). The counts of all
three are checked equal.

Run from the repository root:

    python examples/benchmarks/counting.py --json                 # >= 10 M completion tokens
    python examples/benchmarks/counting.py --quick --json         # ~1 M tokens, CI smoke
    python examples/benchmarks/counting.py --parallel --json      # shards in separate processes too
    python examples/benchmarks/counting.py --shuffle --json       # rows shuffled (gathered, not sliced)
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from datasets.table import InMemoryTable

from pdl_trl.frequency import count_completion_tokens
from pdl_trl.loss import IGNORE_INDEX


def build_prepared_dataset(
    num_completion_tokens: int,
    vocab_size: int,
    max_len: int = 1024,
    min_len: int = 64,
    prompt_share: float = 0.3,
    seed: int = 0,
    shuffle: bool = False,
    fully_masked_share: float = 0.005,
) -> tuple[Dataset, np.ndarray]:
    """A prepared-looking dataset with at least `num_completion_tokens` targets, and those targets flattened.

    Returns the dataset and the flat int64 array of its training targets (`labels[1:]` per row, -100 dropped), in
    the dataset's storage order.
    """
    rng = np.random.default_rng(seed)
    # Mean completion length per row, to draw enough rows in one go
    mean_completion = (max_len + min_len) / 2 * (1 - prompt_share)
    num_rows = int(num_completion_tokens / mean_completion * 1.1) + 1
    lengths = rng.integers(min_len, max_len + 1, size=num_rows)
    prompt_lengths = np.maximum(1, (lengths * rng.uniform(0.5, 1.5, size=num_rows) * prompt_share).astype(np.int64))
    prompt_lengths = np.minimum(prompt_lengths, lengths - 1)
    # A few rows are all prompt (labels all -100), as truncation leaves some; SFTTrainer filters them out
    fully_masked = rng.random(num_rows) < fully_masked_share
    prompt_lengths[fully_masked] = lengths[fully_masked]
    # Keep just enough rows to reach the target count
    completion = np.cumsum(lengths - prompt_lengths)
    num_rows = int(np.searchsorted(completion, num_completion_tokens) + 1)
    lengths, prompt_lengths, fully_masked = lengths[:num_rows], prompt_lengths[:num_rows], fully_masked[:num_rows]

    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    total = int(offsets[-1])
    # Zipf(1.2) over the vocabulary by inverse CDF on a pool of 2**20 draws, then resampled from the pool: drawing
    # every token by inverse CDF (or `rng.zipf`) takes seconds per 10 M tokens
    probabilities = 1.0 / np.arange(1, vocab_size + 1) ** 1.2
    cdf = np.cumsum(probabilities) / probabilities.sum()
    pool = np.minimum(np.searchsorted(cdf, rng.random(2**20)), vocab_size - 1)
    input_ids = rng.permutation(vocab_size)[pool[rng.integers(0, len(pool), size=total)]].astype(np.int64)
    position = np.arange(total) - np.repeat(offsets[:-1], lengths)
    is_prompt = position < np.repeat(prompt_lengths, lengths)
    labels = np.where(is_prompt, IGNORE_INDEX, input_ids)

    table = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(input_ids)),
            "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        }
    )
    dataset = Dataset(InMemoryTable(table))
    # The first position of a row is never a target; prompt positions are -100
    targets = labels[(position > 0) & ~is_prompt]
    # What SFTTrainer's `filter` of fully masked rows leaves: an indices mapping of the kept rows, in order
    dataset = dataset.select(np.flatnonzero(~fully_masked))
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    return dataset, targets


def _time(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# Set in the parent before forking, so that worker processes share the dataset instead of pickling it
_DATASET = None


def _count_shard(job: tuple[int, int, int]) -> tuple[float, np.ndarray]:
    index, num_shards, vocab_size = job
    return _time(count_completion_tokens, _DATASET, vocab_size, shard_index=index, num_shards=num_shards)


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__}
    for name in ("datasets", "pdl-trl"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> dict:
    global _DATASET
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000_000, help="Completion tokens in the dataset (at least).")
    parser.add_argument("--vocab_size", type=int, default=151936)
    parser.add_argument("--max_len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved timing rounds; medians are reported.")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--parallel", action="store_true", help="Also count the shards in a process pool.")
    parser.add_argument("--shuffle", action="store_true", help="Shuffle the rows (`shuffle_dataset=True`).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="About 1 M tokens, 3 rounds: a smoke run.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats = min(args.tokens, 1_000_000), min(args.repeats, 3)

    build_s, (dataset, targets) = _time(
        build_prepared_dataset,
        args.tokens,
        args.vocab_size,
        max_len=args.max_len,
        seed=args.seed,
        shuffle=args.shuffle,
    )
    num_targets = len(targets)
    label_slots = int(dataset.data.column("labels").combine_chunks().offsets[-1].as_py())

    # A second reference: one bincount over every stored label slot, prompts included (shifted past -100). A counting
    # pass has to read every slot, so this is about the best it could do; the gap to `bincount_s` is the prompt share.
    slots = pc.list_flatten(dataset.data.table.column("labels").combine_chunks()).to_numpy() - IGNORE_INDEX
    count_times, bincount_times, slot_times, shard_times = [], [], [], []
    reference = None
    for _ in range(args.repeats):
        # Interleaved so that load changes on a shared machine affect both alike
        t_bincount, reference = _time(np.bincount, targets, minlength=args.vocab_size)
        slot_times.append(_time(np.bincount, slots, minlength=args.vocab_size - IGNORE_INDEX)[0])
        t_count, counts = _time(count_completion_tokens, dataset, args.vocab_size)
        shard_results = [
            _time(count_completion_tokens, dataset, args.vocab_size, shard_index=i, num_shards=args.shards)
            for i in range(args.shards)
        ]
        bincount_times.append(t_bincount)
        count_times.append(t_count)
        shard_times.append([t for t, _ in shard_results])
        if not np.array_equal(counts, reference) or not np.array_equal(sum(c for _, c in shard_results), reference):
            raise AssertionError("count_completion_tokens disagrees with np.bincount over the same targets")

    parallel = None
    if args.parallel:
        _DATASET = dataset
        context = multiprocessing.get_context("fork")
        jobs = [(i, args.shards, args.vocab_size) for i in range(args.shards)]
        with context.Pool(args.shards) as pool:
            pool.map(_count_shard, jobs)  # warm-up: worker start-up
            wall_times = []
            for _ in range(args.repeats):
                wall, results = _time(pool.map, _count_shard, jobs)
                if not np.array_equal(sum(c for _, c in results), reference):
                    raise AssertionError("sharded counts in worker processes disagree with the full count")
                wall_times.append(wall)
        parallel = {"processes": args.shards, "median_wall_s": statistics.median(wall_times)}

    count_s = statistics.median(count_times)
    bincount_s = statistics.median(bincount_times)
    per_shard_s = [statistics.median(times) for times in zip(*shard_times, strict=True)]
    report = {
        "benchmark": "counting",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": package_versions(),
        "config": {
            "tokens": args.tokens,
            "vocab_size": args.vocab_size,
            "max_len": args.max_len,
            "repeats": args.repeats,
            "shards": args.shards,
            "shuffled": args.shuffle,
        },
        "rows": len(dataset),
        "label_slots": label_slots,
        "completion_tokens": num_targets,
        "build_s": build_s,
        "count_s": count_s,
        "bincount_s": bincount_s,
        "count_tokens_per_s": num_targets / count_s,
        "bincount_tokens_per_s": num_targets / bincount_s,
        "ratio": bincount_s / count_s,
        "bincount_all_slots_s": statistics.median(slot_times),
        # Counting time over that of one bincount over every label slot: 1 would be no overhead beyond reading them
        "count_over_slot_bincount": count_s / statistics.median(slot_times),
        "shard_s": per_shard_s,
        # Sum of the shards' times over the unsharded time: about 1 when sharding adds no overhead
        "shard_sum_over_full": sum(per_shard_s) / count_s,
        # Slowest shard over the unsharded time: about 1 / shards when the work divides evenly
        "shard_max_over_full": max(per_shard_s) / count_s,
        "parallel": parallel,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['cpu']}: {num_targets:,} completion tokens, {len(dataset):,} rows, {label_slots:,} label slots"
        )
        for name, seconds in (("count_completion_tokens", count_s), ("np.bincount", bincount_s)):
            print(f"{name:<23} {seconds * 1e3:8.1f} ms  {num_targets / seconds / 1e6:8.1f} M tok/s")
        print(f"{'np.bincount, all slots':<23} {report['bincount_all_slots_s'] * 1e3:8.1f} ms")
        print(f"ratio (throughput)      {report['ratio']:.3f}")
        print(f"{args.shards} shards, sequential: {[round(t * 1e3, 1) for t in per_shard_s]} ms")
        if parallel:
            print(f"{args.shards} shards, {args.shards} processes: {parallel['median_wall_s'] * 1e3:.1f} ms wall")
    return report


if __name__ == "__main__":
    main()
