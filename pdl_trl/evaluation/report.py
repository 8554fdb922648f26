"""
The report step of evaluation: the metrics of several runs side by side, as a markdown table and a bar chart with
one subplot per metric (what `pdl-trl compare` prints and draws).
"""

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from pdl_trl.atomic import write_atomically
from pdl_trl.evaluation.metrics import METRIC_NAMES
from pdl_trl.extras import import_extra


def default_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File stems (`sft.json` -> `sft`), or parent folder names when the stems repeat (`runs/sft/metrics.json`)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    parents = [p.parent.name for p in paths]
    if len(set(parents)) == len(parents):
        return parents
    return [str(p.with_suffix("")) for p in paths]


def metric_names(runs: Sequence[dict[str, float]]) -> list[str]:
    """Known metrics in their usual order, then any others in order of first appearance."""
    present = [name for run in runs for name in run]
    known = [name for name in METRIC_NAMES if name in present]
    return known + [name for name in dict.fromkeys(present) if name not in METRIC_NAMES]


def _cell(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.4f}"


def markdown_table(labels: Sequence[str], runs: Sequence[dict[str, float]]) -> str:
    """One row per metric, one column per run; `n/a` where a run lacks the metric or it is undefined."""
    names = metric_names(runs)
    lines = [
        "| metric | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(run.get(name)) for run in runs) + " |")
    return "\n".join(lines) + "\n"


# The metrics measured with a counts file and a rare-token mass: comparable only between runs that share both
FREQUENCY_METRICS = ("mean_self_information", "rare_token_rate", "rare_token_recall")


def frequency_note(labels: Sequence[str], contents: Sequence[dict]) -> str:
    """
    A warning, printed and returned as a line under the table, when the metrics files' frequency metrics were
    measured with different counts files or rare-token masses (`""` when they agree): side by side they would
    compare different yardsticks.
    """
    measured = {
        label: (
            content["settings"].get("counts_fingerprint", content["settings"].get("counts")),
            content["details"].get("rare_mass"),
        )
        for label, content in zip(labels, contents, strict=True)
        if any(name in content["metrics"] for name in FREQUENCY_METRICS)
    }
    if len(set(measured.values())) <= 1:
        return ""
    groups = {}
    for label, key in measured.items():
        groups.setdefault(key, []).append(label)
    described = "; ".join(
        f"{', '.join(names)}: counts {counts}, rare_mass {mass}" for (counts, mass), names in groups.items()
    )
    note = (
        f"Not comparable across columns: {', '.join(FREQUENCY_METRICS)} were measured with different counts files or "
        f"rare-token masses ({described}). Score every run with the same `--pdl_counts_path` and `--rare_mass`."
    )
    warnings.warn(note, UserWarning, stacklevel=2)
    return f"\n{note}\n"


def plot(labels: Sequence[str], runs: Sequence[dict[str, float]], path: str | os.PathLike) -> None:
    """PNG with one bar subplot per metric (their scales differ), one bar per run, written atomically."""
    matplotlib = import_extra("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_names(runs)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    for ax, name in zip(axes.flat, names, strict=False):
        values = [run.get(name, math.nan) for run in runs]
        positions = range(len(runs))
        ax.bar(positions, [0.0 if math.isnan(v) else v for v in values], color=colours)
        for x, v in zip(positions, values, strict=True):
            ax.annotate(_cell(v), (x, 0.0 if math.isnan(v) else v), ha="center", va="bottom", fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(y=0.15)
        if all(math.isnan(v) or v >= 0 for v in values):
            ax.set_ylim(bottom=0.0)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
