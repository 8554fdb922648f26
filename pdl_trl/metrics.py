"""Per-batch training metrics from the fused LM head's outputs: completion NLL and weight diagnostics.

Sums are kept apart from ratios so that one all-gather of a 5-vector gives exact metrics across ranks.
"""

import torch


# The keys `completion_metrics` returns, as logged (with `eval_` in evaluation)
METRIC_KEYS = ("nll", "pdl_mean_weight", "pdl_ess", "pdl_neutral_share")


def completion_sums(
    log_probs: torch.Tensor, token_weights: torch.Tensor, label_mask: torch.Tensor, neutral_weights: torch.Tensor
) -> torch.Tensor:
    """
    `[sum nll, sum w, sum w^2, num tokens, sum w of neutral targets]` over completion tokens, float64 so that sums of
    many ranks stay exact.

    Args:
        log_probs, token_weights, label_mask, neutral_weights (`torch.Tensor` of shape `(batch, seq_len - 1)`):
            Fused-head log-probabilities, per-target PDL weights, the trained-target mask, and the weights of the
            targets that are neutral tokens (zero elsewhere).
    """
    log_probs = log_probs.detach().double()
    token_weights = token_weights.double()
    return torch.stack(
        (
            -(log_probs * label_mask).sum(),
            token_weights.sum(),
            token_weights.square().sum(),
            label_mask.sum().double(),
            neutral_weights.double().sum(),
        )
    )


def completion_metrics(sums: torch.Tensor) -> dict[str, float]:
    """
    Metrics from [`completion_sums`] (summed over ranks):

    - `nll`: unweighted mean negative log-likelihood of completion tokens, comparable with a plain SFT run's loss;
    - `pdl_mean_weight`: mean PDL weight of the batch's targets (the table's mean over the training set is 1);
    - `pdl_ess`: Kish effective sample size of the weights as a share of the tokens, `(sum w)^2 / sum w^2 / n`,
      in (0, 1]; 1 means uniform weights (plain SFT), small values mean a few rare tokens carry the loss;
    - `pdl_neutral_share`: share of the batch's weight that neutral tokens (`pdl_neutral_special_tokens`,
      `pdl_neutral_tokens`) carry.
    """
    nll_sum, weight_sum, weight_sq_sum, num_tokens, neutral_sum = sums.tolist()
    if num_tokens == 0:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    return {
        "nll": nll_sum / num_tokens,
        "pdl_mean_weight": weight_sum / num_tokens,
        "pdl_ess": weight_sum**2 / weight_sq_sum / num_tokens,
        "pdl_neutral_share": neutral_sum / weight_sum,
    }
