"""Counting completion tokens of prepared datasets, and the JSON counts file."""

import json
import os

import numpy as np
import pytest
from datasets import Dataset
from helpers.tiny import count_targets_by_hand, prompt_completion_dataset

from pdl_trl import PDLSFTTrainer, TokenCounts, count_completion_tokens, tokenizer_fingerprint
from pdl_trl.frequency import COUNTS_FILE_NAME, has_masked_targets


# Words that occur only in the tiny prompts ("What is a plus b?", "Describe the x."), never in completions
PROMPT_ONLY_WORDS = ["What", "Describe", " plus"]


def prepared_train_dataset(model_dir, output_dir, **config):
    from conftest import make_cpu_config

    trainer = PDLSFTTrainer(
        str(model_dir), args=make_cpu_config(output_dir, **config), train_dataset=prompt_completion_dataset(24)
    )
    return trainer.train_dataset, trainer.model.get_output_embeddings().weight.shape[0]


@pytest.fixture(scope="module")
def padded(tiny_model_dir, tmp_path_factory):
    """The prompt-completion dataset as SFTTrainer prepares it (filtered, shuffled), and the output rows."""
    return prepared_train_dataset(tiny_model_dir, tmp_path_factory.mktemp("padded"), shuffle_dataset=True)


@pytest.fixture(scope="module")
def packed(tiny_model_dir, tmp_path_factory):
    return prepared_train_dataset(tiny_model_dir, tmp_path_factory.mktemp("packed"), packing=True, max_length=64)


def test_counts_equal_a_brute_force_count_of_completion_tokens(padded, tiny_tokenizer):
    dataset, vocab_size = padded
    assert dataset._indices is not None, "expected SFTTrainer's shuffle to leave an indices mapping"

    counts = count_completion_tokens(dataset, vocab_size)

    assert counts.dtype == np.int64 and counts.shape == (vocab_size,)
    assert counts.tolist() == count_targets_by_hand(dataset, vocab_size)
    # EOS ends every completion and is a training target
    assert counts[tiny_tokenizer.eos_token_id] == len(dataset)


def test_prompt_only_tokens_are_not_counted(padded, tiny_tokenizer):
    dataset, vocab_size = padded
    counts = count_completion_tokens(dataset, vocab_size)
    input_ids = [token for row in dataset["input_ids"] for token in row]
    for word in PROMPT_ONLY_WORDS:
        (token,) = tiny_tokenizer.encode(word)
        assert token in input_ids, f"{word!r} should be in the prompts, or this check proves nothing"
        assert counts[token] == 0, f"prompt-only {word!r} was counted"
    assert counts[tiny_tokenizer.encode(" The")[0]] == len(dataset)  # every completion starts with " The"


@pytest.mark.parametrize("batch_size", [1, 5, 8192])
def test_batch_size_does_not_change_counts(padded, batch_size):
    dataset, vocab_size = padded
    expected = count_targets_by_hand(dataset, vocab_size)
    assert count_completion_tokens(dataset, vocab_size, batch_size=batch_size).tolist() == expected


def test_packed_dataset_counts_the_same_tokens(packed, padded):
    packed_dataset, vocab_size = packed
    assert "seq_lengths" in packed_dataset.column_names
    assert len(packed_dataset) < 24, "expected several rows per pack"

    counts = count_completion_tokens(packed_dataset, vocab_size, batch_size=2)

    assert counts.tolist() == count_targets_by_hand(packed_dataset, vocab_size)
    # Packing moves rows around but trains the same targets
    assert counts.tolist() == count_completion_tokens(padded[0], vocab_size).tolist()


def test_first_token_of_every_packed_sub_sequence_is_excluded():
    # Unmasked labels, so only the sub-sequence boundaries decide what is excluded
    dataset = Dataset.from_dict(
        {
            "labels": [[1, 2, 3, 4, 5, 6], [7, 8, 9]],
            "seq_lengths": [[2, 3, 1], [3]],
        }
    )
    # Row 0: sub-sequences [1, 2] [3, 4, 5] [6] -> targets 2, 4, 5; row 1: [7, 8, 9] -> 8, 9
    counts = count_completion_tokens(dataset, 10, batch_size=1)
    assert np.flatnonzero(counts).tolist() == [2, 4, 5, 8, 9]
    assert counts.tolist() == count_targets_by_hand(dataset, 10)


def test_filter_and_shuffle_indices_mapping_is_honoured():
    rows = [[-100, v, v, -100] for v in range(10)]
    dataset = Dataset.from_dict({"labels": rows})
    subset = dataset.filter(lambda row: row["labels"][1] % 3 != 0).shuffle(seed=0)
    assert subset._indices is not None

    counts = count_completion_tokens(subset, 10, batch_size=3)

    # Values 0, 3, 6 and 9 were filtered out; every kept value is a target twice
    assert counts.tolist() == [0, 2, 2, 0, 2, 2, 0, 2, 2, 0]
    assert counts.tolist() == count_targets_by_hand(subset, 10)


