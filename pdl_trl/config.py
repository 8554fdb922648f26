from dataclasses import dataclass, field

from trl import SFTConfig

from pdl_trl.compat import TrainingArgumentsBackports, normalize_loss_type
from pdl_trl.spelling import option
from pdl_trl.weights import PDLSettings


@dataclass
class PDLSFTConfig(TrainingArgumentsBackports, SFTConfig):
    r"""
    Configuration class for the [`PDLSFTTrainer`]: every [`~trl.SFTConfig`] field, plus the Power-Law Decay Loss.

    Each completion token's loss is weighted by `w(t) = 1 / (count(t) + pdl_epsilon) ** pdl_alpha`, where `count(t)`
    is how often token `t` is a training target, and the loss is `sum(w * nll) / sum(w)` over the completion tokens
    of a whole optimizer step. Paper: https://huggingface.co/papers/2505.16900

    `loss_type="dft"` composes with it: each token's `nll` also times its detached probability, over the same
    `sum(w)` (at `pdl_alpha=0`, exactly TRL's DFT).

    Parameters:
        > Parameters that control the Power-Law Decay Loss

        pdl_alpha (`float`, *optional*, defaults to `0.25`):
            Decay exponent. `0.0` weights every token 1 (plain SFT); `1.0` (the paper code's default) gives each
            token type about equal total weight; values in between interpolate. The default, with
            `pdl_neutral_special_tokens=True`, is the setting our pre-registered study recommends (docs/results.md);
            the paper's exact formula is `pdl_alpha=1.0, pdl_neutral_special_tokens=False`.
        pdl_epsilon (`float`, *optional*, defaults to `1.0`):
            Smoothing added to every count, in count units (not probabilities). `1.0` is add-one smoothing.
        pdl_counts_path (`str` or `None`, *optional*, defaults to `None`):
            Counts file (JSON, from `pdl-trl count` or a previous run's `pdl_counts.json`) to take the frequencies
            from, e.g. of a reference corpus. `None` counts the completion tokens of the prepared training set.
        pdl_allow_unmasked_text (`bool`, *optional*, defaults to `False`):
            Allow a training set whose labels mask no prompt (plain language-model text), so that every token is
            counted and trained. Off by default because it usually means the prompt mask was lost.
        pdl_neutral_special_tokens (`bool`, *optional*, defaults to `True`):
            Give every token the tokenizer declares special (EOS, end-of-turn and other chat-template markers) the
            mean weight of a target token instead of the formula's, so that it keeps the share of the loss it has in
            plain SFT. At `pdl_alpha=1` the formula weighs the end-of-turn token, a target once per example, so low
            that the model stops ending its answers. `False` is the paper's formula for every token.
        pdl_neutral_tokens (`list[str]` or `None`, *optional*, defaults to `None`):
            More tokens to weigh like that: vocabulary entries (`"<|im_end|>"`), texts of one token (`"\n"`) or
            token ids (integers, from Python or a YAML file).
        pdl_mix (`float`, *optional*, defaults to `1.0`):
            Mix toward plain SFT: every weight becomes `(1 - pdl_mix) * mean + pdl_mix * w(t)`. `1.0` is PDL, `0.0`
            plain SFT (for any `pdl_alpha`); in between, no token's weight falls below `1 - pdl_mix` times the mean.
    """

    pdl_alpha: float = field(
        default=PDLSettings.pdl_alpha,
        metadata={"help": "PDL decay exponent: w(t) = 1 / (count(t) + epsilon) ** alpha. 0 is plain SFT."},
    )
    pdl_epsilon: float = field(
        default=PDLSettings.pdl_epsilon,
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

    pdl_neutral_special_tokens: bool = field(
        default=PDLSettings.pdl_neutral_special_tokens,
        metadata={
            "help": "Weigh every special token (EOS, end-of-turn, template markers) at the mean weight of a target "
            "token, so that it keeps its plain-SFT share of the loss. `--no_pdl_neutral_special_tokens` is the "
            "paper's formula."
        },
    )
    pdl_neutral_tokens: list[str] | None = field(
        default=None,
        metadata={
            "help": "More tokens to weigh at the mean: vocabulary entries, texts of one token, or ids (from YAML)."
        },
    )
    pdl_mix: float = field(
        default=PDLSettings.pdl_mix,
        metadata={"help": "PDL share of each weight, mixed with plain SFT's: 1.0 is PDL, 0.0 plain SFT."},
    )

    def __post_init__(self):
        # The PDL fields are checked where every front end checks them
        PDLSettings.of(self)
        if self.label_smoothing_factor > 0:
            raise ValueError(
                "`label_smoothing_factor` > 0 spreads loss over every vocabulary entry, which per-target "
                "weights cannot weight. Set `label_smoothing_factor=0.0`."
            )
        normalize_loss_type(self)
        super().__post_init__()
        # After SFTConfig's own checks, which map the deprecated alias `chunked_nll` to `nll`; SFTTrainer checks the
        # value only when it is built, which in a sweep is after other runs trained
        if self.loss_type not in ("nll", "dft"):
            raise ValueError(
                f"{option('loss_type')} must be 'nll' (PDL) or 'dft' (PDL x DFT), got {self.loss_type!r}; PDL is set "
                f"by the `pdl_*` fields, not by a loss type."
            )
