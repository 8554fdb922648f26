"""
The report step of a sweep: every finished run's generations files → the differences from the baseline with their
paired bootstrap intervals ([`~pdl_trl.evaluation.statistics.paired_bootstrap`]) → `report.json`, `report.md` and
`report.png` in the sweep's folder, each written atomically.
"""

import json
import math
from pathlib import Path

import numpy as np

from pdl_trl.atomic import write_atomically, write_text_atomically
from pdl_trl.evaluation.files import read_generations, write_json
from pdl_trl.evaluation.scoring import run_statistics
from pdl_trl.evaluation.statistics import CONFIDENCE, bootstrap_indices, paired_bootstrap
from pdl_trl.evaluation.tokens import completion_text
from pdl_trl.extras import import_extra
from pdl_trl.frequency import TokenCounts
from pdl_trl.sweep.grid import RUN_FILE, Sweep
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
    """What the intervals support for one variant, eval set by eval set; every other metric: no difference shown."""
    parts = []
    for eval_set, result in results.items():
        differences = result["differences"][variant]
        shown = [
            f"{'higher' if difference['shown'] > 0 else 'lower'} {metric} ({_difference_text(difference)})"
            for metric, difference in differences.items()
            if difference["shown"]
        ]
        if shown:
            rest = len(differences) - len(shown)
            parts.append(
                f"{eval_set}: " + "; ".join(shown) + (f"; no difference shown in the other {rest}" if rest else "")
            )
        else:
            parts.append(f"{eval_set}: no difference shown")
    return f"**{variant}** against {baseline}: " + ". ".join(parts) + "."


def _statistics(sweep: Sweep) -> tuple[dict, dict]:
    """Per eval set: the runs' [`RunStatistics`] by variant (in seed order), and the prompts' rows of the baseline."""
    from transformers import AutoTokenizer

    # The tokenizer the runs were evaluated with: the one the first run saved
    tokenizer = AutoTokenizer.from_pretrained(sweep.runs[0].directory)
    counts = TokenCounts.load(sweep.reference_counts_path).counts
    statistics, rows_by_set = {}, {}
    for eval_set in sweep.eval_sets:
        by_variant, rows_of = {}, {}
        for run in sweep.runs:
            rows = read_generations(run.generations_path(eval_set.name))
            prompts = [row["prompt"] for row in rows]
            if prompts != [row["prompt"] for row in eval_set.rows]:
                raise ValueError(
                    f"{run.generations_path(eval_set.name)} has other prompts than eval set {eval_set.name!r}: delete "
                    f"{run.directory} to redo the run."
                )
            by_variant.setdefault(run.variant, []).append(
                run_statistics(rows, tokenizer, counts=counts, rare_mass=sweep.arguments.rare_mass)
            )
            rows_of[run.variant, run.seed] = rows
        statistics[eval_set.name], rows_by_set[eval_set.name] = by_variant, rows_of
    return statistics, rows_by_set


def _side_by_side(sweep: Sweep, rows_by_set: dict) -> dict:
    seed = sweep.arguments.seeds[0]
    shown = {}
    for eval_set in sweep.eval_sets:
        rows = rows_by_set[eval_set.name]
        examples = []
        for i in range(min(sweep.arguments.side_by_side, len(eval_set.rows))):
            baseline_row = rows[sweep.arguments.baseline, seed][i]
            examples.append(
                {
                    "prompt": completion_text(baseline_row["prompt"]),
                    "reference": completion_text(baseline_row["reference"]) if "reference" in baseline_row else None,
                    "generations": {
                        variant: rows[variant, seed][i]["generation"] for variant in sweep.arguments.variants
                    },
                }
            )
        shown[eval_set.name] = {"seed": seed, "examples": examples}
    return shown


