"""Building the benchmark from a manifest: candidates, splits, levels, determinism and small taxon pools."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biovita_nb.benchmark import (DIRECTIONS, LEVELS, build_benchmark, example_manifest, load_benchmark, score_task,
                                  task_filename)
from biovita_nb.config import load_config

ITEM_COLUMNS = ["item_id", "path", "url", "source", "status", "sha256", "bytes", "kingdom", "phylum", "class", "order",
                "family", "genus", "scientific_name", "accepted_name", "common_name", "species_key", "genus_key",
                "family_key", "species_set"]


def synthetic_manifest(n_seen: int = 150, n_unseen: int = 12, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A manifest with the contract's columns: many species, 1-3 recordings and 0-2 photos each."""
    rng = np.random.default_rng(seed)
    classes = ["Aves", "Mammalia", "Amphibia", "Insecta"]
    recordings, images, splits = [], [], []
    for index in range(n_seen + n_unseen):
        species_set = "seen" if index < n_seen else "unseen"
        genus, family = f"Genus{index % 40}", f"Family{index % 40 % 9}"
        taxonomy = {"kingdom": "Animalia", "phylum": "Chordata", "class": classes[index % 40 % 9 % 4], "order": "",
                    "family": family, "genus": genus, "scientific_name": f"{genus} species{index}",
                    "accepted_name": f"{genus} species{index}", "common_name": f"Common {index}",
                    "species_key": f"{genus} species{index}", "genus_key": genus, "family_key": family,
                    "species_set": species_set}
        for copy in range(int(rng.integers(1, 4))):
            item_id = f"r{index}-{copy}"
            recordings.append({"item_id": item_id, "path": f"/data/{item_id}.mp3", "url": None, "source": "x",
                               "status": "ok", "sha256": "", "bytes": 1, **taxonomy})
            splits.append({"modality": "audio", "item_id": item_id, "split": "test", "species_set": species_set,
                           "start_s": np.nan, "end_s": np.nan})
        for copy in range(int(rng.integers(0, 3))):
            item_id = f"i{index}-{copy}"
            images.append({"item_id": item_id, "path": f"/data/{item_id}.jpg", "url": None, "source": "x",
                           "status": "ok", "sha256": "", "bytes": 1, **taxonomy})
            splits.append({"modality": "image", "item_id": item_id, "split": "test", "species_set": species_set,
                           "start_s": np.nan, "end_s": np.nan})
    return {"recordings": pd.DataFrame(recordings, columns=ITEM_COLUMNS),
            "images": pd.DataFrame(images, columns=ITEM_COLUMNS), "splits": pd.DataFrame(splits)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple:
    manifest = synthetic_manifest()
    folder = tmp_path_factory.mktemp("bench") / "benchmark"
    return manifest, build_benchmark(manifest, folder, load_config("smoke"))


def rows_of(benchmark, split: str, level: str, direction: str) -> pd.DataFrame:
    return pd.read_csv(benchmark.root / split / level / task_filename(direction), keep_default_na=False)


def test_build_writes_all_36_tasks(built):
    _, benchmark = built
    assert len(benchmark.scenarios()) == 36
    for split in ("seen", "unseen"):
        for level in LEVELS:
            for direction in DIRECTIONS:
                assert (benchmark.root / split / level / task_filename(direction)).is_file()
    assert sorted(p.name for p in (benchmark.root / "ids").iterdir()) == ["audio_index.csv", "image_index.csv",
                                                                         "text_index.csv"]


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_candidates_follow_the_rules(built, direction):
    manifest, benchmark = built
    query_modality, target_modality = DIRECTIONS[direction]
    index = {m: benchmark.index(m) for m in ("audio", "image", "text")}
    for split in ("seen", "unseen"):
        for level in LEVELS:
            table = rows_of(benchmark, split, level, direction)
            target = index[target_modality]
            target = target[(target["species_set"] == split) & (target[level] != "")]
            pool = set(target[level])
            items_of = target.groupby(level)["id"].apply(lambda s: sorted(s.tolist())).to_dict()
            for row in table.itertuples():
                taxa = json.loads(row.candidates_taxa)
                groups = json.loads(row.candidates_target_ids)
                assert row.correct_taxon in taxa
                assert len(taxa) == len(set(taxa)) == min(100, len(pool))
                assert set(taxa) <= pool
                if target_modality == "text":
                    assert all(len(g) == 1 for g in groups)
                else:
                    assert [sorted(g) for g in groups] == [items_of[t] for t in taxa]
                assert row.task == direction
                assert row.taxon_level == level
            query = index[query_modality]
            query = query[(query["species_set"] == split) & (query[level] != "") & query[level].isin(pool)]
            expected = query[level].nunique() if query_modality == "text" else len(query)
            assert len(table) == expected


def test_species_pool_over_100_draws_99_others(built):
    _, benchmark = built
    table = rows_of(benchmark, "seen", "species", "A2T")
    lengths = table["candidates_taxa"].map(lambda s: len(json.loads(s)))
    assert (lengths == 100).all()
    positions = [json.loads(t).index(c) for t, c in zip(table["candidates_taxa"], table["correct_taxon"])]
    assert len(set(positions)) > 20  # the correct taxon is not always in the same slot


def test_small_pools_use_every_taxon_and_say_so(built):
    _, benchmark = built
    scenario = next(s for s in benchmark.info["scenarios"]
                    if (s["split"], s["level"], s["direction"]) == ("unseen", "species", "A2T"))
    assert scenario["n_taxa"] == 12
    assert scenario["n_candidates"] == 12
    assert "only 12 taxa" in scenario["note"]


def test_build_is_deterministic(tmp_path: Path):
    manifest = synthetic_manifest(n_seen=60, n_unseen=5)
    first = build_benchmark(manifest, tmp_path / "a", load_config("smoke"))
    second = build_benchmark(manifest, tmp_path / "b", load_config("smoke"))
    other_seed = build_benchmark(manifest, tmp_path / "c", load_config("smoke", ["seed=1"]))
    for split, level, direction in first.scenarios():
        relative = Path(split) / level / task_filename(direction)
        assert filecmp.cmp(first.root / relative, second.root / relative, shallow=False)
    assert not filecmp.cmp(first.root / "seen/species/test_audio_to_image.csv",
                           other_seed.root / "seen/species/test_audio_to_image.csv", shallow=False)


def test_unusable_items_left_out_and_counted(tmp_path: Path):
    manifest = synthetic_manifest(n_seen=20, n_unseen=3)
    manifest["recordings"].loc[0, "status"] = "download failed: 404"
    manifest["recordings"].loc[1, "path"] = None
    benchmark = build_benchmark(manifest, tmp_path / "b", load_config("smoke"))
    assert benchmark.info["excluded_items"] == {"audio: download failed: 404": 1, "audio: ok": 1}
    assert manifest["recordings"].loc[0, "item_id"] not in set(benchmark.audio_index["item_id"])


def test_genus_only_item_counts_at_genus_level(tmp_path: Path):
    manifest = synthetic_manifest(n_seen=20, n_unseen=3)
    manifest["recordings"].loc[0, ["species_key", "scientific_name", "accepted_name"]] = ["", "Genus0 sp.", "Genus0 sp."]
    benchmark = build_benchmark(manifest, tmp_path / "b", load_config("smoke"))
    item_id = manifest["recordings"].loc[0, "item_id"]
    species_queries = rows_of(benchmark, "seen", "species", "A2T")["query_id"]
    genus_queries = rows_of(benchmark, "seen", "genus", "A2T")["query_id"]
    assert item_id not in set(species_queries)
    assert item_id in set(genus_queries)


def test_time_split_stretches_are_separate_items(tmp_path: Path):
    benchmark = build_benchmark(example_manifest(), tmp_path / "b", load_config("smoke"))
    stretches = benchmark.audio_index[benchmark.audio_index["item_id"] == "a00"]
    assert stretches[["start_s", "end_s"]].values.tolist() == [[20.0, 30.0], [30.0, 40.0]]
    assert set(rows_of(benchmark, "seen", "species", "A2I")["query_id"]) >= {"a00@20.000-30.000", "a00@30.000-40.000"}


def test_text_items_per_level(tmp_path: Path):
    benchmark = build_benchmark(example_manifest(), tmp_path / "b", load_config("smoke"))
    text = benchmark.text_index.set_index("species")
    assert text.loc["Turdus migratorius", ["text_common_name", "text_species", "text_genus", "text_family"]].tolist() == \
        ["American Robin", "Turdus migratorius", "Turdus", "Turdidae"]
    genus_t2a = rows_of(benchmark, "seen", "genus", "T2A")
    assert sorted(genus_t2a["query_id"]) == ["text:Canis", "text:Turdus"]
    a2t = rows_of(benchmark, "seen", "family", "A2T")
    assert all(len(json.loads(g)) == 2 for g in a2t["candidates_target_ids"])  # Turdidae and Canidae, one text each


def test_zero_query_scenario_scores_as_none(tmp_path: Path):
    manifest = example_manifest()
    unseen_images = manifest["images"]["species_set"] == "unseen"
    manifest["splits"] = manifest["splits"][~manifest["splits"]["item_id"].isin(manifest["images"].loc[unseen_images, "item_id"])]
    benchmark = build_benchmark(manifest, tmp_path / "b", load_config("smoke"))
    task = benchmark.task("unseen", "species", "A2I")
    assert task.n_queries == 0
    result = score_task(task, [], np.zeros((0, 4), np.float32), [], np.zeros((0, 4), np.float32))
    assert result["n_queries"] == 0
    assert result["top1"] is None
    assert result["top10"] is None


def test_rebuild_reuses_or_forces(tmp_path: Path):
    config = load_config("smoke")
    first = build_benchmark(example_manifest(), tmp_path / "b", config)
    stamp = (first.root / "benchmark.json").stat().st_mtime_ns
    build_benchmark(example_manifest(), tmp_path / "b", config)
    assert (first.root / "benchmark.json").stat().st_mtime_ns == stamp
    build_benchmark(example_manifest(), tmp_path / "b", config, force=True)
    assert (first.root / "benchmark.json").stat().st_mtime_ns != stamp


def test_manifest_missing_column_named(tmp_path: Path):
    manifest = example_manifest()
    manifest["recordings"] = manifest["recordings"].drop(columns=["genus_key"])
    with pytest.raises(ValueError, match=r"recordings lacks column\(s\) \['genus_key'\]"):
        build_benchmark(manifest, tmp_path / "b", load_config("smoke"))


def test_manifest_folder_read(tmp_path: Path):
    manifest = example_manifest()
    folder = tmp_path / "manifest"
    folder.mkdir()
    for name, table in manifest.items():
        table.to_parquet(folder / f"{name}.parquet")
    from_folder = build_benchmark(folder, tmp_path / "a", load_config("smoke"))
    from_tables = build_benchmark(manifest, tmp_path / "b", load_config("smoke"))
    assert from_folder.info["fingerprint"] == from_tables.info["fingerprint"]
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        build_benchmark(tmp_path / "nowhere", tmp_path / "c", load_config("smoke"))
