"""`pdl-trl eval` end to end on the tiny model (generation, reference NLL, rescoring), and `pdl-trl compare`."""

import json
import math

import numpy as np
import pytest
import torch

from pdl_trl import TokenCounts, tokenizer_fingerprint
from pdl_trl.evaluation import (
    Generation,
    default_labels,
    generate_completions,
    markdown_table,
    mean_token_nll,
    reference_nll,
    reference_nll_sums,
    termination_rate,
    text_token_ids,
)
from pdl_trl.scripts.compare import main as compare_main
from pdl_trl.scripts.eval import main as eval_main


# ---------------------------------------------------------------------------------------------------------------------
# `pdl-trl eval` end to end on the tiny tokenizer and model
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_counts(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A counts file over the model's output rows: the tokens of a few hand-picked completions."""
    texts = [" The cat is red and small.", " The sum is green.", " The dog is red."]
    counts = np.zeros(len(tiny_tokenizer) + 24, dtype=np.int64)
    for ids in text_token_ids(tiny_tokenizer, texts):
        np.add.at(counts, ids, 1)
    path = tmp_path / "counts.json"
    TokenCounts(counts, str(tiny_model_dir), tokenizer_fingerprint(tiny_tokenizer), "test").save(path)
    return path, counts


def test_eval_scores_generations_file(tiny_model_dir, tiny_tokenizer, tiny_counts, tmp_path):
    counts_path, counts = tiny_counts
    rows = [
        {"prompt": "Describe the cat.", "generation": " The cat is red and small.", "reference": " The cat is red."},
        {"prompt": "What is 5 plus 7?", "generation": " The cat is blue.", "reference": " The sum is green."},
    ]
    generations_path = tmp_path / "gens.jsonl"
    generations_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out" / "metrics.json"
    # The tiny tokenizer splits these texts into words: " The", " cat", ..., ".". Counts (N = 17): The 3, is 3, . 3,
    # red 2, cat/and/small/sum/green/dog 1, blue 0. Mass 0.4 * 17 = 6.8 covers the six count-1 words (6), not the
    # count-2 one (6 + 2 = 8): rare = count <= 1.
    eval_main(
        [
            "--tokenizer",
            str(tiny_model_dir),
            "--generations",
            str(generations_path),
            "--pdl_counts_path",
            str(counts_path),
        ]
        + ["--rare_mass", "0.4", "--metrics_output", str(output)]
    )

    content = json.loads(output.read_text())
    assert content["format"] == "pdl-trl-eval"
    assert content["details"]["rare_count_threshold"] == 1
    assert content["details"]["num_examples"] == 2
    metrics = content["metrics"]
    # No model given: no reference NLL; the rest in the documented order. The rows say nothing of termination:
    # n/a (null), not a guess from the text
    assert list(metrics) == [
        "termination_rate",
        "mean_generation_length",
        "distinct_1",
        "distinct_2",
        "unigram_entropy",
        "mean_self_information",
        "rare_token_rate",
        "rare_token_recall",
        "rouge_l",
        "chrf",
    ]
    assert metrics["termination_rate"] is None
    # Generations: [The cat is red and small .] (7) and [The cat is blue .] (5)
    assert metrics["mean_generation_length"] == 6.0
    assert metrics["distinct_1"] == 8 / 12
    # Bigrams: 6 + 4, of which "The cat" and "cat is" repeat
    assert metrics["distinct_2"] == 8 / 10
    # Four types twice (The cat is .), four once (red and small blue)
    assert metrics["unigram_entropy"] == pytest.approx(4 * (2 / 12) * math.log2(6) + 4 * (1 / 12) * math.log2(12))
    # -log2((c + 1) / (N + V)) averaged: sum of log2(c + 1) over the 12 tokens is 16 + log2(3)
    vocab = len(counts)
    expected_info = math.log2(17 + vocab) - (16 + math.log2(3)) / 12
    assert metrics["mean_self_information"] == pytest.approx(expected_info, abs=1e-12)
    # Rare among the generated tokens: cat, cat, and, small, blue
    assert metrics["rare_token_rate"] == 5 / 12
    # Rare reference types: {cat} (generated), {sum, green} (not): 1 / 3
    assert metrics["rare_token_recall"] == 1 / 3
    # ROUGE-L row 0: LCS 4 of 6 generated and 4 reference words -> P 2/3, R 1, F 0.8; row 1: LCS "the is" -> 0.5
    assert metrics["rouge_l"] == pytest.approx((0.8 + 0.5) / 2, abs=1e-12)
    assert 0 < metrics["chrf"] < 100


def test_eval_rejects_counts_of_another_tokenizer(tiny_model_dir, tiny_counts, tmp_path):
    counts_path, counts = tiny_counts
    TokenCounts(counts, "other", "sha256:0", "test").save(tmp_path / "other.json")
    generations = tmp_path / "gens.jsonl"
    generations.write_text(json.dumps({"prompt": "p", "generation": "The cat"}) + "\n")
    with pytest.raises(
        ValueError, match="Pass the counts file of the run being evaluated .* recount with `pdl-trl count"
    ):
        eval_main(
            ["--tokenizer", str(tiny_model_dir), "--generations", str(generations)]
            + ["--pdl_counts_path", str(tmp_path / "other.json")]
        )


def test_eval_generates_and_rescoring_matches(tiny_model_dir, tiny_counts, tmp_path):
    counts_path, _ = tiny_counts
    dataset = tmp_path / "test.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": "Describe the cat."}],
            "completion": [{"role": "assistant", "content": " The cat is red and small."}],
        },
        {
            "prompt": [{"role": "user", "content": "What is 5 plus 7?"}],
            "completion": [{"role": "assistant", "content": " The sum is green."}],
        },
    ]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "metrics.json"
    common = ["--model_name_or_path", str(tiny_model_dir), "--pdl_counts_path", str(counts_path), "--device", "cpu"]
    generate = ["--dataset_name", str(dataset), "--max_new_tokens", "6", "--metrics_output", str(output)]
    result = eval_main(common + generate)

    generations_path = tmp_path / "metrics.generations.jsonl"
    written = [json.loads(line) for line in generations_path.read_text().splitlines()]
    assert [row["prompt"] for row in written] == [row["prompt"] for row in rows]
    assert [row["reference"] for row in written] == [row["completion"] for row in rows]
    assert all(isinstance(row["generation"], str) and isinstance(row["terminated"], bool) for row in written)
    metrics = result["metrics"]
    assert 0 < metrics["mean_generation_length"] <= 6
    assert metrics["termination_rate"] == sum(row["terminated"] for row in written) / 2
    assert math.isfinite(metrics["reference_nll"]) and metrics["reference_nll"] > 0
    # The rows carry each reference's NLL sum and token count: the metric is their pooled ratio
    assert metrics["reference_nll"] == pytest.approx(
        sum(row["reference_nll_sum"] for row in written) / sum(row["reference_num_tokens"] for row in written)
    )

    # Scoring the written generations with the same model reproduces every metric
    rescored = eval_main(common + ["--generations", str(generations_path)])
    assert rescored["metrics"] == metrics


