"""
The sweep's own config keys ([`SweepArguments`]: seeds, baseline, variants, eval sets, ...) and the checks of each,
made when the config is parsed, before anything is loaded or trained.
"""

import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from pdl_trl.config import PDLSFTConfig
from pdl_trl.evaluation.metrics import DEFAULT_RARE_MASS


# Variant and eval-set names become folder and file names
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EVAL_SET_KEYS = ("path", "split", "config", "max_samples", "max_new_tokens")
# The PDL fields a variant may set: every `pdl_*` field but the counts, which every run must share
# The fields a variant may set: every `pdl_*` field but the counts, which every run must share, and TRL's `loss_type`
# (`nll` or DFT), so that DFT and PDL x DFT sit beside SFT and PDL in one report
VARIANT_FIELDS = {
    f.name: f
    for f in fields(PDLSFTConfig)
    if (f.name.startswith("pdl_") and f.name != "pdl_counts_path") or f.name == "loss_type"
}
MIN_BOOTSTRAP_RESAMPLES = 100
# Files of the sweep's folder, which a variant's folder must not take
RESERVED_NAMES = ("report.md", "report.json", "report.png", "statistics")


@dataclass
class SweepArguments:
    r"""
    The keys of a `pdl-trl sweep` config besides the `pdl-trl sft` arguments shared by every run.

    Parameters:
        seeds (`list[int]`):
            Seeds; each variant is trained once per seed, with `seed` and `data_seed` set to it, so that the
            variants of one seed share their initialisation and data order.
        baseline (`str`):
            The variant the others are compared with; it must be plain SFT (`pdl_alpha: 0` or `pdl_mix: 0`).
        variants (`dict[str, dict]`):
            Name -> `pdl_*` fields of that variant (all but `pdl_counts_path`); nothing else may differ between runs.
        eval_datasets (`dict[str, dict]`):
            Name -> held-out set: `path` (as `pdl-trl eval --dataset`), optional `split`, `config`, `max_samples`
            and `max_new_tokens`. A set without `completion` gets the reference-free metrics only.
        max_new_tokens (`int`, *optional*, defaults to `128`):
            Greedy decoding budget of every eval set that does not set its own.
        eval_batch_size (`int`, *optional*, defaults to `16`):
            Prompts per generation (and reference NLL) batch.
        rare_mass (`float`, *optional*, defaults to `0.1`):
            Rare-token threshold of the frequency metrics, as `pdl-trl eval --rare_mass`.
        bootstrap_resamples (`int`, *optional*, defaults to `2000`):
            Resamples of the paired bootstrap (at least 100).
        bootstrap_seed (`int`, *optional*, defaults to `0`):
            Seed of the bootstrap's prompt draws.
        side_by_side (`int`, *optional*, defaults to `3`):
            Prompts of each eval set whose generations the report shows side by side.
        runs (`str` or `list[str]`, *optional*):
            Only these runs, `variant:seed` each (`--runs pdl-0.25:0,sft:1`), so that machines, GPUs or job-array tasks
            can share a sweep; the report is written from every run finished so far.
        report_only (`bool`, *optional*, defaults to `False`):
            Train nothing: write the report from the runs finished in `output_dir` (e.g. gathered from several
            machines, or their committed statistics).
    """

    seeds: list[int] | None = field(default=None, metadata={"help": "Seeds: every variant is trained once per seed."})
    baseline: str | None = field(
        default=None,
        metadata={"help": "The plain-SFT variant (pdl_alpha 0 or pdl_mix 0) the others are compared with."},
    )
    variants: dict | str | None = field(
        default=None,
        metadata={"help": "Name -> pdl_* overrides, a YAML mapping (or JSON on the command line)."},
    )
    eval_datasets: dict | str | None = field(
        default=None,
        metadata={"help": "Name -> {path, split, config, max_samples, max_new_tokens}, a YAML mapping (or JSON)."},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Greedy decoding budget per prompt."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    rare_mass: float = field(default=DEFAULT_RARE_MASS, metadata={"help": "Rare-token mass, as `pdl-trl eval`."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Resamples of the paired bootstrap."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap's prompt draws."})
    side_by_side: int = field(default=3, metadata={"help": "Prompts per eval set shown side by side in the report."})
    runs: str | None = field(
        default=None,
        metadata={"help": "Only these runs, `variant:seed` each, comma-separated (`pdl-0.25:0,sft:1`). Default: all."},
    )
    report_only: bool = field(
        default=False, metadata={"help": "Train nothing: write the report from the runs finished in output_dir."}
    )

    def __post_init__(self):
        # From the command line a mapping comes as a JSON string, as TrainingArguments' dict fields do
        self.variants = _mapping("variants", self.variants)
        self.eval_datasets = _mapping("eval_datasets", self.eval_datasets)
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            raise ValueError(f"`seeds` is a list of seeds, got {self.seeds}: write `seeds: [{self.seeds}]`.")
        if not self.seeds:
            raise ValueError("`seeds` is empty: give at least one, e.g. `seeds: [0, 1]` (two show the seed spread).")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds) or len(set(self.seeds)) < len(
            self.seeds
        ):
            raise ValueError(f"`seeds` must be distinct integers, got {self.seeds}.")
        if not isinstance(self.variants, dict) or not self.variants:
            raise ValueError(
                "`variants` is empty: give a mapping from names to pdl_* overrides, e.g. "
                "`variants: {sft: {pdl_alpha: 0.0}, pdl: {pdl_alpha: 1.0}}`."
            )
        for name, overrides in self.variants.items():
            _check_name("variant", name)
            if not isinstance(overrides, dict):
                raise ValueError(f"Variant {name!r} must map pdl_* fields to values, got {overrides!r}.")
            for key, value in overrides.items():
                _check_variant_field(name, key, value)
        if self.baseline is None:
            raise ValueError(f"Name the plain-SFT `baseline` variant, one of {list(self.variants)}.")
        if self.baseline not in self.variants:
            raise ValueError(f"`baseline: {self.baseline}` is no variant; the variants are {list(self.variants)}.")
        if len(self.variants) < 2:
            raise ValueError("`variants` has only the baseline: add a variant to compare with it.")
        if not isinstance(self.eval_datasets, dict) or not self.eval_datasets:
            raise ValueError(
                "`eval_datasets` is empty: give a mapping from names to held-out sets, e.g. "
                "`eval_datasets: {heldout: {path: test.jsonl}}`."
            )
        for name, spec in self.eval_datasets.items():
            _check_eval_set(name, spec)
        for key, value in (("max_new_tokens", self.max_new_tokens), ("eval_batch_size", self.eval_batch_size)):
            if value < 1:
                raise ValueError(f"`{key}` must be >= 1, got {value}.")
        if self.bootstrap_resamples < MIN_BOOTSTRAP_RESAMPLES:
            raise ValueError(
                f"`bootstrap_resamples` must be >= {MIN_BOOTSTRAP_RESAMPLES} for a 95% interval, got "
                f"{self.bootstrap_resamples}; 2000 is the default."
            )
        if not 0 <= self.rare_mass < 1:
            raise ValueError(
                f"`rare_mass` must be in [0, 1), got {self.rare_mass}; the default is {DEFAULT_RARE_MASS}."
            )
        if self.side_by_side < 0:
            raise ValueError(f"`side_by_side` must be >= 0, got {self.side_by_side}.")
        self.runs = _run_names(self.runs, self.variants, self.seeds)
        if self.report_only and self.runs is not None:
            raise ValueError("`report_only` trains nothing, so `runs` chooses nothing: give one of them.")

    @property
    def selected_runs(self) -> set[tuple[str, int]] | None:
        """The `(variant, seed)` pairs that `runs` chose, or None for every run."""
        if self.runs is None:
            return None
        return {(name, int(seed)) for name, seed in (entry.rsplit(":", 1) for entry in self.runs)}


