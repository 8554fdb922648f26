"""
The PDL plugin's keys of an Axolotl config, merged into Axolotl's config schema by `PDLPlugin.get_input_args`: the
fields of [`~pdl_trl.weights.PDLSettings`] (same defaults, checks and meaning as `PDLSFTConfig`'s), the counts file and
the opt-in for unmasked text, and the options PDL cannot run with.

Axolotl merges every registered plugin's model into its config class, so the values are checked in every config once
the plugin is installed; the conflicts are refused only in a config that names the plugin under `plugins:`.
"""

from typing import Any

from pydantic import BaseModel, Field, model_validator

from pdl_trl.config import PDLSFTConfig
from pdl_trl.spelling import YAML, options_written_in
from pdl_trl.weights import PDLSettings


PLUGIN_NAME = "pdl_trl.integrations.axolotl.PDLPlugin"
HELP = {name: field.metadata["help"] for name, field in PDLSFTConfig.__dataclass_fields__.items()}


def pdl_enabled(cfg: Any) -> bool:
    """Whether a raw (dict) or validated Axolotl config names the PDL plugin under `plugins:`."""
    plugins = cfg.get("plugins") if isinstance(cfg, dict) else cfg.plugins
    # Axolotl accepts "module.Class" and the entry-point form "module:Class"
    return any(str(plugin).replace(":", ".") == PLUGIN_NAME for plugin in plugins or [])


# The options that move the loss away from the per-token NLL PDL re-weights, or split what it sums:
# (key, whether a value turns it on, why)
REFUSED = (
    ("rl", bool, "PDL is an SFT loss; preference and RL trainers compute their own losses"),
    ("reward_model", bool, "reward-model training has no next-token targets"),
    ("process_reward_model", bool, "process-reward-model training has no next-token targets"),
    ("use_dft", bool, "DFT sets the loss function (`compute_loss_func`) that PDL replaces"),
    ("use_eaft", bool, "EAFT sets the loss function (`compute_loss_func`) that PDL replaces"),
    ("orpo_alpha", bool, "ORPO computes its own loss"),
    ("cut_cross_entropy", bool, "Cut Cross-Entropy computes the loss inside the forward, without logits"),
    (
        "liger_fused_linear_cross_entropy",
        bool,
        "Liger's fused linear cross-entropy computes the loss inside the forward",
    ),
    ("liger_cross_entropy", bool, "Liger's cross-entropy replaces the loss that PDL computes itself"),
    ("chunked_cross_entropy", bool, "chunked cross-entropy replaces the loss that PDL computes itself"),
    ("context_parallel_size", lambda value: (value or 1) > 1, "context parallelism splits sequences across ranks"),
    ("sequence_parallel_degree", lambda value: (value or 1) > 1, "sequence parallelism splits sequences across ranks"),
    ("processor_type", bool, "multimodal batches are built in the collator, where PDL cannot count their targets"),
)


def _conflicts(cfg: dict) -> list[str]:
    conflicts = [f"`{key}` ({why})" for key, turned_on, why in REFUSED if cfg.get(key) and turned_on(cfg[key])]
    context_parallel = cfg.get("context_parallel")
    if isinstance(context_parallel, dict) and (context_parallel.get("size") or 1) > 1:
        conflicts.append("`context_parallel.size` (context parallelism splits sequences across ranks)")
    if (cfg.get("pretraining_dataset") or cfg.get("streaming")) and not cfg.get("pdl_counts_path"):
        conflicts.append(
            "`pretraining_dataset` / `streaming` without `pdl_counts_path` (a stream cannot be counted before "
            "training: count it first with `pdl-trl count` and set `pdl_counts_path`)"
        )
    return conflicts


class PDLArgs(BaseModel):
    """Power-Law Decay Loss: every completion target weighs `1 / (count + pdl_epsilon) ** pdl_alpha`."""

    pdl_alpha: Any = Field(default=PDLSettings.pdl_alpha, json_schema_extra={"description": HELP["pdl_alpha"]})
    pdl_epsilon: Any = Field(default=PDLSettings.pdl_epsilon, json_schema_extra={"description": HELP["pdl_epsilon"]})
    pdl_mix: Any = Field(default=PDLSettings.pdl_mix, json_schema_extra={"description": HELP["pdl_mix"]})
    pdl_neutral_special_tokens: Any = Field(
        default=PDLSettings.pdl_neutral_special_tokens,
        json_schema_extra={"description": HELP["pdl_neutral_special_tokens"]},
    )
    pdl_neutral_tokens: Any = Field(
        default=PDLSettings.pdl_neutral_tokens, json_schema_extra={"description": HELP["pdl_neutral_tokens"]}
    )
    pdl_counts_path: str | None = Field(default=None, json_schema_extra={"description": HELP["pdl_counts_path"]})
    pdl_allow_unmasked_text: bool = Field(
        default=False,
        json_schema_extra={
            "description": "Allow PDL on a training set whose labels mask no prompt (e.g. `train_on_inputs: true`)."
        },
    )

    @model_validator(mode="after")
    def _check_settings(self):
        # The fields are `Any` so that pydantic does not coerce them first ("0.5" or `true` into a number): the one
        # check of every front end sees what the YAML file holds, and names the keys as written there
        with options_written_in(YAML):
            PDLSettings.of(self)
        return self

    @model_validator(mode="before")
    @classmethod
    def _refuse_conflicts(cls, data):
        """`pdl_` keys without the plugin, and one message naming every option PDL cannot run with (as Axolotl's own
        check of DFT and EAFT does)."""
        if not isinstance(data, dict):
            return data
        if not pdl_enabled(data):
            # The installed plugin (entry point `axolotl.plugins`) adds these keys to every config; set without the
            # plugin they would train plain SFT
            written = sorted(key for key in PDLArgs.model_fields if data.get(key) is not None)
            if written:
                raise ValueError(
                    f"{', '.join(f'`{key}`' for key in written)} set, but the PDL plugin is not in `plugins`, so the "
                    f"run would train without PDL. Add `{PLUGIN_NAME}` under `plugins`, or remove the `pdl_` keys."
                )
            return data
        conflicts = _conflicts(data)
        if conflicts:
            raise ValueError(
                "The PDL plugin computes the loss itself, from the logits of the completion tokens, and cannot run "
                f"with: {'; '.join(conflicts)}. Turn them off, or remove the PDL plugin from `plugins`."
            )
        return data
