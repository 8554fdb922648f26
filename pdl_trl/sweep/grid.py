"""
The plan of a sweep: the sweep's own config keys ([`SweepArguments`]), and the grid of runs — every variant with every
seed — with their configs, folders and the settings that decide their results ([`plan_sweep`]). Everything a config
can get wrong is refused here, before anything is trained.
"""

import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from pdl_trl.config import PDLSFTConfig
from pdl_trl.data_loading import get_split, load_dataset_splits
from pdl_trl.evaluation.files import json_text
from pdl_trl.evaluation.heldout import eval_rows, load_eval_split
from pdl_trl.evaluation.metrics import DEFAULT_RARE_MASS
from pdl_trl.frequency import COUNTS_FILE_NAME


# Written last, atomically, into a run's folder: a run that has it is finished
RUN_FILE = "run.json"
RUN_FORMAT = "pdl-trl-sweep-run"
# Variant and eval-set names become folder and file names
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EVAL_SET_KEYS = ("path", "split", "config", "max_samples", "max_new_tokens")
# The PDL fields a variant may set: every `pdl_*` field but the counts, which every run must share
VARIANT_FIELDS = {f.name: f for f in fields(PDLSFTConfig) if f.name.startswith("pdl_") and f.name != "pdl_counts_path"}
MIN_BOOTSTRAP_RESAMPLES = 100


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

    def __post_init__(self):
        # From the command line a mapping comes as a JSON string, as TrainingArguments' dict fields do
        if isinstance(self.variants, str):
            self.variants = json.loads(self.variants)
        if isinstance(self.eval_datasets, str):
            self.eval_datasets = json.loads(self.eval_datasets)
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


def _check_name(kind: str, name) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"The {kind} name {name!r} is used as a file name: use letters, digits, `.`, `_` and `-`, starting with a "
            "letter or digit."
        )


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
            f"Variant {variant!r} sets `{key}`: a variant may set only `pdl_*` fields, so that nothing else differs "
            f"between runs. Set `{key}` at the top level of the config, for every run."
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


