"""
The `pdl-trl` command line: `sft`, `count`, `inspect`, `eval` and `compare`.

Thin over TRL's own tools, like `trl/cli`: `sft` and `count` parse with `TrlParser` (every `trl sft` argument, a
`--config` YAML file whose keys are argument names, command-line flags override it); `sft` then launches
`pdl_trl.scripts.sft` through `accelerate launch`, as `trl sft` launches `trl/scripts/sft.py`.
"""

import sys
from argparse import ArgumentParser


COMMANDS = {
    "sft": "Train with the Power-Law Decay Loss: every `trl sft` argument, plus the `pdl_*` ones.",
    "count": "Count the completion tokens of a corpus into a counts file, prepared exactly as `sft` prepares it.",
    "inspect": "Show what the PDL weights of a counts file do at a given alpha and epsilon; plot them.",
    "eval": "Evaluate a trained model (see `pdl-trl eval --help`).",
    "compare": "Compare runs (see `pdl-trl compare --help`).",
}


def _subtract_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` without the ordered `subsequence` (the launcher's arguments, taken out of the script's)."""
    remaining = iter(subsequence)
    current = next(remaining, None)
    result = []
    for item in items:
        if current is not None and item == current:
            current = next(remaining, None)
        else:
            result.append(item)
    return result


def sft(argv: list[str]) -> int:
    """
    Parses the arguments (so `-h` and errors come before any launch), then runs `pdl_trl.scripts.sft` with
    `accelerate launch`. Arguments that no dataclass takes go to the launcher (`--num_processes 2`,
    `--config_file fsdp.yaml`, or `--accelerate_config NAME|PATH`: a config shipped in `trl/accelerate_configs`,
    e.g. `multi_gpu`, `zero3`, `fsdp2`, or a file), as with `trl sft`.
    """
    from accelerate.commands.launch import launch_command, launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    from pdl_trl.scripts.sft import make_parser
    from pdl_trl.scripts.utils import config_launch_args, launch_option_names

    parser = make_parser(prog="pdl-trl sft")
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = resolve_accelerate_config_argument(config_launch_args(config_remaining) + cli_remaining)
    unknown = [arg for arg in launch_args if arg.startswith("--") and arg.split("=")[0] not in launch_option_names()]
    if unknown:
        raise ValueError(
            f"Unknown arguments: {unknown}. They are neither `pdl-trl sft` arguments nor `accelerate launch` options: "
            "check their spelling."
        )
    script_args = _subtract_subsequence(argv, cli_remaining)
    launch_command(launch_command_parser().parse_args(launch_args + ["--module", "pdl_trl.scripts.sft", *script_args]))
    return 0


def count(argv: list[str]) -> int:
    """Runs in this process; under a launcher use `torchrun -m pdl_trl.scripts.count` (see docs/distributed.md)."""
    from pdl_trl.scripts.count import main, make_parser
    from pdl_trl.scripts.utils import parse_script_args

    main(*parse_script_args(make_parser(prog="pdl-trl count"), argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the `pdl-trl` command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="pdl-trl", description=__doc__.strip().split("\n")[0], allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        # Each command parses its own arguments, `-h` included
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command_argv = argv[argv.index(args.command) + 1 :]

    if args.command == "sft":
        return sft(command_argv)
    if args.command == "count":
        return count(command_argv)
    if args.command == "inspect":
        from pdl_trl.scripts.inspect_counts import main as inspect_main

        inspect_main(command_argv)
        return 0
    if args.command == "eval":
        from pdl_trl.evaluation import main as eval_main

        eval_main(command_argv)
        return 0
    if args.command == "compare":
        from pdl_trl.compare import main as compare_main

        compare_main(command_argv)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
