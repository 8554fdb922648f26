"""
Power-Law Decay Loss in Axolotl (0.21): a plugin that trains with a PDL subclass of the trainer Axolotl would have
used. In the YAML config:

    plugins:
      - pdl_trl.integrations.axolotl.PDLPlugin
    pdl_alpha: 0.25

The other keys are those of `PDLSFTConfig` (`pdl_epsilon`, `pdl_mix`, `pdl_neutral_special_tokens`,
`pdl_neutral_tokens`, `pdl_counts_path`) with the same defaults; see docs/axolotl.md.

Hooks, in Axolotl's order: `get_input_args` (the keys join Axolotl's config schema and are checked with it, before
anything loads), `get_training_args` (`average_tokens_across_devices` back on: the weight sum spans every process),
`get_trainer_cls`, `post_trainer_create` (another plugin's trainer class would skip PDL: refused) and `post_train`
(the table's files beside the final model, which Axolotl saves without the trainer).
"""

from axolotl.core.trainers import AxolotlTrainer
from axolotl.integrations.base import BasePlugin
from axolotl.model_support import get_model_support_for_cfg, resolve_model_support
from axolotl.utils.import_helper import get_cls_from_module_str
from axolotl.utils.logging import get_logger

from pdl_trl.checkpoints import save_table_files
from pdl_trl.integrations.axolotl.args import PLUGIN_NAME, PDLArgs, pdl_enabled
from pdl_trl.integrations.axolotl.trainer import AxolotlPDLMixin


# Axolotl's console shows INFO only from loggers named under `axolotl` (others go to its debug.log)
LOG = get_logger("axolotl.integrations.pdl_trl")


def host_trainer_class(cfg) -> type:
    """The class Axolotl 0.21 trains with when no plugin chooses one (`HFCausalTrainerBuilder._get_trainer_cls`)."""
    if cfg.trainer_cls:
        return get_cls_from_module_str(cfg.trainer_cls)
    profile = resolve_model_support(get_model_support_for_cfg(cfg))
    factory = None if profile is None else profile.strategies.trainer_cls
    trainer_cls = None if factory is None else factory(cfg)
    return trainer_cls or AxolotlTrainer


class PDLPlugin(BasePlugin):
    """Power-Law Decay Loss for Axolotl's SFT trainer."""

    def __init__(self):
        super().__init__()
        self.trainer = None

    def get_input_args(self) -> str:
        return "pdl_trl.integrations.axolotl.args.PDLArgs"

    def get_training_args(self, cfg):
        if not pdl_enabled(cfg):
            return None
        # Axolotl turns it off for every run; PDL's step normaliser is the weight sum over every process
        return {"average_tokens_across_devices": True}

    def get_trainer_cls(self, cfg):
        if not pdl_enabled(cfg):
            return None
        host = host_trainer_class(cfg)
        if not issubclass(host, AxolotlTrainer) or host.compute_loss is not AxolotlTrainer.compute_loss:
            # e.g. a model-support profile's diffusion-LM trainer, or a `trainer_cls` with a loss of its own
            raise ValueError(
                f"This config trains with {host.__name__}, which computes its own loss: the PDL plugin replaces "
                "AxolotlTrainer's loss and runs only with Axolotl's causal-LM SFT trainer. Remove `trainer_cls`, or "
                "the PDL plugin from `plugins`."
            )
        # Checked already, with the whole config: its `pdl_` keys as they were validated
        config = PDLArgs.model_construct(**{name: cfg[name] for name in PDLArgs.model_fields})
        LOG.info(f"PDL: training with PDL{host.__name__}, {config.model_dump()}")
        return type(f"PDL{host.__name__}", (AxolotlPDLMixin, host), {"pdl_config": config})

    def post_trainer_create(self, cfg, trainer):
        if not pdl_enabled(cfg):
            return
        if not isinstance(trainer, AxolotlPDLMixin):
            raise ValueError(
                f"A plugin listed before the PDL plugin chose the trainer class ({type(trainer).__name__}), so PDL "
                f"would not run. List `{PLUGIN_NAME}` first under `plugins`, or remove the other plugin."
            )
        self.trainer = trainer
        LOG.info(f"PDL: {trainer.pdl_table.describe()}")

    def post_train(self, cfg, model):
        # Axolotl 0.21 calls this after `trainer.train` and again after saving the final model
        # (`model.save_pretrained`, not `trainer.save_model`): the files go beside it
        if pdl_enabled(cfg) and self.trainer is not None and self.trainer.args.should_save:
            save_table_files(self.trainer.pdl_table, cfg.output_dir)