@dataclass
class EvalSet:
    """A held-out set of the sweep, loaded: its `rows` as `pdl-trl eval` reads them."""

    name: str
    path: str
    split: str
    config: str | None
    max_samples: int | None
    max_new_tokens: int
    rows: list[dict]

    @property
    def settings(self) -> dict:
        return {
            "path": self.path,
            "split": self.split,
            "config": self.config,
            "max_samples": self.max_samples,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass
class Run:
    """One variant trained with one seed: its config (the shared one, the variant's fields, the seed), its folder,
    and the settings that decide its results (recorded in its `run.json`)."""

    variant: str
    seed: int
    config: PDLSFTConfig
    directory: Path
    settings: dict

    @property
    def name(self) -> str:
        return f"{self.variant}/seed-{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.directory / RUN_FILE).is_file()

    def generations_path(self, eval_set: str) -> Path:
        return self.directory / "eval" / f"{eval_set}.generations.jsonl"

    def metrics_path(self, eval_set: str) -> Path:
        return self.directory / "eval" / f"{eval_set}.metrics.json"


@dataclass
class Sweep:
    """The whole plan: the parsed arguments, the eval sets, and the runs in order (the baseline of the first seed
    first: its counts file measures every run)."""

    script_args: typing.Any
    training_args: PDLSFTConfig
    model_args: typing.Any
    dataset_args: typing.Any
    arguments: SweepArguments
    eval_sets: list[EvalSet]
    runs: list[Run]
    config_text: str | None = None
    command: str | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @property
    def reference_counts_path(self) -> Path:
        return self.runs[0].directory / COUNTS_FILE_NAME


def _check_shared_settings(training_args: PDLSFTConfig) -> None:
    defaults = {f.name: f.default for f in fields(PDLSFTConfig)}
    for key in ("seed", "data_seed"):
        if getattr(training_args, key) != defaults[key]:
            raise ValueError(f"The config sets `{key}`; the sweep sets it for every run from `seeds`: remove it.")
    if training_args.resume_from_checkpoint is not None:
        raise ValueError(
            "The config sets `resume_from_checkpoint`; a sweep resumes by itself (finished runs are kept): remove it."
        )
    if training_args.push_to_hub:
        raise ValueError("The config sets `push_to_hub`; every run would push to one repository: remove it.")
    if training_args.world_size > 1:
        raise ValueError("`pdl-trl sweep` trains in one process: launch it without torchrun or accelerate launch.")


def _variant_config(shared: PDLSFTConfig, name: str, overrides: dict, seed: int, directory: Path) -> PDLSFTConfig:
    try:
        return replace(shared, **overrides, seed=seed, data_seed=seed, output_dir=str(directory))
    except (ValueError, TypeError) as error:
        raise ValueError(f"Variant {name!r}: {error}") from None


def _differences(stored, planned, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(planned, dict):
        return [
            line
            for key in dict.fromkeys([*stored, *planned])
            for line in _differences(stored.get(key), planned.get(key), f"{path}.{key}" if path else key)
        ]
    return [] if stored == planned else [f"{path}: {stored!r} there, {planned!r} now"]


def _check_finished_run(run: Run) -> None:
    with open(run.directory / RUN_FILE, encoding="utf-8") as f:
        stored = json.load(f)
    if stored.get("format") != RUN_FORMAT:
        raise ValueError(f"{run.directory / RUN_FILE} is not a `pdl-trl sweep` run file: use another output_dir.")
    changed = _differences(stored["settings"], run.settings)
    if changed:
        raise ValueError(
            f"Run {run.name} in {run.directory} finished with other settings ({'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''}). Its results are not comparable with runs of this config: use "
            "another output_dir, or delete that folder to redo the run."
        )


def plan_sweep(
    script_args,
    training_args: PDLSFTConfig,
    model_args,
    dataset_args,
    arguments: SweepArguments,
    config_text: str | None = None,
    command: str | None = None,
) -> Sweep:
    """
    Checks a sweep config and lays out its runs: every variant's `PDLSFTConfig` is built for every seed (so an invalid
    `pdl_*` value fails here), the baseline must be plain SFT, the training and held-out sets are loaded, and every
    run already finished in `output_dir` must have been run with the same settings.

    Returns:
        [`Sweep`]: the runs in order — for each seed the baseline first, then the other variants in config order.
    """
    _check_shared_settings(training_args)
    output_dir = Path(training_args.output_dir)
    variant_order = [arguments.baseline] + [name for name in arguments.variants if name != arguments.baseline]
    configs = {
        (name, seed): _variant_config(
            training_args, name, arguments.variants[name], seed, output_dir / name / f"seed-{seed}"
        )
        for seed in arguments.seeds
        for name in variant_order
    }
    baseline = configs[arguments.baseline, arguments.seeds[0]]
    if not (baseline.pdl_alpha == 0 or baseline.pdl_mix == 0):
        raise ValueError(
            f"The baseline {arguments.baseline!r} is not plain SFT (pdl_alpha={baseline.pdl_alpha}, "
            f"pdl_mix={baseline.pdl_mix}): give it `pdl_alpha: 0.0` (or `pdl_mix: 0.0`)."
        )

    # The data now, so that a wrong path fails before the first run trains
    try:
        splits = load_dataset_splits(
            script_args.dataset_name,
            script_args.dataset_config,
            streaming=script_args.dataset_streaming,
            mixture=dataset_args,
        )
        get_split(splits, script_args.dataset_train_split, "dataset_train_split")
        if training_args.eval_strategy != "no":
            get_split(splits, script_args.dataset_test_split, "dataset_test_split")
    except FileNotFoundError as error:
        raise ValueError(f"The training set: {error}") from None
    eval_sets = []
    for name, spec in arguments.eval_datasets.items():
        try:
            split, dataset = load_eval_split(spec["path"], spec.get("split"), spec.get("config"))
            rows = eval_rows(dataset, spec.get("max_samples"))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"Eval set {name!r}: {error}") from None
        if not rows:
            raise ValueError(f"Eval set {name!r} ({spec['path']}) has no rows.")
        max_new_tokens = spec.get("max_new_tokens") or arguments.max_new_tokens
        eval_sets.append(
            EvalSet(name, spec["path"], split, spec.get("config"), spec.get("max_samples"), max_new_tokens, rows)
        )

    evaluation = {
        "batch_size": arguments.eval_batch_size,
        "rare_mass": arguments.rare_mass,
        "decoding": "greedy",
        "sets": {eval_set.name: eval_set.settings for eval_set in eval_sets},
    }
    runs = []
    for (name, seed), config in configs.items():
        training = config.to_dict()
        # The folder is the run's identity, not a setting: the sweep may be moved or reached by another path
        training.pop("output_dir")
        settings = {
            "variant": name,
            "overrides": arguments.variants[name],
            "training": training,
            "model": asdict(model_args),
            "data": {**asdict(script_args), "mixture": asdict(dataset_args)},
            "evaluation": evaluation,
        }
        runs.append(Run(name, seed, config, Path(config.output_dir), json.loads(json_text(settings))))
    for run in runs:
        if run.finished:
            _check_finished_run(run)
    return Sweep(
        script_args, training_args, model_args, dataset_args, arguments, eval_sets, runs, config_text, command
    )
