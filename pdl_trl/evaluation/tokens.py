"""
From texts to token ids, the step shared by generation and scoring: prompts, completions and references become
token ids as TRL's SFTTrainer builds them for prompt-completion data, and texts become the ids the metrics count.

Token ids of a text are always `tokenizer(text, add_special_tokens=False)["input_ids"]` with the tokenizer's special
tokens removed, for generations and references alike. Generations are decoded with `skip_special_tokens=True` before
they are re-encoded, so scoring a generations file gives the same numbers as the run that generated it.
"""

from collections.abc import Sequence


def text_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the metrics see them: no added BOS/EOS, special tokens removed."""
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[t for t in ids if t not in special] for ids in encoded]


def _is_conversational(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def completion_text(completion: str | list[dict]) -> str:
    """The reference text of a completion: the string itself, or the contents of its messages joined by newlines."""
    if isinstance(completion, str):
        return completion
    if _is_conversational(completion):
        return "\n".join(message["content"] for message in completion)
    raise ValueError(
        f"A completion must be a string or a list of messages with `role` and `content`, got {completion!r}."
    )


def prompt_token_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """
    Prompt tokens as TRL's SFTTrainer builds them for prompt-completion data, so that evaluation conditions on the
    context the model was trained on: the chat template with the generation prompt for a conversational prompt,
    the tokenizer's plain encoding (with its own special tokens, e.g. BOS) for a string.
    """
    if isinstance(prompt, str):
        return tokenizer(text=prompt)["input_ids"]
    if _is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, add_generation_prompt=True)[
            "input_ids"
        ]
    raise ValueError(f"A prompt must be a string or a list of messages with `role` and `content`, got {prompt!r}.")


def reference_token_ids(tokenizer, prompt: str | list[dict], completion: str | list[dict]) -> tuple[list[int], int]:
    """
    `(prompt + completion ids, completion start)` as TRL's SFTTrainer tokenizes a prompt-completion example: the
    chat template over prompt + completion messages, or the two strings joined with the EOS token appended; the
    completion starts where the tokenized prompt and the whole diverge. The completion tokens are the ones the
    training loss (and its `nll` metric) scores.
    """
    from pdl_trl.compat import completion_start

    prompt_ids = prompt_token_ids(tokenizer, prompt)
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        ids = tokenizer(text=prompt + completion)["input_ids"]
    elif _is_conversational(prompt) and _is_conversational(completion):
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    else:
        raise ValueError(
            "Prompt and completion must be both strings or both lists of messages, as in TRL's prompt-completion "
            f"format; got {type(prompt).__name__} and {type(completion).__name__}."
        )
    return ids, completion_start(prompt_ids, ids)
