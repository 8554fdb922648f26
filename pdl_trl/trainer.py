import json
import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType
from datasets import Dataset
from peft import PeftModel
from transformers import TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_bitsandbytes_available, logging
from trl import SFTTrainer

from pdl_trl.atomic import write_text_atomically
from pdl_trl.config import PDLSFTConfig
from pdl_trl.frequency import (
    COUNTS_FILE_NAME,
    TokenCounts,
    count_completion_tokens,
    first_targets,
    neutral_token_ids,
    tokenizer_fingerprint,
)
from pdl_trl.loss import IGNORE_INDEX, power_law_decay_loss, power_law_weights, target_weights
from pdl_trl.metrics import METRIC_KEYS, completion_metrics, completion_sums


logger = logging.get_logger(__name__)

# Below this share of the largest weight, the end-of-sequence token is down-weighted enough to stop the model ending
# its answers: 0.0014 (alpha 1) did and 0.038 (alpha 0.5) half did on the bundled data; 0.19 (alpha 0.25) did not
EOS_WEIGHT_WARNING = 0.05
# A counts file that leaves more than this share of the training targets uncounted weighs them all as the rarest token
UNSEEN_TARGETS_WARNING = 0.1
SETTINGS_FILE_NAME = "pdl_settings.json"
SETTINGS_FORMAT = "pdl-trl-settings"
# Columns of raw datasets that SFTTrainer tokenizes: a null there fails deep inside the tokenizer or the chat template
TEXT_COLUMNS = ("text", "prompt", "completion", "messages")


def _check_raw_dataset(dataset, name: str) -> None:
    """Refuses, before any preparation, what SFTTrainer would fail on obscurely or PDL cannot count."""
    if not isinstance(dataset, Dataset):
        return
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: pass a dataset with at least one example.")
    if "image" in dataset.column_names or "images" in dataset.column_names:
        raise ValueError(
            f"`{name}` holds images. SFTTrainer prepares vision-language examples in the collator, batch by batch, "
            "so the completion tokens PDL would count and weight are not known before training: PDL does not support "
            "vision-language training. Use `trl.SFTTrainer` for it."
        )
    for column in TEXT_COLUMNS:
        if column in dataset.column_names and dataset.data.column(column).null_count:
            nulls = dataset.data.column(column).null_count
            raise ValueError(
                f"`{name}` has {nulls} row(s) whose `{column}` is None. Drop or fill them first, e.g. "
                f"`dataset.filter(lambda row: row['{column}'] is not None)`."
            )


