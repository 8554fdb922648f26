"""
The report step of a sweep: the pooled runs' statistics ([`~pdl_trl.sweep.pooling.pool_runs`]) → the differences
from the baseline with their paired bootstrap intervals ([`~pdl_trl.evaluation.statistics.paired_bootstrap`]) →
`report.json`, `report.md` and `report.png` in the sweep's folder, each written atomically.
"""

import json
import math
from pathlib import Path

import numpy as np

from pdl_trl.atomic import write_atomically, write_text_atomically
from pdl_trl.evaluation.files import read_generations, write_json
from pdl_trl.evaluation.statistics import CONFIDENCE, bootstrap_indices, paired_bootstrap
from pdl_trl.evaluation.tokens import completion_text
from pdl_trl.extras import import_extra
from pdl_trl.sweep.grid import Sweep
from pdl_trl.sweep.pooling import Pool, pool_runs
from pdl_trl.sweep.runs import environment


REPORT_FORMAT = "pdl-trl-sweep-report"
# Longest generation shown side by side, in characters
SIDE_BY_SIDE_CHARS = 400


def _number(value: float, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.3g}" if sign else f"{value:.4g}"


def _difference_text(difference: dict) -> str:
    seeds = difference["seed_deltas"]
    spread = (
        _number(seeds[0], True) if len(seeds) == 1 else f"{_number(min(seeds), True)}..{_number(max(seeds), True)}"
    )
    return (
        f"{_number(difference['delta'], True)} [{_number(difference['low'], True)}, "
        f"{_number(difference['high'], True)}], seeds {spread}"
    )


def verdict_line(variant: str, baseline: str, results: dict) -> str:
    """
    What the data support for one variant, eval set by eval set: differences shown (interval and every seed agree),
    differences the interval alone shows while the seeds disagree, and no verdict where the data cannot carry one.
    """
    parts = []
    for eval_set, result in results.items():
        differences = result["differences"].get(variant)
        if differences is None:
            parts.append(f"{eval_set}: no run of it beside the baseline's of the same seed yet")
            continue
        if result["no_verdict"]:
            parts.append(f"{eval_set}: no verdict ({result['no_verdict']})")
            continue
        shown = [
            f"{'higher' if difference['shown'] > 0 else 'lower'} {metric} ({_difference_text(difference)})"
            for metric, difference in differences.items()
            if difference["shown"]
        ]
        interval_only = [
            f"{metric} {'above' if difference['interval'] > 0 else 'below'} 0 by its interval but the seeds disagree "
            f"({_difference_text(difference)})"
            for metric, difference in differences.items()
            if difference["interval"] and not difference["shown"]
        ]
        rest = len(differences) - len(shown) - len(interval_only)
        found = shown + interval_only
        if found:
            parts.append(
                f"{eval_set}: " + "; ".join(found) + (f"; no difference shown in the other {rest}" if rest else "")
            )
        else:
            parts.append(f"{eval_set}: no difference shown")
    return f"**{variant}** against {baseline}: " + ". ".join(parts) + "."


def _side_by_side(sweep: Sweep, pool: Pool) -> dict:
    """The first prompts of each eval set with every variant's generation, from the first seed whose runs all kept
    their generations files (runs gathered as statistics only have none)."""
    seed = next(
        (
            seed
            for seed in sweep.arguments.seeds
            if all(run.generations_path(sweep.eval_sets[0].name).is_file() for run in pool.runs if run.seed == seed)
            and any(run.seed == seed for run in pool.runs)
        ),
        None,
    )
    shown = {}
    for eval_set in sweep.eval_sets:
        runs = [run for run in pool.runs if run.seed == seed]
        rows = {run.variant: read_generations(run.generations_path(eval_set.name)) for run in runs}
        examples = []
        for i in range(min(sweep.arguments.side_by_side, len(eval_set.rows)) if rows else 0):
            row = eval_set.rows[i]
            examples.append(
                {
                    "prompt": completion_text(row["prompt"]),
                    "reference": completion_text(row["completion"]) if "completion" in row else None,
                    "generations": {variant: rows[variant][i]["generation"] for variant in rows},
                }
            )
        shown[eval_set.name] = {"seed": seed, "examples": examples}
    return shown