def test_generation_left_padding_matches_unbatched(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = ["Describe the cat.", [{"role": "user", "content": "What is 5 plus 7? Answer briefly, please."}]]
    batched = generate_completions(model, tokenizer, prompts, max_new_tokens=5, batch_size=2, show_progress=False)
    single = generate_completions(model, tokenizer, prompts, max_new_tokens=5, batch_size=1, show_progress=False)
    assert batched == single


def test_generation_reports_termination(tiny_model_dir):
    """The tiny random model repeats a prompt's last token. Declared an EOS token, `.` ends the prompts that end with
    `.` at once (terminated, empty text); the `?` prompts run into the limit. Mixed in one batch, where the ended rows
    are padded while the others go on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = ["Describe the cat.", "What is 5 plus 7?", "Describe the owl.", "What is 12 plus 30?"]
    assert generate_completions(model, tokenizer, prompts, max_new_tokens=3, batch_size=4, show_progress=False) == [
        Generation("...", terminated=False),
        Generation("???", terminated=False),
        Generation("...", terminated=False),
        Generation("???", terminated=False),
    ]
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(".")
    generations = generate_completions(model, tokenizer, prompts, max_new_tokens=3, batch_size=4, show_progress=False)
    assert generations == [
        Generation("", terminated=True),
        Generation("???", terminated=False),
        Generation("", terminated=True),
        Generation("???", terminated=False),
    ]
    assert termination_rate([g.terminated for g in generations]) == 1 / 2
    # An EOS as the only allowed token still ends the generation before the limit
    assert generate_completions(model, tokenizer, prompts[:1], max_new_tokens=1, show_progress=False) == [
        Generation("", terminated=True)
    ]


def test_merged_adapter_generates_the_same(tiny_model_dir):
    """Merging a float32 LoRA adapter into the weights (as the sweep does before generating) leaves the greedy
    generations, their termination and the reference NLL unchanged; a bf16 model is not merged."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pdl_trl.evaluation import merge_lora_for_inference

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), lora)
    prompts = [
        "Describe the cat.",
        "What is 5 plus 7?",
        [{"role": "user", "content": "Describe the dog."}],
        [{"role": "user", "content": "What is 1 plus 2?"}],
    ]
    references = [" The cat is red.", " The sum is 12.", [{"role": "assistant", "content": " The dog is teal."}]]
    references.append([{"role": "assistant", "content": " The sum is 3."}])
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    merged = merge_lora_for_inference(copy.deepcopy(model))
    assert not isinstance(merged, PeftModel)
    for m in (model, merged):
        m.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(" is")]
    kwargs = {"max_new_tokens": 6, "batch_size": 2, "show_progress": False}
    adapter_generations = generate_completions(model, tokenizer, prompts, **kwargs)
    assert adapter_generations == generate_completions(merged, tokenizer, prompts, **kwargs)
    assert len({g.text for g in adapter_generations}) > 1  # the adapter changes what the base model would repeat
    assert reference_nll(merged, tokenizer, prompts, references, show_progress=False) == pytest.approx(
        reference_nll(model, tokenizer, prompts, references, show_progress=False), rel=1e-5
    )
    half = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), lora)
    assert merge_lora_for_inference(half) is half


