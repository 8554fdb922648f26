"""TRL's own SFTTrainer scenarios as a differential suite: each is run with `trl.SFTTrainer` and with
`PDLSFTTrainer(pdl_alpha=0)`, which must train exactly alike.

At `pdl_alpha=0` every PDL weight is 1, so the loss, its gradients and every metric SFTTrainer logs must be those of
SFTTrainer: per logged step `loss`, `grad_norm`, `entropy`, `mean_token_accuracy`, `num_tokens`, `aux_loss` and every
`eval_*` key (to 1e-5 relative), and the final parameters (to 1e-6 absolute). Training is exact: plain SGD, constant
learning rate, no clipping, rows in order, dropout 0, float32 on CPU. The table PDL counts must also be exactly the
targets the loss sees: those of the collated training batches of one epoch.

The scenarios cover every dataset type SFTTrainer prepares, packing and padding-free, truncation, assistant-only loss,
tool calls, LoRA and 4-bit QLoRA, Mixture-of-Experts with the router loss, softcapped and logit-scaled heads,
evaluation with several datasets, gradient accumulation and 20 model families (`tests/tiny_models.py`). A scenario
that shows a defect of PDL is marked `xfail(strict=True)`, so that it fails once the defect is fixed.
"""

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pytest
import torch
from conftest import make_cpu_config
from datasets import Dataset
from helpers.tiny import conversational_dataset, make_rows, prompt_completion_dataset, text_dataset
from helpers.tiny_models import IMAGE_SIZE, save_causal_lm, save_llava, save_qwen2_5_vl
from helpers.trainers import table_counts
from PIL import Image
from test_trainer import EXACT_SGD, logged, max_abs_diff, parameters
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

from pdl_trl import PDLSFTTrainer, TokenCounts, compat, tokenizer_fingerprint


pytestmark = pytest.mark.sft_trainer

# Keys whose values are wall-clock measurements, different in every run
TIMING_SUFFIXES = ("_runtime", "_per_second")
QWEN2_5_TRAINING_TEMPLATE = str(resources.files("trl") / "chat_templates" / "qwen2_5_training.jinja")
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


# Datasets beyond tests/tiny.py


def conversational_prompt_completion_dataset(n: int = 8, seed: int = 0) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in make_rows(n, seed)
        ]
    )


def multi_turn_dataset(n: int = 8, seed: int = 0) -> Dataset:
    rows = make_rows(2 * n, seed)
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": first["prompt"]},
                    {"role": "assistant", "content": first["completion"]},
                    {"role": "user", "content": second["prompt"]},
                    {"role": "assistant", "content": second["completion"]},
                ]
            }
            for first, second in zip(rows[::2], rows[1::2], strict=True)
        ]
    )


