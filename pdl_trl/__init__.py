"""Power-Law Decay Loss (PDL) for TRL's SFTTrainer."""

# First: quiets a log line bitsandbytes prints at import on some CPUs (see `pdl_trl.compat`)
from pdl_trl import compat  # noqa: F401, I001
from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import TokenCounts, count_completion_tokens, tokenizer_fingerprint
from pdl_trl.loss import power_law_decay_loss, power_law_weights, target_weights
from pdl_trl.trainer import PDLSFTTrainer


__version__ = "0.1.0"

__all__ = [
    "PDLSFTConfig",
    "PDLSFTTrainer",
    "TokenCounts",
    "__version__",
    "count_completion_tokens",
    "power_law_decay_loss",
    "power_law_weights",
    "target_weights",
    "tokenizer_fingerprint",
]