def test_reference_nll_equals_trainer_nll(tiny_model_dir, cpu_config):
    """The reference NLL scores exactly the tokens, and gives the value, of the trainer's `nll` on one eval batch."""
    from helpers.tiny import prompt_completion_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pdl_trl import PDLSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    data = prompt_completion_dataset(4, seed=5)
    trainer = PDLSFTTrainer(
        model=model,
        args=cpu_config(pdl_alpha=0.0, per_device_eval_batch_size=4),
        train_dataset=prompt_completion_dataset(8),
        eval_dataset=data,
        processing_class=tokenizer,
    )
    trainer_nll = trainer.evaluate()["eval_nll"]
    ours = reference_nll(model, tokenizer, data["prompt"], data["completion"], batch_size=3, show_progress=False)
    assert ours == pytest.approx(trainer_nll, rel=1e-5)
    # Per example, independent of the batching
    sums = reference_nll_sums(model, tokenizer, data["prompt"], data["completion"], batch_size=3, show_progress=False)
    one_by_one = reference_nll_sums(
        model, tokenizer, data["prompt"], data["completion"], batch_size=1, show_progress=False
    )
    assert [n for _, n in sums] == [n for _, n in one_by_one]
    assert [nll for nll, _ in sums] == pytest.approx([nll for nll, _ in one_by_one], rel=1e-5)
    assert mean_token_nll(sums) == pytest.approx(ours, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# `pdl-trl compare`
# ---------------------------------------------------------------------------------------------------------------------


def _metrics_file(path, metrics):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "pdl-trl-eval", "version": 1, "metrics": metrics}))
    return path


def test_compare_table_and_plot(tmp_path):
    a = _metrics_file(tmp_path / "sft" / "metrics.json", {"distinct_1": 0.25, "chrf": 31.0, "rouge_l": None})
    b = _metrics_file(tmp_path / "pdl" / "metrics.json", {"distinct_1": 0.5, "rouge_l": 0.125, "extra": 2.0})
    table_path, plot_path = tmp_path / "table.md", tmp_path / "chart.png"
    table = compare_main([str(a), str(b), "--table_output", str(table_path), "--plot_output", str(plot_path)])

    # Labels from the folders (the stems repeat); known metrics in their order, unknown ones last; n/a where missing
    assert table == (
        "| metric | sft | pdl |\n"
        "|---|---:|---:|\n"
        "| distinct_1 | 0.2500 | 0.5000 |\n"
        "| rouge_l | n/a | 0.1250 |\n"
        "| chrf | 31.0000 | n/a |\n"
        "| extra | n/a | 2.0000 |\n"
    )
    assert table_path.read_text() == table
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_compare_labels(tmp_path):
    a = _metrics_file(tmp_path / "a.json", {"distinct_1": 0.25})
    b = _metrics_file(tmp_path / "b.json", {"distinct_1": 0.5})
    assert default_labels([a, b]) == ["a", "b"]
    assert markdown_table(["x"], [{"distinct_1": 1.0}]).splitlines()[0] == "| metric | x |"
    assert compare_main([str(a), str(b), "--labels", "SFT", "PDL"]).splitlines()[0] == "| metric | SFT | PDL |"
    with pytest.raises(SystemExit, match="one label per file"):
        compare_main([str(a), str(b), "--labels", "only-one"])
    (tmp_path / "bad.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ValueError, match="pdl-trl eval --metrics_output"):
        compare_main([str(tmp_path / "bad.json")])
