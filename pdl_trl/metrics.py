"""Per-batch training metrics from the fused LM head's outputs: completion NLL and weight diagnostics.

Sums are kept apart from ratios so that one all-gather of a 4-vector gives exact metrics across ranks.
"""

import torch


def completion_sums(log_probs: torch.Tensor, token_weights: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """
    `[sum nll, sum w, sum w^2, num tokens]` over completion tokens, float64 so that sums of many ranks stay exact.

    Args:
        log_probs, token_weights, label_mask (`torch.Tensor` of shape `(batch, seq_len - 1)`):
            Fused-head log-probabilities, per-target PDL weights and the trained-target mask.
    """
    log_probs = log_probs.detach().double()
    token_weights = token_weights.double()
    return torch.stack(
        (-(log_probs * label_mask).sum(), token_weights.sum(), token_weights.square().sum(), label_mask.sum().double())
    )


def completion_metrics(sums: torch.Tensor) -> dict[str, float]:
    """
    Metrics from [`completion_sums`] (summed over ranks):

    - `nll`: unweighted mean negative log-likelihood of completion tokens, comparable with a plain SFT run's loss;
    - `pdl_mean_weight`: mean PDL weight of the batch's targets;
    - `pdl_ess`: Kish effective sample size of the weights as a share of the tokens, `(sum w)^2 / sum w^2 / n`,
      in (0, 1]; 1 means uniform weights (plain SFT), small values mean a few rare tokens carry the loss.
    """
    nll_sum, weight_sum, weight_sq_sum, num_tokens = sums.tolist()
    if num_tokens == 0:
        return {"nll": 0.0, "pdl_mean_weight": 0.0, "pdl_ess": 0.0}
    return {
        "nll": nll_sum / num_tokens,
        "pdl_mean_weight": weight_sum / num_tokens,
        "pdl_ess": weight_sum**2 / weight_sq_sum / num_tokens,
    }
