"""`pdl_trl.scripts.sft` (what `pdl-trl sft` launches) for the launcher tests of
`tests/distributed/test_distributed.py`: each rank also writes what it trained with, and the run can kill itself
right after a checkpoint is written.

    accelerate launch --config_file examples/accelerate/fsdp2.yaml tests/helpers/distributed_sft.py \
        --results DIR [--kill_after_save STEP] [--fsdp_on_cpu] -- --config train.yaml [sft options]

`DIR/rank{R}.pt` holds the rank's distributed type, PDL counts and weights, every logged loss by step, and what the
first training step of this process saw: its step number, the output embedding (a DTensor shard under FSDP2, an
empty partition under ZeRO-3), the table size `_output_rows` read from it, and how many parameters are DTensors.
"""

import argparse
import faulthandler
import os
import signal
import sys
from pathlib import Path


def enable_fsdp_on_cpu() -> None:
    """
    accelerate 1.15 never enables FSDP for CPU processes: `AcceleratorState` turns them into `MULTI_CPU` (DDP) and
    switches only GPU-like types to FSDP, so an FSDP config trains as DDP on CPU without a word. This takes that one
    decision the other way; accelerate's FSDP2 preparation and torch's `fully_shard` (gloo) then run as on GPUs.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def skip_deepspeed_shm_kernel() -> None:
    # DeepSpeed's CPU accelerator JIT-compiles an optional shared-memory all-reduce kernel at its first init (about
    # 100 s of C++ here). Marked incompatible, DeepSpeed uses torch.distributed (gloo) alone, as it does off Linux.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True, help="folder for rank{R}.pt")
    parser.add_argument("--kill_after_save", type=int, help="SIGKILL every process once this step's checkpoint exists")
    parser.add_argument("--fsdp_on_cpu", action="store_true", help="let accelerate's FSDP run on CPU processes")
    options, sft_argv = parser.parse_known_args(argv)
    if sft_argv[:1] == ["--"]:
        sft_argv = sft_argv[1:]

    import torch
    from torch.distributed.tensor import DTensor
    from transformers import TrainerCallback

    import pdl_trl
    from pdl_trl.scripts import sft
    from pdl_trl.scripts.utils import parse_script_args

    if options.fsdp_on_cpu:
        enable_fsdp_on_cpu()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        skip_deepspeed_shm_kernel()

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == options.kill_after_save:
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()  # every process has written its part of the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

    class RecordingTrainer(pdl_trl.PDLSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterSave())
            self._first_step = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self._first_step is None:
                weight = self.model.get_output_embeddings().weight
                local = weight.to_local() if isinstance(weight, DTensor) else weight
                self._first_step = {
                    "step": self.state.global_step + 1,
                    "head_type": type(weight).__name__,
                    "shape": tuple(weight.shape),
                    "local_shape": tuple(local.shape),
                    "ds_shape": tuple(weight.ds_shape) if hasattr(weight, "ds_shape") else None,
                    "output_rows": self._output_rows,
                    "dtensor_parameters": sum(isinstance(p, DTensor) for p in self.model.parameters()),
                    "parameters": len(list(self.model.parameters())),
                }
            return super().training_step(model, inputs, num_items_in_batch)

        def train(self, *args, **kwargs):
            output = super().train(*args, **kwargs)
            rank = self.accelerator.process_index
            result = {
                "rank": rank,
                "world_size": self.accelerator.num_processes,
                "distributed_type": self.accelerator.distributed_type.value,
                "counts": torch.from_numpy(self.pdl_table.counts.counts).clone(),
                "weights": self.pdl_table.weights.cpu().clone(),
                "first_step": self._first_step,
                "losses": {entry["step"]: entry["loss"] for entry in self.state.log_history if "loss" in entry},
            }
            Path(options.results).mkdir(parents=True, exist_ok=True)
            torch.save(result, Path(options.results) / f"rank{rank}.pt")
            return output

    sft.main(*parse_script_args(sft.make_parser(), sft_argv), trainer_class=RecordingTrainer)


if __name__ == "__main__":
    # A rank that hangs (seen rarely in gloo's teardown, docs/distributed.md) prints where and exits
    faulthandler.dump_traceback_later(240, exit=True)
    main(sys.argv[1:])
