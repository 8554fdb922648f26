"""Shared test setup: offline Hub, one torch thread, the tiny model saved once, and a CPU training config."""

import os


# Set before transformers/datasets are imported anywhere: the tests never reach the Hub, and on a shared 2-core
# machine one thread is several times faster than two (OpenMP barriers stall when the other core is busy).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


torch.set_num_threads(1)

CPU_TRAINING_DEFAULTS = {
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "max_steps": 2,
    "logging_steps": 1,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
}


def make_cpu_config(output_dir, config_class=None, **overrides):
    """A `PDLSFTConfig` (or `config_class`, e.g. `trl.SFTConfig`) that trains the tiny model quickly on CPU."""
    if config_class is None:
        from pdl_trl import PDLSFTConfig

        config_class = PDLSFTConfig
    return config_class(output_dir=str(output_dir), **{**CPU_TRAINING_DEFAULTS, **overrides})


def pytest_configure(config):
    # Also declared in pyproject; repeated so that the markers exist when pytest runs with another rootdir/config.
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "distributed: launches several processes with torchrun")
    config.addinivalue_line("markers", "sft_trainer: trains `trl.SFTTrainer` on CPU as the reference")


def pytest_collection_modifyitems(config, items):
    from pdl_trl import compat

    if compat.TRL_AT_LEAST_1_15 and not compat.fused_lm_head_runs_on(torch.device("cpu")):
        # TRL 1.15's fused LM head runs on Triton only (a torch path came in 1.16): SFTTrainer cannot train on CPU
        skip_sft = pytest.mark.skip(reason=f"trl {compat.TRL_VERSION}: SFTTrainer needs Triton and a GPU")
        for item in items:
            if "sft_trainer" in item.keywords:
                item.add_marker(skip_sft)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Tokenizer and tiny Qwen2 saved together; the output embedding has `len(tokenizer) + 24` rows."""
    from helpers.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def cpu_config(tmp_path):
    """Factory: `cpu_config(**overrides)` -> CPU training config writing under this test's `tmp_path`."""

    def factory(config_class=None, output_dir=None, **overrides):
        return make_cpu_config(output_dir or tmp_path / "out", config_class, **overrides)

    return factory


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Local jsonl files: prompt-completion `pc.jsonl`, conversational `chat.jsonl`, language-model `text.jsonl`."""
    from helpers.files import conversational_rows, write_jsonl
    from helpers.tiny import make_rows

    directory = tmp_path_factory.mktemp("data")
    write_jsonl(directory / "pc.jsonl", make_rows(32))
    write_jsonl(directory / "chat.jsonl", conversational_rows(32))
    write_jsonl(directory / "text.jsonl", [{"text": r["prompt"] + r["completion"]} for r in make_rows(16)])
    return directory


@pytest.fixture
def sft_yaml(tmp_path, tiny_model_dir, data_dir):
    """Factory: a training config file for the tiny model and a local jsonl, with `overrides`."""
    from helpers.files import CPU_YAML, write_yaml

    def factory(dataset="pc.jsonl", **overrides):
        values = {
            "model_name_or_path": str(tiny_model_dir),
            "dataset_name": str(data_dir / dataset),
            "output_dir": str(tmp_path / "run"),
            **CPU_YAML,
            "pdl_alpha": 0.5,
            **overrides,
        }
        return write_yaml(tmp_path / "sft.yaml", **values)

    return factory