def sharegpt_dataset(n: int = 8, seed: int = 0) -> Dataset:
    """`conversations` with `from`/`value` turns, which SFTTrainer converts to ChatML `messages`."""
    return Dataset.from_list(
        [
            {"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["completion"]}]}
            for r in make_rows(n, seed)
        ]
    )


def tool_call_dataset(n: int = 8, seed: int = 0) -> Dataset:
    """A tool call, its result and the answer; the tool's JSON schema in `tools`, a JSON string as on the Hub."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(0, 100, size=2))
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "name": "add", "content": str(a + b)},
                    {"role": "assistant", "content": f"The sum is {a + b}."},
                ],
                "tools": json.dumps([ADD_TOOL]),
            }
        )
    return Dataset.from_list(rows)


def pretokenized_dataset(model_dir: str, n: int = 8) -> Dataset:
    """`input_ids` with a `completion_mask`, as a user who tokenized beforehand passes them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for r in make_rows(n):
        prompt = tokenizer(r["prompt"])["input_ids"]
        completion = tokenizer(r["completion"] + tokenizer.eos_token)["input_ids"]
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    return Dataset.from_list(rows)


def pretokenized_labels_dataset(model_dir: str) -> Dataset:
    def to_labels(row):
        return {"labels": [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"], strict=True)]}

    return pretokenized_dataset(model_dir).map(to_labels, remove_columns=["completion_mask"])


def image_dataset(n: int = 8) -> Dataset:
    """Conversational prompt-completion rows, each with one plain-coloured image."""
    colours = {"red": (200, 10, 10), "green": (10, 200, 10), "blue": (10, 10, 200), "amber": (255, 191, 0)}
    names = list(colours)
    return Dataset.from_list(
        [
            {
                "images": [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colours[names[i % len(names)]])],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Its colour?"}]}],
                "completion": [
                    {"role": "assistant", "content": [{"type": "text", "text": f" It is {names[i % len(names)]}."}]}
                ],
            }
            for i in range(n)
        ]
    )


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def lora_on_lm_head_config():
    """LoRA with a full trainable copy of the LM head (`modules_to_save`), which the fused head reads through."""
    config = lora_config()
    config.modules_to_save = ["lm_head"]
    return config


def dora_config():
    config = lora_config()
    config.use_dora = True
    return config


def four_bit():
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    }


# The scenarios


@dataclass
class Scenario:
    """One SFTTrainer set-up. `train` and `eval` take the model folder; `config` goes to both configs, `pdl` to
    PDLSFTConfig only (e.g. `pdl_allow_unmasked_text`, which SFTTrainer does not know)."""

    train: Callable[[str], Dataset] = lambda model_dir: prompt_completion_dataset(8)
    family: str = "qwen2"
    config: dict = field(default_factory=dict)
    pdl: dict = field(default_factory=dict)
    eval: Callable[[str], Dataset | dict[str, Dataset]] | None = None
    peft: Callable | None = None
    trainer_kwargs: dict = field(default_factory=dict)
    # A dataset passed to `evaluate()` after training, prepared there as SFTTrainer does
    evaluate_after: Callable[[str], Dataset] | None = None
    # A counts file instead of counting the training set (an IterableDataset cannot be counted)
    counts_file: bool = False
    # `predict()` on the prepared eval dataset after training
    predict: bool = False
    # The model passed as an instance rather than a folder
    from_instance: bool = False
    # Loaded in 4-bit (bitsandbytes NF4); without evaluation, so SFTTrainer's run is exact too (see
    # `PDLSFTTrainer.__init__` on bitsandbytes' AVX512-BF16 repacking)
    quantized: bool = False


UNMASKED = {"pdl_allow_unmasked_text": True}
EVAL_STEPS = {"eval_strategy": "steps", "eval_steps": 1}
ASSISTANT_ONLY = {"assistant_only_loss": True}
PACKED = {"packing": True, "max_length": 64, "per_device_train_batch_size": 2}
GRADIENT_ACCUMULATION = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}


def case(
    name: str,
    scenario: Scenario,
    defect: str | None = None,
    raises: type[Exception] = AssertionError,
    before_trl_1_15: str | None = None,
):
    """A table entry, its id `name-family`. `defect` marks a scenario PDL gets wrong today: it must fail with
    `raises`, and fails the suite once fixed (strict xfail). `before_trl_1_15` marks one where SFTTrainer of TRL 1.14
    trains otherwise than later releases (and PDL)."""
    marks = [pytest.mark.xfail(strict=True, raises=raises, reason=f"defect: {defect}")] if defect else []
    if before_trl_1_15:
        reason = f"TRL < 1.15: {before_trl_1_15}"
        before = not compat.TRL_AT_LEAST_1_15
        marks.append(pytest.mark.xfail(before, strict=True, raises=AssertionError, reason=reason))
    return pytest.param(scenario, id=f"{name}-{scenario.family}", marks=marks)


