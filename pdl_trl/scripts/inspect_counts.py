"""
`pdl-trl inspect`: what the PDL weights of a counts file do at a given alpha and epsilon, before training.

```bash
pdl-trl inspect counts.json --output weights.png                  # the trainer's defaults
pdl-trl inspect counts.json --alpha 1.0 --no_neutral_special_tokens  # the paper's formula
pdl-trl inspect counts.json --alpha 1.0 --mix 0.5
```

Prints the share of the total weight (`sum count * w`) carried by the rarest 1% and 10% of the seen token types and
by the neutral tokens (against their share in plain SFT), the Kish effective sample size of a batch of tokens drawn
from the counts, and the most and least weighted tokens (decoded when the tokenizer can be loaded); `--output` also
draws weight against frequency rank (log-log). Weights are relative to the mean weight of a target token, as the
trainer's table.
"""

import argparse
import math
import sys

import numpy as np
import torch

from pdl_trl import PDLSFTConfig
from pdl_trl.atomic import write_atomically
from pdl_trl.frequency import TokenCounts, neutral_token_ids, tokenizer_fingerprint
from pdl_trl.loss import power_law_weights


RAREST_FRACTIONS = (0.01, 0.1)


def weight_report(
    counts: np.ndarray,
    alpha: float,
    epsilon: float,
    batch_tokens: int,
    neutral_ids: list[int] | None = None,
    mix: float = 1.0,
) -> dict:
    """
    Summary of the PDL weights of `counts` (one entry per vocabulary row), with `neutral_ids` weighing the mean and
    the `mix` toward plain SFT, as `PDLSFTTrainer` builds its table.

    - `rarest`: for each fraction `f` of [`RAREST_FRACTIONS`], the `ceil(f * seen)` seen types with the smallest
      counts: their share of the token occurrences and of the total weight `sum(count * w)`.
    - `ess`: expected Kish effective sample size `(sum w)^2 / sum w^2` of a batch of `batch_tokens` tokens drawn
      from the counts distribution, as the ratio of expectations `1 + (n - 1) E[w]^2 / E[w^2]`; `ess_share` is it
      over `n`. For large batches this is the `pdl_ess` metric the trainer logs.
    - `neutral`: for each neutral id, its count, weight, and share of the tokens (= its share of the weight in plain
      SFT) and of the total weight; `neutral_weight_share`: all of them together, the table's `pdl_neutral_share`.
    """
    neutral = np.zeros(len(counts), dtype=bool)
    neutral[neutral_ids or []] = True
    weights = power_law_weights(torch.from_numpy(counts), alpha, epsilon, neutral=torch.from_numpy(neutral), mix=mix)
    weights = weights.double().numpy()
    seen = np.flatnonzero(counts > 0)
    if len(seen) == 0:
        raise ValueError("The counts file counts no token: count a non-empty corpus.")
    # Rarest first; ties broken by token id so that the report is deterministic
    order = seen[np.lexsort((seen, counts[seen]))]
    token_mass = counts[order].astype(np.float64)
    weight_mass = token_mass * weights[order]
    rarest = []
    for fraction in RAREST_FRACTIONS:
        k = math.ceil(fraction * len(order))
        rarest.append(
            {
                "fraction": fraction,
                "types": k,
                "token_share": token_mass[:k].sum() / token_mass.sum(),
                "weight_share": weight_mass[:k].sum() / weight_mass.sum(),
            }
        )
    p = token_mass / token_mass.sum()
    mean_w = (p * weights[order]).sum()
    mean_w2 = (p * weights[order] ** 2).sum()
    ess = 1 + (batch_tokens - 1) * mean_w**2 / mean_w2
    total_tokens, total_weight = counts.sum(), (counts * weights).sum()
    neutral_rows = [
        {
            "id": int(i),
            "count": int(counts[i]),
            "weight": float(weights[i]),
            "token_share": counts[i] / total_tokens,
            "weight_share": counts[i] * weights[i] / total_weight,
        }
        for i in np.flatnonzero(neutral)
    ]
    return {
        "weights": weights,
        "order": order,
        "neutral": neutral_rows,
        "neutral_weight_share": sum(row["weight_share"] for row in neutral_rows),
        "rarest": rarest,
        "ess": ess,
        "ess_share": ess / batch_tokens,
        "batch_tokens": batch_tokens,
    }


