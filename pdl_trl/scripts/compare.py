"""
`pdl-trl compare`: metrics files of `pdl-trl eval` side by side, as a markdown table (printed, and written with
`--output`) and a bar chart with one subplot per metric (`--plot`).

```bash
pdl-trl compare sft/eval/metrics.json pdl/eval/metrics.json --labels SFT PDL --output table.md --plot chart.png
```
"""

import argparse
from collections.abc import Sequence

from pdl_trl.atomic import write_text_atomically
from pdl_trl.evaluation.files import load_metrics
from pdl_trl.evaluation.report import default_labels, markdown_table, plot


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdl-trl compare",
        description="Put `pdl-trl eval` metrics files side by side: a markdown table (printed) and a bar chart.",
    )
    parser.add_argument("metrics", nargs="+", help="Metrics JSON files written by `pdl-trl eval --output`.")
    parser.add_argument("--labels", nargs="+", help="Column names, one per file (default: file names).")
    parser.add_argument("--output", help="Write the markdown table here too.")
    parser.add_argument("--plot", help="Write a PNG bar chart, one subplot per metric.")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = make_parser().parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.metrics):
        raise SystemExit(
            f"{len(args.metrics)} metrics files but {len(args.labels)} --labels: give one label per file."
        )
    labels = args.labels or default_labels(args.metrics)
    runs = [load_metrics(path) for path in args.metrics]
    table = markdown_table(labels, runs)
    print(table, end="")
    if args.output is not None:
        write_text_atomically(args.output, table)
    if args.plot is not None:
        plot(labels, runs, args.plot)
    return table


def run(argv: list[str]) -> int:
    """What `pdl-trl compare ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    main()