# Each model family appears at least once, most of them beside a feature
SCENARIOS = [
    # Dataset types
    case("lm_text", Scenario(lambda d: text_dataset(8), family="llama", pdl=UNMASKED)),
    case(
        "lm_text_custom_field",
        Scenario(
            lambda d: text_dataset(8).rename_column("text", "content"),
            config={"dataset_text_field": "content"},
            pdl=UNMASKED,
        ),
    ),
    case("prompt_completion", Scenario()),
    case(
        "prompt_completion_full_loss",
        Scenario(family="gpt_neox", config={"completion_only_loss": False}, pdl=UNMASKED),
    ),
    case(
        "conversational_prompt_completion",
        Scenario(lambda d: conversational_prompt_completion_dataset(8), family="qwen3"),
    ),
    case("conversational_messages", Scenario(lambda d: conversational_dataset(8), pdl=UNMASKED)),
    case(
        "assistant_only_loss", Scenario(lambda d: conversational_dataset(8), family="mistral", config=ASSISTANT_ONLY)
    ),
    case("assistant_only_multi_turn", Scenario(lambda d: multi_turn_dataset(8), config=ASSISTANT_ONLY)),
    case(
        "tool_calls_assistant_only",
        Scenario(
            lambda d: tool_call_dataset(8), config={**ASSISTANT_ONLY, "chat_template_path": QWEN2_5_TRAINING_TEMPLATE}
        ),
    ),
    # SFTTrainer refuses `assistant_only_loss` here: it checks the format before converting to ChatML
    case("sharegpt_conversations", Scenario(lambda d: sharegpt_dataset(8), pdl=UNMASKED)),
    case(
        "formatting_func",
        Scenario(
            trainer_kwargs={"formatting_func": lambda row: f"Q: {row['prompt']} A:{row['completion']}"},
            config={"completion_only_loss": False},
            pdl=UNMASKED,
        ),
    ),
    case("pretokenized_completion_mask", Scenario(pretokenized_dataset, config={"completion_only_loss": True})),
    case(
        "pretokenized_labels_skip_prepare",
        Scenario(pretokenized_labels_dataset, config={"dataset_kwargs": {"skip_prepare_dataset": True}}),
    ),
    case(
        "iterable_dataset_with_counts_file",
        Scenario(lambda d: prompt_completion_dataset(8).to_iterable_dataset(), counts_file=True),
    ),
    # A chat template cloned from another tokenizer folder: tokens added, embeddings resized to a multiple of 64
    case(
        "chat_template_cloned",
        Scenario(lambda d: conversational_prompt_completion_dataset(8), config={"chat_template_path": "llava"}),
    ),
    # Truncation
    case("truncation_keep_start", Scenario(family="starcoder2", config={"max_length": 9})),
    case("truncation_keep_end_keeps_prompt", Scenario(config={"max_length": 12, "truncation_mode": "keep_end"})),
    case(
        "truncation_keep_end_completion_only",
        Scenario(config={"max_length": 4, "truncation_mode": "keep_end"}),
    ),
    # Packing and padding-free
    case("packing_bfd", Scenario(family="gemma", config=PACKED)),
    case("packing_bfd_split", Scenario(config={**PACKED, "packing_strategy": "bfd_split", "max_length": 12})),
    case("packing_wrapped", Scenario(config={**PACKED, "packing_strategy": "wrapped", "max_length": 16})),
    case("packing_assistant_only", Scenario(lambda d: conversational_dataset(8), config={**PACKED, **ASSISTANT_ONLY})),
    case(
        "packing_with_packed_eval",
        Scenario(config={**PACKED, **EVAL_STEPS}, eval=lambda d: prompt_completion_dataset(4, seed=1)),
    ),
    case(
        "packing_with_padded_eval",
        Scenario(
            config={**PACKED, **EVAL_STEPS, "eval_packing": False}, eval=lambda d: prompt_completion_dataset(4, seed=1)
        ),
    ),
    case(
        "padding_free_with_eval",
        Scenario(
            family="gemma3",
            config={"padding_free": True, "max_length": None, **EVAL_STEPS},
            eval=lambda d: prompt_completion_dataset(4, seed=1),
        ),
    ),
    case("pad_to_multiple_of", Scenario(config={"pad_to_multiple_of": 8})),
    # Gradient accumulation
    case("gradient_accumulation", Scenario(family="phi3", config=GRADIENT_ACCUMULATION)),
    case(
        "gradient_accumulation_padding_free",
        Scenario(config={**GRADIENT_ACCUMULATION, "padding_free": True, "max_length": None}),
    ),
    case(
        "gradient_accumulation_packing",
        Scenario(config={**PACKED, **GRADIENT_ACCUMULATION, "max_length": 24, "per_device_train_batch_size": 1}),
    ),
    # Evaluation
    case(
        "eval_during_training",
        Scenario(family="phi", config=EVAL_STEPS, eval=lambda d: prompt_completion_dataset(6, seed=1)),
    ),
    case(
        "eval_dict_of_datasets",
        Scenario(
            config=EVAL_STEPS,
            eval=lambda d: {
                "strings": prompt_completion_dataset(4, seed=1),
                "chat": conversational_prompt_completion_dataset(6, seed=2),
            },
        ),
    ),
    case(
        "evaluate_fresh_dataset_after_training",
        Scenario(evaluate_after=lambda d: conversational_prompt_completion_dataset(6, seed=3)),
    ),
    case(
        "predict_loss_only",
        Scenario(
            eval=lambda d: prompt_completion_dataset(4, seed=1), predict=True, config={"prediction_loss_only": True}
        ),
    ),
    case(
        "predict",
        Scenario(eval=lambda d: prompt_completion_dataset(4, seed=1), predict=True),
    ),
    # PEFT
    case("lora", Scenario(family="olmo2", peft=lora_config)),
    case(
        "lora_assistant_only", Scenario(lambda d: conversational_dataset(8), config=ASSISTANT_ONLY, peft=lora_config)
    ),
    case("lora_lm_head_modules_to_save", Scenario(peft=lora_on_lm_head_config)),
    case("dora", Scenario(peft=dora_config)),
    case("qlora_4bit", Scenario(family="llama", peft=lora_config, quantized=True)),
    # Mixture of Experts: the router's load-balancing loss is added to the training loss
    case("moe_aux_loss", Scenario(family="mixtral")),
    case(
        "moe_aux_loss_gradient_accumulation",
        Scenario(family="qwen2_moe", config=GRADIENT_ACCUMULATION),
        before_trl_1_15="SFTTrainer adds the whole aux loss of every micro-batch, not its mean over the step",
    ),
    case("moe_coef_override", Scenario(family="qwen3_moe", config={"router_aux_loss_coef": 0.5})),
    case("moe_coef_zero_disables_aux_loss", Scenario(family="mixtral", config={"router_aux_loss_coef": 0.0})),
    case("moe_padding_free", Scenario(family="olmoe", config={"padding_free": True, "max_length": None})),
    case("moe_lora", Scenario(family="qwen3_moe", peft=lora_config)),
    case(
        "moe_eval_aux_loss",
        Scenario(family="qwen3_moe", config=EVAL_STEPS, eval=lambda d: prompt_completion_dataset(4, seed=1)),
    ),
    # Softcapped and scaled output logits
    case("final_logit_softcapping", Scenario(family="gemma2")),
    case("logit_scale", Scenario(family="cohere")),
    case(
        "logits_scaling",
        Scenario(family="granite"),
        before_trl_1_15="the `chunked_nll` head of SFTTrainer ignores Granite's `logits_scaling`",
    ),
    # `accepts_loss_kwargs = False`: Trainer passes no `num_items_in_batch`. One micro-batch per step here; see
    # test_gradient_accumulation_without_loss_kwargs for accumulation
    case("vision_language_model_on_text", Scenario(family="qwen2_5_vl")),
    # Other SFTConfig options
    case("model_instance", Scenario(family="mistral", from_instance=True)),
    case("bf16_weights", Scenario(config={"model_init_kwargs": {"dtype": "bfloat16"}})),
    case("gradient_checkpointing", Scenario(config={"gradient_checkpointing": True})),
    case("neftune", Scenario(config={"neftune_noise_alpha": 5.0})),
    case("eos_token_override", Scenario(config={"eos_token": "<|endoftext|>"})),
    case("shuffle_dataset", Scenario(config={"shuffle_dataset": True})),
    # 8 rows in batches of 3: short last batches, two epochs
    case(
        "two_epochs_partial_batches",
        Scenario(config={"max_steps": -1, "num_train_epochs": 2, "per_device_train_batch_size": 3}),
    ),
    case(
        "loss_type_chunked_nll",
        Scenario(config={"loss_type": "chunked_nll"}),
    ),
]


