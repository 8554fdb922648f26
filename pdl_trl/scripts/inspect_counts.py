"""
`pdl-trl inspect`: what the PDL weights of a counts file do at given settings, before training.

```bash
pdl-trl inspect --pdl_counts_path counts.json --plot_output weights.png            # the trainer's defaults
pdl-trl inspect --pdl_counts_path counts.json --pdl_alpha 1.0 --no_pdl_neutral_special_tokens  # the paper's formula
pdl-trl inspect --pdl_counts_path counts.json --pdl_alpha 1.0 --pdl_mix 0.5
```

Prints the share of the total weight (`sum count * w`) carried by the rarest 1% and 10% of the seen token types and
by the neutral tokens (against their share in plain SFT), the Kish effective sample size of a batch of tokens drawn
from the counts, and the most and least weighted tokens (decoded when the tokenizer can be loaded); `--plot_output`
also draws weight against frequency rank (log-log). Weights are relative to the mean weight of a target token, as the
trainer's table ([`~pdl_trl.weights.WeightTable`]).
"""

import argparse
import sys
import warnings

from pdl_trl.frequency import TokenCounts, tokenizer_fingerprint
from pdl_trl.scripts.utils import add_deprecated_option, add_pdl_settings_arguments, parse_command_args, run_command
from pdl_trl.spelling import command_line
from pdl_trl.weights import PDLSettings, WeightTable


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
                "`--tokenizer PATH` (the tokenizer the counts were made with), or `--no_pdl_neutral_special_tokens` "
                "without `--pdl_neutral_tokens` to weigh every token by the formula."
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


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--pdl_counts_path", help="Counts file (JSON from `pdl-trl count` or a run's `pdl_counts.json`). Required."
    )
    parser.add_argument("counts", nargs="?", help=argparse.SUPPRESS)  # deprecated: the positional counts file
    add_pdl_settings_arguments(parser)
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer to decode the tokens with. Default: the file's `tokenizer` field, when it can be loaded.",
    )
    parser.add_argument("--plot_output", default=None, help="Write a PNG of weight against frequency rank here.")
    parser.add_argument(
        "--batch_tokens", type=int, default=4096, help="Batch size, in tokens, of the effective-sample-size figure."
    )
    parser.add_argument("--top_k", type=int, default=10, help="How many most and least weighted tokens to list.")
    for old, new in (("--alpha", "--pdl_alpha"), ("--epsilon", "--pdl_epsilon"), ("--mix", "--pdl_mix")):
        add_deprecated_option(parser, old, new, dest=new[2:], type=float)
    add_deprecated_option(parser, "--neutral_tokens", "--pdl_neutral_tokens", dest="pdl_neutral_tokens", nargs="+")
    for old, new, value in (
        ("--neutral_special_tokens", "--pdl_neutral_special_tokens", True),
        ("--no_neutral_special_tokens", "--no_pdl_neutral_special_tokens", False),
    ):
        add_deprecated_option(parser, old, new, dest="pdl_neutral_special_tokens", nargs=0, const=value)
    add_deprecated_option(parser, "--output", "--plot_output", dest="plot_output")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(prog="pdl-trl inspect")
    args = parse_command_args(parser, sys.argv[1:] if argv is None else argv)
    if args.counts is not None:
        if args.pdl_counts_path is not None:
            parser.error("give the counts file once, with `--pdl_counts_path`")
        warnings.warn(
            "The positional counts file of `pdl-trl inspect` is deprecated and will be removed in the next release: "
            "use `--pdl_counts_path`.",
            FutureWarning,
            stacklevel=2,
        )
        args.pdl_counts_path = args.counts
    if args.pdl_counts_path is None:
        parser.error("the counts file is required: `--pdl_counts_path PATH`")
    if args.batch_tokens < 1:
        parser.error(f"`--batch_tokens` must be at least 1, got {args.batch_tokens}")
    if args.top_k < 0:
        parser.error(f"`--top_k` must be at least 0, got {args.top_k}")
    return args


@command_line
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = PDLSettings(
        pdl_alpha=args.pdl_alpha,
        pdl_epsilon=args.pdl_epsilon,
        pdl_mix=args.pdl_mix,
        pdl_neutral_special_tokens=args.pdl_neutral_special_tokens,
        pdl_neutral_tokens=args.pdl_neutral_tokens,
    )
    token_counts = TokenCounts.load(args.pdl_counts_path)
    wants_neutral = settings.pdl_neutral_special_tokens or bool(settings.pdl_neutral_tokens)
    tokenizer = _load_tokenizer(
        args.tokenizer or token_counts.tokenizer, token_counts, args.tokenizer is not None, wants_neutral
    )
    table = WeightTable.build(token_counts, settings, tokenizer if wants_neutral else None)
    report = table.report(args.batch_tokens)
    print(f"{args.pdl_counts_path}: {token_counts.source}")
    print("\n".join(table.report_lines(report, tokenizer, top_k=args.top_k)))
    if args.plot_output is not None:
        table.plot(args.plot_output)
        print(f"plot: {args.plot_output}")
    return report


def run(argv: list[str]) -> int:
    """What `pdl-trl inspect ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl inspect", main))