class PDLSFTTrainer(SFTTrainer):
    """
    [`~trl.SFTTrainer`] with the Power-Law Decay Loss on completion tokens.

    Takes the same arguments and datasets as `SFTTrainer` (prompt-completion, conversational with
    `assistant_only_loss`, packing, padding-free, PEFT and 4-bit QLoRA) with a [`PDLSFTConfig`]. After the datasets
    are prepared, counts how often each token is a training target (or loads `args.pdl_counts_path`) and builds
    `pdl_counts`, `pdl_weights` and `pdl_neutral_mask`, one entry per row of the model's output embedding, identical
    on every process.

    The training loss is `sum(w * nll) / sum(w)` where both sums run over every micro-batch of the optimizer step on
    every process, so batch size x accumulation x processes can be traded without changing loss or gradients. The
    evaluation loss is the same ratio per evaluation batch. Logged beside TRL's metrics: `nll` (unweighted
    completion NLL, comparable with plain SFT), `pdl_mean_weight`, `pdl_ess` and `pdl_neutral_share`.

    Example:

    ```python
    from datasets import load_dataset
    from pdl_trl import PDLSFTConfig, PDLSFTTrainer

    trainer = PDLSFTTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        args=PDLSFTConfig(output_dir="out"),  # PDL at its defaults: pdl_alpha=0.25, special tokens neutral
        train_dataset=load_dataset("trl-lib/tldr", split="train"),
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "sft", "pdl"]
    _name = "PDL SFT"
    _paper = {
        "title": "Power-Law Decay Loss for Large Language Model Finetuning: A Theory Perspective",
        "id": "2505.16900",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @misc{shao2025powerlawdecayloss,
                title        = {{Power-Law Decay Loss for Large Language Model Finetuning: A Theory Perspective}},
                author       = {Jintian Shao},
                year         = 2025,
                eprint       = {2505.16900},
                archivePrefix= {arXiv},
                primaryClass = {cs.CL},
            }"""),
    }
    # The training loss is divided by the weight sum of the whole optimizer step (see `get_batch_samples`): Trainer
    # must not divide it again by the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: PDLSFTConfig | TrainingArguments | None = None, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "`compute_loss_func` replaces the loss that PDL re-weights. Drop it, or use `trl.SFTTrainer`."
            )
        if kwargs.get("compute_metrics") is not None or kwargs.get("preprocess_logits_for_metrics") is not None:
            raise ValueError(
                "PDLSFTTrainer computes the loss on TRL's fused LM head, which builds no logits for `compute_metrics` "
                "or `preprocess_logits_for_metrics`. Drop them; `eval_nll`, `eval_entropy` and "
                "`eval_mean_token_accuracy` are logged, and `pdl-trl eval` scores generations."
            )
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = PDLSFTConfig(f"{model_name.split('/')[-1]}-PDL")
        elif not isinstance(args, PDLSFTConfig):
            # Like SFTTrainer with a TrainingArguments: keep every field set, PDL fields at their defaults
            dict_args = args.to_dict()
            # to_dict masks every field named `*_token` with a placeholder, not only `hub_token`: an SFTConfig's
            # `eos_token` would become '<EOS_TOKEN>' and fail as "not found in the vocabulary"
            for name in dict_args:
                if name.endswith("_token"):
                    dict_args[name] = getattr(args, name)
            args = PDLSFTConfig(**dict_args)

        # Checked before the datasets are prepared, which can take long
        train_dataset = kwargs.get("train_dataset")
        if train_dataset is None and args.pdl_counts_path is None:
            raise ValueError(
                "PDL counts the completion tokens of `train_dataset`: pass one, or pass `pdl_counts_path` to "
                "evaluate with the counts of a previous run."
            )
        _check_raw_dataset(train_dataset, "train_dataset")
        eval_dataset = kwargs.get("eval_dataset")
        eval_datasets = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
        for name, dataset in eval_datasets.items():
            _check_raw_dataset(dataset, f"eval_dataset[{name!r}]" if name else "eval_dataset")
        token_counts = None if args.pdl_counts_path is None else TokenCounts.load(args.pdl_counts_path)

        super().__init__(model, args, **kwargs)

        for variable, engine in (
            ("ACCELERATE_USE_FSDP", DistributedType.FSDP),
            ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED),
        ):
            # accelerate 1.15 turns FSDP and DeepSpeed into DDP on CPU processes without a word
            if os.environ.get(variable, "").lower() == "true" and self.accelerator.distributed_type != engine:
                warnings.warn(
                    f"The launcher asked for {engine.value} ({variable}=true), but accelerate set up "
                    f"{self.accelerator.distributed_type.value}: this run is not sharded as configured. On CPU "
                    "accelerate does this for FSDP and for DeepSpeed with `use_cpu=True`; see docs/distributed.md.",
                    UserWarning,
                    stacklevel=2,
                )
        if self.get_cp_size() > 1 or self.get_sp_size() > 1:
            raise ValueError(
                "PDL does not support context or sequence parallelism: they split sequences after the step's weight "
                "sum is taken. Set `parallelism_config` without cp/sp, or use data parallelism."
            )
        if isinstance(self.model, PeftModel) and self.model.active_peft_config.is_prompt_learning:
            raise ValueError(
                f"{self.model.active_peft_config.peft_type} pads the labels with virtual tokens, which misaligns "
                "PDL's per-target weights. Use LoRA (`peft.LoraConfig`) or another adapter that keeps the sequence."
            )
        if is_bitsandbytes_available():
            import bitsandbytes as bnb

            for module in self.model.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    # On AVX512-BF16 CPUs an eval-mode forward repacks the 4-bit weight for good into a layout whose
                    # kernel has no backward: later gradients through frozen 4-bit layers come out silently wrong.
                    module.support_avx512bf16_for_cpu = False

        self._pdl_fingerprint = tokenizer_fingerprint(self._tokenizer)
        if self.train_dataset is not None:
            self._check_prepared_train_dataset()
        if token_counts is None:
            token_counts = TokenCounts(
                self._count_train_dataset(),
                self._tokenizer.name_or_path,
                self._pdl_fingerprint,
                source="training set completion tokens",
            )
        self._set_pdl_table(token_counts)
        if args.pdl_counts_path is not None and self.train_dataset is not None:
            self._check_counts_cover_train_dataset()
        self._pdl_step_weight_sum = None
        self._pdl_metric_prefix = "eval"

    def _check_prepared_train_dataset(self) -> None:
        if isinstance(self.train_dataset, Dataset) and len(self.train_dataset) == 0:
            raise ValueError(
                "No training example has a completion token left after preparation: SFTTrainer drops examples whose "
                f"labels are all masked, e.g. when `max_length={self.args.max_length}` with "
                f"`truncation_mode={self.args.truncation_mode!r}` cuts every completion away. Raise `max_length`, or "
                "use `truncation_mode='keep_end'`."
            )
        # Prompt-completion data (completion_only_loss) and assistant-only data are masked by construction, even
        # where truncation left only completion tokens. Other data is plain language-model text unless its own
        # `labels` mask something.
        masked_by_preparation = self.completion_only_loss or self.args.assistant_only_loss
        if not (self.args.pdl_allow_unmasked_text or masked_by_preparation):
            if not (first_targets(self.train_dataset) == IGNORE_INDEX).any():
                raise ValueError(
                    "No training label is masked: the dataset is plain language-model text, so PDL would count and "
                    "train prompt tokens too. Use prompt-completion data (`completion_only_loss`) or conversational "
                    "data with `assistant_only_loss=True`, or set `pdl_allow_unmasked_text=True` if that is intended."
                )

    def _check_counts_cover_train_dataset(self) -> None:
        """A counts file that misses the training targets weighs them all as the rarest token: PDL would be void."""
        targets = first_targets(self.train_dataset)
        targets = targets[(targets != IGNORE_INDEX) & (targets < len(self.pdl_counts))]
        if len(targets) == 0:
            return
        unseen = float((self._pdl_token_counts.counts[targets] == 0).mean())
        if unseen == 1.0:
            raise ValueError(
                f"{self.args.pdl_counts_path} counts none of the training targets (sampled from the first rows): "
                "every target would weigh the same and PDL would train as plain SFT. Count this kind of data with "
                "`pdl-trl count`, or drop `pdl_counts_path` to count the training set."
            )
        if unseen > UNSEEN_TARGETS_WARNING:
            warnings.warn(
                f"{unseen:.0%} of the training targets (sampled from the first rows) are never counted in "
                f"{self.args.pdl_counts_path}; each weighs as much as the rarest counted token. Check that the counts "
                "were made from data like this, with the same chat template.",
                UserWarning,
                stacklevel=3,
            )

    @property
    def _output_rows(self) -> int:
        weight = self.model.get_output_embeddings().weight
        # A parameter ZeRO-3 has partitioned is an empty local tensor with the full shape in `ds_shape` (read as PEFT
        # does). Not every one is: transformers skips partitioning at load (zero.Init) for quantized models
        partitioned = is_deepspeed_zero3_enabled() and hasattr(weight, "ds_shape")
        return weight.ds_shape[0] if partitioned else weight.shape[0]

    def _count_train_dataset(self) -> np.ndarray:
        """Counts the prepared training set, each process one shard, summed so every process holds the same table."""
        counts = count_completion_tokens(
            self.train_dataset,
            self._output_rows,
            shard_index=self.accelerator.process_index,
            num_shards=self.accelerator.num_processes,
        )
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(torch.from_numpy(counts).to(self.accelerator.device), reduction="sum")
            counts = total.cpu().numpy()
        return counts

    def _set_pdl_table(self, token_counts: TokenCounts) -> None:
        token_counts.check_compatible(self._output_rows, self._pdl_fingerprint, self._tokenizer.name_or_path)
        if token_counts.num_tokens == 0:
            raise ValueError(
                f"The PDL counts ({token_counts.source}) count no token: every weight would be the same and PDL would "
                "train as plain SFT. Count a corpus with completion tokens (`pdl-trl count`)."
            )
        self._pdl_token_counts = token_counts
        self.pdl_counts = torch.from_numpy(token_counts.counts)
        self._pdl_neutral_ids = neutral_token_ids(
            self._tokenizer, self.args.pdl_neutral_special_tokens, self.args.pdl_neutral_tokens, self._output_rows
        )
        neutral = torch.zeros(self._output_rows, dtype=torch.bool)
        neutral[self._pdl_neutral_ids] = True
        weights = power_law_weights(
            self.pdl_counts, self.args.pdl_alpha, self.args.pdl_epsilon, neutral=neutral, mix=self.args.pdl_mix
        )
        self.pdl_weights = weights.to(self.accelerator.device)
        self.pdl_neutral_mask = neutral.to(self.accelerator.device)

        eos_id = self._tokenizer.eos_token_id
        eos_share = (weights[eos_id] / weights.max()).item()
        if not neutral[eos_id] and eos_share < EOS_WEIGHT_WARNING:
            # Every example ends with this token, so it is the most frequent target there is: weighted down this far,
            # the model stops learning to end its answers (measured in docs/results.md)
            warnings.warn(
                f"PDL weights the end-of-sequence token {self._tokenizer.eos_token!r} at {eos_share:.3g} of the "
                f"rarest tokens (pdl_alpha={self.args.pdl_alpha}); the trained model may not stop generating. Set "
                "`pdl_neutral_special_tokens=True` (the default) to keep its plain-SFT share, or a smaller "
                "`pdl_alpha` or `pdl_mix`; check `termination_rate` with `pdl-trl eval`.",
                UserWarning,
                stacklevel=3,
            )
        seen = self.pdl_counts > 0
        varied = weights[seen & ~neutral]
        if self.args.pdl_alpha > 0 and self.args.pdl_mix > 0 and len(varied) and varied.max() < 1.01 * varied.min():
            warnings.warn(
                f"The PDL weights of the counted tokens differ by less than 1% (pdl_alpha={self.args.pdl_alpha}, "
                f"pdl_epsilon={self.args.pdl_epsilon}, counts from {token_counts.source}): PDL trains like plain "
                "SFT. A `pdl_epsilon` much larger than the counts flattens the weights; lower it, or set "
                "`pdl_alpha=0` if plain SFT is intended.",
                UserWarning,
                stacklevel=3,
            )
        logger.info(
            f"PDL table from {token_counts.source}: {token_counts.num_tokens} tokens, {int(seen.sum())} of "
            f"{len(seen)} types seen; alpha={self.args.pdl_alpha}, epsilon={self.args.pdl_epsilon}, "
            f"mix={self.args.pdl_mix}, {len(self._pdl_neutral_ids)} neutral tokens; weights "
            f"{weights.min().item():.3g}..{weights.max().item():.3g} of the mean"
        )

    @property
    def pdl_settings(self) -> dict:
        """What decides the PDL weights besides the counts; saved beside them (`pdl_settings.json`)."""
        return {
            "pdl_alpha": self.args.pdl_alpha,
            "pdl_epsilon": self.args.pdl_epsilon,
            "pdl_mix": self.args.pdl_mix,
            "neutral_token_ids": self._pdl_neutral_ids,
        }

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also takes the PDL weight sum of the whole optimizer step: every micro-batch, every process."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        weight_sum = torch.zeros((), device=self.pdl_weights.device)
        for batch in batch_samples:
            weight_sum += target_weights(self.pdl_weights, batch["labels"].to(self.pdl_weights.device)).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            weight_sum = self.accelerator.gather(weight_sum.to(device)).sum()
        self._pdl_step_weight_sum = weight_sum
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError(
                "PDLSFTTrainer computes the loss on the fused LM head and returns no logits. Leave "
                "`prediction_loss_only` unset (no `compute_metrics` / `preprocess_logits_for_metrics`)."
            )
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True

        outputs = model(**inputs, fused_lm_head=True)
        token_weights = target_weights(self.pdl_weights, inputs["labels"])
        if mode == "train":
            loss = power_law_decay_loss(outputs.log_probs, token_weights, self._pdl_step_weight_sum)
            # The weight sum covers every process and DDP averages gradients across processes
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        else:
            loss = power_law_decay_loss(outputs.log_probs, token_weights)
        if self.aux_loss_enabled:
            # A per-micro-batch mean, as in SFTTrainer: averaged over the accumulation steps in training
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps

        # SFTTrainer's metrics, then PDL's
        num_valid = self.accelerator.gather_for_metrics(outputs.label_mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(outputs.entropy.detach().sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(outputs.is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                num_tokens_in_batch = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            else:  # padding-free batches carry position_ids instead
                local_num_tokens = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                num_tokens_in_batch = self.accelerator.gather_for_metrics(local_num_tokens).sum().item()
            self._total_train_tokens += num_tokens_in_batch // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        neutral_weights = token_weights * target_weights(self.pdl_neutral_mask, inputs["labels"])
        sums = completion_sums(outputs.log_probs, token_weights, outputs.label_mask, neutral_weights)
        for key, value in completion_metrics(self.accelerator.gather_for_metrics(sums[None]).sum(0)).items():
            self._metrics[mode][key].append(value)
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Evaluates as SFTTrainer does; PDL's metrics take the prefix of their dataset (`eval_<name>_nll`)."""
        # Trainer calls this again for each dataset of a dict, with `eval_<name>` as prefix
        self._pdl_metric_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._pdl_metric_prefix = "eval"

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The fused LM head builds no logits: every prediction step is loss-only (`predict()` returns no predictions)
        return super().prediction_step(model, inputs, True, ignore_keys)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Predicts as SFTTrainer does, but loss-only: `predictions` and `label_ids` are None, since the fused LM head
        builds no logits. The metrics of these batches come back in the output instead of being left to the next
        `evaluate()`."""
        if not self.args.prediction_loss_only:
            warnings.warn(
                "PDLSFTTrainer.predict() returns the loss and metrics only (`predictions=None`): the fused LM head "
                "builds no logits. Generate with `model.generate` or `pdl-trl eval` for outputs; set "
                "`prediction_loss_only=True` to silence this.",
                UserWarning,
                stacklevel=2,
            )
        output = super().predict(test_dataset, ignore_keys, metric_key_prefix)
        metrics = self._metrics["eval"]
        output.metrics.update({f"{metric_key_prefix}_{key}": sum(v) / len(v) for key, v in metrics.items() if v})
        metrics.clear()
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self.model.training:
            metrics = self._metrics["eval"]
            for key in METRIC_KEYS:
                values = metrics.pop(key, None)
                if values:
                    logs[f"{self._pdl_metric_prefix}_{key}"] = sum(values) / len(values)
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model as SFTTrainer does, plus what the PDL table was built from: the counts
        (`pdl_counts.json`) and the settings (`pdl_settings.json`) of this run."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            directory = Path(output_dir or self.args.output_dir)
            self._pdl_token_counts.save(directory / COUNTS_FILE_NAME)
            settings = {"format": SETTINGS_FORMAT, "version": 1, **self.pdl_settings}
            write_text_atomically(directory / SETTINGS_FILE_NAME, json.dumps(settings, indent=2))

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card (with the PDL paper), plus the PDL settings of this run."""
        super().create_model_card(model_name, dataset_name, tags)
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "README.md"
        neutral = ", ".join(f"`{self._tokenizer.decode([i])!r}` ({i})" for i in self._pdl_neutral_ids) or "none"
        counts = self._pdl_token_counts
        section = textwrap.dedent(f"""

            ## PDL settings

            Trained with the Power-Law Decay Loss (pdl-trl's `PDLSFTTrainer`):
            `w(t) = 1 / (count(t) + pdl_epsilon) ^ pdl_alpha`, mixed with plain SFT by `pdl_mix`.

            | setting | value |
            |---|---|
            | `pdl_alpha` | {self.args.pdl_alpha} |
            | `pdl_epsilon` | {self.args.pdl_epsilon} |
            | `pdl_mix` | {self.args.pdl_mix} |
            | neutral tokens (mean weight) | {neutral} |
            | counts | {counts.source}: {counts.num_tokens} tokens, {int((counts.counts > 0).sum())} types |
            """)
        write_text_atomically(path, path.read_text(encoding="utf-8") + section)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trains as SFTTrainer does; resuming also restores the checkpoint's PDL counts, so the table is identical,
        and refuses PDL settings other than the checkpoint's."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint:
            if not os.path.isdir(checkpoint):
                raise FileNotFoundError(
                    f"No checkpoint folder at {checkpoint}. Pass a `checkpoint-N` folder of `output_dir`, or "
                    "`resume_from_checkpoint=True` for the last one."
                )
            counts_path = os.path.join(checkpoint, COUNTS_FILE_NAME)
            if not os.path.exists(counts_path):
                raise FileNotFoundError(
                    f"{checkpoint} has no {COUNTS_FILE_NAME}: it was not written by PDLSFTTrainer, so the PDL "
                    "table of that run is unknown. To start PDL from its weights, load them as the model."
                )
            token_counts = TokenCounts.load(counts_path)
            if not np.array_equal(token_counts.counts, self._pdl_token_counts.counts):
                logger.warning(
                    f"The counts saved in {checkpoint} differ from this run's ({self._pdl_token_counts.source}); "
                    "resuming with the checkpoint's, so the weights stay those the run started with."
                )
            self._set_pdl_table(token_counts)
            self._check_resume_settings(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_resume_settings(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, SETTINGS_FILE_NAME)
        if not os.path.exists(path):
            logger.warning(f"{checkpoint} has no {SETTINGS_FILE_NAME}: the PDL settings it trained with are unknown.")
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [
            f"{key} {saved.get(key)!r} there, {value!r} now"
            for key, value in self.pdl_settings.items()
            if saved.get(key) != value
        ]
        if changed:
            raise ValueError(
                f"{checkpoint} was trained with other PDL settings ({'; '.join(changed)}). Resume with the settings "
                "it started with, or start a new run from its weights."
            )
