"""
`pdl-trl inspect`: what the PDL weights of a counts file do at a given alpha and epsilon, before training.

```bash
pdl-trl inspect counts.json --alpha 0.5 --epsilon 1.0 --output weights.png
```

Prints the share of the total weight (`sum count * w`) carried by the rarest 1% and 10% of the seen token types,
the Kish effective sample size of a batch of tokens drawn from the counts, and the most and least weighted tokens
(decoded when the tokenizer can be loaded); `--output` also draws weight against frequency rank (log-log).
"""

import argparse
import math
import sys

import numpy as np
import torch

from pdl_trl.atomic import write_atomically
from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint
from pdl_trl.loss import power_law_weights


RAREST_FRACTIONS = (0.01, 0.1)


def weight_report(counts: np.ndarray, alpha: float, epsilon: float, batch_tokens: int) -> dict:
    """
    Summary of the PDL weights of `counts` (one entry per vocabulary row).

    - `rarest`: for each fraction `f` of [`RAREST_FRACTIONS`], the `ceil(f * seen)` seen types with the smallest
      counts: their share of the token occurrences and of the total weight `sum(count * w)`.
    - `ess`: expected Kish effective sample size `(sum w)^2 / sum w^2` of a batch of `batch_tokens` tokens drawn
      from the counts distribution, as the ratio of expectations `1 + (n - 1) E[w]^2 / E[w^2]`; `ess_share` is it
      over `n`. For large batches this is the `pdl_ess` metric the trainer logs.
    """
    weights = power_law_weights(torch.from_numpy(counts), alpha, epsilon).double().numpy()
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
    return {
        "weights": weights,
        "order": order,
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
    ax.loglog(ranks, weights[order], label=f"w = 1 / (count + {epsilon:g})^{alpha:g}")
    ax.loglog(
        ranks, counts[order].astype(np.float64) ** -alpha, linestyle="--", color="gray", label="1 / count^α (no ε)"
    )
    # Where counts fall to epsilon, smoothing flattens the weights: mark the first rank there
    flat = np.flatnonzero(counts[order] <= epsilon)
    if len(flat):
        ax.axvline(ranks[flat[0]], color="tab:red", linestyle=":", label=f"count ≤ ε = {epsilon:g}")
    ax.set_xlabel("frequency rank of the token type (1 = most frequent)")
    ax.set_ylabel("PDL weight")
    ax.set_title(f"PDL weights, α = {alpha:g}, ε = {epsilon:g} ({len(order)} seen types)")
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _load_tokenizer(name: str, token_counts: TokenCounts, explicit: bool):
    """The tokenizer to decode with; refuses one that the counts were not made with."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        if explicit:
            raise
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
    parser.add_argument("--alpha", type=float, default=1.0, help="PDL decay exponent (`pdl_alpha`). Default: 1.0.")
    parser.add_argument("--epsilon", type=float, default=1.0, help="PDL smoothing (`pdl_epsilon`). Default: 1.0.")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer to decode the tokens with. Default: the file's `tokenizer` field, when it can be loaded.",
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
    if args.batch_tokens < 1:
        raise ValueError(f"`--batch_tokens` must be at least 1, got {args.batch_tokens}.")

    token_counts = TokenCounts.load(args.counts)
    counts = token_counts.counts
    report = weight_report(counts, args.alpha, args.epsilon, args.batch_tokens)
    weights, order = report["weights"], report["order"]
    tokenizer_name = args.tokenizer or token_counts.tokenizer
    tokenizer = _load_tokenizer(tokenizer_name, token_counts, explicit=args.tokenizer is not None)

    print(f"{args.counts}: {token_counts.source}")
    print(
        f"  tokenizer {token_counts.tokenizer!r}, {token_counts.num_tokens} tokens, {len(order)} of "
        f"{token_counts.vocab_size} types seen"
    )
    seen_weights = weights[order]
    print(
        f"alpha={args.alpha:g} epsilon={args.epsilon:g}: weights {seen_weights.min():.4g} .. {seen_weights.max():.4g} "
        f"(max / min {seen_weights.max() / seen_weights.min():.4g}); unseen types weigh {seen_weights.max():.4g}"
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
