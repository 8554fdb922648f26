"""
`pdl-trl compare`: metrics files of `pdl-trl eval` side by side, as a markdown table (printed, and written with
`--table_output`) and a bar chart with one subplot per metric (`--plot_output`).

```bash
pdl-trl compare sft/eval/metrics.json pdl/eval/metrics.json --labels SFT PDL --table_output table.md \
    --plot_output chart.png
```
"""

import argparse
from collections.abc import Sequence

from pdl_trl.atomic import write_text_atomically
from pdl_trl.evaluation.files import load_metrics, read_metrics_file
from pdl_trl.evaluation.report import default_labels, frequency_note, markdown_table, plot
from pdl_trl.scripts.utils import add_deprecated_option, parse_command_args, run_command
from pdl_trl.spelling import command_line


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdl-trl compare",
        description="Put `pdl-trl eval` metrics files side by side: a markdown table (printed) and a bar chart.",
        allow_abbrev=False,
    )
    parser.add_argument("metrics", nargs="+", help="Metrics JSON files written by `pdl-trl eval --metrics_output`.")
    parser.add_argument("--labels", nargs="+", help="Column names, one per file (default: file names).")
    parser.add_argument("--table_output", help="Write the markdown table here too.")
    parser.add_argument("--plot_output", help="Write a PNG bar chart, one subplot per metric.")
    add_deprecated_option(parser, "--output", "--table_output", dest="table_output")
    add_deprecated_option(parser, "--plot", "--plot_output", dest="plot_output")
    return parser


@command_line
def main(argv: Sequence[str] | None = None) -> str:
    args = parse_command_args(make_parser(), argv)
    if args.labels is not None and len(args.labels) != len(args.metrics):
        raise SystemExit(
            f"{len(args.metrics)} metrics files but {len(args.labels)} --labels: give one label per file."
        )
    labels = args.labels or default_labels(args.metrics)
    contents = [read_metrics_file(path) for path in args.metrics]
    runs = [load_metrics(path) for path in args.metrics]
    table = markdown_table(labels, runs) + frequency_note(labels, contents)
    print(table, end="")
    if args.table_output is not None:
        write_text_atomically(args.table_output, table)
    if args.plot_output is not None:
        plot(labels, runs, args.plot_output)
    return table


def run(argv: list[str]) -> int:
    """What `pdl-trl compare ARGS` runs."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl compare", main))