# Running a scenario with both trainers


@pytest.fixture(scope="module", autouse=True)
def frozen_imports():
    """accelerate calls `gc.collect()` at the end of every `train()`; with the libraries' objects frozen out of the
    collector it takes milliseconds instead of a third of a second. Collection itself is unchanged."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """`model_dirs(family)`: the folder of that family's tiny model (or "llava", "qwen2_5_vl"), built once."""
    saved = {}

    def get(family: str) -> str:
        if family not in saved:
            directory = tmp_path_factory.mktemp(family)
            if family == "llava":
                save_llava(directory)
            elif family == "qwen2_5_vl":
                save_qwen2_5_vl(directory)
            else:
                save_causal_lm(family, directory)
            saved[family] = str(directory)
        return saved[family]

    return get


def save_uniform_counts(model_dir: str, path) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = AutoConfig.from_pretrained(model_dir).get_text_config().vocab_size
    TokenCounts(np.ones(rows, dtype=np.int64), model_dir, tokenizer_fingerprint(tokenizer), "test").save(path)
    return str(path)


def make_trainer(trainer_class, config_class, scenario: Scenario, model_dirs, train_dataset, output_dir, **extra):
    model_dir = model_dirs(scenario.family)
    config = {**EXACT_SGD, **scenario.config, **extra}
    if scenario.quantized:
        config["model_init_kwargs"] = four_bit()
    kwargs = dict(scenario.trainer_kwargs)
    if scenario.eval is not None:
        kwargs["eval_dataset"] = scenario.eval(model_dir)
    if scenario.peft is not None:
        kwargs["peft_config"] = scenario.peft()
    if config.get("chat_template_path") == "llava":  # the tokenizer to clone the template from
        config["chat_template_path"] = model_dirs("llava")
    model = model_dir
    if scenario.from_instance:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    if scenario.from_instance or scenario.family == "qwen2_5_vl":  # its processor needs torchvision: text only here
        kwargs["processing_class"] = AutoTokenizer.from_pretrained(model_dir)
    args = make_cpu_config(output_dir, config_class, **config)
    # As SFTTrainer does since TRL 1.15, before the PEFT adapter and resized embeddings are drawn at random
    set_seed(args.seed)
    return trainer_class(model, args=args, train_dataset=train_dataset, **kwargs)


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if not key.endswith(TIMING_SUFFIXES)}