def plot_weights(counts: np.ndarray, weights: np.ndarray, alpha: float, epsilon: float, path: str) -> None:
    """Writes a PNG of weight against frequency rank (1 = most frequent), log-log, with alpha and epsilon marked."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "`pdl-trl inspect --output` draws with matplotlib: `pip install 'pdl-trl[plot]'`."
        ) from error
    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    seen = np.flatnonzero(counts > 0)
    order = seen[np.lexsort((seen, -counts[seen]))]  # most frequent first
    ranks = np.arange(1, len(order) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(ranks, weights[order], label=f"w ∝ 1 / (count + {epsilon:g})^{alpha:g}")
    # The formula without epsilon, on the table's scale (relative to the mean) at the rarest token
    no_epsilon = counts[order].astype(np.float64) ** -alpha
    scale = weights[order[-1]] / no_epsilon[-1]
    ax.loglog(ranks, no_epsilon * scale, linestyle="--", color="gray", label="∝ 1 / count^α (no ε)")
    # Where counts fall to epsilon, smoothing flattens the weights: mark the first rank there
    flat = np.flatnonzero(counts[order] <= epsilon)
    if len(flat):
        ax.axvline(ranks[flat[0]], color="tab:red", linestyle=":", label=f"count ≤ ε = {epsilon:g}")
    ax.set_xlabel("frequency rank of the token type (1 = most frequent)")
    ax.set_ylabel("PDL weight (1 = mean weight of a target)")
    ax.set_title(f"PDL weights, α = {alpha:g}, ε = {epsilon:g} ({len(order)} seen types)")
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _load_tokenizer(name: str, token_counts: TokenCounts, explicit: bool, wants_neutral: bool):
    """The tokenizer to decode with; refuses one that the counts were not made with."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        if explicit:
            raise
        if wants_neutral:
            raise OSError(
                f"Cannot load the counts' tokenizer {name!r} ({error}), which names the neutral tokens. Pass "
                "`--tokenizer PATH` (the tokenizer the counts were made with), or `--no_neutral_special_tokens` "
                "without `--neutral_tokens` to weigh every token by the formula."
            ) from error
        print(f"Showing token ids: cannot load the counts' tokenizer {name!r} ({error}). Pass `--tokenizer PATH`.")
        return None
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != token_counts.tokenizer_fingerprint:
        raise ValueError(
            f"The counts were made with tokenizer {token_counts.tokenizer!r} ({token_counts.tokenizer_fingerprint}), "
            f"but {name!r} is another vocabulary ({fingerprint}). Pass `--tokenizer` with the tokenizer the counts "
            "were made with."
        )
    return tokenizer


