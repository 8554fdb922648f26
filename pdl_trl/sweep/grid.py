"""
The plan of a sweep: the grid of runs — every variant with every seed — with their configs, folders and the settings
that decide their results ([`plan_sweep`]). Everything a config can get wrong is refused here or in
[`~pdl_trl.sweep.config.SweepArguments`], before anything is trained.
"""

import hashlib
import json
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from pdl_trl.config import PDLSFTConfig
from pdl_trl.data_loading import get_split, load_dataset_splits
from pdl_trl.evaluation.files import json_text
from pdl_trl.evaluation.heldout import eval_rows, load_eval_split
from pdl_trl.spelling import YAML, option, options_written_in
from pdl_trl.sweep.config import SweepArguments


# Written last, atomically, into a run's folder: a run that has it is finished
RUN_FILE = "run.json"
RUN_FORMAT = "pdl-trl-sweep-run"


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
    # Whether `split` is the only split there is (a single data file's `train`): the set is all of the file's rows
    whole: bool = False

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the rows (prompts and references): results scored against other rows are not comparable."""
        return "sha256:" + hashlib.sha256(json_text({"rows": self.rows}).encode()).hexdigest()

    @property
    def num_distinct_prompts(self) -> int:
        return len({json.dumps(row["prompt"], sort_keys=True) for row in self.rows})

    @property
    def label(self) -> str:
        """How the report names where the rows come from: a split, or all rows of a file that has no splits."""
        return f"all rows of {self.path}" if self.whole else f"{self.path} [{self.split}]"

    @property
    def settings(self) -> dict:
        return {
            "path": self.path,
            "split": self.split,
            "config": self.config,
            "max_samples": self.max_samples,
            "max_new_tokens": self.max_new_tokens,
            "rows_sha256": self.fingerprint,
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

    def statistics_path(self, eval_set: str) -> Path:
        return self.directory / "eval" / f"{eval_set}.statistics.npz"


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
    def runs_to_train(self) -> list[Run]:
        """The unfinished runs among those chosen (`runs`; all by default), in order; none with `report_only`."""
        if self.arguments.report_only:
            return []
        selected = self.arguments.selected_runs
        return [
            run for run in self.runs if not run.finished and (selected is None or (run.variant, run.seed) in selected)
        ]


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
        # A variant's fields are keys of the sweep's YAML file: its errors name them so
        with options_written_in(YAML):
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


def _variant_configs(training_args: PDLSFTConfig, arguments: SweepArguments) -> dict[tuple[str, int], PDLSFTConfig]:
    """Every run's config, keyed `(variant, seed)`: for each seed the baseline first, then the variants in order."""
    output_dir = Path(training_args.output_dir)
    variant_order = [arguments.baseline] + [name for name in arguments.variants if name != arguments.baseline]
    return {
        (name, seed): _variant_config(
            training_args, name, arguments.variants[name], seed, output_dir / name / f"seed-{seed}"
        )
        for seed in arguments.seeds
        for name in variant_order
    }


def _check_baseline(name: str, baseline: PDLSFTConfig) -> None:
    if not (baseline.pdl_alpha == 0 or baseline.pdl_mix == 0) or baseline.loss_type != "nll":
        raise ValueError(
            f"The baseline {name!r} is not plain SFT (pdl_alpha={baseline.pdl_alpha}, pdl_mix={baseline.pdl_mix}, "
            f"loss_type={baseline.loss_type!r}): give it `pdl_alpha: 0.0` (or `pdl_mix: 0.0`) and `loss_type: nll`."
        )


def _check_training_data(script_args, training_args: PDLSFTConfig, dataset_args) -> None:
    """Loads the training (and test) split, so that a wrong path fails before the first run trains."""
    try:
        splits = load_dataset_splits(
            script_args.dataset_name,
            script_args.dataset_config,
            streaming=script_args.dataset_streaming,
            mixture=dataset_args,
        )
        get_split(splits, script_args.dataset_train_split, option("dataset_train_split"))
        if training_args.eval_strategy != "no":
            get_split(splits, script_args.dataset_test_split, option("dataset_test_split"))
    except FileNotFoundError as error:
        raise ValueError(f"The training set: {error}") from None


def _load_eval_sets(arguments: SweepArguments) -> list[EvalSet]:
    eval_sets = []
    for name, spec in arguments.eval_datasets.items():
        try:
            split, dataset, whole = load_eval_split(
                spec["path"], spec.get("split"), spec.get("config"), "its `split` key"
            )
            rows = eval_rows(dataset, spec.get("max_samples"))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"Eval set {name!r}: {error}") from None
        if not rows:
            raise ValueError(f"Eval set {name!r} ({spec['path']}) has no rows.")
        max_new_tokens = spec.get("max_new_tokens") or arguments.max_new_tokens
        eval_sets.append(
            EvalSet(
                name,
                spec["path"],
                split,
                spec.get("config"),
                spec.get("max_samples"),
                max_new_tokens,
                rows,
                whole,
            )
        )
    return eval_sets


def _plan_runs(
    configs: dict, arguments: SweepArguments, eval_sets: list[EvalSet], model_args, script_args, dataset_args
) -> list[Run]:
    """The runs, each with the settings that decide its results (recorded in its `run.json`)."""
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
    return runs


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
    configs = _variant_configs(training_args, arguments)
    _check_baseline(arguments.baseline, configs[arguments.baseline, arguments.seeds[0]])
    _check_training_data(script_args, training_args, dataset_args)
    eval_sets = _load_eval_sets(arguments)
    runs = _plan_runs(configs, arguments, eval_sets, model_args, script_args, dataset_args)
    for run in runs:
        if run.finished:
            _check_finished_run(run)
    return Sweep(
        script_args, training_args, model_args, dataset_args, arguments, eval_sets, runs, config_text, command
    )
