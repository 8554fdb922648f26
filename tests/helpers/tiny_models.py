"""Tiny random-init models of many families, built offline with the tokenizer of `tests/tiny.py`.

Every family shares the same few dimensions (hidden 16, 2 layers, 4 heads, 2 key-value heads) so that one training
step takes milliseconds, and keeps what makes it distinct: Gemma-2's final logit softcapping, Cohere's `logit_scale`,
Granite's `logits_scaling` and multipliers, the router of the Mixture-of-Experts families. Dropouts are 0 so that two
runs compute the same thing. Also a tiny LLaVA (CLIP vision tower, Llama text model) with a processor whose image
processor is built from defaults, and a tiny Qwen2.5-VL, a model whose `accepts_loss_kwargs` is False.
"""

from pathlib import Path

import torch
import transformers

from helpers.tiny import build_tokenizer


HIDDEN = 16
COMMON = {
    "hidden_size": HIDDEN,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
HEAD_DIM = {"head_dim": HIDDEN // 4}
MOE = {"num_experts_per_tok": 2, "output_router_logits": True, "router_aux_loss_coef": 0.1}

# Causal LM families: config class and what differs from COMMON. Softcapping and logit scales are set far from 1 so
# that they change the loss by much more than the tolerance of the comparisons.
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", HEAD_DIM),
    "mistral": ("MistralConfig", HEAD_DIM),
    "gemma": ("GemmaConfig", HEAD_DIM),
    "gemma2": ("Gemma2Config", {**HEAD_DIM, "final_logit_softcapping": 0.5, "query_pre_attn_scalar": 4}),
    "gemma3": ("Gemma3TextConfig", {**HEAD_DIM, "query_pre_attn_scalar": 4}),
    "phi3": ("Phi3Config", {"resid_pdrop": 0.0, "embd_pdrop": 0.0}),
    "phi": ("PhiConfig", {"resid_pdrop": 0.0, "embd_pdrop": 0.0}),
    "olmo2": ("Olmo2Config", {}),
    "starcoder2": ("Starcoder2Config", {"residual_dropout": 0.0, "embedding_dropout": 0.0}),
    "gpt_neox": ("GPTNeoXConfig", {"hidden_dropout": 0.0, "num_key_value_heads": None}),
    "cohere": ("CohereConfig", {"logit_scale": 4.0}),
    "granite": ("GraniteConfig", {"logits_scaling": 0.25, "embedding_multiplier": 2.0, "residual_multiplier": 0.5}),
    "mixtral": ("MixtralConfig", {**HEAD_DIM, **MOE, "num_local_experts": 4}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {**MOE, "num_experts": 4, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16},
    ),
    "qwen3_moe": ("Qwen3MoeConfig", {**HEAD_DIM, **MOE, "num_experts": 4, "moe_intermediate_size": 16}),
    "olmoe": ("OlmoeConfig", {**MOE, "num_experts": 4}),
}

# Chat template of a LLaVA processor: images as `<image>` placeholders, which the processor expands
VISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IMAGE_SIZE = 28


def causal_lm_config(family: str, tokenizer) -> transformers.PretrainedConfig:
    class_name, overrides = FAMILIES[family]
    # `None` drops a COMMON key the family does not take
    settings = {k: v for k, v in {**COMMON, **overrides}.items() if v is not None}
    return getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **settings,
    )


def _save(model, processing_class, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    processing_class.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def save_causal_lm(family: str, directory: Path) -> Path:
    """Tokenizer and a random-init model of `family` (a key of `FAMILIES`), saved together."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(causal_lm_config(family, tokenizer))
    return _save(model, tokenizer, directory)


def save_llava(directory: Path) -> Path:
    """A LLaVA processor (CLIP image processor at 28x28, `<image>` token), a tiny `LlavaForConditionalGeneration`."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
        chat_template=VISION_CHAT_TEMPLATE,
    )
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=14,
            projection_dim=HIDDEN,
        ),
        text_config=transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **COMMON,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return _save(transformers.LlavaForConditionalGeneration(config), processor, directory)


def save_qwen2_5_vl(directory: Path) -> Path:
    """The tiny tokenizer and a tiny `Qwen2_5_VLForConditionalGeneration` (`accepts_loss_kwargs = False`), trained
    here on text only: its processor needs torchvision, which the test environment does not have."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]}
    )
    token_id = tokenizer.convert_tokens_to_ids
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 0]},
            **COMMON,
        },
        vision_config={
            "depth": 1,
            "hidden_size": HIDDEN,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [0],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(0)
    return _save(transformers.Qwen2_5_VLForConditionalGeneration(config), tokenizer, directory)