def _mapping(key: str, value):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"`--{key}` is not JSON ({error}): on the command line it is a JSON object, e.g. "
            f"`--{key} '{{\"name\": {{...}}}}'`; in the config file, a YAML mapping."
        ) from None


def _run_names(runs, variants: dict, seeds: list[int]) -> list[str] | None:
    """`runs` as a list of `variant:seed` names, each checked against the variants and seeds."""
    if runs is None:
        return None
    entries = runs.replace(",", " ").split() if isinstance(runs, str) else runs
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"`runs` takes `variant:seed` names, e.g. `--runs sft:0,pdl:0`; got {runs!r}.")
    names = []
    for entry in entries:
        variant, _, seed = str(entry).rpartition(":")
        if variant not in variants or not seed.lstrip("-").isdigit() or int(seed) not in seeds:
            raise ValueError(
                f"`runs` entry {entry!r} is no run of this sweep: write `variant:seed` with a variant of "
                f"{list(variants)} and a seed of {seeds}, e.g. `{next(iter(variants))}:{seeds[0]}`."
            )
        names.append(f"{variant}:{int(seed)}")
    if len(set(names)) < len(names):
        raise ValueError(f"`runs` names a run twice: {names}.")
    return names


def _check_name(kind: str, name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"The {kind} name {name!r} is used as a file name: use letters, digits, `.`, `_` and `-`, starting with a "
            "letter or digit."
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"The {kind} name {name!r} is a file the sweep writes into its folder: choose another name.")


