"""Two CPU processes (torchrun, gloo) take the same PDL step as one process: same table, loss and parameters."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import train_one_step
from transformers import AutoModelForCausalLM


pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(model_dir: Path, output_dir: Path) -> list[dict]:
    # `accelerate launch --cpu --num_processes 2` starts only one process on this stack; torchrun starts two
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(model_dir),
        str(output_dir),
        "--batch_size",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"torchrun timed out after 300 s; stderr:\n{(error.stderr or b'')[-6000:]}")
    if completed.returncode != 0:
        pytest.fail(f"torchrun exited with {completed.returncode}; workers' stderr:\n{completed.stderr[-6000:]}")
    return [torch.load(output_dir / f"result-rank{rank}.pt") for rank in range(2)]


def test_two_processes_take_the_same_step_as_one(tiny_model_dir, tmp_path):
    ranks = run_two_processes(tiny_model_dir, tmp_path / "ddp")
    one_process = torch.load(train_one_step(str(tiny_model_dir), str(tmp_path / "single"), batch_size=4))
    accumulated = torch.load(
        train_one_step(str(tiny_model_dir), str(tmp_path / "accumulated"), batch_size=2, accumulation=2)
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
    # The step did move the parameters, so equal parameters mean equal gradients
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    moved = max((one_process["parameters"][name] - p.detach()).abs().max().item() for name, p in initial.items())
    assert moved > 1e-3
