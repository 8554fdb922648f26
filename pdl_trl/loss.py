"""Power-Law Decay Loss as torch functions: the weight table and the weighted sum over completion tokens.

Paper: https://huggingface.co/papers/2505.16900

Formula:
    w(t) = 1 / (count(t) + epsilon) ** alpha
    loss = sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)      over completion tokens i of one optimizer step

Only relative weights matter under this normaliser, so the table is stored relative to the mean weight of a target
token. Two options move it toward plain SFT: neutral tokens (e.g. end-of-sequence) weigh that mean, and a mix
`(1 - mix) + mix * w` bounds how far any token's share can fall.

This module imports nothing from TRL: it is tested against `torch.nn.functional.cross_entropy(weight=...)`.
"""

import math

import torch


IGNORE_INDEX = -100
# Relative weights beyond this many times the mean (either way) cannot be summed over a step in float32 safely:
# float32 holds 1.2e-38 .. 3.4e38, and a step sums up to ~1e6 weights times NLLs of ~10
WEIGHT_RANGE = 1e30


def power_law_weights(
    counts: torch.Tensor,
    alpha: float,
    epsilon: float,
    *,
    neutral: torch.Tensor | None = None,
    mix: float = 1.0,
) -> torch.Tensor:
    """
    PDL weight of every vocabulary entry, relative to the mean weight of a target token.

    1. Formula weights `(count + epsilon) ** -alpha`. Tokens never counted (count 0) get the weight of the rarest
       counted token instead of `epsilon ** -alpha`: with the paper code's `epsilon = 1e-7` and `alpha = 1` an unseen
       token would weigh 1e7 and take a whole batch's loss.
    2. Scaled so that the count-weighted mean `sum(c * w) / sum(c)` over the counted tokens that are not neutral is 1.
       The loss divides by the weight sum, so the scale changes nothing; computed in log space, it keeps a huge
       `epsilon` or a large `alpha` from underflowing float32.
    3. Mixed with plain SFT's uniform weight: `(1 - mix) + mix * w`; `mix = 1` is PDL, `mix = 0` plain SFT.
    4. `neutral` tokens weigh 1, the mean: in a corpus counted like `counts` they carry the share of the loss weight
       that they carry in plain SFT (their share of the tokens).

    Args:
        counts (`torch.Tensor` of shape `(vocab_size,)`):
            Integer token counts over completion tokens.
        alpha (`float`):
            Decay exponent; `0` gives weight 1 everywhere (plain cross-entropy).
        epsilon (`float`):
            Smoothing added to every count, in count units.
        neutral (`torch.Tensor` of shape `(vocab_size,)`, *optional*):
            Boolean mask of the tokens that keep the mean weight.
        mix (`float`, *optional*, defaults to `1.0`):
            Share of the PDL weight in the mix with plain SFT, in [0, 1].

    Returns:
        `torch.Tensor` of shape `(vocab_size,)`, float32. Uniform 1 when nothing is counted.

    Raises:
        `ValueError`: when the weights span more than float32 can sum (beyond `WEIGHT_RANGE` times the mean).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"`mix` must be in [0, 1] (1 is PDL, 0 plain SFT), got {mix}.")
    counts = counts.to(torch.float64)
    seen = counts > 0
    if not seen.any():
        return torch.ones(len(counts), dtype=torch.float32)
    neutral = torch.zeros_like(seen) if neutral is None else neutral.to(device=counts.device, dtype=torch.bool)
    log_weights = -alpha * torch.log(counts + epsilon)
    log_weights = torch.where(seen, log_weights, log_weights[seen].max())
    reference = seen & ~neutral
    if not reference.any():  # every counted token is neutral: all weigh the mean
        reference = seen
    log_mean = torch.logsumexp(log_weights[reference] + counts[reference].log(), 0) - counts[reference].sum().log()
    weights = (1 - mix) + mix * torch.exp(log_weights - log_mean)
    largest, smallest = weights[reference].max().item(), weights[reference].min().item()
    if largest > WEIGHT_RANGE or smallest < 1 / WEIGHT_RANGE:
        span = (log_weights[reference].max() - log_weights[reference].min()).item() / math.log(10)
        raise ValueError(
            f"With alpha={alpha} and epsilon={epsilon} the PDL weights of the counted tokens span 1e{span:.0f} (from "
            f"{smallest:.3g} to {largest:.3g} times the mean), more than float32 sums safely: the loss would be "
            "rounding. Lower `pdl_alpha`, or set `pdl_mix` below 1 to keep every weight above `1 - pdl_mix`."
        )
    weights[neutral] = 1.0
    return weights.to(torch.float32)


def target_weights(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Weight of each next-token target, zero where the target is ignored.

    Args:
        weights (`torch.Tensor` of shape `(vocab_size,)`): table from [`power_law_weights`].
        labels (`torch.Tensor` of shape `(batch, seq_len)`): labels with `-100` on untrained positions, unshifted.

    Returns:
        `torch.Tensor` of shape `(batch, seq_len - 1)`, aligned with the fused LM head's `log_probs`.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return weights[targets.clamp(min=0)] * mask


def power_law_decay_loss(
    log_probs: torch.Tensor, token_weights: torch.Tensor, weight_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Weighted negative log-likelihood `sum(w * -log_probs) / weight_sum`. `w` may carry more per-token factors than the
    PDL weight (DFT's detached probability, for `loss_type="dft"`), with `weight_sum` the sum of the PDL weights.

    With `weight_sum=None` the denominator is the local `sum(token_weights)`, which equals
    `F.cross_entropy(logits, labels, weight=weights, ignore_index=-100, reduction="mean")`. Pass the weight sum of
    the whole optimizer step (every micro-batch, every rank) to make gradient accumulation and data parallelism exact.

    Args:
        log_probs (`torch.Tensor` of shape `(batch, seq_len - 1)`):
            Log-probability of each target; any value where `token_weights` is 0.
        token_weights (`torch.Tensor` of shape `(batch, seq_len - 1)`):
            From [`target_weights`].
        weight_sum (`torch.Tensor`, *optional*):
            Denominator; defaults to `token_weights.sum()`.

    Returns:
        Scalar `torch.Tensor` in float32; a finite zero (with a graph) when no token carries weight.
    """
    if weight_sum is None:
        weight_sum = token_weights.sum()
    weighted = (-log_probs.float() * token_weights).sum()
    # Clamped so that a batch without completion tokens reduces to a finite zero rather than 0 / 0
    return weighted / torch.as_tensor(weight_sum, dtype=torch.float32).clamp(min=torch.finfo(torch.float32).tiny)