def _matches(value, annotation) -> bool:
    """Whether a YAML value fits a dataclass field's annotation (`float`, `bool`, `list[str] | None`, ...)."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) is types.UnionType else (annotation,)
    for kind in kinds:
        kind = typing.get_origin(kind) or kind
        if kind is type(None):
            fits = value is None
        elif kind is float:
            fits = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            fits = isinstance(value, kind)
        if fits:
            return True
    return False


def _check_variant_field(variant: str, key, value) -> None:
    if key == "pdl_counts_path":
        raise ValueError(
            f"Variant {variant!r} sets `pdl_counts_path`: every run must weigh and be measured with the same counts. "
            "Set it at the top level of the config, for every run."
        )
    if key not in VARIANT_FIELDS:
        if isinstance(key, str) and key.startswith("pdl_"):
            raise ValueError(
                f"Variant {variant!r} sets `{key}`, which is no PDLSFTConfig field: check its spelling. A variant may "
                f"set {sorted(VARIANT_FIELDS)}."
            )
        raise ValueError(
            f"Variant {variant!r} sets `{key}`: a variant may set only `pdl_*` fields and `loss_type`, so that "
            f"nothing else differs between runs. Set `{key}` at the top level of the config, for every run."
        )
    annotation = VARIANT_FIELDS[key].type
    if not _matches(value, annotation):
        expected = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        raise ValueError(f"Variant {variant!r} sets `{key}` to {value!r}: it takes {expected}.")


def _check_eval_set(name, spec) -> None:
    _check_name("eval set", name)
    if not isinstance(spec, dict) or "path" not in spec:
        raise ValueError(
            f"Eval set {name!r} must be a mapping with a `path`, e.g. `{{path: test.jsonl}}`; got {spec!r}."
        )
    unknown = [key for key in spec if key not in EVAL_SET_KEYS]
    if unknown:
        raise ValueError(f"Eval set {name!r} has unknown keys {unknown}; it takes {list(EVAL_SET_KEYS)}.")
    for key in ("path", "split", "config"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ValueError(f"Eval set {name!r}: `{key}` must be a string, got {spec[key]!r}.")
    for key in ("max_samples", "max_new_tokens"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"Eval set {name!r}: `{key}` must be an integer >= 1, got {value!r}.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(
                f"The config file gives {repeated} twice in one mapping (line {node.start_mark.line + 1})."
            )
        return super().construct_mapping(node, deep)


def check_config_file(path: str | Path) -> str:
    """The text of a sweep config file, once it is known to repeat no key (e.g. a variant name); TrlParser reads it."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        yaml.load(text, Loader=_UniqueKeyLoader)
    except ValueError as error:
        raise ValueError(f"{path}: {error} Give every key, variant and eval set once.") from None
    return text