def assert_same_metrics(expected: dict, actual: dict, where: str) -> None:
    """Every key SFTTrainer logged, with the same value; PDL's extra keys (`nll`, `pdl_*`) are not compared."""
    for key, value in without_timings(expected).items():
        assert key in actual, f"{where}: PDL did not log {key!r}"
        assert actual[key] == pytest.approx(value, rel=1e-5, abs=1e-8), f"{where}: {key}"


def assert_same_training(sft, pdl) -> None:
    assert len(pdl.state.log_history) == len(sft.state.log_history)
    for index, (expected, actual) in enumerate(zip(sft.state.log_history, pdl.state.log_history, strict=True)):
        assert_same_metrics(expected, actual, f"log entry {index} (step {expected['step']})")
    assert max_abs_diff(parameters(pdl.model), parameters(sft.model)) < 1e-6


def collated_target_counts(trainer) -> torch.Tensor:
    """How often each token is a target of the loss over one epoch of collated training batches."""
    rows = trainer.model.get_output_embeddings().weight.shape[0]
    counts = torch.zeros(rows, dtype=torch.int64)
    for batch in trainer.get_train_dataloader():
        targets = batch["labels"][:, 1:]
        counts += torch.bincount(targets[targets != -100].flatten().cpu(), minlength=rows)
    return counts


def run_both(scenario: Scenario, model_dirs, tmp_path):
    """Trains the scenario with SFTTrainer and with PDLSFTTrainer(pdl_alpha=0); returns both trainers."""
    model_dir = model_dirs(scenario.family)
    train_dataset = scenario.train(model_dir)
    sft = make_trainer(SFTTrainer, SFTConfig, scenario, model_dirs, train_dataset, tmp_path / "sft")
    before = parameters(sft.model)
    sft.train()
    assert logged(sft, "loss"), "SFTTrainer logged no training step"
    assert max_abs_diff(parameters(sft.model), before) > 1e-5, "the scenario trains nothing"

    pdl_extra = {"pdl_alpha": 0.0, **scenario.pdl}
    if scenario.counts_file:
        pdl_extra["pdl_counts_path"] = save_uniform_counts(model_dir, tmp_path / "counts.json")
    pdl = make_trainer(PDLSFTTrainer, None, scenario, model_dirs, train_dataset, tmp_path / "pdl", **pdl_extra)
    pdl.train()
    return sft, pdl


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_trains_like_sft_trainer(scenario: Scenario, model_dirs, tmp_path):
    sft, pdl = run_both(scenario, model_dirs, tmp_path)
    assert_same_training(sft, pdl)
    if not scenario.counts_file:
        assert torch.equal(table_counts(pdl), collated_target_counts(pdl))
    if scenario.evaluate_after is not None:
        dataset = scenario.evaluate_after(model_dirs(scenario.family))
        assert_same_metrics(sft.evaluate(eval_dataset=dataset), pdl.evaluate(eval_dataset=dataset), "evaluate()")
    if scenario.predict:
        expected = sft.predict(sft.eval_dataset).metrics
        assert_same_metrics(expected, pdl.predict(pdl.eval_dataset).metrics, "predict()")


