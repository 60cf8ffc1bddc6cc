"""The benchmark on the bundled Yellowstone sample: all 36 scenarios, real decoding, the stage's outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from biovita_nb.audio import load_clip
from biovita_nb.benchmark import (DIRECTIONS, LEVELS, FeatureStore, build_benchmark, extract_features,
                                  run_benchmark_stage, score_model)
from biovita_nb.config import ConfigError, load_config, run_paths, sample_dir
from biovita_nb.model import build_model, load_baseline

UNSEEN = {"Gavia immer", "Vulpes vulpes", "Pseudacris maculata", "Cervus canadensis"}


def sample_manifest(root: Path = sample_dir()) -> dict[str, pd.DataFrame]:
    """Build a manifest of the bundled sample with the contract's columns.

    Four species are unseen, one of them with audio only and one with a photo only. A seen species
    with two recordings holds out the second. A single recording of 20 s or more is split in time,
    and its last 30 % is the test stretch. Shorter single recordings are test items whole. Every
    photo is a test item.
    """
    tables = {}
    for name, modality in (("recordings", "audio"), ("images", "image")):
        source = pd.read_csv(root / f"{name}.csv")
        tables[modality] = pd.DataFrame({
            "item_id": source.iloc[:, 0], "path": [str(root / f) for f in source["file_name"]], "url": None,
            "source": source["source"], "status": "ok", "sha256": source["sha256"], "bytes": source["bytes"],
            **({"duration_s": source["duration_s"], "sample_rate": source["sample_rate"], "channels": source["channels"]}
               if modality == "audio" else {"width": source["width"], "height": source["height"]}),
            "kingdom": source["kingdom"], "phylum": source["phylum"], "class": source["class"], "order": source["order"],
            "family": source["family"], "genus": source["genus"], "scientific_name": source["scientific_name"],
            "accepted_name": source["accepted_name"], "common_name": source["com"],
            "species_key": source["accepted_name"], "genus_key": source["genus"], "family_key": source["family"],
            "species_set": ["unseen" if s in UNSEEN else "seen" for s in source["accepted_name"]]})
    splits = []
    audio = tables["audio"]
    for species, group in audio.groupby("species_key", sort=True):
        for index, row in enumerate(group.itertuples()):
            whole = {"modality": "audio", "item_id": row.item_id, "species_set": row.species_set,
                     "start_s": np.nan, "end_s": np.nan}
            if row.species_set == "unseen" or (len(group) > 1 and index > 0) or (len(group) == 1 and row.duration_s < 20):
                splits.append({**whole, "split": "test"})
            elif len(group) > 1:
                splits.append({**whole, "split": "train"})
            else:
                cut = round(0.7 * row.duration_s, 3)
                splits.append({**whole, "split": "train", "start_s": 0.0, "end_s": cut})
                splits.append({**whole, "split": "test", "start_s": cut, "end_s": row.duration_s})
    for row in tables["image"].itertuples():
        splits.append({"modality": "image", "item_id": row.item_id, "split": "test", "species_set": row.species_set,
                       "start_s": np.nan, "end_s": np.nan})
    return {"recordings": tables["audio"], "images": tables["image"], "splits": pd.DataFrame(splits)}


@pytest.fixture(scope="module")
def sample_benchmark(tmp_path_factory):
    return build_benchmark(sample_manifest(), tmp_path_factory.mktemp("sample") / "benchmark", load_config("smoke"))


def test_sample_builds_36_tasks(sample_benchmark):
    assert len(sample_benchmark.scenarios()) == 36
    counts = {(s["split"], s["level"], s["direction"]): s for s in sample_benchmark.info["scenarios"]}
    assert counts[("seen", "species", "A2T")]["n_queries"] == 22   # one test item for each of 22 seen species with audio
    assert counts[("seen", "species", "A2T")]["n_candidates"] == 23  # their texts and the coot's (photo only)
    assert counts[("unseen", "species", "A2I")]["n_queries"] == 2    # fox and frog have audio and a photo
    assert counts[("unseen", "species", "I2A")]["n_candidates"] == 3
    assert counts[("unseen", "species", "T2A")]["n_queries"] == 3
    stretches = sample_benchmark.audio_index.dropna(subset=["start_s"])
    assert len(stretches) == 12
    assert (stretches["end_s"] > stretches["start_s"]).all()


def test_all_scenarios_score_on_the_sample(sample_benchmark, tmp_path: Path):
    config = load_config("smoke")
    model = load_baseline("random", config)
    store = extract_features(model, sample_benchmark, tmp_path / "random", config, model_name="random")
    entries, predictions = score_model(store, sample_benchmark, config, "random")
    keys = {(e["split"], e["level"], e["direction"]) for e in entries}
    assert keys == {(s, l, d) for s in ("seen", "unseen") for l in LEVELS for d in DIRECTIONS}
    with_text = [e for e in entries if e["level"] == "species" and "T" in e["direction"]]
    assert sorted({e["text"] for e in with_text}) == ["common", "scientific"]
    assert len(with_text) == 16
    for entry in entries:
        assert entry["applicable"]
        if entry["n_queries"] == 0:
            assert entry["top1"] is None
        else:
            assert 0.0 <= entry["top1"] <= entry["top5"] <= entry["top10"] <= 100.0  # one chain: Top-k grows with k
            assert sum(v["n_queries"] for v in entry["per_class"].values()) == entry["n_queries"]
    assert len(predictions) == sum(e["n_queries"] for e in entries)
    assert set(predictions.columns) >= {"model", "split", "level", "direction", "correct_taxon", "predicted_taxon", "rank"}


class RecordingModel:
    """Records the waveforms it is asked to embed and returns their first samples as features."""

    modalities = ("audio", "image", "text")

    def __init__(self):
        self.waves = []

    def encode_audio(self, waves: torch.Tensor) -> torch.Tensor:
        self.waves.extend(waves.clone())
        return torch.nn.functional.normalize(waves[:, :8] + 1.0, dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(pixels.flatten(1)[:, :8] + 3.0, dim=-1)

    def encode_text(self, texts) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.tensor([[len(t), 1.0] + [0.0] * 6 for t in texts]), dim=-1)

    def preprocess_image(self, image) -> torch.Tensor:
        return torch.tensor(np.asarray(image.resize((8, 8)), dtype=np.float32) / 255).permute(2, 0, 1)


def test_audio_window_stays_inside_the_test_stretch(sample_benchmark, tmp_path: Path):
    config = load_config("smoke", ["benchmark.levels=[species]", "benchmark.directions=[A2T]"])
    model = RecordingModel()
    extract_features(model, sample_benchmark, tmp_path / "recording", config, model_name="recording")
    index = sample_benchmark.audio_index
    row = index[index["item_id"] == "ysl-a018"].iloc[0]  # boreal chorus frog: unseen, whole file
    stretch = index.dropna(subset=["start_s"]).iloc[0]
    for item in (row, stretch):
        start = 0.0 if np.isnan(item["start_s"]) else item["start_s"]
        end = None if np.isnan(item["end_s"]) else item["end_s"]
        expected = load_clip(item["file_path"], seconds=10.0, mode="onset", start_s=start, end_s=end).wave
        assert torch.equal(model.waves[int(item["id"])], torch.as_tensor(expected))
    whole_file = load_clip(stretch["file_path"], seconds=10.0, mode="onset").wave
    assert not torch.equal(model.waves[int(stretch["id"])], torch.as_tensor(whole_file))


def test_clip_cache_shares_decoding(sample_benchmark, tmp_path: Path, monkeypatch):
    config = load_config("smoke", ["benchmark.levels=[species]", "benchmark.directions=[A2T]"])
    cache, first, second = {}, RecordingModel(), RecordingModel()
    extract_features(first, sample_benchmark, tmp_path / "a", config, model_name="a", clip_cache=cache)
    assert len(cache) == len(sample_benchmark.audio_index)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached clip was decoded again")

    monkeypatch.setattr("biovita_nb.audio.load_clip", no_decoding)
    extract_features(second, sample_benchmark, tmp_path / "b", config, model_name="b", clip_cache=cache)
    assert all(torch.equal(a, b) for a, b in zip(first.waves, second.waves))


def test_train_image_transform_is_repeatable(sample_benchmark, tmp_path: Path):
    only_images = ["benchmark.levels=[species]", "benchmark.directions=[I2T]"]
    config = load_config("smoke", only_images + ["benchmark.image_transform=train"])
    model = build_model(config)
    first = extract_features(model, sample_benchmark, tmp_path / "a", config, model_name="stage2")
    second = extract_features(model, sample_benchmark, tmp_path / "b", config, model_name="stage2")
    evaluation = extract_features(model, sample_benchmark, tmp_path / "c", load_config("smoke", only_images),
                                  model_name="stage2")
    assert not first.is_complete("audio")  # no configured direction uses audio
    assert np.array_equal(first.load("image").embeddings, second.load("image").embeddings)
    assert not np.allclose(first.load("image").embeddings, evaluation.load("image").embeddings)
    with pytest.raises(ConfigError, match="has no train_image_transform"):
        extract_features(RecordingModel(), sample_benchmark, tmp_path / "d", config, model_name="recording")


def write_manifest(run, manifest: dict[str, pd.DataFrame]) -> None:
    run.manifest.mkdir(parents=True, exist_ok=True)
    for name, table in manifest.items():
        table.to_parquet(run.manifest / f"{name}.parquet", index=False)


def test_stage_writes_results(tmp_path: Path):
    config = load_config("smoke", ["benchmark.models=[stage1, bioclip2, clap, random]"])
    run = run_paths("stage-test")
    write_manifest(run, sample_manifest())
    entries = run_benchmark_stage(config, run)

    skipped = json.loads((run.results / "skipped_models.json").read_text())
    assert [s["model"] for s in skipped] == ["stage1"] and "no checkpoint" in skipped[0]["reason"]
    assert json.loads((run.results / "results.json").read_text()) == json.loads(json.dumps(entries))
    assert {e["model"] for e in entries} == {"bioclip2", "clap", "random"}
    for model, missing in (("bioclip2", "audio"), ("clap", "image")):
        for entry in (e for e in entries if e["model"] == model):
            uses_missing = missing in DIRECTIONS[entry["direction"]][0] + DIRECTIONS[entry["direction"]][1]
            assert entry["applicable"] is not uses_missing
            if uses_missing:
                assert entry["top1"] is None
                assert f"no {missing} encoder" in entry["reason"]
    summary = (run.results / "summary.md").read_text()
    assert "| bioclip2 | seen | species | common | n/a | n/a | n/a | n/a |" in summary
    assert pd.read_parquet(run.results / "predictions.parquet")["model"].nunique() == 3

    stamps = {p: p.stat().st_mtime_ns for p in run.features.rglob("*.npy")}
    results_stamp = (run.results / "results.json").stat().st_mtime_ns
    again = run_benchmark_stage(config, run)
    assert again == json.loads(json.dumps(entries))
    assert {p: p.stat().st_mtime_ns for p in run.features.rglob("*.npy")} == stamps  # features reused
    assert (run.results / "results.json").stat().st_mtime_ns == results_stamp  # scores reused
    assert "are up to date with the benchmark and features" in (run.logs / "bench.log").read_text()

    forced = run_benchmark_stage(config, run, force=True)
    assert forced == entries
    assert (run.results / "results.json").stat().st_mtime_ns != results_stamp


def test_stage_without_manifest_says_what_to_run(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        run_benchmark_stage(load_config("smoke"), "no-manifest")


def test_stage_scores_a_published_benchmark(sample_benchmark, tmp_path: Path):
    config = load_config("smoke", ["benchmark.models=[random]", f"data.benchmark_dir={sample_benchmark.root}"])
    entries = run_benchmark_stage(config, "published")
    assert len([e for e in entries if e.get("text") == "common"]) == 36
    assert not (run_paths("published").benchmark / "benchmark.json").exists()  # scored in place, not rebuilt


def test_stage_on_the_data_stage_manifest():
    from biovita_nb.data import run_data_stage

    config = load_config("smoke", ["benchmark.models=[random, stage2]"])
    run = run_paths("from-data-stage")
    run_data_stage(config, run)
    entries = run_benchmark_stage(config, run)
    common = [e for e in entries if e["text"] == "common"]
    assert len(common) == 36
    assert all(e["model"] == "random" for e in common)
    assert all(e["applicable"] for e in common)
    assert all(e["n_queries"] > 0 for e in common if e["split"] == "seen")
    stretches = pd.read_csv(run.benchmark / "ids" / "audio_index.csv").dropna(subset=["start_s"])
    assert len(stretches) > 0  # the sample's single recordings are split in time
    assert json.loads((run.results / "skipped_models.json").read_text())[0]["model"] == "stage2"


def _stage_worker(rank: int, world_size: int, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        config = load_config("smoke", ["benchmark.models=[random]", "benchmark.directions=[A2T, T2A]"])
        entries = run_benchmark_stage(config, "distributed")
        (run_paths("distributed").root / f"rank{rank}.json").write_text(json.dumps(len(entries)))
    finally:
        torch.distributed.destroy_process_group()


def test_stage_under_torch_distributed(tmp_path: Path):
    manifest = sample_manifest()
    write_manifest(run_paths("distributed"), manifest)
    write_manifest(run_paths("single"), manifest)
    torch.multiprocessing.spawn(_stage_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
    root = run_paths("distributed").root
    assert json.loads((root / "rank1.json").read_text()) == 0  # only rank 0 scores
    distributed = json.loads((root / "results" / "results.json").read_text())
    config = load_config("smoke", ["benchmark.models=[random]", "benchmark.directions=[A2T, T2A]"])
    single = run_benchmark_stage(config, "single")
    assert json.loads((root / "rank0.json").read_text()) == len(single)
    assert distributed == json.loads(json.dumps(single))


def test_command_line_needs_finished_data_stage(tmp_path, monkeypatch, capsys):
    from biovita_nb.benchmark import main

    monkeypatch.setenv("BIOVITA_RUNS", str(tmp_path / "runs"))
    with pytest.raises(SystemExit) as info:
        main(["--preset", "smoke", "--run-name", "nothing"])
    assert info.value.code == 2
    assert "the data stage of run 'nothing' has not finished" in capsys.readouterr().err


def test_torchrun_two_ranks_score_benchmark(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from biovita_nb.config import complete_stage, init_run, stage_complete
    from biovita_nb.data import run_data_stage

    config = load_config("smoke", ["benchmark.models=[random]"])
    run = init_run(config, "ranks", tmp_path / "runs")
    run_data_stage(config, run, progress=False)
    complete_stage("data", run)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "biovita_nb.benchmark", "--preset", "smoke", "--run-name", "ranks",
               "--override", "benchmark.models=[random]"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "BIOVITA_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]

    assert stage_complete(run, "bench")
    entries = json.loads((run.results / "results.json").read_text())
    assert {entry["model"] for entry in entries} == {"random"}
    assert len({(e["split"], e["level"], e["direction"]) for e in entries}) == 36
