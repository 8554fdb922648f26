"""
Helpers shared by the `pdl-trl` scripts: strict argument parsing, the `accelerate launch` options, the PDL settings as
options of the commands that do not parse with TRL (`inspect`, the demo), and deprecated spellings.
"""

import argparse
import warnings
from dataclasses import fields

from transformers.hf_argparser import string_to_bool

from pdl_trl.config import PDLSFTConfig
from pdl_trl.weights import PDLSettings


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


def config_launch_args(config_remaining: list[str]) -> list[str]:
    """
    The `accelerate launch` arguments among the config-file keys that no dataclass took (`["--num_processes", "2"]`).

    Boolean launch flags become bare flags: `multi_gpu: true` must be `--multi_gpu`, not `--multi_gpu True` (which
    `accelerate launch` would read as the script name). Any other key is an error.
    """
    from accelerate.commands.launch import launch_command_parser

    actions = {name: action for action in launch_command_parser()._actions for name in action.option_strings}
    unknown = [key.removeprefix("--") for key in config_remaining[::2] if key not in actions]
    if unknown:
        raise ValueError(
            f"Unknown keys in the config file: {unknown}. They are neither arguments of this command nor "
            "`accelerate launch` options: fix their spelling or remove them."
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
    if cli_remaining:
        hint = (
            "; `accelerate launch` options go before the script (`accelerate launch --num_processes 2 -m "
            "pdl_trl.scripts.sft ...`) or to `pdl-trl sft`"
            if launch_options
            else ""
        )
        raise ValueError(f"Unknown arguments: {cli_remaining}. Check their spelling{hint}.")
    if launch_options:
        config_launch_args(config_remaining)  # validates them; the launcher got them from `pdl-trl sft`
    elif config_remaining:
        unknown = [key.removeprefix("--") for key in config_remaining[::2]]
        raise ValueError(
            f"Unknown keys in the config file: {unknown}. They are no arguments of `{parser.prog}`: fix their "
            "spelling or remove them."
        )
    return tuple(dataclasses)
