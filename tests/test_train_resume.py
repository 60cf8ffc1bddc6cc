"""A run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biovita_nb.config import init_run, load_config, run_paths
from biovita_nb.data import run_data_stage

# Three steps per epoch and a checkpoint after every step, so that a kill can land inside an epoch.
OVERRIDES = {"train.checkpoint_every_steps": 1, "train.max_steps_per_epoch": 3, "train.eval_batch": 0,
             "train.ablations": []}
TRAIN_SCRIPT = """
import json, sys
from biovita_nb.config import load_config, run_paths
from biovita_nb.train import run_train_stage
root, name, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
run_train_stage(load_config("smoke", overrides), run_paths(name, root))
"""
TIMING_KEYS = {"samples_per_s", "data_wait_s", "step_s"}


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    config = load_config("smoke")
    paths = init_run(config, "data", tmp_path_factory.mktemp("runs"))
    run_data_stage(config, paths, progress=False)
    return paths.root


def start_training(script: Path, root: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(root), name, json.dumps(OVERRIDES)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def kill_when(process: subprocess.Popen, checkpoint: Path, timeout_s: float = 600) -> str:
    """SIGKILL `process` as soon as `checkpoint` exists and return what it wrote to stderr."""
    deadline = time.monotonic() + timeout_s
    while not checkpoint.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before {checkpoint.name}:\n"
                        f"{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{checkpoint} not written within {timeout_s} s")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL
    return stderr


def finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def step_records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def test_killed_run_resumes_to_identical_weights(data_run, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    root = data_run.parent
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = run_paths(name, root)
        shutil.copytree(data_run / "manifest", runs[name].manifest)

    # Stage 1 has steps 1-6 in two epochs of three. Stage 2 has phase 1 (steps 1-3) and phase 2 (steps 4-6).
    # The audio top layers join at step 5 and the logit scale at step 6.
    straight = start_training(script, root, "straight")
    killed = start_training(script, root, "killed")
    kill_when(killed, runs["killed"].checkpoints / "stage1" / "step-000000002.pt")
    killed = start_training(script, root, "killed")
    second = kill_when(killed, runs["killed"].checkpoints / "stage2" / "step-000000005.pt")
    third = finish(start_training(script, root, "killed"))
    finish(straight)

    # Each restart continued inside an epoch instead of starting over.
    assert re.search(r"stage1: resuming from \S+step-000000002\.pt \(phase stage1, epoch 1, 2 batches", second)
    assert re.search(r"stage2: resuming from \S+step-000000005\.pt \(phase phase2, epoch 1, 2 batches", third)
    assert "stage1: final weights already in" in third

    for stage in ("stage1", "stage2"):
        expected = load_file(runs["straight"].checkpoints / stage / "final" / "model.safetensors")
        actual = load_file(runs["killed"].checkpoints / stage / "final" / "model.safetensors")
        assert expected.keys() == actual.keys()
        different = [key for key in expected if not torch.equal(expected[key], actual[key])]
        assert different == [], f"{stage}: {len(different)} tensors differ, first {different[:5]}"
        # The resumed log has each step once, with the same values as the uninterrupted run.
        assert step_records(runs["killed"].logs / f"{stage}.jsonl") == \
            step_records(runs["straight"].logs / f"{stage}.jsonl")
