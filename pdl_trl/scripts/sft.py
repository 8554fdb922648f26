"""
`pdl-trl sft`: `trl sft` with the Power-Law Decay Loss. Same arguments as `trl/scripts/sft.py`, plus the `pdl_*`
fields of [`PDLSFTConfig`], and `--dataset_name` may be a local file.

# QLoRA on one GPU
```bash
pdl-trl sft \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/Capybara \
    --assistant_only_loss \
    --load_in_4bit \
    --dtype bfloat16 \
    --use_peft \
    --lora_target_modules all-linear \
    --pdl_alpha 0.5 \
    --output_dir Qwen2.5-0.5B-PDL
```

# Any launcher
```bash
accelerate launch --config_file examples/accelerate/multi_gpu.yaml \
    -m pdl_trl.scripts.sft --config examples/lora_bf16.yaml
torchrun --nproc_per_node 2 -m pdl_trl.scripts.sft --config examples/lora_bf16.yaml
```
"""

import argparse
import subprocess

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from pdl_trl.compat import end_training
from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import COUNTS_FILE_NAME
from pdl_trl.scripts.utils import (
    config_launch_args,
    did_you_mean,
    launch_option_names,
    option_strings,
    parse_script_args,
    run_command,
)
from pdl_trl.spelling import command_line
from pdl_trl.trainer import PDLSFTTrainer
from pdl_trl.training import make_trainer


@command_line
def main(script_args, training_args, model_args, dataset_args, trainer_class: type[PDLSFTTrainer] = PDLSFTTrainer):
    """Trains and saves as `trl/scripts/sft.py` does, with `trainer_class` (`PDLSFTTrainer` or a subclass)."""
    trainer = make_trainer(script_args, training_args, model_args, dataset_args, trainer_class)
    resume = training_args.resume_from_checkpoint
    # On the command line `--resume_from_checkpoint true` asks for the last checkpoint, as `True` does in Python
    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true" or None
    trainer.train(resume_from_checkpoint=resume)
    trainer.accelerator.print("✅ Training completed.")

    if trainer.is_fsdp_enabled:
        # As PEFT's FSDP-QLoRA example does: checkpoints may be sharded, the final save gathers a loadable state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # Also writes the PDL counts the run used (`pdl_counts.json`), so that it can be resumed or evaluated alike
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"💾 Model, tokenizer and {COUNTS_FILE_NAME} saved to {training_args.output_dir}.")

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"🤗 Model pushed to the Hub in https://huggingface.co/{trainer.hub_model_id}.")

    # Finish the trackers and destroy the process group; every process together, once process 0 has saved
    trainer.accelerator.wait_for_everyone()
    end_training(trainer)


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    dataclass_types = (ScriptArguments, PDLSFTConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("sft", help="Run the PDL SFT training script", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types, prog=prog)
    return parser


def _subtract_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` without the ordered `subsequence` (the launcher's arguments, taken out of the script's)."""
    remaining = iter(subsequence)
    current = next(remaining, None)
    result = []
    for item in items:
        if current is not None and item == current:
            current = next(remaining, None)
        else:
            result.append(item)
    return result


@command_line
def run(argv: list[str]) -> int:
    """
    What `pdl-trl sft ARGS` runs: parses the arguments (so `-h` and errors come before any launch), then runs this
    module with `accelerate launch`, as `trl sft` launches `trl/scripts/sft.py`. Arguments that no dataclass takes
    go to the launcher (`--num_processes 2`, `--config_file fsdp.yaml`, or `--accelerate_config NAME|PATH`: a config
    shipped in `trl/accelerate_configs`, e.g. `multi_gpu`, `zero3`, `fsdp2`, or a file), as with `trl sft`.
    """
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    parser = make_parser(prog="pdl-trl sft")
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = resolve_accelerate_config_argument(config_launch_args(config_remaining) + cli_remaining)
    unknown = [arg for arg in launch_args if arg.startswith("--") and arg.split("=")[0] not in launch_option_names()]
    if unknown:
        suggestion = did_you_mean(unknown, option_strings(parser) + sorted(launch_option_names()))
        raise ValueError(
            f"Unknown arguments: {unknown}. They are neither `pdl-trl sft` arguments nor `accelerate launch` options: "
            f"check their spelling.{suggestion}"
        )
    script_args = _subtract_subsequence(argv, cli_remaining)
    try:
        launch_command(
            launch_command_parser().parse_args(launch_args + ["--module", "pdl_trl.scripts.sft", *script_args])
        )
    # The training processes printed their own error; the launcher's report would only repeat it
    except subprocess.CalledProcessError as error:  # one process
        raise SystemExit(error.returncode) from None
    except ChildFailedError:  # several, through torch's elastic launcher
        raise SystemExit(1) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl sft", lambda: main(*parse_script_args(make_parser(prog="pdl-trl sft")))))