# Beyond the table


def test_image_dataset_trains_like_sft_trainer_or_is_refused_as_such(model_dirs, tmp_path):
    """A tiny LLaVA on images: SFTTrainer leaves the rows raw and its vision collator tokenizes them per batch. PDL
    must either train alike (counting what the collator trains) or refuse, naming images, not a setting the user
    never made."""
    scenario = Scenario(lambda d: image_dataset(8), family="llava", config={"max_length": None})
    try:
        sft, pdl = run_both(scenario, model_dirs, tmp_path)
    except ValueError as error:
        if "skip_prepare_dataset" in str(error) or not any(word in str(error) for word in ("image", "vision")):
            raise
        return
    assert_same_training(sft, pdl)
    assert torch.equal(table_counts(pdl), collated_target_counts(pdl))


def uneven_micro_batches() -> Dataset:
    """Two short completions, then two long ones: micro-batches of 2 rows hold very different token counts."""
    long_completion = " The owl is teal and small, the fox is amber and the yak is crimson."
    return Dataset.from_list(
        [
            {"prompt": "What is 3 plus 4?", "completion": " 7."},
            {"prompt": "What is 5 plus 1?", "completion": " 6."},
            {"prompt": "Describe the owl.", "completion": long_completion},
            {"prompt": "Describe the fox.", "completion": long_completion},
        ]
    )


def test_gradient_accumulation_without_loss_kwargs(model_dirs, tmp_path):
    """A model with `accepts_loss_kwargs = False` (Qwen2.5-VL) gets no `num_items_in_batch` from Trainer, so under
    gradient accumulation SFTTrainer averages the micro-batch means, while PDL divides by the token (weight) count
    of the whole step, as SFTTrainer does for every other model. Measured here, one step of 2 x 2 rows."""
    rows = uneven_micro_batches()

    def run(trainer_class, config_class, batch_size, accumulation, **extra):
        config = {"per_device_train_batch_size": batch_size, "gradient_accumulation_steps": accumulation, **extra}
        scenario = Scenario(family="qwen2_5_vl", config={"max_steps": 1, **config})
        output_dir = tmp_path / f"{trainer_class.__name__}-{batch_size}x{accumulation}"
        trainer = make_trainer(trainer_class, config_class, scenario, model_dirs, rows, output_dir)
        trainer.train()
        return trainer

    full_batch = run(SFTTrainer, SFTConfig, 4, 1)
    assert full_batch.model_accepts_loss_kwargs is False
    # The mean of each micro-batch: two steps of 2 rows at learning rate 0
    micro_means = logged(run(SFTTrainer, SFTConfig, 2, 1, max_steps=2, learning_rate=0.0), "loss")
    sft = run(SFTTrainer, SFTConfig, 2, 2)
    pdl = run(PDLSFTTrainer, None, 2, 2, pdl_alpha=0.0)

    (full_loss,) = logged(full_batch, "loss")
    (sft_loss,) = logged(sft, "loss")
    (pdl_loss,) = logged(pdl, "loss")
    assert sft_loss == pytest.approx(sum(micro_means) / 2, rel=1e-5)
    assert abs(sft_loss - full_loss) > 1e-3
    assert pdl_loss == pytest.approx(full_loss, rel=1e-5)
    assert max_abs_diff(parameters(pdl.model), parameters(full_batch.model)) < 1e-6
    assert max_abs_diff(parameters(sft.model), parameters(full_batch.model)) > 1e-5
