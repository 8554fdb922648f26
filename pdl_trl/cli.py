"""
The `pdl-trl` command line: `sft`, `count`, `inspect`, `eval`, `compare` and `sweep`.

Thin over TRL's own tools, like `trl/cli`: each command is a module of `pdl_trl/scripts/` whose `run(argv)` parses
the command's arguments and runs it (`sft` and `count` parse with `TrlParser`, so they take every `trl sft` argument
and a `--config` YAML file; `sft` then launches its module through `accelerate launch`, as `trl sft` does).
"""

import importlib
import sys
from argparse import ArgumentParser


# name: (module, help line); a command's module is imported only when it runs
COMMANDS = {
    "sft": (
        "pdl_trl.scripts.sft",
        "Train with the Power-Law Decay Loss: every `trl sft` argument, plus the `pdl_*` ones.",
    ),
    "count": (
        "pdl_trl.scripts.count",
        "Count the completion tokens of a corpus into a counts file, prepared exactly as `sft` prepares it.",
    ),
    "inspect": (
        "pdl_trl.scripts.inspect_counts",
        "Show what the PDL weights of a counts file do at a given alpha and epsilon; plot them.",
    ),
    "eval": ("pdl_trl.scripts.eval", "Evaluate a trained model (see `pdl-trl eval --help`)."),
    "compare": ("pdl_trl.scripts.compare", "Compare runs (see `pdl-trl compare --help`)."),
    "sweep": (
        "pdl_trl.scripts.sweep",
        "Train variants x seeds, evaluate them, and report differences from plain SFT with bootstrap intervals.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Runs the `pdl-trl` command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="pdl-trl", description=__doc__.strip().split("\n")[0], allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # Each command parses its own arguments, `-h` included
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module, _ = COMMANDS[args.command]
    return importlib.import_module(module).run(argv[argv.index(args.command) + 1 :])


def console() -> int:
    """The `pdl-trl` console script: [`main`], with an error about the input printed as one line naming the fix."""
    from pdl_trl.scripts.utils import run_command

    status = 0

    def command() -> None:
        nonlocal status
        status = main()

    return run_command("pdl-trl", command) or status


if __name__ == "__main__":
    raise SystemExit(console())
