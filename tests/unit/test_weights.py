"""The weight table: settings checked once for every front end, neutral tokens by name, text and id, the weights of
`power_law_weights`, the report `pdl-trl inspect` and the demo print, and the warnings about degenerate tables."""

import math

import numpy as np
import pytest
import torch

from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint
from pdl_trl.loss import power_law_weights
from pdl_trl.weights import PDLSettings, WeightTable, neutral_token_ids


# An 8-row vocabulary; row 0 never counted
COUNTS = np.array([0, 50, 30, 10, 5, 3, 1, 1], dtype=np.int64)


def table(counts=COUNTS, neutral_ids=(), **settings) -> WeightTable:
    """A table without a tokenizer: the neutral ids given directly, as integers."""
    token_counts = TokenCounts(counts, "test", "sha256:0", source="test")
    return WeightTable.build(
        token_counts,
        PDLSettings(pdl_neutral_special_tokens=False, pdl_neutral_tokens=list(neutral_ids), **settings),
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pdl_alpha": float("nan")}, "`pdl_alpha` must be a finite number >= 0"),
        ({"pdl_alpha": -0.5}, "`pdl_alpha` must be a finite number >= 0"),
        ({"pdl_alpha": "1"}, "`pdl_alpha` must be a number"),
        ({"pdl_alpha": True}, "`pdl_alpha` must be a number"),
        ({"pdl_epsilon": 0.0}, "`pdl_epsilon` must be a finite number > 0"),
        ({"pdl_mix": 1.5}, r"`pdl_mix` must be in \[0, 1\]"),
        ({"pdl_neutral_special_tokens": "yes"}, "`pdl_neutral_special_tokens` must be true or false"),
        ({"pdl_neutral_tokens": "<|im_end|>"}, r"is a list of tokens.*\['<\|im_end\|>'\]"),
        ({"pdl_neutral_tokens": [1.5]}, "takes token strings or integer ids"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PDLSettings(**settings)


def test_settings_of_a_config_and_plain_sft():
    class Config:
        pdl_alpha, pdl_epsilon, pdl_mix = 0.5, 2.0, 1.0
        pdl_neutral_special_tokens, pdl_neutral_tokens = False, ["\n"]

    assert PDLSettings.of(Config()) == PDLSettings(0.5, 2.0, 1.0, False, ["\n"])
    assert PDLSettings(pdl_alpha=0.0).is_plain_sft and PDLSettings(pdl_mix=0.0).is_plain_sft
    assert not PDLSettings().is_plain_sft


def test_neutral_tokens_by_entry_text_and_id(tiny_tokenizer):
    (the,) = tiny_tokenizer.encode(" The")
    eos = tiny_tokenizer.eos_token_id
    rows = len(tiny_tokenizer) + 24
    # An integer and a string of digits are both ids: on the command line every entry is a string
    settings = PDLSettings(pdl_neutral_special_tokens=False, pdl_neutral_tokens=["<|im_end|>", " The", 7, "9"])
    assert neutral_token_ids(tiny_tokenizer, settings, rows) == sorted({eos, the, 7, 9})
    specials = neutral_token_ids(tiny_tokenizer, PDLSettings(), rows)
    assert set(tiny_tokenizer.all_special_ids) <= set(specials)
    with pytest.raises(ValueError, match="is 3 tokens"):
        neutral_token_ids(tiny_tokenizer, PDLSettings(pdl_neutral_tokens=[" The sum is"]), rows)
    with pytest.raises(ValueError, match="outside the model's"):
        neutral_token_ids(tiny_tokenizer, PDLSettings(pdl_neutral_tokens=[str(rows)]), rows)


def test_table_is_power_law_weights_with_its_record():
    built = table(neutral_ids=[1], pdl_alpha=1.0, pdl_epsilon=2.0, pdl_mix=0.5)
    neutral = torch.zeros(len(COUNTS), dtype=torch.bool)
    neutral[1] = True
    expected = power_law_weights(torch.from_numpy(COUNTS), 1.0, 2.0, neutral=neutral, mix=0.5)
    assert torch.equal(built.weights, expected) and torch.equal(built.neutral_mask, neutral)
    assert built.neutral_ids == [1]
    assert built.record == {"pdl_alpha": 1.0, "pdl_epsilon": 2.0, "pdl_mix": 0.5, "neutral_token_ids": [1]}


def test_counts_are_checked_against_the_tokenizer_and_built_into_a_table(tiny_tokenizer):
    rows = len(tiny_tokenizer) + 24
    counts = np.ones(rows, dtype=np.int64)
    own = TokenCounts(counts, "tiny", tokenizer_fingerprint(tiny_tokenizer), source="test")
    own.check_compatible(rows, tokenizer_fingerprint(tiny_tokenizer), "tiny", "fix")
    # One weight per counted row, neutral tokens named through the tokenizer
    table = WeightTable.build(own, PDLSettings(), tiny_tokenizer)
    assert len(table.weights) == rows and tiny_tokenizer.eos_token_id in table.neutral_ids
    other = TokenCounts(counts, "other", "sha256:0", source="test")
    with pytest.raises(ValueError, match="but this run uses 'tiny'.* Recount them."):
        other.check_compatible(rows, tokenizer_fingerprint(tiny_tokenizer), "tiny", "Recount them.")
    with pytest.raises(ValueError, match="count no token"):
        WeightTable.build(
            TokenCounts(counts * 0, "t", "sha256:0", source="test"), PDLSettings(pdl_neutral_special_tokens=False)
        )


def test_report_alpha_zero_is_uniform():
    report = table(pdl_alpha=0.0).report(batch_tokens=4096)
    assert report["ess"] == pytest.approx(4096)
    for rarest in report["rarest"]:
        assert rarest["weight_share"] == pytest.approx(rarest["token_share"])
    skewed = table(pdl_alpha=1.0).report(batch_tokens=4096)
    assert skewed["ess"] < 4096
    assert skewed["rarest"][1]["weight_share"] > skewed["rarest"][1]["token_share"]
    # Rarest first, ties by id: 6 and 7 are counted once
    assert skewed["order"].tolist() == [6, 7, 5, 4, 3, 2, 1]


def test_report_neutral_tokens_keep_their_plain_sft_share():
    report = table(neutral_ids=[1], pdl_alpha=1.0, pdl_mix=0.5).report(batch_tokens=4096)
    (row,) = report["neutral"]
    assert row["id"] == 1 and row["weight"] == 1.0
    assert row["weight_share"] == pytest.approx(row["token_share"]) == pytest.approx(50 / COUNTS.sum())
    assert report["neutral_weight_share"] == pytest.approx(50 / COUNTS.sum())
    assert report["weights"].min() >= 0.5 - 1e-6  # the mix keeps every weight above 1 - mix


def test_report_lines_list_the_most_and_least_weighted():
    built = table(neutral_ids=[1], pdl_alpha=1.0)
    lines = built.report_lines(built.report(), top_k=2)
    text = "\n".join(lines)
    assert "100 completion tokens of 7 types seen (of 8)" in text
    assert "1 neutral tokens weigh the mean (1)" in text
    most = lines[lines.index("most weighted (rarest) 2 tokens:") + 1 :][:2]
    least = lines[lines.index("least weighted (most frequent) 2 tokens:") + 1 :][:2]
    assert [int(line.split()[0]) for line in most] == [6, 7]
    # The neutral token 1 is listed with the neutral tokens, not among the least weighted
    assert [int(line.split()[0]) for line in least] == [2, 3]


def test_degenerate_tables_are_warned_about():
    counts = np.array([0, 1000, 10, 5, 3], dtype=np.int64)
    with pytest.warns(UserWarning, match="end-of-sequence token '</s>' at .* may not stop generating"):
        table(counts, pdl_alpha=1.0).warn_if_degenerate(eos_token_id=1, eos_token="</s>")
    with pytest.warns(UserWarning, match="differ by less than 1%"):
        table(counts, pdl_alpha=1.0, pdl_epsilon=1e9).warn_if_degenerate(eos_token_id=None, eos_token=None)


def test_plot_writes_a_png(tmp_path):
    table(pdl_alpha=0.5).plot(tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert math.isfinite(table(pdl_alpha=0.5).weights.sum().item())
