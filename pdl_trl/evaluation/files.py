"""
The file step of evaluation: the formats `pdl-trl eval` writes and `pdl-trl eval --generations` / `pdl-trl compare`
read back — generations jsonl (`prompt`, `generation`, `terminated`, optional `reference`, ...) and metrics JSON
(format `pdl-trl-eval`, described in `docs/evaluation.md`) — and the per-example statistics a sweep run writes for
its report (numbers only, small enough to commit). Every file is written atomically.
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdl_trl.atomic import write_atomically, write_text_atomically
from pdl_trl.evaluation.metrics import RunStatistics, ordered_metrics


EVAL_FORMAT = "pdl-trl-eval"
EVAL_VERSION = 1
STATISTICS_FORMAT = "pdl-trl-statistics"
STATISTICS_VERSION = 1


def _json_value(value):
    # JSON has no NaN: an undefined metric is written as null
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def json_text(content: dict) -> str:
    """`content` as indented JSON, NaN as null."""
    return json.dumps(_json_value(content), indent=2, ensure_ascii=False)


def write_json(path: str | os.PathLike, content: dict) -> None:
    """Writes JSON atomically (temp file + `os.replace`), NaN as null."""
    write_text_atomically(path, json_text(content))


def write_generations(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Writes a generations jsonl (rows as [`~pdl_trl.evaluation.evaluate_model`] returns them) atomically."""
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_generations(path: str | os.PathLike) -> list[dict]:
    """
    Reads a generations jsonl: every row has `generation`, and either every row or none has `reference`, and
    `terminated` (true or false).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}): a generations file is UTF-8 JSON lines.") from error
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Line {number} of {path} is not JSON ({error}): a generations file has one JSON object per line, "
                "as `pdl-trl eval --generations_output` writes it."
            ) from error
        if not isinstance(row, dict):
            raise ValueError(f"Line {number} of {path} is {type(row).__name__}, not a JSON object (a row).")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no rows.")
    for i, row in enumerate(rows):
        if not isinstance(row.get("generation"), str):
            raise ValueError(f"Row {i} of {path} has no string `generation`: each row needs one.")
    for key in ("reference", "terminated"):
        present = sum(key in row for row in rows)
        if present not in (0, len(rows)):
            raise ValueError(f"{present} of {len(rows)} rows of {path} have a `{key}`: give every row one, or none.")
    for i, row in enumerate(rows):
        if "terminated" in row and not isinstance(row["terminated"], bool):
            raise ValueError(f"Row {i} of {path} has `terminated` {row['terminated']!r}: it must be true or false.")
    return rows


def write_statistics(path: str | os.PathLike, statistics: RunStatistics, fingerprints: dict) -> None:
    """
    Writes a run's per-example statistics of one eval set (numbers only: no prompt, reference or generation text) with
    the `fingerprints` of what they were scored against, as a compressed numpy file, atomically.
    """
    header = {"format": STATISTICS_FORMAT, "version": STATISTICS_VERSION, "fingerprints": fingerprints}
    arrays = {**statistics.arrays(), "header": np.array(json.dumps(header, sort_keys=True))}

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    write_atomically(path, save)


def read_statistics(path: str | os.PathLike) -> tuple[RunStatistics, dict]:
    """A statistics file ([`write_statistics`]): the statistics and the fingerprints they were scored against."""
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {name: content[name] for name in content.files}
        header = json.loads(str(arrays.pop("header")))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"{path} is not a readable statistics file ({error}): restore it from where the run wrote it, or redo "
            "that run."
        ) from error
    if header.get("format") != STATISTICS_FORMAT or header.get("version") != STATISTICS_VERSION:
        raise ValueError(f"{path} is not a pdl-trl statistics file (format {STATISTICS_FORMAT!r}).")
    return RunStatistics.from_arrays(arrays), header["fingerprints"]


def eval_result(metrics: dict[str, float], details: dict, settings: dict) -> dict:
    """Content of a metrics file, as `pdl-trl compare` reads it."""
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "metrics": ordered_metrics(metrics),
        "details": details,
        "settings": settings,
    }


def read_metrics_file(path: str | os.PathLike) -> dict:
    """A `pdl-trl eval` metrics file (`metrics`, `details`, `settings`); anything else is a `ValueError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}): pass a metrics file of `pdl-trl eval`.") from error
    if not isinstance(content, dict) or content.get("format") != EVAL_FORMAT or "metrics" not in content:
        raise ValueError(
            f"{path} is not a `pdl-trl eval` metrics file: write one with `pdl-trl eval --metrics_output`."
        )
    return content


def load_metrics(path: str | os.PathLike) -> dict[str, float]:
    """The `metrics` of a `pdl-trl eval` file; an undefined metric (null) becomes `nan`."""
    return {k: math.nan if v is None else float(v) for k, v in read_metrics_file(path)["metrics"].items()}