def sweep_report(sweep: Sweep) -> dict:
    """
    The content of `report.json`: settings, environment, per-run metrics, and for every eval set, non-baseline variant
    and metric the difference from the baseline with its paired bootstrap interval over prompts, pooled across seeds,
    the seed-to-seed spread and whether a difference is shown (`shown`: +1, -1 or 0), plus one verdict line per
    variant.
    """
    arguments = sweep.arguments
    statistics, rows_by_set = _statistics(sweep)
    results = {}
    for eval_set in sweep.eval_sets:
        by_variant = statistics[eval_set.name]
        full_set = np.ones((1, len(eval_set.rows)))
        full_set_metrics = {variant: [run.metrics(full_set) for run in runs] for variant, runs in by_variant.items()}
        means = {
            variant: {metric: float(np.mean([m[metric][0] for m in seeds])) for metric in seeds[0]}
            for variant, seeds in full_set_metrics.items()
        }
        indices = bootstrap_indices(len(eval_set.rows), arguments.bootstrap_resamples, arguments.bootstrap_seed)
        differences = {
            variant: {
                metric: {**vars(difference), "shown": difference.shown}
                for metric, difference in paired_bootstrap(runs, by_variant[arguments.baseline], indices).items()
            }
            for variant, runs in by_variant.items()
            if variant != arguments.baseline
        }
        results[eval_set.name] = {
            "num_prompts": len(eval_set.rows),
            "max_new_tokens": eval_set.max_new_tokens,
            "means": means,
            "differences": differences,
        }

    runs = {}
    for run in sweep.runs:
        with open(run.directory / RUN_FILE, encoding="utf-8") as f:
            content = json.load(f)
        runs.setdefault(run.variant, {})[str(run.seed)] = {
            "directory": str(run.directory),
            "training": content["training"],
            "metrics": content["metrics"],
            "timings_s": content["timings_s"],
            "environment": content["environment"],
        }
    variants = [variant for variant in arguments.variants if variant != arguments.baseline]
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "environment": environment(sweep.training_args.use_cpu),
        # What the runs ran on and with: a sweep restarted elsewhere or after a code change shows it here
        "run_hardware": sorted({run["environment"]["hardware"] for seeds in runs.values() for run in seeds.values()}),
        "run_commits": sorted(
            {str(run["environment"]["pdl_trl_commit"]) for seeds in runs.values() for run in seeds.values()}
        ),
        "command": sweep.command,
        "config_file": sweep.config_text,
        "seeds": arguments.seeds,
        "baseline": arguments.baseline,
        "variants": arguments.variants,
        "eval_datasets": {
            eval_set.name: {**eval_set.settings, "num_prompts": len(eval_set.rows)} for eval_set in sweep.eval_sets
        },
        "bootstrap": {
            "resamples": arguments.bootstrap_resamples,
            "seed": arguments.bootstrap_seed,
            "confidence": CONFIDENCE,
            "method": "paired percentile bootstrap over prompts, the same draws for every run, pooled across seeds",
        },
        "shared_settings": sweep.runs[0].settings,
        "runs": runs,
        "results": results,
        "verdicts": {variant: verdict_line(variant, arguments.baseline, results) for variant in variants},
        "side_by_side": _side_by_side(sweep, rows_by_set),
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
        f"interval over prompts (pooled across the {len(seeds)} seed(s), {report['bootstrap']['resamples']} "
        "resamples) excludes 0 **and** every seed's difference has the same sign; everything else is no difference "
        "shown. Δ = variant − baseline: the mean over seeds, [interval], and the seed-to-seed spread.",
        "",
        *[f"- {report['verdicts'][variant]}" for variant in variants],
        "",
    ]
    if len(seeds) == 1:
        lines += ["One seed only: the seed-to-seed spread is not measured, so the verdicts rest on the intervals.", ""]
    for eval_set, result in report["results"].items():
        lines += [
            f"## {eval_set}: {result['num_prompts']} prompts, greedy, ≤ {result['max_new_tokens']} new tokens",
            "",
            f"| metric | {baseline} (mean) | "
            + " | ".join(f"{variant}: Δ [95% CI], seeds" for variant in variants)
            + " |",
            "|---|---:|" + "---|" * len(variants),
        ]
        for metric, value in result["means"][baseline].items():
            cells = []
            for variant in variants:
                difference = result["differences"][variant].get(metric)
                text = "n/a" if difference is None else _difference_text(difference)
                cells.append(f"**{text}**" if difference is not None and difference["shown"] else text)
            lines.append(f"| {metric} | {_number(value)} | " + " | ".join(cells) + " |")
        lines += ["", "Shown differences in bold.", ""]
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
            f"- eval set `{name}`: {spec['path']} [{spec['split']}], {spec['num_prompts']} prompts, "
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
                difference = result["differences"][variant][metric]
                if math.isnan(difference["delta"]):
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


def write_report(sweep: Sweep) -> dict:
    """Computes [`sweep_report`] and writes `report.json`, `report.md` and `report.png` into the sweep's folder."""
    report = sweep_report(sweep)
    write_json(sweep.output_dir / "report.json", report)
    write_text_atomically(sweep.output_dir / "report.md", report_markdown(report))
    plot_differences(report, sweep.output_dir / "report.png")
    return report