def _eval_set_result(sweep: Sweep, pool: Pool, eval_set) -> dict:
    """Means per variant, and each variant's differences from the baseline over the seeds they share."""
    arguments = sweep.arguments
    statistics = pool.statistics[eval_set.name]
    means = {}
    for variant in arguments.variants:
        seeds = [run.seed for run in pool.runs if run.variant == variant]
        if seeds:
            whole = [statistics[variant, seed].whole_set_metrics() for seed in seeds]
            means[variant] = {metric: float(np.mean([m[metric] for m in whole])) for metric in whole[0]}
    indices = bootstrap_indices(len(eval_set.rows), arguments.bootstrap_resamples, arguments.bootstrap_seed)
    differences = {}
    for variant in arguments.variants:
        seeds = pool.paired_seeds(variant, arguments.baseline, arguments.seeds)
        if variant == arguments.baseline or not seeds:
            continue
        bootstrap = paired_bootstrap(
            [statistics[variant, seed] for seed in seeds],
            [statistics[arguments.baseline, seed] for seed in seeds],
            indices,
        )
        differences[variant] = {
            metric: {**vars(difference), "seeds": seeds, "shown": difference.shown, "interval": difference.interval}
            for metric, difference in bootstrap.items()
        }
    return {
        "num_prompts": len(eval_set.rows),
        "distinct_prompts": eval_set.num_distinct_prompts,
        "max_new_tokens": eval_set.max_new_tokens,
        "no_verdict": pool.verdict_blocker(eval_set.num_distinct_prompts),
        "means": means,
        "differences": differences,
    }


def sweep_report(sweep: Sweep, pool: Pool) -> dict:
    """
    The content of `report.json`: settings, environment, per-run metrics, and for every eval set, non-baseline variant
    and metric the difference from the baseline with its paired bootstrap interval over prompts, pooled across the
    seeds both finished, the seed-to-seed spread, whether the interval excludes 0 (`interval`: +1, -1 or 0) and
    whether a difference is shown (`shown`: the interval's sign when every seed agrees with it, else 0), plus one
    verdict line per variant. Runs not finished yet are listed in `missing_runs`.
    """
    arguments = sweep.arguments
    results = {eval_set.name: _eval_set_result(sweep, pool, eval_set) for eval_set in sweep.eval_sets}
    runs = {}
    for run in pool.runs:
        content = pool.contents[run.variant, run.seed]
        runs.setdefault(run.variant, {})[str(run.seed)] = {
            "directory": str(run.directory),
            "training": content["training"],
            "metrics": content["metrics"],
            "timings_s": content["timings_s"],
            "environment": content["environment"],
        }
    environments = [run["environment"] for seeds in runs.values() for run in seeds.values()]
    variants = [variant for variant in arguments.variants if variant != arguments.baseline]
    return {
        "format": REPORT_FORMAT,
        "version": 2,
        "environment": environment(sweep.training_args.use_cpu),
        # What the runs ran on and with: a sweep split over machines, or restarted after a code change, shows it here
        "run_hardware": sorted({env["hardware"] for env in environments}),
        "run_commits": sorted({str(env["pdl_trl_commit"]) for env in environments}),
        "command": sweep.command,
        "config_file": sweep.config_text,
        "seeds": arguments.seeds,
        "baseline": arguments.baseline,
        "variants": arguments.variants,
        "missing_runs": [run.name for run in sweep.runs if not run.finished],
        "eval_datasets": {
            eval_set.name: {**eval_set.settings, "label": eval_set.label, "num_prompts": len(eval_set.rows)}
            for eval_set in sweep.eval_sets
        },
        "fingerprints": pool.fingerprints,
        "bootstrap": {
            "resamples": arguments.bootstrap_resamples,
            "seed": arguments.bootstrap_seed,
            "confidence": CONFIDENCE,
            "method": "paired percentile bootstrap over prompts, the same draws for every run, pooled across the "
            "seeds both runs finished",
        },
        "shared_settings": sweep.runs[0].settings,
        "runs": runs,
        "results": results,
        "verdicts": {variant: verdict_line(variant, arguments.baseline, results) for variant in variants},
        "side_by_side": _side_by_side(sweep, pool),
    }


