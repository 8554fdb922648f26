"""Unit tests of the PDL torch functions against `F.cross_entropy(weight=...)`, the textbook weighted mean."""

import math

import pytest
import torch
import torch.nn.functional as F

from pdl_trl.loss import IGNORE_INDEX, power_law_decay_loss, power_law_weights, target_weights


VOCAB = 11


def make_batch(seed: int = 0, batch: int = 3, seq_len: int = 8):
    """float64 logits (B, T, V) and unshifted labels with prompt masks, a masked tail and one fully masked row."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq_len, VOCAB, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (batch, seq_len), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # prompt
    labels[1, :2] = IGNORE_INDEX
    labels[1, -2:] = IGNORE_INDEX  # right padding
    labels[2, :] = IGNORE_INDEX  # a row without completion tokens
    return logits, labels


def fused_head_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What TRL's fused head returns: log p(labels[:, 1:] | prefix), shifted inside; masked positions hold
    whatever the clamped label gives, which the loss must ignore."""
    log_softmax = logits[:, :-1].log_softmax(-1)
    return log_softmax.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)


def reference_cross_entropy(logits, labels, weights, reduction="mean"):
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB),
        labels[:, 1:].reshape(-1),
        weight=weights.to(logits.dtype),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


def some_weights(alpha: float = 0.8, epsilon: float = 0.5) -> torch.Tensor:
    counts = torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 0, 100, 7])
    return power_law_weights(counts, alpha, epsilon)


def grad_of(loss_fn, logits):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits)
    loss.backward()
    return loss.detach(), logits.grad


def test_power_law_decay_loss_equals_weighted_cross_entropy_value_and_gradient():
    logits, labels = make_batch()
    weights = some_weights()

    loss, grad = grad_of(
        lambda x: power_law_decay_loss(fused_head_log_probs(x, labels), target_weights(weights, labels)), logits
    )
    expected_loss, expected_grad = grad_of(lambda x: reference_cross_entropy(x, labels, weights), logits)

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-6, atol=0)
    # The loss is reduced in float32, so the float64 gradient agrees to float32 precision
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
    # No gradient reaches the first position (never a target) nor masked targets
    assert torch.all(grad[:, -1] == 0)
    assert torch.all(grad[2] == 0)


def test_log_probs_at_masked_positions_are_ignored():
    logits, labels = make_batch(seed=1)
    weights = some_weights()
    token_weights = target_weights(weights, labels)
    log_probs = fused_head_log_probs(logits, labels)
    garbage = torch.where(token_weights > 0, log_probs, torch.full_like(log_probs, -1e4))
    torch.testing.assert_close(
        power_law_decay_loss(garbage, token_weights), power_law_decay_loss(log_probs, token_weights)
    )


def test_external_weight_sum_gives_the_sum_reduction():
    logits, labels = make_batch(seed=2)
    weights = some_weights()
    token_weights = target_weights(weights, labels)
    weight_sum = token_weights.sum()

    loss = power_law_decay_loss(fused_head_log_probs(logits, labels), token_weights, weight_sum=weight_sum)
    torch.testing.assert_close(
        loss.double(), reference_cross_entropy(logits, labels, weights, "mean"), rtol=1e-6, atol=0
    )

    unit = power_law_decay_loss(fused_head_log_probs(logits, labels), token_weights, weight_sum=torch.tensor(1.0))
    torch.testing.assert_close(
        unit.double(), reference_cross_entropy(logits, labels, weights, "sum"), rtol=1e-6, atol=0
    )


def test_micro_batches_with_the_step_weight_sum_add_up_to_the_whole_batch():
    """Gradient accumulation: each micro-batch divided by the step's weight sum; losses and gradients add up."""
    logits, labels = make_batch(seed=3, batch=4)
    labels[3, 1:] = torch.arange(VOCAB)[: labels.shape[1] - 1]  # a long row: micro-batches of unequal weight
    weights = some_weights()
    step_weight_sum = target_weights(weights, labels).sum()

    def accumulated(x):
        return sum(
            power_law_decay_loss(
                fused_head_log_probs(x[rows], labels[rows]), target_weights(weights, labels[rows]), step_weight_sum
            )
            for rows in (slice(0, 1), slice(1, 3), slice(3, 4))
        )

    loss, grad = grad_of(accumulated, logits)
    expected_loss, expected_grad = grad_of(lambda x: reference_cross_entropy(x, labels, weights), logits)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)

    # The per-micro-batch mean (the reference PDL code's normalisation) is not the same loss here
    naive = sum(
        power_law_decay_loss(fused_head_log_probs(logits[r], labels[r]), target_weights(weights, labels[r])) / 3
        for r in (slice(0, 1), slice(1, 3), slice(3, 4))
    )
    assert not math.isclose(naive.item(), expected_loss.item(), rel_tol=1e-3)


