"""
Trains one Axolotl run as `axolotl train CONFIG` does (load_cfg, load_datasets, axolotl.train.train), in a process of
its own, and writes what the tests compare into the output folder: `log_history.json` and `train_rows.json` (the
prepared training rows).

    python run_axolotl.py CONFIG.yaml [key=value ...]      (values are YAML; they override the file)
    torchrun --nproc_per_node 2 run_axolotl.py CONFIG.yaml ...

With `FIRST_STEP_BATCHES=PATH` it also saves the micro-batches of the first optimizer step, as the trainer's
`get_batch_samples` returns them, for a computation of the first loss by hand.

Axolotl 0.21 assumes CUDA for runs of several processes; under torchrun without a GPU this sets up what a GPU machine
would not need: the peer-to-peer check, the device map, and Accelerate's CPU state with gloo (`AxolotlTrainer` rebuilds
the state from the environment, and Axolotl has no `use_cpu` key). The training itself is Axolotl's, unchanged.
"""

import json
import os
import sys


def run_on_cpu_processes() -> None:
    import axolotl.utils.environment
    from accelerate import PartialState
    from axolotl.integrations.base import PluginManager

    axolotl.utils.environment.check_cuda_p2p_support = lambda: True
    PartialState(cpu=True, backend="gloo")
    os.environ["ACCELERATE_USE_CPU"] = "true"
    training_args = PluginManager.get_training_args
    PluginManager.get_training_args = lambda self, cfg: {**(training_args(self, cfg) or {}), "use_cpu": True}


def record_first_step_batches(path: str) -> None:
    import torch
    from axolotl.core.trainers import AxolotlTrainer

    get_batch_samples = AxolotlTrainer.get_batch_samples

    def recorded(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = get_batch_samples(self, epoch_iterator, num_batches, device)
        if not os.path.exists(path):
            torch.save([{key: value.cpu() for key, value in batch.items()} for batch in batch_samples], path)
        return batch_samples, num_items_in_batch

    AxolotlTrainer.get_batch_samples = recorded


def main() -> None:
    import yaml
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import train

    if os.environ.get("FIRST_STEP_BATCHES"):
        record_first_step_batches(os.environ["FIRST_STEP_BATCHES"])
    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several_processes:
        run_on_cpu_processes()
    overrides = {key: yaml.safe_load(value) for key, value in (arg.split("=", 1) for arg in sys.argv[2:])}
    cfg = load_cfg(sys.argv[1], **overrides)
    if several_processes:
        cfg.device_map = {"": "cpu"}
    dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    _, _, trainer = train(cfg=cfg, dataset_meta=dataset_meta)
    if trainer.args.should_save:
        with open(os.path.join(cfg.output_dir, "log_history.json"), "w") as file:
            json.dump(trainer.state.log_history, file)
        rows = dataset_meta.train_dataset.select_columns(["input_ids", "labels"]).to_list()
        with open(os.path.join(cfg.output_dir, "train_rows.json"), "w") as file:
            json.dump({"trainer_class": type(trainer).__name__, "rows": rows}, file)
    # Multipack's sampler pool can keep the interpreter alive after training
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":  # Axolotl's save_to_disk(num_proc=...) starts processes that import __main__ again
    main()
