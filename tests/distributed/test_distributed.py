"""Several CPU processes (gloo) train as one process does: torchrun, the shipped accelerate configs for FSDP2,
DeepSpeed ZeRO-3 and two nodes on the loopback address give the one-process PDL table, losses and LoRA update, and a
run killed right after a checkpoint resumes to the same losses, adapter and counts file.

A launch spends most of its time importing, so one launch serves several checks: the FSDP2 run is also the
two-process kill-and-resume run, and the one-process references are run once, in this process.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.distributed_sft import main as run_sft_worker
from helpers.distributed_worker import train_one_step
from helpers.tiny import make_rows
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from pdl_trl.frequency import COUNTS_FILE_NAME


pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "helpers" / "distributed_worker.py"
SFT_WORKER = REPO / "tests" / "helpers" / "distributed_sft.py"
ACCELERATE_CONFIGS = REPO / "examples" / "accelerate"
LAUNCH_TIMEOUT = 300
LAUNCH_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(REPO),
    "CUDA_VISIBLE_DEVICES": "",  # CPU and gloo on a machine with GPUs too: DeepSpeed would take them
}

# Three steps of 4 rows in random order, a checkpoint after step 2. LoRA without dropout in fp32 on CPU repeats
# exactly; SGD keeps the update linear in the gradient, so summing it in another order across processes moves the
# adapter by ~1e-8 (Adam's normalisation magnified that to a few 1e-6).
TRAINING = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 2,
    "activation_checkpointing": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "learning_rate": 0.1,
    "pdl_alpha": 0.5,
    "use_peft": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": "all-linear",
}
# The one-process batch of 4, split over two processes
TWO_PROCESSES = ["--per_device_train_batch_size", "2"]
# 4-bit QLoRA as examples/qlora_sharded.yaml sets it up, with the float dtype of CPU training as quantized storage
QLORA = ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--bnb_4bit_quant_storage", "float32", "--dtype", "float32"]
# accelerate leaves DeepSpeed off for processes it is told are CPU ones (they train as DDP). Without `use_cpu` it
# runs on the CPU of a machine without GPUs; `gloo` then makes accelerate count the processes DeepSpeed started.
DEEPSPEED_ON_CPU = ["--use_cpu", "false", "--ddp_backend", "gloo"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(config: str, launch_args: list[str], worker_args: list[str], sft_args: list[str]) -> list:
    """`accelerate launch --config_file examples/accelerate/CONFIG` of the sft worker, 2 processes in fp32."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config)),
        *("--num_processes", "2", "--mixed_precision", "no", *launch_args),
        *(str(SFT_WORKER), *worker_args, "--", *sft_args),
    ]


def launch(commands: list[list], log_dir: Path, killed: bool = False) -> None:
    """
    Runs the commands at the same time (the launchers of one job) and fails with their output unless all succeed, or
    with `killed`, unless all were ended by SIGKILL. A job that should succeed is tried twice: a rare deadlock in
    gloo's teardown can hang a rank at exit after the work is done (docs/distributed.md).
    """
    for attempt in range(1 if killed else 2):
        logs = [log_dir / f"launcher{index}-try{attempt}.log" for index in range(len(commands))]
        processes = []
        for command, log in zip(commands, logs, strict=True):
            with open(log, "w") as output:
                processes.append(
                    subprocess.Popen(
                        command,
                        env={**os.environ, **LAUNCH_ENV},
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its workers share its process group, ended together on a timeout
                    )
                )
        try:
            codes = [process.wait(timeout=LAUNCH_TIMEOUT) for process in processes]
        except subprocess.TimeoutExpired:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            codes = [process.wait() for process in processes]
        texts = [log.read_text() for log in logs]
        if killed:
            # torchrun reports a killed worker as "Signal 9 (SIGKILL)" and exits 1; a bare process dies with -9
            if all(
                code == -signal.SIGKILL or "Signal 9 (SIGKILL)" in text
                for code, text in zip(codes, texts, strict=True)
            ):
                return
        elif codes == [0] * len(commands):
            return
    report = "\n".join(
        f"--- exit {code}, last lines:\n{text[-5000:]}" for code, text in zip(codes, texts, strict=True)
    )
    pytest.fail(f"{'killed ' if killed else ''}launch {commands[0][:8]} ... failed:\n{report}")


def load_ranks(output_dir: Path, world_size: int) -> list[dict]:
    return [torch.load(output_dir / "ranks" / f"rank{rank}.pt") for rank in range(world_size)]


