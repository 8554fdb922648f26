"""Optional dependencies (the `eval` and `plot` extras): imported when needed, or an error naming the install."""

import importlib


def import_extra(module: str, extra: str):
    """Imports an optional dependency, or raises naming the extra of pdl-trl that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"`{module.split('.')[0]}` is not installed; the reference metrics (ROUGE-L, chrF) and plots need it: "
            f"`pip install 'pdl-trl[{extra}]'`."
        ) from error


def check_eval_extra() -> None:
    """Raises before any model is loaded when the `eval` extra's packages are missing."""
    for module in ("rouge_score", "rouge_score.rouge_scorer", "sacrebleu", "sacrebleu.metrics"):
        import_extra(module, "eval")
