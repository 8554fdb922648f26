"""
`pdl-trl sweep`: trains every variant with every seed on one training set, everything else identical, evaluates each
run on held-out sets with `pdl-trl eval`'s metrics, and reports each variant's differences from the plain-SFT
baseline with paired bootstrap intervals over prompts (pooled across seeds), the seed spread and a verdict.

The config file's top-level keys are `pdl-trl sft` arguments, shared by every run, plus the sweep's own (`seeds`,
`baseline`, `variants`, `eval_datasets`, ...: [`~pdl_trl.sweep.SweepArguments`]); command-line flags override it.

```bash
pdl-trl sweep --config examples/sweeps/pydoc_qa.yaml --model_name_or_path ~/.cache/pdl-trl/smollm2-135m-instruct
pdl-trl sweep --config sweep.yaml --max_steps 2 --output_dir outputs/sweep-smoke
pdl-trl sweep --config sweep.yaml --runs sft:0,pdl:0          # one machine's share of the runs
pdl-trl sweep --config sweep.yaml --report_only                # the report from the runs gathered in output_dir
```

Writes into `output_dir`: a folder per run (`<variant>/seed-<seed>/`: adapter, `pdl_counts.json`, `eval/<set>.*` with
the per-example statistics `eval/<set>.statistics.npz`, `run.json` last), then `report.md`, `report.json` and
`report.png` from every run finished so far. Restarted, the sweep keeps finished runs (those with a `run.json` of the
same settings) and redoes unfinished ones from scratch; a finished run with other settings is refused. A run's
`run.json` and statistics files are all the report needs of it, so runs made elsewhere can be copied in and pooled.
Docs: docs/cli.md, docs/evaluation.md.
"""

import shlex
import sys

from pdl_trl.scripts.utils import parse_script_args, run_command
from pdl_trl.spelling import command_line


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from pdl_trl import PDLSFTConfig
    from pdl_trl.sweep import SweepArguments

    return TrlParser(
        (ScriptArguments, PDLSFTConfig, ModelConfig, DatasetMixtureConfig, SweepArguments),
        prog=prog,
        description=__doc__.strip().split("\n\n")[0],
    )


@command_line
def main(argv: list[str] | None = None) -> dict:
    from tqdm.auto import tqdm

    from pdl_trl.extras import check_eval_extra, import_extra
    from pdl_trl.locking import output_dir_lock
    from pdl_trl.sweep import check_config_file, plan_sweep, train_and_evaluate, write_report

    argv = list(sys.argv[1:] if argv is None else argv)
    # Before hours of training: the report needs the reference metrics and the chart
    check_eval_extra()
    import_extra("matplotlib", "eval")
    config_text = None
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        config_text = check_config_file(argv[argv.index("--config") + 1])
    *training, arguments = parse_script_args(make_parser(prog="pdl-trl sweep"), argv, launch_options=False)
    sweep = plan_sweep(*training, arguments, config_text, shlex.join(["pdl-trl", "sweep", *argv]))
    if len(arguments.seeds) == 1:
        print("One seed: the seed-to-seed spread is not measured. Give two or more `seeds` to measure it.")

    with output_dir_lock(sweep.output_dir, "pdl-trl sweep"):
        for run in sweep.runs:
            if run.finished:
                print(f"{run.name}: finished earlier, kept ({run.directory})")
        # Only the runs to train count: kept runs would make the first runs look instant and the ETA wrong
        to_train = sweep.runs_to_train
        with tqdm(to_train, desc="pdl-trl sweep", unit="run") as bar:
            for run in bar:
                bar.set_postfix_str(run.name)
                train_and_evaluate(sweep, run)
                tqdm.write(f"{run.name}: trained and evaluated ({run.directory})")
        report = write_report(sweep)

    if report is None:
        print(
            "No report yet: no variant has a finished run beside the baseline's of the same seed. Run those, e.g. "
            f"`--runs {arguments.baseline}:{arguments.seeds[0]}`, then `--report_only`."
        )
        return {}
    print("\n".join(["", *report["verdicts"].values(), ""]))
    if report["missing_runs"]:
        print(f"Not finished yet, so not in the report: {', '.join(report['missing_runs'])}.")
    print(f"Report: {sweep.output_dir / 'report.md'}, report.json, report.png")
    return report


def run(argv: list[str]) -> int:
    """What `pdl-trl sweep ARGS` runs, in this process."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl sweep", main))