def assert_trained_as(output_dir, ranks, reference, loss_rel: float, adapter_atol: float, adapter_rtol: float = 0.0):
    """Every rank holds the reference's table and logged its losses; the saved adapter equals the reference's."""
    expected = load_ranks(reference, 1)[0]
    for result in ranks:
        assert result["world_size"] == len(ranks)
        assert torch.equal(result["counts"], expected["counts"])
        assert torch.equal(result["weights"], expected["weights"])
        assert result["losses"].keys() == expected["losses"].keys() == {1, 2, 3}
        for step, loss in expected["losses"].items():
            assert result["losses"][step] == pytest.approx(loss, rel=loss_rel), f"step {step}"
    adapter, expected_adapter = load_file(output_dir / "adapter_model.safetensors"), load_reference_adapter(reference)
    assert adapter.keys() == expected_adapter.keys()
    for name, value in expected_adapter.items():
        torch.testing.assert_close(adapter[name], value, rtol=adapter_rtol, atol=adapter_atol, msg=name)


def assert_trained_as_qlora(output_dir: Path, ranks: list[dict], reference: Path) -> None:
    # TRL keeps QLoRA adapters in bf16, whose gradients the engines sum in bf16: the first step (before any update)
    # is exact, the later ones and the adapter agree to bf16 rounding (one ulp: 2**-7 relative, or 1e-4 on LoRA B's
    # largest entries, which are all update)
    first_loss = load_ranks(reference, 1)[0]["losses"][1]
    for result in ranks:
        assert result["losses"][1] == pytest.approx(first_loss, rel=1e-6)
    assert_trained_as(output_dir, ranks, reference, loss_rel=1e-4, adapter_atol=2e-4, adapter_rtol=2**-7)


def load_reference_adapter(reference: Path) -> dict:
    adapter = load_file(reference / "adapter_model.safetensors")
    # LoRA's B matrices start at zero: the reference moved them, so equal adapters mean equal updates
    assert max(value.abs().max().item() for name, value in adapter.items() if "lora_B" in name) > 1e-2
    return adapter


@pytest.fixture(scope="module")
def sft_config(tmp_path_factory, tiny_model_dir) -> Path:
    directory = tmp_path_factory.mktemp("sft-config")
    data = directory / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in make_rows(32)))
    config = directory / "train.yaml"
    config.write_text(
        yaml.safe_dump({"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), **TRAINING})
    )
    return config


@pytest.fixture(scope="module")
def output_rows(tiny_model_dir) -> int:
    return AutoConfig.from_pretrained(tiny_model_dir).vocab_size


def run_in_process(sft_config: Path, output_dir: Path, *sft_args: str) -> Path:
    run_sft_worker(
        ["--results", str(output_dir / "ranks"), "--", "--config", str(sft_config), "--output_dir", str(output_dir)]
        + list(sft_args)
    )
    return output_dir


@pytest.fixture(scope="module")
def one_process(sft_config, tmp_path_factory) -> Path:
    """The uninterrupted one-process LoRA run every other run is checked against."""
    return run_in_process(sft_config, tmp_path_factory.mktemp("one-process"))


@pytest.fixture(scope="module")
def one_process_qlora(sft_config, tmp_path_factory) -> Path:
    return run_in_process(sft_config, tmp_path_factory.mktemp("one-process-qlora"), *QLORA, "--save_strategy", "no")


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_two_processes_take_the_same_step_as_one(tiny_model_dir, tmp_path, loss_type):
    # torchrun directly, the trainer built in the worker: one SGD step of 2 + 2 rows against 4 rows and 2 x 2 rows;
    # with TRL's `dft` loss type, PDL x DFT
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(free_port())),
        *(str(WORKER), str(tiny_model_dir), str(tmp_path / "ddp"), "--batch_size", "2", "--loss_type", loss_type),
    ]
    launch([command], tmp_path)
    ranks = [torch.load(tmp_path / "ddp" / f"result-rank{rank}.pt") for rank in range(2)]
    one_process = torch.load(
        train_one_step(str(tiny_model_dir), str(tmp_path / "single"), batch_size=4, loss_type=loss_type)
    )
    accumulated = torch.load(
        train_one_step(
            str(tiny_model_dir), str(tmp_path / "accumulated"), batch_size=2, accumulation=2, loss_type=loss_type
        )
    )

    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert one_process["world_size"] == 1
    for result in [*ranks, accumulated]:
        # Each rank counted one shard; the summed table is the whole training set's, identical everywhere
        assert torch.equal(result["counts"], one_process["counts"])
        assert torch.equal(result["weights"], one_process["weights"])
        assert len(result["loss"]) == 1
        assert result["loss"][0] == pytest.approx(one_process["loss"][0], rel=1e-5)
        assert result["parameters"].keys() == one_process["parameters"].keys()
        for name, expected in one_process["parameters"].items():
            torch.testing.assert_close(result["parameters"][name], expected, rtol=0, atol=1e-6, msg=name)
    # The step did move the parameters, so equal parameters mean equal gradients (DFT scales each token's gradient by
    # its probability, about 1/424 on the untrained model)
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    moved = max((one_process["parameters"][name] - p.detach()).abs().max().item() for name, p in initial.items())
    assert moved > (1e-3 if loss_type == "nll" else 3e-5)


