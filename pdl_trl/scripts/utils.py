"""
Helpers shared by the `pdl-trl` scripts: strict argument parsing, the `accelerate launch` options, the PDL settings as
options of the commands that do not parse with TRL (`inspect`, the demo), and deprecated spellings.
"""

import argparse
import difflib
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import fields

from transformers.hf_argparser import string_to_bool

from pdl_trl.config import PDLSFTConfig
from pdl_trl.weights import PDLSettings


# What a command reports as one line (`pdl-trl sft: error: ...`) instead of a traceback: the errors that name a fix for
# bad input (values, files, folders in use, missing extras). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError)


def run_command(prog: str, function: Callable[[], object]) -> int:
    """
    Runs a command's entry point as a console script: an error about the user's input is printed as one line,
    `PROG: error: MESSAGE`, on one process (rank 0 under a launcher), and the exit status is 1. Set
    `PDL_TRL_TRACEBACK=1` to see the traceback instead.
    """
    try:
        function()
    except USER_ERRORS as error:
        if os.environ.get("PDL_TRL_TRACEBACK") == "1":
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc(limit=0)
        return 130
    return 0


def did_you_mean(unknown: list[str], known: list[str]) -> str:
    """`" Did you mean --pdl_alpha?"` for the unknown options that are close to a known one, else `""`."""
    suggestions = []
    for name in unknown:
        flag = name.split("=")[0]
        match = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        if match:
            suggestions.append(f"{flag} -> {match[0]}")
    return f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings if name.startswith("--")]


def parse_command_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, but an unknown option is an error that suggests the option it was meant to be."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}.{did_you_mean(unknown, option_strings(parser))}")
    return args


class _DeprecatedOption(argparse.Action):
    """An old spelling of an option: sets what the new one sets, with a `FutureWarning` naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(
            f"`{option_string}` is deprecated and will be removed in the next release: use `{self.new}`.",
            FutureWarning,
            stacklevel=2,
        )
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_option(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """
    Adds `old` as a deprecated spelling of the option `new` (which stores into `dest`). `kwargs` are those of `new`
    (`type`, `nargs`); a flag passes `nargs=0, const=value`.
    """
    parser.add_argument(old, action=_DeprecatedOption, new=new, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_pdl_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """
    The [`PDLSettings`] as options, spelled, defaulted and explained as `PDLSFTConfig`'s fields are by `pdl-trl sft`
    (`--pdl_alpha`, `--pdl_neutral_special_tokens` / `--no_pdl_neutral_special_tokens`, ...).
    """
    helps = {f.name: f.metadata["help"] for f in fields(PDLSFTConfig)}
    for name in ("pdl_alpha", "pdl_epsilon", "pdl_mix"):
        default = getattr(PDLSettings, name)
        parser.add_argument(f"--{name}", type=float, default=default, help=f"{helps[name]} Default: {default}.")
    default = PDLSettings.pdl_neutral_special_tokens
    parser.add_argument(
        "--pdl_neutral_special_tokens",
        type=string_to_bool,
        nargs="?",
        const=True,
        default=default,
        help=f"{helps['pdl_neutral_special_tokens']} Default: {default}.",
    )
    parser.add_argument("--no_pdl_neutral_special_tokens", action="store_false", dest="pdl_neutral_special_tokens")
    parser.add_argument(
        "--pdl_neutral_tokens",
        nargs="+",
        default=None,
        help=helps["pdl_neutral_tokens"],
    )


def launch_option_names() -> set[str]:
    """Option names of `accelerate launch` (`--num_processes`, ...)."""
    from accelerate.commands.launch import launch_command_parser

    return {name for action in launch_command_parser()._actions for name in action.option_strings}


def config_launch_args(config_remaining: list[str], known: list[str] = ()) -> list[str]:
    """
    The `accelerate launch` arguments among the config-file keys that no dataclass took (`["--num_processes", "2"]`).

    Boolean launch flags become bare flags: `multi_gpu: true` must be `--multi_gpu`, not `--multi_gpu True` (which
    `accelerate launch` would read as the script name). Any other key is an error.
    """
    from accelerate.commands.launch import launch_command_parser

    actions = {name: action for action in launch_command_parser()._actions for name in action.option_strings}
    unknown = [key for key in config_remaining[::2] if key not in actions]
    if unknown:
        suggestion = did_you_mean(unknown, [*known, *actions]).replace("--", "")
        raise ValueError(
            f"Unknown keys in the config file: {[key.removeprefix('--') for key in unknown]}. They are neither "
            "arguments of this command nor `accelerate launch` options: fix their spelling or remove them."
            f"{suggestion}"
        )
    launch_args = []
    for key, value in zip(config_remaining[::2], config_remaining[1::2], strict=True):
        # A flag takes no value (accelerate has its own store-true action class, so test the arity)
        if actions[key].nargs == 0:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"The config file sets the launch flag `{key[2:]}` to {value!r}: use true or false.")
            launch_args += [key] if value.lower() == "true" else []
        else:
            launch_args += [key, value]
    return launch_args


def parse_script_args(parser, args: list[str] | None = None, launch_options: bool = True) -> tuple:
    """
    Parses a script's arguments and `--config` file like `TrlParser.parse_args_and_config`, but stricter than
    `trl/scripts/*.py`: unknown command-line arguments are errors, and a config-file key that is no argument must
    be an `accelerate launch` option (`pdl-trl sft` passes those to the launcher), or, without `launch_options`
    (a command that launches nothing), is an error too. So a misspelled key such as `pdl_alpah` fails instead of
    being ignored.
    """
    *dataclasses, config_remaining, cli_remaining = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True
    )
    known = option_strings(parser)
    if cli_remaining:
        hint = (
            "; `accelerate launch` options go before the script (`accelerate launch --num_processes 2 -m "
            "pdl_trl.scripts.sft ...`) or to `pdl-trl sft`"
            if launch_options
            else ""
        )
        suggestion = did_you_mean([arg for arg in cli_remaining if arg.startswith("--")], known)
        raise ValueError(f"Unknown arguments: {cli_remaining}. Check their spelling{hint}.{suggestion}")
    if launch_options:
        config_launch_args(config_remaining, known)  # validates them; the launcher got them from `pdl-trl sft`
    elif config_remaining:
        unknown = config_remaining[::2]
        suggestion = did_you_mean(unknown, known).replace("--", "")
        raise ValueError(
            f"Unknown keys in the config file: {[key.removeprefix('--') for key in unknown]}. They are no arguments "
            f"of `{parser.prog}`: fix their spelling or remove them.{suggestion}"
        )
    return tuple(dataclasses)