def _cell(text: str) -> str:
    if not text.strip():
        return "(empty)" if not text else "(only whitespace)"
    text = text if len(text) <= SIDE_BY_SIDE_CHARS else text[:SIDE_BY_SIDE_CHARS] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>")


def report_markdown(report: dict) -> str:
    """`report.md`: verdicts, a table of differences per eval set, the chart, generations side by side, settings."""
    baseline = report["baseline"]
    variants = [variant for variant in report["variants"] if variant != baseline]
    seeds = report["seeds"]
    env = report["environment"]
    lines = [
        "# pdl-trl sweep report",
        "",
        f"{env['date']}; pdl-trl {env['versions']['pdl-trl']}; runs on {', '.join(report['run_hardware'])}, at "
        f"commit {', '.join(report['run_commits'])}.",
        "",
        "## Verdicts",
        "",
        f"A difference from the baseline `{baseline}` is shown only when its {CONFIDENCE:.0%} paired bootstrap "
        f"interval over prompts (pooled across the seeds both runs finished, {report['bootstrap']['resamples']} "
        "resamples) excludes 0 **and** every seed's difference has the same sign. An interval that excludes 0 while "
        "the seeds disagree is listed as such (a rule that counts losses by the interval alone counts it); "
        "everything else is no difference shown. Δ = variant − baseline: the mean over seeds, [interval], and the "
        "seed-to-seed spread.",
        "",
        *[f"- {report['verdicts'][variant]}" for variant in variants],
        "",
    ]
    if report["missing_runs"]:
        lines += [
            f"Not finished yet, so not in this report: {', '.join(report['missing_runs'])}. Each variant is compared "
            "over the seeds it shares with the baseline.",
            "",
        ]
    if len(seeds) == 1:
        lines += ["One seed only: the seed-to-seed spread is not measured, so the verdicts rest on the intervals.", ""]
    for eval_set, result in report["results"].items():
        lines += [
            f"## {eval_set}: {result['num_prompts']} prompts, greedy, ≤ {result['max_new_tokens']} new tokens",
            "",
            *([f"No verdict: {result['no_verdict']}.", ""] if result["no_verdict"] else []),
            f"| metric | {baseline} (mean) | "
            + " | ".join(f"{variant}: Δ [95% CI], seeds" for variant in variants)
            + " |",
            "|---|---:|" + "---|" * len(variants),
        ]
        for metric, value in result["means"][baseline].items():
            cells = []
            for variant in variants:
                difference = result["differences"].get(variant, {}).get(metric)
                text = "n/a" if difference is None else _difference_text(difference)
                if difference is not None and difference["shown"]:
                    text = f"**{text}**"
                elif difference is not None and difference["interval"]:
                    text = f"*{text}*"
                cells.append(text)
            lines.append(f"| {metric} | {_number(value)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Shown differences in bold; an interval that excludes 0 while the seeds disagree in italics.",
            "",
        ]
        shown = report["side_by_side"][eval_set]
        if shown["examples"]:
            lines += [f"### Side by side (seed {shown['seed']}, the first {len(shown['examples'])} prompts)", ""]
            for i, example in enumerate(shown["examples"], 1):
                lines += [f"**{i}.** {_cell(example['prompt'])}", "", "| | generation |", "|---|---|"]
                if example["reference"] is not None:
                    lines.append(f"| reference | {_cell(example['reference'])} |")
                lines += [f"| {variant} | {_cell(text)} |" for variant, text in example["generations"].items()]
                lines.append("")
    lines += [
        "![differences from the baseline](report.png)",
        "",
        "## Settings",
        "",
        f"- seeds: {seeds}; baseline: `{baseline}`",
        *[f"- variant `{name}`: {json.dumps(overrides)}" for name, overrides in report["variants"].items()],
        *[
            f"- eval set `{name}`: {spec['label']}, {spec['num_prompts']} prompts, "
            f"≤ {spec['max_new_tokens']} new tokens"
            for name, spec in report["eval_datasets"].items()
        ],
        f"- bootstrap: {report['bootstrap']['method']}; {report['bootstrap']['resamples']} resamples, seed "
        f"{report['bootstrap']['seed']}",
        f"- versions: Python {env['python']}, "
        + ", ".join(f"{name} {value}" for name, value in env["versions"].items() if value),
        f"- command: `{report['command']}`",
        "",
    ]
    if report["config_file"]:
        lines += ["Config file:", "", "```yaml", report["config_file"].rstrip(), "```", ""]
    lines += ["Every run's full settings: `shared_settings` and `runs` in report.json.", ""]
    return "\n".join(lines)


