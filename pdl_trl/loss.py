"""Power-Law Decay Loss as torch functions: the weight table and the weighted sum over completion tokens.

Paper: https://huggingface.co/papers/2505.16900

Formula:
    w(t) = 1 / (count(t) + epsilon) ** alpha
    loss = sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)      over completion tokens i of one optimizer step

This module imports nothing from TRL: it is tested against `torch.nn.functional.cross_entropy(weight=...)`.
"""

import torch


IGNORE_INDEX = -100


def power_law_weights(counts: torch.Tensor, alpha: float, epsilon: float) -> torch.Tensor:
    """
    Power-law decay weights `1 / (count + epsilon) ** alpha`, one per vocabulary entry.

    Tokens never counted (count 0) get the weight of the rarest counted token instead of `epsilon ** -alpha`: with
    the paper code's `epsilon = 1e-7` and `alpha = 1` an unseen token would weigh 1e7 and take a whole batch's loss.

    Args:
        counts (`torch.Tensor` of shape `(vocab_size,)`):
            Integer token counts over completion tokens.
        alpha (`float`):
            Decay exponent; `0` gives weight 1 everywhere (plain cross-entropy).
        epsilon (`float`):
            Smoothing added to every count, in count units.

    Returns:
        `torch.Tensor` of shape `(vocab_size,)`, float32.
    """
    counts = counts.to(torch.float64)
    weights = (counts + epsilon).pow(-alpha)
    seen = counts > 0
    if seen.any():
        weights = torch.where(seen, weights, weights[seen].max())
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
    Weighted negative log-likelihood `sum(w * -log_probs) / weight_sum`.

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