def test_alpha_zero_is_the_plain_mean_negative_log_likelihood():
    logits, labels = make_batch(seed=4)
    weights = power_law_weights(torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 0, 100, 7]), alpha=0.0, epsilon=1.0)
    assert torch.equal(weights, torch.ones(VOCAB))

    loss, grad = grad_of(
        lambda x: power_law_decay_loss(fused_head_log_probs(x, labels), target_weights(weights, labels)), logits
    )
    expected_loss, expected_grad = grad_of(
        lambda x: F.cross_entropy(
            x[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="mean"
        ),
        logits,
    )
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weight_sum", [None, torch.tensor(0.0)])
def test_fully_masked_batch_gives_a_finite_zero_with_a_graph(weight_sum):
    logits, labels = make_batch(seed=5)
    labels[:] = IGNORE_INDEX
    logits.requires_grad_(True)

    loss = power_law_decay_loss(
        fused_head_log_probs(logits, labels), target_weights(some_weights(), labels), weight_sum
    )

    assert loss.item() == 0.0 and math.isfinite(loss.item())
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def count_weighted_mean(weights: torch.Tensor, counts: torch.Tensor, among: torch.Tensor | None = None) -> float:
    among = counts > 0 if among is None else among
    return ((counts[among] * weights[among].double()).sum() / counts[among].sum()).item()


def test_power_law_weights_formula_and_unseen_token_policy():
    counts = torch.tensor([0, 1, 3, 10, 0, 250])
    alpha, epsilon = 0.7, 0.5

    weights = power_law_weights(counts, alpha, epsilon)

    assert weights.dtype == torch.float32
    assert weights.shape == counts.shape
    # The formula, up to the scale (which the loss divides out): the count-weighted mean of a target is 1
    formula = torch.tensor([(c + epsilon) ** -alpha for c in (1, 3, 10, 250)], dtype=torch.float64)
    counted = torch.tensor([1, 3, 10, 250], dtype=torch.float64)
    torch.testing.assert_close(weights[[1, 2, 3, 5]], (formula / ((counted * formula).sum() / counted.sum())).float())
    assert count_weighted_mean(weights, counts) == pytest.approx(1.0, rel=1e-6)
    # Unseen tokens take the rarest seen token's weight, not epsilon ** -alpha (which would be larger)
    assert weights[0] == weights[4] == weights[1] == max(weights[[1, 2, 3, 5]])
    assert weights[0] / weights[5] < epsilon**-alpha / (250 + epsilon) ** -alpha
    # Rarer tokens weigh more
    assert torch.all(weights[[1, 2, 3, 5]].diff() < 0)


def test_power_law_weights_with_nothing_counted_is_finite_and_uniform():
    weights = power_law_weights(torch.zeros(5, dtype=torch.int64), alpha=1.0, epsilon=1e-7)
    assert torch.all(torch.isfinite(weights))
    assert torch.all(weights == weights[0])


def test_power_law_weights_tiny_epsilon_keeps_unseen_tokens_bounded():
    """The paper code's epsilon=1e-7 would give an unseen token weight 1e7."""
    weights = power_law_weights(torch.tensor([0, 2, 4]), alpha=1.0, epsilon=1e-7)
    # Formula [0.5, 0.5, 0.25] over a count-weighted mean of (2 * 0.5 + 4 * 0.25) / 6 = 1 / 3
    torch.testing.assert_close(weights, torch.tensor([1.5, 1.5, 0.75]))


def test_neutral_tokens_weigh_the_mean_of_the_other_targets():
    counts = torch.tensor([0, 1, 3, 10, 6, 250])
    neutral = torch.tensor([False, False, False, False, True, True])
    alpha, epsilon = 1.0, 1.0

    weights = power_law_weights(counts, alpha, epsilon, neutral=neutral)

    # By hand: formula 1/2, 1/4, 1/11 on the counted non-neutral tokens, whose count-weighted mean is
    # (1/2 + 3/4 + 10/11) / 14; unseen token 0 weighs as the rarest counted one
    mean = (1 / 2 + 3 / 4 + 10 / 11) / 14
    expected = torch.tensor([1 / 2 / mean, 1 / 2 / mean, 1 / 4 / mean, 1 / 11 / mean, 1.0, 1.0])
    torch.testing.assert_close(weights, expected)
    # So the neutral tokens carry their plain-SFT share of the corpus's weight: their share of the tokens
    share = (counts[neutral] * weights[neutral]).sum() / (counts * weights).sum()
    assert share.item() == pytest.approx((6 + 250) / counts.sum().item(), rel=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.3, 1.0])
