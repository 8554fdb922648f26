"""One PDL optimizer step (SGD; by default alpha 1 with neutral special tokens and a mix of 0.7, TRL's `nll` or `dft`
loss type) on the four-row tiny dataset, or one step of TRL's own `SFTTrainer`; writes what the step produced to a
file per rank.

Run by `tests/distributed/test_distributed.py` under `torchrun --nproc_per_node 2` (gloo, CPU), and called in-process
there as the one-process reference:

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/distributed_worker.py MODEL_DIR OUT \
        --batch_size 2 [--loss_type dft] [--alpha 0] [--sft_trainer]
"""

import argparse
import os
import sys


# The tests folder: `conftest` and `helpers` import from there, as under pytest
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import make_cpu_config  # noqa: E402  (also sets the offline / one-thread environment)


NUM_ROWS = 4


def train_one_step(
    model_dir: str,
    output_dir: str,
    batch_size: int,
    accumulation: int = 1,
    loss_type: str = "nll",
    alpha: float = 1.0,
    sft_trainer: bool = False,
) -> str:
    """Trains one step and saves loss, table and parameters to `output_dir/result-rank{N}.pt`; returns that path.
    With `sft_trainer`, TRL's `SFTTrainer` trains instead (no table: counts and weights are None)."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from helpers.tiny import prompt_completion_dataset
    from pdl_trl import PDLSFTTrainer

    pdl = {
        "pdl_alpha": alpha,
        # The options toward plain SFT keep the step exact across processes too
        "pdl_neutral_special_tokens": True,
        "pdl_mix": 0.7,
    }
    args = make_cpu_config(
        output_dir,
        SFTConfig if sft_trainer else None,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        loss_type=loss_type,
        **({} if sft_trainer else pdl),
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        # Rows in dataset order: rank 0 gets rows 0-1 and rank 1 rows 2-3, together the one-process batch
        train_sampling_strategy="sequential",
    )
    trainer_class = SFTTrainer if sft_trainer else PDLSFTTrainer
    trainer = trainer_class(model_dir, args=args, train_dataset=prompt_completion_dataset(NUM_ROWS))
    trainer.train()
    rank = trainer.accelerator.process_index
    result = {
        "world_size": trainer.accelerator.num_processes,
        "rank": rank,
        "loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "counts": None if sft_trainer else torch.from_numpy(trainer.pdl_table.counts.counts).clone(),
        "weights": None if sft_trainer else trainer.pdl_table.weights.cpu().clone(),
        "parameters": {name: p.detach().cpu().clone() for name, p in trainer.model.named_parameters()},
    }
    path = os.path.join(output_dir, f"result-rank{rank}.pt")
    torch.save(result, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--loss_type", default="nll")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--sft_trainer", action="store_true")
    options = parser.parse_args()
    train_one_step(
        options.model_dir,
        options.output_dir,
        options.batch_size,
        options.accumulation,
        options.loss_type,
        options.alpha,
        options.sft_trainer,
    )


if __name__ == "__main__":
    main()