def test_shard_counts_sum_to_the_whole(padded):
    dataset, vocab_size = padded
    whole = count_completion_tokens(dataset, vocab_size)
    shards = [count_completion_tokens(dataset, vocab_size, shard_index=i, num_shards=3) for i in range(3)]
    assert all(shard.sum() > 0 for shard in shards)
    np.testing.assert_array_equal(sum(shards), whole)


def test_label_outside_the_output_rows_raises():
    dataset = Dataset.from_dict({"labels": [[-100, 3, 12]]})
    with pytest.raises(ValueError, match="outside the model's 10 output rows"):
        count_completion_tokens(dataset, 10)


def test_iterable_dataset_raises_with_the_counts_file_hint():
    dataset = Dataset.from_dict({"labels": [[-100, 3, 4]]}).to_iterable_dataset()
    with pytest.raises(ValueError, match="pdl_counts_path"):
        count_completion_tokens(dataset, 10)


def test_dataset_without_labels_raises():
    with pytest.raises(ValueError, match="no `labels` column"):
        count_completion_tokens(Dataset.from_dict({"input_ids": [[1, 2, 3]]}), 10)


def test_has_masked_targets(padded):
    assert has_masked_targets(padded[0])
    assert not has_masked_targets(Dataset.from_dict({"labels": [[1, 2, 3], [4, 5]]}))
    # Only the first label (never a target) is masked: still plain text
    assert not has_masked_targets(Dataset.from_dict({"labels": [[-100, 2, 3]]}))


# The counts file


def make_counts(tokenizer, vocab_size=None) -> TokenCounts:
    vocab_size = vocab_size or len(tokenizer) + 24
    counts = np.arange(vocab_size, dtype=np.int64) % 7
    return TokenCounts(counts, "tiny/tokenizer", tokenizer_fingerprint(tokenizer), source="unit test")


def test_counts_file_round_trip(tmp_path, tiny_tokenizer):
    original = make_counts(tiny_tokenizer)
    path = tmp_path / "nested" / COUNTS_FILE_NAME

    original.save(path)
    loaded = TokenCounts.load(path)

    np.testing.assert_array_equal(loaded.counts, original.counts)
    assert loaded.counts.dtype == np.int64
    assert (loaded.tokenizer, loaded.tokenizer_fingerprint, loaded.source) == (
        original.tokenizer,
        original.tokenizer_fingerprint,
        original.source,
    )
    assert loaded.vocab_size == len(tiny_tokenizer) + 24
    assert loaded.num_tokens == int(original.counts.sum())
    content = json.loads(path.read_text())
    assert content["num_tokens"] == loaded.num_tokens and content["vocab_size"] == loaded.vocab_size
    # No temporary file left beside it
    assert os.listdir(path.parent) == [COUNTS_FILE_NAME]


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, tiny_tokenizer):
    path = tmp_path / COUNTS_FILE_NAME
    make_counts(tiny_tokenizer).save(path)
    before = path.read_bytes()
    unserialisable = make_counts(tiny_tokenizer)
    unserialisable.source = {"not", "json"}  # json.dump fails midway through the file

    with pytest.raises(TypeError):
        unserialisable.save(path)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [COUNTS_FILE_NAME]


def test_foreign_json_file_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"counts": [1, 2, 3]}))
    with pytest.raises(ValueError, match="not a pdl-trl counts file"):
        TokenCounts.load(path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda content: content.update(num_tokens=content["num_tokens"] + 1),
        lambda content: content.update(vocab_size=content["vocab_size"] - 1),
        lambda content: content["counts"].__setitem__(1, -content["counts"][1]),
    ],
    ids=["num_tokens", "vocab_size", "negative"],
)
def test_damaged_counts_file_is_refused(tmp_path, tiny_tokenizer, damage):
    path = tmp_path / COUNTS_FILE_NAME
    make_counts(tiny_tokenizer).save(path)
    content = json.loads(path.read_text())
    damage(content)
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="damaged"):
        TokenCounts.load(path)


def test_check_compatible(tiny_tokenizer):
    vocab_size = len(tiny_tokenizer) + 24
    counts = make_counts(tiny_tokenizer)
    fix = "Recount with `pdl-trl count --model_name_or_path other/model ...`."
    counts.check_compatible(vocab_size, tokenizer_fingerprint(tiny_tokenizer), "tiny/tokenizer", fix)

    with pytest.raises(ValueError, match=r"tokenizer 'tiny/tokenizer' \(424 rows") as error:
        counts.check_compatible(vocab_size + 64, tokenizer_fingerprint(tiny_tokenizer), "other/model", fix)
    assert "'other/model' (488 rows" in str(error.value)

    other = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    other.add_tokens(["<|new|>"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)
    # The caller's fix, for where the counts came from, ends the message
    with pytest.raises(ValueError, match="Recount with `pdl-trl count --model_name_or_path other/model ...`.$"):
        counts.check_compatible(vocab_size, tokenizer_fingerprint(other), "other/model", fix)


def test_fingerprint_is_stable_for_the_same_vocabulary(tiny_tokenizer):
    reloaded = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tiny_tokenizer)
    assert tokenizer_fingerprint(tiny_tokenizer).startswith("sha256:")