def test_mix_moves_every_weight_toward_the_mean(mix):
    counts = torch.tensor([0, 1, 3, 10, 6, 250])
    neutral = torch.tensor([False, False, False, False, False, True])
    pdl = power_law_weights(counts, 1.0, 1.0, neutral=neutral)

    weights = power_law_weights(counts, 1.0, 1.0, neutral=neutral, mix=mix)

    # w' = (1 - mix) * mean + mix * w, the mean being 1; neutral tokens stay at the mean
    expected = torch.where(neutral, torch.ones(6), (1 - mix) + mix * pdl)
    torch.testing.assert_close(weights, expected)
    assert count_weighted_mean(weights, counts, among=(counts > 0) & ~neutral) == pytest.approx(1.0, rel=1e-6)
    assert weights.min() >= 1 - mix - 1e-6
    if mix == 0.0:
        assert torch.all(weights == 1.0)


def test_mix_zero_is_the_plain_mean_negative_log_likelihood_for_any_alpha():
    logits, labels = make_batch(seed=6)
    counts = torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 0, 100, 7])
    weights = power_law_weights(counts, alpha=2.0, epsilon=1.0, mix=0.0)

    loss = power_law_decay_loss(fused_head_log_probs(logits, labels), target_weights(weights, labels))
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="mean"
    )
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("alpha", "epsilon"), [(1.0, 1e45), (3.0, 1e15), (1.0, 1e-30)])
def test_weights_are_scale_safe(alpha, epsilon):
    """Only relative weights matter: absolute formula values that float32 cannot hold (1e-45, 1e-135, 1e30) must not
    change the loss."""
    logits, labels = make_batch(seed=7)
    counts = torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 0, 100, 7])

    weights = power_law_weights(counts, alpha, epsilon)

    assert torch.all(torch.isfinite(weights)) and torch.all(weights > 0)
    formula = (counts.double() + epsilon).pow(-alpha)  # float64 holds these
    formula = torch.where(counts > 0, formula, formula[counts > 0].max())
    loss = power_law_decay_loss(fused_head_log_probs(logits, labels), target_weights(weights, labels))
    torch.testing.assert_close(loss.double(), reference_cross_entropy(logits, labels, formula), rtol=1e-5, atol=0)


def test_weights_beyond_float32_are_refused_unless_mixed():
    counts = torch.tensor([1, 10**9, 5])
    with pytest.raises(ValueError, match="Lower `pdl_alpha`, or set `pdl_mix` below 1"):
        power_law_weights(counts, alpha=5.0, epsilon=1.0)
    # The frequent token's formula weight is 1e-43 of the mean; a mix keeps every weight above 1 - mix
    weights = power_law_weights(counts, alpha=5.0, epsilon=1.0, mix=0.5)
    assert torch.all(torch.isfinite(weights)) and weights.min() >= 0.5 - 1e-6


def test_mix_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        power_law_weights(torch.tensor([1, 2]), 1.0, 1.0, mix=1.5)


def test_target_weights_are_shifted_and_zero_on_ignored_targets():
    weights = torch.tensor([10.0, 20.0, 30.0, 40.0])
    labels = torch.tensor([[3, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX]])

    token_weights = target_weights(weights, labels)

    assert token_weights.shape == (2, 3)
    # labels[:, 1:] are the targets: the first label of a row is never one
    assert token_weights.tolist() == [[0.0, 20.0, 30.0], [10.0, 0.0, 0.0]]
