"""
The model step of evaluation: loading a model (and adapter), generating completions for prompts, and the reference
NLL of completions given their prompts. The only module of `pdl_trl.evaluation` that runs a model.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pdl_trl.evaluation.metrics import mean_token_nll
from pdl_trl.evaluation.tokens import prompt_token_ids, reference_token_ids


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(model_name_or_path: str, adapter: str | None, device: str, dtype: torch.dtype):
    """The base model in `dtype` on `device`, with the PEFT `adapter` folder loaded on it when given, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval()


def merge_lora_for_inference(model):
    """
    `model` with its LoRA adapter merged into the base weights (PEFT's `merge_and_unload`, in place) when the base is
    float32: one matmul per layer instead of three, for the same greedy generations (tested). A quantized or
    half-precision base is returned as it is, because merging there rounds the weights. The merged model is no longer
    a PEFT model: save the adapter before.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel) and all(p.dtype == torch.float32 for p in model.parameters()):
        return model.merge_and_unload()
    return model


def _progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _eos_token_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    if not eos:
        raise ValueError("Neither the model's generation config nor the tokenizer names an EOS token: set one.")
    return eos


class Generation(NamedTuple):
    """
    A completion as [`generate_completions`] returns it.

    Attributes:
        text (`str`): decoded without special tokens, up to the EOS token.
        terminated (`bool`): whether the model ended it with an EOS token before the token limit.
    """

    text: str
    terminated: bool


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    show_progress: bool = True,
) -> list[Generation]:
    """
    Completions for `prompts`, in order: left-padded batches, stopped at EOS, decoded without special tokens, each
    with whether it ended with an EOS token within `max_new_tokens` (`terminated`) or ran into the limit.

    Greedy by default. Prompts are batched longest first to waste little padding; with sampling, the seed is set once
    before the first batch, so results depend on `seed`, `batch_size` and the prompt set together.
    """
    from transformers import set_seed

    set_seed(seed)
    eos_ids = _eos_token_ids(model, tokenizer)
    # Padded positions are masked out, so any id works; the tokenizer's pad token, else EOS as HF generate does
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.get_input_embeddings().weight.device
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    if not do_sample:
        # Unset the checkpoint's sampling defaults so that greedy decoding does not warn about ignored values
        sampling.update(temperature=None, top_p=None, top_k=None)
    outputs: dict[int, Generation] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in _progress(batches, len(batches), "generating") if show_progress else batches:
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention_mask[row, width - len(encoded[i]) :] = 1
            with torch.no_grad():
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sampling,
                )
            for row, i in enumerate(batch):
                new = generated[row, width:].tolist()
                # `generate` pads a row that ended before the others; its first EOS is where it ended
                end = next((k for k, t in enumerate(new) if t in eos_ids), None)
                text = tokenizer.decode(new[:end], skip_special_tokens=True)
                outputs[i] = Generation(text, terminated=end is not None)
    finally:
        model.train(was_training)
    return [outputs[i] for i in range(len(encoded))]


def reference_nll_sums(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    completions: Sequence[str | list[dict]],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
) -> list[tuple[float, int]]:
    """
    `(NLL sum in nats, number of tokens)` of each reference completion given its prompt, in order. Tokens are those
    the training loss scores ([`reference_token_ids`]), EOS and template tokens included.
    """
    examples = [reference_token_ids(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    device = model.get_input_embeddings().weight.device
    # Right padding is masked and never a label, so its id is irrelevant
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums = []
    was_training = model.training
    model.eval()
    try:
        for batch in _progress(batches, len(batches), "reference NLL") if show_progress else batches:
            width = max(len(ids) for ids, _ in batch)
            # Right padding: positions stay those of an unpadded sequence
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                labels[row, start : len(ids)] = torch.tensor(ids[start:])
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            labels = labels.to(logits.device)
            sums += [token_nll_sum(logits[row : row + 1, :-1], labels[row : row + 1, 1:]) for row in range(len(batch))]
    finally:
        model.train(was_training)
    return sums


def reference_nll(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    completions: Sequence[str | list[dict]],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
) -> float:
    """
    Mean NLL in nats per reference completion token given its prompt, pooled over all examples (token-weighted), from
    [`reference_nll_sums`]. For unpacked, untruncated data it equals SFT's logged `nll` on the same examples.
    """
    sums = reference_nll_sums(
        model, tokenizer, prompts, completions, batch_size=batch_size, show_progress=show_progress
    )
    return mean_token_nll(sums)


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """
    Sum of `-log softmax(logits)[label]` (nats) over positions whose label is not -100, and the number of them.

    Args:
        logits (`torch.Tensor` of shape `(batch, seq_len, vocab)`): already aligned with `labels` (shifted).
        labels (`torch.Tensor` of shape `(batch, seq_len)`): target ids, -100 where not scored.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return float(nll), int((labels != -100).sum())
