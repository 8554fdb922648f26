"""
How an option is written where the user wrote it, so that an error names the fix in the user's own spelling: a field
in Python (`pdl_alpha=0.5`), a flag on the command line (`--pdl_alpha 0.5`), a key of an Axolotl YAML file
(`pdl_alpha: 0.5`). The commands and the Axolotl plugin say where they run; Python is the default.
"""

import functools
from contextlib import contextmanager
from contextvars import ContextVar


PYTHON, COMMAND_LINE, YAML = "python", "command line", "yaml"
_WHERE: ContextVar[str] = ContextVar("pdl_trl_options_written_in", default=PYTHON)
_NO_VALUE = object()


@contextmanager
def options_written_in(where: str):
    """Within this block, [`option`] spells options as they are written `where` (`PYTHON`, `COMMAND_LINE`, `YAML`)."""
    token = _WHERE.set(where)
    try:
        yield
    finally:
        _WHERE.reset(token)


def command_line(function):
    """Decorates a command's entry point: every option its errors name is spelled as a flag."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with options_written_in(COMMAND_LINE):
            return function(*args, **kwargs)

    return wrapper


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def option(name: str, value=_NO_VALUE) -> str:
    """
    `name` (with `value`, when given) as the user writes it here, in backticks: `` `pdl_alpha=0.5` `` in Python,
    `` `--pdl_alpha 0.5` `` on the command line (`` `--pdl_allow_unmasked_text` `` for `True`), `` `pdl_alpha: 0.5` ``
    in YAML.
    """
    where = _WHERE.get()
    if where == COMMAND_LINE:
        if value is _NO_VALUE or value is True:
            return f"`--{name}`"
        return f"`--{name} {_yaml_value(value)}`"
    if where == YAML:
        return f"`{name}`" if value is _NO_VALUE else f"`{name}: {_yaml_value(value)}`"
    return f"`{name}`" if value is _NO_VALUE else f"`{name}={value!r}`"
