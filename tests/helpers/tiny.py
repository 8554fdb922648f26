"""Offline test assets built in-process: a small BPE tokenizer with a ChatML training template, a tiny Qwen2 model,
and deterministic prompt-completion and conversational datasets."""

import random
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML; assistant content inside {% generation %} so that `assistant_only_loss=True` works.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "crimson", "ochre"]
ANIMALS = ["cat", "dog", "owl", "fox", "yak", "eel", "bat", "elk"]


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt-completion rows whose completions share frequent words and contain rare ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        colour, animal = rng.choice(COLOURS), rng.choice(ANIMALS)
        if i % 2:
            rows.append({"prompt": f"What is {a} plus {b}?", "completion": f" The sum is {a + b}."})
        else:
            rows.append({"prompt": f"Describe the {animal}.", "completion": f" The {animal} is {colour} and small."})
    return rows


def prompt_completion_dataset(n: int = 32, seed: int = 0) -> Dataset:
    return Dataset.from_list(make_rows(n, seed))


def conversational_dataset(n: int = 32, seed: int = 0) -> Dataset:
    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in make_rows(n, seed)
        ]
    )


def text_dataset(n: int = 32, seed: int = 0) -> Dataset:
    return Dataset.from_list([{"text": r["prompt"] + r["completion"]} for r in make_rows(n, seed)])


def build_tokenizer() -> PreTrainedTokenizerFast:
    texts = [r["prompt"] + r["completion"] for r in make_rows(2000, seed=1)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|pad|>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer: PreTrainedTokenizerFast, vocab_size: int | None = None) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def save_tiny_model(directory: Path) -> Path:
    """Tokenizer and tiny model saved together, as `from_pretrained` and the CLI expect. The output embedding has
    more rows than the tokenizer has tokens, as real checkpoints padded to a multiple of 64 do."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, vocab_size=len(tokenizer) + 24)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def count_targets_by_hand(dataset, vocab_size: int) -> list[int]:
    """Plain-Python count of training targets, independent of `pdl_trl.frequency`: row by row (so any indices
    mapping left by filter/shuffle is honoured), every label that is not -100 except the first position of each
    sequence, or of each packed sub-sequence when the row has `seq_lengths`."""
    counts = [0] * vocab_size
    for row in dataset:
        labels = list(row["labels"])
        lengths = list(row["seq_lengths"]) if "seq_lengths" in row else [len(labels)]
        start = 0
        for length in lengths:
            for label in labels[start + 1 : start + length]:
                if label != -100:
                    counts[label] += 1
            start += length
    return counts
