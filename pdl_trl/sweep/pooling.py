"""
The pooling step of a sweep's report: the finished runs — trained here, on other machines, or gathered from their
committed `run.json` and statistics files — → their per-example statistics, checked to be scored against the same
data, counts and tokenizer → for each variant, the seeds it shares with the baseline. And what keeps a verdict from
being drawn: runs that trained no step, or too few distinct prompts for an interval.
"""

import json
from dataclasses import dataclass

from pdl_trl.evaluation.files import read_statistics
from pdl_trl.evaluation.metrics import RunStatistics
from pdl_trl.sweep.grid import RUN_FILE, Run, Sweep


# Fewer distinct prompts than this give a bootstrap interval that says little (one prompt, or one prompt repeated,
# gives a zero-width interval): the report shows the differences but draws no verdict from them
MIN_DISTINCT_PROMPTS = 20


@dataclass
class Pool:
    """The finished runs of a sweep, with what the report needs of each."""

    runs: list[Run]
    # run.json of each run, by (variant, seed)
    contents: dict[tuple[str, int], dict]
    # eval set -> (variant, seed) -> statistics
    statistics: dict[str, dict[tuple[str, int], RunStatistics]]
    # eval set -> the fingerprints every run's statistics share
    fingerprints: dict[str, dict]

    def paired_seeds(self, variant: str, baseline: str, seeds: list[int]) -> list[int]:
        """The seeds in which both `variant` and `baseline` finished, in order: the pairs a paired bootstrap takes."""
        finished = {(run.variant, run.seed) for run in self.runs}
        return [seed for seed in seeds if (variant, seed) in finished and (baseline, seed) in finished]

    def verdict_blocker(self, distinct_prompts: int) -> str | None:
        """Why no verdict can be drawn from these runs on a set with `distinct_prompts` prompts, or None."""
        untrained = [run.name for run in self.runs if self.contents[run.variant, run.seed]["training"]["steps"] == 0]
        if untrained:
            return f"{', '.join(untrained)} trained 0 steps: there is no training to compare"
        if distinct_prompts < MIN_DISTINCT_PROMPTS:
            return (
                f"{distinct_prompts} distinct prompt(s), fewer than {MIN_DISTINCT_PROMPTS}: too few for a bootstrap "
                "interval to carry a verdict"
            )
        return None


def _differing(fingerprints: dict[str, dict]) -> str | None:
    """Which fingerprint differs between runs, naming two runs that differ, or None when all agree."""
    (first_run, first), *others = fingerprints.items()
    for run, values in others:
        for key in first.keys() | values.keys():
            if first.get(key) != values.get(key):
                return f"{key}: {first.get(key)!r} in {first_run}, {values.get(key)!r} in {run}"
    return None


def pool_runs(sweep: Sweep) -> Pool:
    """
    The finished runs of `sweep` and their statistics of every eval set.

    Raises:
        `ValueError`: a run without its statistics file, or runs scored against other data, counts, tokenizer or
            rare-token mass than the others (or than the eval set now holds): such runs cannot be pooled.
    """
    runs = [run for run in sweep.runs if run.finished]
    contents = {}
    for run in runs:
        with open(run.directory / RUN_FILE, encoding="utf-8") as f:
            contents[run.variant, run.seed] = json.load(f)
    statistics, fingerprints = {}, {}
    for eval_set in sweep.eval_sets:
        by_run, prints = {}, {}
        for run in runs:
            path = run.statistics_path(eval_set.name)
            if not path.is_file():
                raise ValueError(
                    f"Run {run.name} has no {path.name}: its results cannot be pooled. Copy the file with the run's "
                    f"run.json, or delete {run.directory} to redo the run."
                )
            by_run[run.variant, run.seed], prints[run.name] = read_statistics(path)
        if runs:
            differing = _differing(prints)
            if differing is not None:
                raise ValueError(
                    f"Eval set {eval_set.name!r}: the runs were scored against different data or counts "
                    f"({differing}), so their results cannot be pooled. Redo the runs that differ (delete their "
                    "folders), with the same training data, eval set, tokenizer and `rare_mass`."
                )
            # The rows themselves are in each run's settings, which planning checks against the eval set now
            fingerprints[eval_set.name] = next(iter(prints.values()))
        statistics[eval_set.name] = by_run
    return Pool(runs, contents, statistics, fingerprints)
