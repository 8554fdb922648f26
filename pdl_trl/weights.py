"""
The weight table: token counts + PDL settings → one weight per vocabulary row, the neutral mask, and what `pdl-trl
inspect` and the demo print and plot about them. The settings are checked here, once, for every front end (the TRL
config, the command line, the Axolotl plugin).

Imports nothing from TRL: any trainer that computes a per-target NLL can hold a [`WeightTable`].
"""

import math
import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from pdl_trl.atomic import write_atomically
from pdl_trl.frequency import TokenCounts
from pdl_trl.loss import power_law_weights
from pdl_trl.spelling import option


# Below this share of the largest weight, the end-of-sequence token is down-weighted enough to stop the model ending
# its answers: 0.0014 (alpha 1) did and 0.038 (alpha 0.5) half did on the bundled data; 0.19 (alpha 0.25) did not
EOS_WEIGHT_WARNING = 0.05
# Shares of the seen token types (rarest first) whose share of the weight the report gives
RAREST_FRACTIONS = (0.01, 0.1)


@dataclass(frozen=True)
class PDLSettings:
    r"""
    What decides the PDL weights besides the counts, with the defaults and checks of every front end. The fields are
    named as the options users write (`pdl_alpha` in Python, YAML and `--pdl_alpha` on the command line), and the
    meaning of each is documented on [`PDLSFTConfig`].

    Raises:
        `ValueError`: naming the field and the fix, for any value PDL cannot use.
    """

    pdl_alpha: float = 0.25
    pdl_epsilon: float = 1.0
    pdl_mix: float = 1.0
    pdl_neutral_special_tokens: bool = True
    pdl_neutral_tokens: list[str | int] | None = None

    def __post_init__(self):
        for name in ("pdl_alpha", "pdl_epsilon", "pdl_mix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{option(name)} must be a number, got {value!r} ({type(value).__name__}).")
        if not (math.isfinite(self.pdl_alpha) and self.pdl_alpha >= 0):
            raise ValueError(
                f"{option('pdl_alpha')} must be a finite number >= 0, got {self.pdl_alpha}. Use "
                f"{option('pdl_alpha', 0.0)} for plain SFT."
            )
        if not (math.isfinite(self.pdl_epsilon) and self.pdl_epsilon > 0):
            raise ValueError(
                f"{option('pdl_epsilon')} must be a finite number > 0, got {self.pdl_epsilon}. It is added to token "
                f"counts; {option('pdl_epsilon', 1.0)} (add-one smoothing) is the default."
            )
        if not (math.isfinite(self.pdl_mix) and 0 <= self.pdl_mix <= 1):
            raise ValueError(f"{option('pdl_mix')} must be in [0, 1] (1.0 is PDL, 0.0 plain SFT), got {self.pdl_mix}.")
        if not isinstance(self.pdl_neutral_special_tokens, bool):
            raise ValueError(
                f"{option('pdl_neutral_special_tokens')} must be true or false, got "
                f"{self.pdl_neutral_special_tokens!r}."
            )
        if isinstance(self.pdl_neutral_tokens, str | int):
            raise ValueError(
                f"{option('pdl_neutral_tokens')} is a list of tokens, got {self.pdl_neutral_tokens!r}: write "
                f"`[{self.pdl_neutral_tokens!r}]`."
            )
        for token in self.pdl_neutral_tokens or []:
            if isinstance(token, bool) or not isinstance(token, str | int):
                raise ValueError(
                    f"{option('pdl_neutral_tokens')} takes token strings or integer ids, got {token!r}. Write ids as "
                    "integers and tokens as strings, e.g. `['<|im_end|>', 198]`."
                )

    @classmethod
    def of(cls, config) -> "PDLSettings":
        """The settings of any object with the `pdl_*` fields (a `PDLSFTConfig`, an Axolotl config)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    @property
    def is_plain_sft(self) -> bool:
        """Whether every weight is the mean, whatever the counts: `pdl_alpha=0` or `pdl_mix=0`."""
        return self.pdl_alpha == 0 or self.pdl_mix == 0


def neutral_token_ids(tokenizer, settings: PDLSettings, vocab_size: int) -> list[int]:
    """
    Ids of the tokens that PDL weighs at the mean (`pdl_neutral_special_tokens`, `pdl_neutral_tokens`), sorted.

    - `pdl_neutral_special_tokens`: every token the tokenizer declares special: its named special tokens (EOS, BOS,
      PAD, ...) and every added token marked special (chat-template markers such as `<|im_end|>`).
    - `pdl_neutral_tokens`: an integer, or a string of digits only (as the command line gives it), is an id; another
      string is a vocabulary entry (`"<|im_end|>"`, `"Ċ"`) or else a text that the tokenizer encodes to exactly one
      token (`"\n"`). A token spelled in digits is named by its id.

    Args:
        tokenizer: the training tokenizer; may be `None` when no token is neutral.
        settings ([`PDLSettings`]): the settings naming the neutral tokens.
        vocab_size (`int`): rows of the PDL table; ids must be below it.
    """
    ids = set()
    if settings.pdl_neutral_special_tokens:
        ids.update(tokenizer.all_special_ids)
        ids.update(i for i, added in tokenizer.added_tokens_decoder.items() if added.special)
    vocab = None
    for token in settings.pdl_neutral_tokens or []:
        if isinstance(token, int) or (token.isascii() and token.isdigit()):
            token_id = int(token)
        elif token in (vocab := vocab or tokenizer.get_vocab()):
            token_id = vocab[token]
        else:
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(
                    f"{option('pdl_neutral_tokens')} entry {token!r} is {len(encoded)} tokens ({encoded}), not one. "
                    "Name single tokens: a vocabulary entry, a text of one token, or an integer id."
                )
            (token_id,) = encoded
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"{option('pdl_neutral_tokens')} entry {token!r} is id {token_id}, outside the model's {vocab_size} "
                "output rows."
            )
        ids.add(token_id)
    # Special tokens beyond the output rows cannot be targets
    return sorted(i for i in ids if i < vocab_size)


@dataclass
class WeightTable:
    """
    The PDL weight of every row of a model's output embedding, from counts and settings, with what it was built
    from: the counts (`counts.counts[i]`), the neutral ids and their mask. Weights are float32, relative to the
    count-weighted mean weight of a target ([`~pdl_trl.loss.power_law_weights`]). Build with [`WeightTable.build`].
    """

    counts: TokenCounts
    settings: PDLSettings
    neutral_ids: list[int]
    weights: torch.Tensor
    neutral_mask: torch.Tensor

    @classmethod
    def build(cls, counts: TokenCounts, settings: PDLSettings, tokenizer=None) -> "WeightTable":
        """
        The table of `counts` under `settings`, one weight per entry of the counts (the model's output rows; check
        them against the model with [`~pdl_trl.frequency.TokenCounts.check_compatible`] first). `tokenizer` names the
        neutral tokens; it may be None when no token is neutral.

        Raises:
            `ValueError`: counts that count nothing, neutral tokens that are not single tokens, or weights beyond
            float32.
        """
        vocab_size = counts.vocab_size
        if counts.num_tokens == 0:
            raise ValueError(
                f"The PDL counts ({counts.source}) count no token: every weight would be the same and PDL would "
                "train as plain SFT. Count a corpus with completion tokens (`pdl-trl count`)."
            )
        neutral_ids = neutral_token_ids(tokenizer, settings, vocab_size)
        neutral = torch.zeros(vocab_size, dtype=torch.bool)
        neutral[neutral_ids] = True
        weights = power_law_weights(
            torch.from_numpy(counts.counts),
            settings.pdl_alpha,
            settings.pdl_epsilon,
            neutral=neutral,
            mix=settings.pdl_mix,
        )
        return cls(counts, settings, neutral_ids, weights, neutral)

    def to(self, device: torch.device | str) -> "WeightTable":
        """Moves the weights and mask to `device` (that of the labels they are looked up with); returns `self`."""
        self.weights = self.weights.to(device)
        self.neutral_mask = self.neutral_mask.to(device)
        return self

    @property
    def record(self) -> dict:
        """What decides the weights besides the counts, as `pdl_settings.json` stores it."""
        return {
            "pdl_alpha": self.settings.pdl_alpha,
            "pdl_epsilon": self.settings.pdl_epsilon,
            "pdl_mix": self.settings.pdl_mix,
            "neutral_token_ids": self.neutral_ids,
        }

    def warn_if_degenerate(self, eos_token_id: int | None, eos_token: str | None) -> None:
        """
        Warns when the table trains something other than what PDL promises: an end-of-sequence token weighed so low
        that the model stops ending its answers, or weights so flat that PDL trains as plain SFT.
        """
        weights, settings = self.weights.cpu(), self.settings
        if eos_token_id is not None and eos_token_id < len(weights) and not self.neutral_mask[eos_token_id]:
            eos_share = (weights[eos_token_id] / weights.max()).item()
            if eos_share < EOS_WEIGHT_WARNING:
                # Every example ends with this token, so it is the most frequent target there is: weighted down this
                # far, the model stops learning to end its answers (measured in docs/results.md)
                warnings.warn(
                    f"PDL weights the end-of-sequence token {eos_token!r} at {eos_share:.3g} of the rarest tokens "
                    f"(pdl_alpha={settings.pdl_alpha}); the trained model may not stop generating. Set "
                    "`pdl_neutral_special_tokens=True` (the default) to keep its plain-SFT share, or a smaller "
                    "`pdl_alpha` or `pdl_mix`; check `termination_rate` with `pdl-trl eval`.",
                    UserWarning,
                    stacklevel=4,
                )
        seen = torch.from_numpy(self.counts.counts > 0)
        varied = weights[seen & ~self.neutral_mask.cpu()]
        if not settings.is_plain_sft and len(varied) and varied.max() < 1.01 * varied.min():
            warnings.warn(
                f"The PDL weights of the counted tokens differ by less than 1% (pdl_alpha={settings.pdl_alpha}, "
                f"pdl_epsilon={settings.pdl_epsilon}, counts from {self.counts.source}): PDL trains like plain "
                "SFT. A `pdl_epsilon` much larger than the counts flattens the weights; lower it, or set "
                "`pdl_alpha=0` if plain SFT is intended.",
                UserWarning,
                stacklevel=4,
            )

    def describe(self) -> str:
        """One line for logs: what the table was built from and the span of its weights."""
        weights = self.weights.cpu()
        s = self.settings
        return (
            f"PDL table from {self.counts.source}: {self.counts.num_tokens} tokens, "
            f"{int((self.counts.counts > 0).sum())} of {self.counts.vocab_size} types seen; alpha={s.pdl_alpha}, "
            f"epsilon={s.pdl_epsilon}, mix={s.pdl_mix}, {len(self.neutral_ids)} neutral tokens; weights "
            f"{weights.min().item():.3g}..{weights.max().item():.3g} of the mean"
        )

    def report(self, batch_tokens: int = 4096) -> dict:
        """
        How the weight is spread over the counted tokens, as `PDLSFTTrainer` trains with it:

        - `order`: the seen ids, rarest first (ties by id); `weights`: the table as float64 numpy;
        - `rarest`: for each fraction `f` of [`RAREST_FRACTIONS`], the `ceil(f * seen)` rarest seen types: their
          share of the token occurrences and of the total weight `sum(count * w)`;
        - `ess`: expected Kish effective sample size `(sum w)^2 / sum w^2` of a batch of `batch_tokens` tokens drawn
          from the counts, as the ratio of expectations `1 + (n - 1) E[w]^2 / E[w^2]`; `ess_share` is it over `n`
          (for large batches, the `pdl_ess` the trainer logs);
        - `neutral`: for each neutral id, its count, weight, and share of the tokens (= its share of the weight in
          plain SFT) and of the total weight; `neutral_weight_share`: all of them (the table's `pdl_neutral_share`).
        """
        counts = self.counts.counts
        weights = self.weights.cpu().double().numpy()
        seen = np.flatnonzero(counts > 0)
        # Rarest first; ties broken by token id so that the report is deterministic
        order = seen[np.lexsort((seen, counts[seen]))]
        token_mass = counts[order].astype(np.float64)
        weight_mass = token_mass * weights[order]
        rarest = []
        for fraction in RAREST_FRACTIONS:
            k = math.ceil(fraction * len(order))
            rarest.append(
                {
                    "fraction": fraction,
                    "types": k,
                    "token_share": token_mass[:k].sum() / token_mass.sum(),
                    "weight_share": weight_mass[:k].sum() / weight_mass.sum(),
                }
            )
        p = token_mass / token_mass.sum()
        mean_w = (p * weights[order]).sum()
        mean_w2 = (p * weights[order] ** 2).sum()
        ess = 1 + (batch_tokens - 1) * mean_w**2 / mean_w2
        total_tokens, total_weight = counts.sum(), (counts * weights).sum()
        neutral_rows = [
            {
                "id": int(i),
                "count": int(counts[i]),
                "weight": float(weights[i]),
                "token_share": counts[i] / total_tokens,
                "weight_share": counts[i] * weights[i] / total_weight,
            }
            for i in self.neutral_ids
        ]
        return {
            "weights": weights,
            "order": order,
            "neutral": neutral_rows,
            "neutral_weight_share": sum(row["weight_share"] for row in neutral_rows),
            "rarest": rarest,
            "ess": ess,
            "ess_share": ess / batch_tokens,
            "batch_tokens": batch_tokens,
        }

    def report_lines(self, report: dict, tokenizer=None, top_k: int = 10) -> list[str]:
        """A [`report`] of this table as the lines `pdl-trl inspect` and the demo print; tokens decoded when a
        tokenizer is given."""
        counts, weights, order = self.counts.counts, report["weights"], report["order"]
        s = self.settings
        seen_weights = weights[order]

        def token(token_id: int) -> str:
            return repr(tokenizer.decode([int(token_id)])) if tokenizer is not None else ""

        lines = [
            f"{self.counts.num_tokens} completion tokens of {len(order)} types seen (of {self.counts.vocab_size}); "
            f"counted with tokenizer {self.counts.tokenizer!r}",
            f"alpha={s.pdl_alpha:g} epsilon={s.pdl_epsilon:g} mix={s.pdl_mix:g}: weights {seen_weights.min():.4g} .. "
            f"{seen_weights.max():.4g} of the mean (max / min {seen_weights.max() / seen_weights.min():.4g}); unseen "
            f"types weigh {seen_weights.max():.4g}",
        ]
        for rarest in report["rarest"]:
            lines.append(
                f"rarest {rarest['fraction']:.0%} of seen types ({rarest['types']} of {len(order)}): "
                f"{rarest['token_share']:.2%} of the tokens, {rarest['weight_share']:.2%} of the total weight"
            )
        lines.append(
            f"Kish effective sample size of a {report['batch_tokens']}-token batch: {report['ess']:.1f} tokens "
            f"({report['ess_share']:.2%})"
        )
        counted_neutral = [row for row in report["neutral"] if row["count"]]
        if report["neutral"]:
            lines.append(
                f"{len(report['neutral'])} neutral tokens weigh the mean (1); the {len(counted_neutral)} counted "
                f"carry {report['neutral_weight_share']:.2%} of the total weight:"
            )
            lines += [
                f"  {row['id']:>8d} {token(row['id']):<24} count {row['count']:>10d}  {row['weight_share']:.2%} of "
                f"the weight ({row['token_share']:.2%} in plain SFT)"
                for row in counted_neutral
            ]
        # The lists run by count; neutral tokens are listed above
        order = order[~np.isin(order, self.neutral_ids)]
        k = min(top_k, len(order))
        for title, ids in (
            (f"most weighted (rarest) {k} tokens:", order[:k]),
            (f"least weighted (most frequent) {k} tokens:", order[::-1][:k]),
        ):
            lines.append(title)
            lines += [
                f"  {int(i):>8d} {token(i):<24} count {int(counts[i]):>10d}  weight {weights[i]:.4g}" for i in ids
            ]
        return lines

    def plot(self, path: str) -> None:
        """Writes a PNG of weight against frequency rank (1 = most frequent), log-log, alpha and epsilon marked."""
        from pdl_trl.extras import import_extra

        matplotlib = import_extra("matplotlib", "plot")
        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt

        counts, weights = self.counts.counts, self.weights.cpu().double().numpy()
        alpha, epsilon = self.settings.pdl_alpha, self.settings.pdl_epsilon
        seen = np.flatnonzero(counts > 0)
        order = seen[np.lexsort((seen, -counts[seen]))]  # most frequent first
        ranks = np.arange(1, len(order) + 1)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.loglog(ranks, weights[order], label=f"w ∝ 1 / (count + {epsilon:g})^{alpha:g}")
        # The formula without epsilon, on the table's scale (relative to the mean) at the rarest token
        no_epsilon = counts[order].astype(np.float64) ** -alpha
        scale = weights[order[-1]] / no_epsilon[-1]
        ax.loglog(ranks, no_epsilon * scale, linestyle="--", color="gray", label="∝ 1 / count^α (no ε)")
        # Where counts fall to epsilon, smoothing flattens the weights: mark the first rank there
        flat = np.flatnonzero(counts[order] <= epsilon)
        if len(flat):
            ax.axvline(ranks[flat[0]], color="tab:red", linestyle=":", label=f"count ≤ ε = {epsilon:g}")
        ax.set_xlabel("frequency rank of the token type (1 = most frequent)")
        ax.set_ylabel("PDL weight (1 = mean weight of a target)")
        ax.set_title(f"PDL weights, α = {alpha:g}, ε = {epsilon:g} ({len(order)} seen types)")
        ax.legend()
        fig.tight_layout()
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
