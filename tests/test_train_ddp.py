"""Training under torchrun: two gloo processes on the CPU, rank 0 writing logs and checkpoints."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

from biovita_nb.config import complete_stage, init_run, load_config, run_paths, stage_complete
from biovita_nb.data import run_data_stage
from biovita_nb.train import CheckpointStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_train_both_stages(tmp_path):
    config = load_config("smoke")
    run = init_run(config, "ddp", tmp_path / "runs")
    run_data_stage(config, run, progress=False)
    complete_stage("data", run)

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "biovita_nb.train", "--preset", "smoke", "--run-name", "ddp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "BIOVITA_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1",
                                 "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-4000:]

    assert "2 process(es) (gloo)" in result.stderr
    paths = run_paths("ddp", tmp_path / "runs")
    assert stage_complete(paths, "train")
    for stage in ("stage1", "stage2"):
        assert (paths.checkpoints / stage / "final" / "model.safetensors").is_file()
        lines = [json.loads(line) for line in (paths.logs / f"{stage}.jsonl").read_text().splitlines()]
        steps = [line["step"] for line in lines if line["kind"] == "train"]
        assert steps == list(range(1, len(steps) + 1))  # one line per step: only rank 0 writes
        assert steps
        state = CheckpointStore.load(CheckpointStore(paths.checkpoints / stage).latest())
        assert state["world_size"] == 2
        assert len(state["rng"]) == 2
        # The two ranks drew different dropout masks and crops: their random states differ.
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
