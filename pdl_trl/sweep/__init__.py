"""
`pdl-trl sweep`, one module per step: `config` (the sweep's own keys, checked), `grid` (the config → the runs, every
check before training), `runs` (train and evaluate one run), `report` (the runs' generations → differences with
paired bootstrap intervals → report files).
The statistics themselves are `pdl_trl.evaluation.statistics`; the command is `pdl_trl/scripts/sweep.py`.
"""

from pdl_trl.sweep.config import SweepArguments, check_config_file
from pdl_trl.sweep.grid import EvalSet, Run, Sweep, plan_sweep
from pdl_trl.sweep.report import sweep_report, verdict_line, write_report
from pdl_trl.sweep.runs import environment, train_and_evaluate


__all__ = [
    "EvalSet",
    "Run",
    "Sweep",
    "SweepArguments",
    "check_config_file",
    "environment",
    "plan_sweep",
    "sweep_report",
    "train_and_evaluate",
    "verdict_line",
    "write_report",
]