def plot_differences(report: dict, path: str | Path) -> None:
    """`report.png`: per metric (rows) and eval set (columns), each variant's Δ with its interval and seed Δs."""
    matplotlib = import_extra("matplotlib", "eval")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = report["baseline"]
    variants = [variant for variant in report["variants"] if variant != baseline]
    results = report["results"]
    metrics = list(dict.fromkeys(metric for result in results.values() for metric in result["means"][baseline]))
    fig, axes = plt.subplots(
        len(metrics),
        len(results),
        figsize=(3.6 * len(results) + 1.2, (0.28 * len(variants) + 0.75) * len(metrics) + 0.6),
        squeeze=False,
    )
    for column, (eval_set, result) in enumerate(results.items()):
        for row, metric in enumerate(metrics):
            ax = axes[row, column]
            if metric not in result["means"][baseline]:
                ax.set_visible(False)
                continue
            ax.axvline(0.0, color="grey", linewidth=0.8)
            for y, variant in enumerate(variants):
                difference = result["differences"].get(variant, {}).get(metric)
                if difference is None or math.isnan(difference["delta"]):
                    continue
                colour = "tab:red" if difference["shown"] else "tab:blue"
                if not math.isnan(difference["low"]):
                    ax.plot([difference["low"], difference["high"]], [y, y], color=colour, linewidth=2)
                ax.plot([difference["delta"]], [y], "o", color=colour, markersize=4)
                ax.plot(
                    difference["seed_deltas"], [y] * len(difference["seed_deltas"]), "x", color="black", markersize=3
                )
            ax.set_yticks(range(len(variants)), variants if column == 0 else [""] * len(variants), fontsize=7)
            ax.set_ylim(-0.6, len(variants) - 0.4)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_title(f"{eval_set}: {metric}", fontsize=8)
    fig.suptitle(
        # Two lines: one eval set makes a figure of one narrow column
        f"Δ from {baseline}, {CONFIDENCE:.0%} paired bootstrap interval\n(red: difference shown; x: each seed)",
        fontsize=9,
    )
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_report(sweep: Sweep) -> dict | None:
    """
    Pools the finished runs, computes [`sweep_report`] and writes `report.json`, `report.md` and `report.png` into the
    sweep's folder. Returns None, writing nothing, while no variant has a run beside the baseline's of the same seed.
    """
    pool = pool_runs(sweep)
    arguments = sweep.arguments
    if not any(
        pool.paired_seeds(variant, arguments.baseline, arguments.seeds)
        for variant in arguments.variants
        if variant != arguments.baseline
    ):
        return None
    report = sweep_report(sweep, pool)
    write_json(sweep.output_dir / "report.json", report)
    write_text_atomically(sweep.output_dir / "report.md", report_markdown(report))
    plot_differences(report, sweep.output_dir / "report.png")
    return report
