"""Reading a trained `PDLSFTTrainer` in tests."""

import torch


def table_counts(trainer) -> torch.Tensor:
    """The counts of the trainer's PDL table (`trainer.pdl_table.counts.counts`) as an int64 tensor."""
    return torch.from_numpy(trainer.pdl_table.counts.counts)
