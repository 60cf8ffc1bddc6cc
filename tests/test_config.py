"""Presets, overrides, run directories, seeding and logging."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from biovita_nb.config import (PRESETS, ConfigError, init_run, load_config, load_preset, load_run_config, parse_override,
                               resolve_device, runs_root, seed_everything, seeded_generator, setup_logging)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_full_schema(name):
    preset = load_preset(name)
    paper = load_preset("paper")

    def keys(node, prefix=""):
        out = set()
        for key, value in node.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, f"{prefix}{key}.")
        return out

    assert keys(preset) == keys(paper)
    assert preset["name"] == name


def test_paper_preset_published_values():
    paper = load_preset("paper")
    assert paper["train"]["stage1"] == {"epochs": 30, "batch_size": 64, "lr": 1e-4, "weight_decay": 0.05}
    assert paper["train"]["stage2"]["phase2"]["lr_text"] == 5e-6
    assert paper["data"]["unseen"]["count"] == 325
    assert paper["benchmark"]["n_candidates"] == 100


def test_override_types_from_strings():
    assert parse_override("train.stage1.lr=1e-4") == ("train.stage1.lr", 1e-4)
    assert parse_override("train.stage1.epochs=3") == ("train.stage1.epochs", 3)
    assert parse_override("data.download.enabled=false") == ("data.download.enabled", False)
    assert parse_override("benchmark.levels=[species, genus]") == ("benchmark.levels", ["species", "genus"])
    assert parse_override("data.recordings_table=path/a=b.csv") == ("data.recordings_table", "path/a=b.csv")
    assert parse_override("data.recordings_table=") == ("data.recordings_table", None)


def test_unknown_override_key_rejected():
    with pytest.raises(ConfigError, match="unknown key 'train.stage1.epoch'"):
        load_config("smoke", ["train.stage1.epoch=3"])


def test_dotted_and_nested_overrides_merge():
    config = load_config("smoke", {"train.stage1.epochs": 4, "train": {"stage1": {"lr": 0.5}}})
    assert config["train"]["stage1"]["epochs"] == 4
    assert config["train"]["stage1"]["lr"] == 0.5


def test_section_cannot_become_scalar():
    with pytest.raises(ConfigError, match="'train.stage1' is a section"):
        load_config("smoke", ["train.stage1=3"])


def test_bad_preset_file_reported(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\nmodel:\n  audio:\n    nme: x\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key 'model\.audio\.nme'"):
        load_preset(path)


def test_custom_preset_file_extends_demo(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\nname: mine\ntrain:\n  stage1:\n    epochs: 2\n")
    config = load_config(path)
    assert config["name"] == "mine"
    assert config["train"]["stage1"]["epochs"] == 2
    assert config["data"]["source"] == "sample"


def test_run_directory_records_config_and_versions(tmp_path):
    config = load_config("smoke", ["seed=5"])
    run = init_run(config, name="abc")
    assert run.root == runs_root() / "abc"
    record = json.loads(run.config.read_text())
    assert record["config"]["seed"] == 5
    assert record["overrides"] == {"seed": 5}
    assert record["versions"]["open-clip-torch"].startswith("3.3")
    assert record["versions"]["transformers"].split(".")[0] == "5"
    assert set(record["hub_revisions"]) == {"image_text", "audio"}
    assert load_run_config("abc")["seed"] == 5
    for folder in ("manifest", "benchmark", "checkpoints", "logs", "features", "results", "notebooks"):
        assert (run.root / folder).is_dir()


def test_changed_config_keeps_previous_record():
    init_run(load_config("smoke"), name="r")
    run = init_run(load_config("smoke", ["seed=9"]), name="r")
    assert json.loads((run.root / "config.previous.json").read_text())["config"]["seed"] == 0
    assert json.loads(run.config.read_text())["config"]["seed"] == 9


def test_seeding_repeats_draws():
    seed_everything(3)
    first = torch.rand(4)
    seed_everything(3)
    assert torch.equal(first, torch.rand(4))
    assert torch.equal(torch.randint(0, 100, (5,), generator=seeded_generator(1, "crop", 2)),
                       torch.randint(0, 100, (5,), generator=seeded_generator(1, "crop", 2)))


def test_cuda_request_without_cuda_fails():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_log_line_format(tmp_path):
    log_file = tmp_path / "stage.log"
    package_logger = setup_logging("INFO", log_file)
    try:
        logging.getLogger("biovita_nb.test").warning("skipped %d files", 2)
    finally:
        for handler in list(package_logger.handlers):
            if getattr(handler, "baseFilename", None) == str(log_file):
                handler.close()
                package_logger.removeHandler(handler)
    line = log_file.read_text().strip()
    assert line.endswith(" WARNING biovita_nb.test: skipped 2 files")
    assert line[:4].isdigit()


def test_missing_preset_file_named(tmp_path):
    with pytest.raises(ConfigError, match="Preset file .*nope.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="Unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="is a folder: pass a YAML file"):
        load_config(tmp_path)


def test_invalid_device_named():
    with pytest.raises(ConfigError, match="Invalid device 'tpu': use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