def _token_lines(ids, counts, weights, tokenizer) -> list[str]:
    lines = []
    for token_id in ids:
        token = repr(tokenizer.decode([int(token_id)])) if tokenizer is not None else ""
        lines.append(
            f"  {int(token_id):>8d} {token:<24} count {int(counts[token_id]):>10d}  weight {weights[token_id]:.4g}"
        )
    return lines


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", help="Counts file (JSON from `pdl-trl count` or a run's `pdl_counts.json`).")
    parser.add_argument(
        "--alpha",
        type=float,
        default=PDLSFTConfig.pdl_alpha,
        help=f"PDL decay exponent (`pdl_alpha`). Default: {PDLSFTConfig.pdl_alpha}.",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=PDLSFTConfig.pdl_epsilon,
        help=f"PDL smoothing (`pdl_epsilon`). Default: {PDLSFTConfig.pdl_epsilon}.",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer to decode the tokens with. Default: the file's `tokenizer` field, when it can be loaded.",
    )
    parser.add_argument(
        "--neutral_special_tokens",
        action="store_true",
        default=PDLSFTConfig.pdl_neutral_special_tokens,
        help="Weigh the tokenizer's special tokens at the mean (`pdl_neutral_special_tokens`). "
        f"Default: {PDLSFTConfig.pdl_neutral_special_tokens}.",
    )
    parser.add_argument(
        "--no_neutral_special_tokens",
        action="store_false",
        dest="neutral_special_tokens",
        help="Weigh the special tokens by the formula, as the paper does.",
    )
    parser.add_argument(
        "--neutral_tokens", nargs="+", default=None, help="More tokens weighed at the mean (`pdl_neutral_tokens`)."
    )
    parser.add_argument(
        "--mix",
        type=float,
        default=PDLSFTConfig.pdl_mix,
        help=f"Mix toward plain SFT (`pdl_mix`). Default: {PDLSFTConfig.pdl_mix}.",
    )
    parser.add_argument("--output", default=None, help="Write a PNG of weight against frequency rank here.")
    parser.add_argument(
        "--batch_tokens", type=int, default=4096, help="Batch size, in tokens, of the effective-sample-size figure."
    )
    parser.add_argument("--top_k", type=int, default=10, help="How many most and least weighted tokens to list.")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser(prog="pdl-trl inspect").parse_args(sys.argv[1:] if argv is None else argv)
    if not (math.isfinite(args.alpha) and args.alpha >= 0):
        raise ValueError(f"`--alpha` must be a finite number >= 0, got {args.alpha}.")
    if not (math.isfinite(args.epsilon) and args.epsilon > 0):
        raise ValueError(f"`--epsilon` must be a finite number > 0, got {args.epsilon}.")
    if not (math.isfinite(args.mix) and 0 <= args.mix <= 1):
        raise ValueError(f"`--mix` must be in [0, 1] (1.0 is PDL, 0.0 plain SFT), got {args.mix}.")
    if args.batch_tokens < 1:
        raise ValueError(f"`--batch_tokens` must be at least 1, got {args.batch_tokens}.")

    token_counts = TokenCounts.load(args.counts)
    counts = token_counts.counts
    tokenizer_name = args.tokenizer or token_counts.tokenizer
    wants_neutral = args.neutral_special_tokens or args.neutral_tokens
    tokenizer = _load_tokenizer(tokenizer_name, token_counts, args.tokenizer is not None, wants_neutral)
    neutral_ids = []
    if wants_neutral:
        neutral_ids = neutral_token_ids(tokenizer, args.neutral_special_tokens, args.neutral_tokens, len(counts))
    report = weight_report(counts, args.alpha, args.epsilon, args.batch_tokens, neutral_ids, args.mix)
    weights, order = report["weights"], report["order"]

    print(f"{args.counts}: {token_counts.source}")
    print(
        f"  tokenizer {token_counts.tokenizer!r}, {token_counts.num_tokens} tokens, {len(order)} of "
        f"{token_counts.vocab_size} types seen"
    )
    seen_weights = weights[order]
    print(
        f"alpha={args.alpha:g} epsilon={args.epsilon:g} mix={args.mix:g}: weights {seen_weights.min():.4g} .. "
        f"{seen_weights.max():.4g} of the mean (max / min {seen_weights.max() / seen_weights.min():.4g}); unseen "
        f"types weigh {seen_weights.max():.4g}"
    )
    for rarest in report["rarest"]:
        print(
            f"rarest {rarest['fraction']:.0%} of seen types ({rarest['types']} of {len(order)}): "
            f"{rarest['token_share']:.2%} of the tokens, {rarest['weight_share']:.2%} of the total weight"
        )
    print(
        f"Kish effective sample size of a {args.batch_tokens}-token batch: {report['ess']:.1f} tokens "
        f"({report['ess_share']:.2%})"
    )
    counted_neutral = [row for row in report["neutral"] if row["count"]]
    if report["neutral"]:
        print(
            f"{len(report['neutral'])} neutral tokens weigh the mean (1); the {len(counted_neutral)} counted carry "
            f"{report['neutral_weight_share']:.2%} of the total weight:"
        )
        for row in counted_neutral:
            token = repr(tokenizer.decode([row["id"]]))
            print(
                f"  {row['id']:>8d} {token:<24} count {row['count']:>10d}  {row['weight_share']:.2%} of the weight "
                f"({row['token_share']:.2%} in plain SFT)"
            )
    # The lists run by count; neutral tokens are listed above
    order = order[~np.isin(order, [row["id"] for row in report["neutral"]])]
    k = min(args.top_k, len(order))
    print(f"most weighted (rarest) {k} tokens:")
    print("\n".join(_token_lines(order[:k], counts, weights, tokenizer)))
    print(f"least weighted (most frequent) {k} tokens:")
    print("\n".join(_token_lines(order[::-1][:k], counts, weights, tokenizer)))
    if args.output is not None:
        plot_weights(counts, weights, args.alpha, args.epsilon, args.output)
        print(f"plot: {args.output}")
    return report


def run(argv: list[str]) -> int:
    """What `pdl-trl inspect ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    main()
