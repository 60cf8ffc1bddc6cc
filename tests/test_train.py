"""Training end to end on the bundled sample with the smoke preset and the small random towers."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biovita_nb.config import init_run, load_config, run_paths
from biovita_nb.data import load_manifest, run_data_stage
from biovita_nb.losses import NonFiniteLossError, NonFiniteTracker
from biovita_nb.model import build_model, from_pretrained
from biovita_nb.train import (CheckpointStore, Stage1Schedule, TrainContext, apply_trainable, model_parts,
                              run_train_stage, stage_config, train_run, train_step, training_summary)

ABLATION = "stage2-frozen-text"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def data_run(runs_root) -> Path:
    """A run folder whose data stage (smoke preset, bundled sample) has finished."""
    config = load_config("smoke")
    paths = init_run(config, "data", runs_root)
    run_data_stage(config, paths, progress=False)
    return paths.root


def new_run(data_run: Path, name: str):
    """Return a fresh run folder that shares the manifest of `data_run`."""
    paths = run_paths(name, data_run.parent)
    shutil.copytree(data_run / "manifest", paths.manifest)
    return paths


@pytest.fixture(scope="module")
def trained(data_run):
    """Stage 1, stage 2 and the frozen-text ablation, trained once for the module."""
    config = load_config("smoke", {"train.ablations": [ABLATION]})
    paths = new_run(data_run, "trained")
    finals = run_train_stage(config, paths)
    return config, paths, finals


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in CheckpointStore.load(path)["model"].items() if not k.startswith("frontend.")}


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def changed_keys(before: dict, after: dict, prefix: str) -> tuple[list[str], list[str]]:
    """Split the keys under `prefix` into (changed, unchanged), comparing bit by bit."""
    keys = sorted(k for k in before if k.startswith(prefix))
    assert keys, f"no weights under {prefix}"
    changed = [k for k in keys if not torch.equal(before[k], after[k])]
    return changed, [k for k in keys if k not in changed]


def test_stages_write_final_weights_and_logs(trained):
    config, paths, finals = trained

    assert list(finals) == ["stage1", "stage2", ABLATION]
    for name, folder in finals.items():
        assert folder == paths.checkpoints / name / "final"
        assert (folder / "model.safetensors").is_file()
        assert from_pretrained(folder).embed_dim == 96

    stage1 = records(paths.logs / "stage1.jsonl")
    steps = [r for r in stage1 if r["kind"] == "train"]
    assert len(steps) == config["train"]["max_steps_per_epoch"] * config["train"]["stage1"]["epochs"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    for key in ("atc", "loss", "logit_scale", "lr", "samples_per_s", "data_wait_s", "skipped_steps", "epoch"):
        assert key in steps[0], key
    evals = [r for r in stage1 if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [0, 1, 2]
    assert {"a2t_top1", "a2t_top5", "a2i_top1", "i2t_top5"} <= set(evals[-1])


def test_stage2_logs_both_phases(trained):
    _, paths, _ = trained
    steps = [r for r in records(paths.logs / "stage2.jsonl") if r["kind"] == "train"]

    assert [r["phase"] for r in steps] == ["phase1", "phase1", "phase2", "phase2"]
    assert {"atc", "aic", "atc_weight"} <= set(steps[0])
    phase2 = steps[2:]
    for key in ("itc", "aic", "guard", "gate", "gate_ema", "lambda_av", "lambda_vt"):
        assert key in phase2[0], key
    assert phase2[0]["lambda_av"] == 0.0  # the ramps start at 0
    assert phase2[0]["logit_scale"] == pytest.approx(5.0)  # reset at the phase start, frozen until step 2
    assert set(phase2[0]["lr"]) >= {"adapter", "text", "text_no_decay", "audio_top", "logit_scale"}
    assert training_summary(paths)["stage2"]["steps"] == 4


def test_stage1_trains_audio_and_keeps_towers(trained):
    config, paths, finals = trained
    initial = {k: v for k, v in build_model(stage_config(config, "stage1")).state_dict().items()
               if not k.startswith("frontend.")}
    final = weights(finals["stage1"])

    for prefix in ("image_text.",):  # image and text towers, their buffers included
        changed, _ = changed_keys(initial, final, prefix)
        assert changed == []
    for prefix in ("audio.", "adapter.", "logit_scale"):
        changed, _ = changed_keys(initial, final, prefix)
        assert changed, f"{prefix} did not train"


def test_phase1_keeps_text_and_image(trained):
    _, paths, finals = trained
    stage1 = weights(finals["stage1"])
    end_of_phase1 = checkpoint_weights(paths.checkpoints / "stage2" / "step-000000002.pt")

    assert changed_keys(stage1, end_of_phase1, "image_text.")[0] == []
    assert changed_keys(stage1, end_of_phase1, "audio.")[0]
    assert changed_keys(stage1, end_of_phase1, "adapter.")[0]


def test_phase2_unfreezes_only_its_parts(trained):
    _, paths, finals = trained
    model = from_pretrained(finals["stage2"])
    top = {name for name, _ in model.audio_top_parameters(named=True)}
    end_of_phase1 = checkpoint_weights(paths.checkpoints / "stage2" / "step-000000002.pt")
    final = weights(finals["stage2"])

    assert changed_keys(end_of_phase1, final, "image_text.visual.")[0] == []
    assert changed_keys(end_of_phase1, final, "image_text.transformer.")[0]
    assert changed_keys(end_of_phase1, final, "adapter.")[0]
    audio_params = {name for name, _ in model.audio_parameters(named=True)}
    changed, _ = changed_keys(end_of_phase1, final, "audio.")
    assert set(changed) & audio_params == top  # every top parameter moved, no other audio parameter did
    assert final["logit_scale"].item() == pytest.approx(math.log(5.0), abs=1e-7)


def test_frozen_text_ablation_keeps_text(trained):
    _, _, finals = trained
    stage1, ablation = weights(finals["stage1"]), weights(finals[ABLATION])

    assert changed_keys(stage1, ablation, "image_text.")[0] == []
    assert changed_keys(stage1, ablation, "audio.")[0]


def test_finished_runs_are_skipped(trained):
    config, paths, finals = trained
    before = {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in finals.items()}
    lines = (paths.logs / "stage2.jsonl").read_text()

    again = run_train_stage(config, paths)

    assert again == finals
    assert {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in again.items()} == before
    assert (paths.logs / "stage2.jsonl").read_text() == lines


def test_explicit_checkpoint_replays_phase2(trained, data_run):
    config, source, finals = trained
    paths = run_paths("replay", data_run.parent)
    shutil.copytree(source.root, paths.root)
    end_of_phase1 = paths.checkpoints / "stage2" / "step-000000002.pt"
    timing = ("samples_per_s", "data_wait_s", "step_s")

    final = train_run("stage2", config, paths, load_manifest(paths), TrainContext(torch.device("cpu")),
                      resume=end_of_phase1)

    replayed, original = weights(final), weights(finals["stage2"])
    assert [k for k in original if not torch.equal(original[k], replayed[k])] == []
    assert [{k: v for k, v in r.items() if k not in timing} for r in records(paths.logs / "stage2.jsonl")] == \
        [{k: v for k, v in r.items() if k not in timing} for r in records(source.logs / "stage2.jsonl")]


def test_paper_variant_trains_one_phase(trained, data_run):
    _, source, finals = trained
    config = load_config("smoke", {"train.stage2.variant": "paper"})
    paths = new_run(data_run, "paper-variant")
    shutil.copytree(finals["stage1"], paths.checkpoints / "stage1" / "final")
    context = TrainContext(torch.device("cpu"))

    final = train_run("stage2", config, paths, load_manifest(paths), context)

    steps = [r for r in records(paths.logs / "stage2.jsonl") if r["kind"] == "train"]
    assert [r["phase"] for r in steps] == ["paper"] * 4
    assert [r["lambda_av"] for r in steps] == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert changed_keys(weights(finals["stage1"]), weights(final), "image_text.transformer.")[0]
    assert changed_keys(weights(finals["stage1"]), weights(final), "image_text.visual.")[0] == []


def test_non_finite_step_is_skipped_then_raises():
    model = build_model("smoke")
    parts = model_parts(model)
    schedule = Stage1Schedule({"epochs": 1, "lr": 1e-3, "weight_decay": 0.0})
    trainable = apply_trainable(model, parts, schedule.active_parts(0))
    optimizer = schedule.optimizer(parts)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    context = TrainContext(torch.device("cpu"))
    tracker = NonFiniteTracker(max_consecutive=2)
    batch = {"audio": torch.randn(4, 480_000) * 0.1, "text": ["gray wolf", "coyote", "red fox", "elk"]}
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    record = train_step(model, model, schedule, optimizer, scaler, trainable, batch, 0, context, tracker)

    assert record["skipped"] is True
    assert tracker.skipped == 1
    for key, value in model.state_dict().items():  # buffers included: batch-norm statistics are put back
        if key != "logit_scale":
            assert torch.equal(value, before[key]), key
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        train_step(model, model, schedule, optimizer, scaler, trainable, batch, 1, context, tracker)

    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
    tracker = NonFiniteTracker(max_consecutive=2)
    record = train_step(model, model, schedule, optimizer, scaler, trainable, batch, 2, context, tracker)
    assert record["skipped"] is False
    assert math.isfinite(record["loss"])
