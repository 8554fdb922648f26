"""Data and config files for the command-line tests: jsonl rows and `pdl-trl sft` YAML files for the tiny model."""

import json
from pathlib import Path

import yaml

from helpers.tiny import make_rows


# `trl sft`-style YAML for the tiny model on CPU: two optimizer steps, nothing else saved but the final model
CPU_YAML = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "activation_checkpointing": False,
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversational_rows(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
        for r in make_rows(n)
    ]


def write_yaml(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path