@pytest.mark.sft_trainer
def test_dft_at_alpha_zero_on_two_processes_is_sft_trainers_dft(tiny_model_dir, tmp_path):
    """`loss_type="dft"` at `pdl_alpha=0`, 2 + 2 rows on two processes: the step of `SFTTrainer(loss_type="dft")` on
    the four rows in one process (the normaliser is the step's token count on every rank in both)."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(free_port())),
        *(str(WORKER), str(tiny_model_dir), str(tmp_path / "ddp"), "--batch_size", "2"),
        *("--loss_type", "dft", "--alpha", "0"),
    ]
    launch([command], tmp_path)
    ranks = [torch.load(tmp_path / "ddp" / f"result-rank{rank}.pt") for rank in range(2)]
    sft = torch.load(
        train_one_step(str(tiny_model_dir), str(tmp_path / "sft"), batch_size=4, loss_type="dft", sft_trainer=True)
    )
    for result in ranks:
        assert result["loss"][0] == pytest.approx(sft["loss"][0], rel=1e-5)
        for name, expected in sft["parameters"].items():
            torch.testing.assert_close(result["parameters"][name], expected, rtol=0, atol=1e-6, msg=name)


def assert_resumed_from_checkpoint(output_dir: Path, ranks: list[dict], checkpoint_step: int = 2) -> None:
    checkpoint = output_dir / f"checkpoint-{checkpoint_step}"
    # The resumed processes trained only the steps after the checkpoint; the earlier losses are the killed run's,
    # restored from the checkpoint's trainer state
    assert [result["first_step"]["step"] for result in ranks] == [checkpoint_step + 1] * len(ranks)
    # The run ends with the counts file it started with, not a recount
    assert (output_dir / COUNTS_FILE_NAME).read_bytes() == (checkpoint / COUNTS_FILE_NAME).read_bytes()


def test_one_process_killed_after_a_checkpoint_resumes_identically(sft_config, one_process, tmp_path):
    output_dir = tmp_path / "run"
    sft_args = ["--config", str(sft_config), "--output_dir", str(output_dir)]
    worker_args = ["--results", str(output_dir / "ranks")]
    killed = [sys.executable, str(SFT_WORKER), *worker_args, "--kill_after_save", "2", "--", *sft_args]
    launch([killed], tmp_path, killed=True)
    assert (output_dir / "checkpoint-2").is_dir() and not (output_dir / "adapter_model.safetensors").exists()

    run_in_process(sft_config, output_dir, "--resume_from_checkpoint", str(output_dir / "checkpoint-2"))
    ranks = load_ranks(output_dir, 1)
    assert_resumed_from_checkpoint(output_dir, ranks)
    assert_trained_as(output_dir, ranks, one_process, loss_rel=1e-6, adapter_atol=1e-6)
    assert (output_dir / COUNTS_FILE_NAME).read_bytes() == (one_process / COUNTS_FILE_NAME).read_bytes()


def test_fsdp2_killed_after_a_checkpoint_resumes_as_one_process(sft_config, one_process, output_rows, tmp_path):
    output_dir = tmp_path / "run"
    sft_args = ["--config", str(sft_config), "--output_dir", str(output_dir), *TWO_PROCESSES]
    worker_args = ["--results", str(output_dir / "ranks"), "--fsdp_on_cpu"]
    port = ["--main_process_port", str(free_port())]
    killed = accelerate_command("fsdp2.yaml", port, [*worker_args, "--kill_after_save", "2"], sft_args)
    launch([killed], tmp_path, killed=True)
    assert (output_dir / "checkpoint-2").is_dir() and not (output_dir / "adapter_model.safetensors").exists()

    resume = ["--resume_from_checkpoint", str(output_dir / "checkpoint-2")]
    launch([accelerate_command("fsdp2.yaml", port, worker_args, [*sft_args, *resume])], tmp_path)
    ranks = load_ranks(output_dir, 2)
    assert_sharded_by_fsdp2(ranks, output_rows)
    assert_resumed_from_checkpoint(output_dir, ranks)
    assert_trained_as(output_dir, ranks, one_process, loss_rel=1e-6, adapter_atol=1e-6)


def test_fsdp2_qlora_with_float_storage_shards_the_4bit_weights(sft_config, one_process_qlora, output_rows, tmp_path):
    # A float `bnb_4bit_quant_storage` lets FSDP2 shard the 4-bit weights too (uint8 ones accelerate leaves whole)
    output_dir = tmp_path / "run"
    sft_args = [
        *("--config", str(sft_config), "--output_dir", str(output_dir), "--save_strategy", "no"),
        *(*TWO_PROCESSES, *QLORA),
    ]
    worker_args = ["--results", str(output_dir / "ranks"), "--fsdp_on_cpu"]
    launch(
        [accelerate_command("fsdp2.yaml", ["--main_process_port", str(free_port())], worker_args, sft_args)], tmp_path
    )
    ranks = load_ranks(output_dir, 2)
    assert_sharded_by_fsdp2(ranks, output_rows)
    assert_trained_as_qlora(output_dir, ranks, one_process_qlora)


def assert_sharded_by_fsdp2(ranks: list[dict], output_rows: int) -> None:
    for result in ranks:
        seen = result["first_step"]
        assert result["distributed_type"] == "FSDP"
        assert seen["dtensor_parameters"] == seen["parameters"]
        # Trained on half the rows of the output embedding each, sized the table from the whole
        assert seen["head_type"] == "DTensor" and seen["shape"][0] == output_rows
        assert seen["local_shape"][0] == output_rows // 2 and seen["output_rows"] == output_rows


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (in the test extra)")
@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_zero3_two_processes_train_as_one(
    quantized, sft_config, one_process, one_process_qlora, output_rows, tmp_path
):
    output_dir = tmp_path / "run"
    sft_args = [
        *("--config", str(sft_config), "--output_dir", str(output_dir), "--save_strategy", "no"),
        *TWO_PROCESSES,
        *DEEPSPEED_ON_CPU,
        *(QLORA if quantized else []),
    ]
    port = ["--main_process_port", str(free_port())]
    config = "deepspeed_zero3_qlora.yaml"
    launch([accelerate_command(config, port, ["--results", str(output_dir / "ranks")], sft_args)], tmp_path)
    ranks = load_ranks(output_dir, 2)
    for result in ranks:
        seen = result["first_step"]
        assert result["distributed_type"] == "DEEPSPEED"
        # Partitioned: an empty local tensor (at load through zero.Init, or for a 4-bit model in the engine)
        assert seen["shape"] == (0,) and seen["ds_shape"][0] == output_rows and seen["output_rows"] == output_rows
    if quantized:
        assert_trained_as_qlora(output_dir, ranks, one_process_qlora)
    else:
        assert_trained_as(output_dir, ranks, one_process, loss_rel=1e-6, adapter_atol=1e-6)


def test_two_nodes_on_loopback_train_as_one_process(sft_config, one_process, tmp_path):
    # The shipped multi-node config as-is but for the address and the process count: node 0 hosts the rendezvous
    output_dir = tmp_path / "run"
    sft_args = ["--config", str(sft_config), "--output_dir", str(output_dir), "--save_strategy", "no", *TWO_PROCESSES]
    node = ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    worker_args = ["--results", str(output_dir / "ranks")]
    commands = [
        accelerate_command("multi_node.yaml", [*node, "--machine_rank", str(rank)], worker_args, sft_args)
        for rank in range(2)
    ]
    launch(commands, tmp_path)
    ranks = load_ranks(output_dir, 2)
    assert [result["distributed_type"] for result in ranks] == ["MULTI_CPU"] * 2
    assert_trained_as(output_dir, ranks, one_process, loss_rel=1e-6, adapter_atol=1e-6)
