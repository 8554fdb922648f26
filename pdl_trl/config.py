import math
from dataclasses import dataclass, field

from trl import SFTConfig


@dataclass
class PDLSFTConfig(SFTConfig):
    r"""
    Configuration class for the [`PDLSFTTrainer`]: every [`~trl.SFTConfig`] field, plus the Power-Law Decay Loss.

    Each completion token's loss is weighted by `w(t) = 1 / (count(t) + pdl_epsilon) ** pdl_alpha`, where `count(t)`
    is how often token `t` is a training target, and the loss is `sum(w * nll) / sum(w)` over the completion tokens
    of a whole optimizer step. Paper: https://huggingface.co/papers/2505.16900

    Parameters:
        > Parameters that control the Power-Law Decay Loss

        pdl_alpha (`float`, *optional*, defaults to `1.0`):
            Decay exponent. `0.0` weights every token 1 (plain SFT); `1.0` (the paper code's default) gives each
            token type about equal total weight; values in between interpolate.
        pdl_epsilon (`float`, *optional*, defaults to `1.0`):
            Smoothing added to every count, in count units (not probabilities). `1.0` is add-one smoothing.
        pdl_counts_path (`str` or `None`, *optional*, defaults to `None`):
            Counts file (JSON, from `pdl-trl count` or a previous run's `pdl_counts.json`) to take the frequencies
            from, e.g. of a reference corpus. `None` counts the completion tokens of the prepared training set.
        pdl_allow_unmasked_text (`bool`, *optional*, defaults to `False`):
            Allow a training set whose labels mask no prompt (plain language-model text), so that every token is
            counted and trained. Off by default because it usually means the prompt mask was lost.
    """

    pdl_alpha: float = field(
        default=1.0,
        metadata={"help": "PDL decay exponent: w(t) = 1 / (count(t) + epsilon) ** alpha. 0 is plain SFT."},
    )
    pdl_epsilon: float = field(
        default=1.0,
        metadata={"help": "PDL smoothing added to every token count, in count units (1.0 = add-one)."},
    )
    pdl_counts_path: str | None = field(
        default=None,
        metadata={
            "help": "PDL counts file (JSON from `pdl-trl count`). Default: count the training set's completion tokens."
        },
    )
    pdl_allow_unmasked_text: bool = field(
        default=False,
        metadata={"help": "Allow PDL on a training set whose labels mask no prompt (plain language-model text)."},
    )

    def __post_init__(self):
        if not (math.isfinite(self.pdl_alpha) and self.pdl_alpha >= 0):
            raise ValueError(f"`pdl_alpha` must be a finite number >= 0, got {self.pdl_alpha}. Use 0.0 for plain SFT.")
        if not (math.isfinite(self.pdl_epsilon) and self.pdl_epsilon > 0):
            raise ValueError(
                f"`pdl_epsilon` must be a finite number > 0, got {self.pdl_epsilon}. It is added to token counts; "
                "1.0 (add-one smoothing) is the default."
            )
        if self.loss_type != "nll":
            raise ValueError(
                f"`loss_type={self.loss_type!r}` replaces the loss that PDL re-weights. Keep `loss_type='nll'`, or "
                "use `trl.SFTTrainer` for DFT."
            )
        if self.label_smoothing_factor > 0:
            raise ValueError(
                "`label_smoothing_factor` > 0 spreads loss over every vocabulary entry, which per-target "
                "weights cannot weight. Set `label_smoothing_factor=0.0`."
            )
        super().__post_init__()
