"""The published file layout: a benchmark written elsewhere loads and scores; ours round-trips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biovita_nb.benchmark import (DIRECTIONS, build_benchmark, example_manifest, load_benchmark, read_task_csv,
                                  score_task_file, task_filename, text_strings, write_task_csv)
from biovita_nb.config import load_config

SPECIES = [  # species, genus, family, class, common name
    ("Turdus migratorius", "Turdus", "Turdidae", "Aves", "American Robin"),
    ("Turdus merula", "Turdus", "Turdidae", "Aves", "Common Blackbird"),
    ("Corvus corax", "Corvus", "Corvidae", "Aves", "Common Raven"),
    ("Canis lupus", "Canis", "Canidae", "Mammalia", "Gray Wolf"),
    ("Pseudacris maculata", "Pseudacris", "Hylidae", "Amphibia", "Boreal Chorus Frog"),
]


def write_published_benchmark(root: Path) -> None:
    """Write a benchmark the way another tool would: only the published columns, spaced JSON, relative paths."""
    ids = root / "ids"
    ids.mkdir(parents=True)
    audio = [(i, f"audio/{s.split()[1]}_{k}.mp3", s) for i, (s, k) in enumerate((s[0], k) for s in SPECIES for k in range(2))]
    image = [(i, f"images/{s[0].split()[1]}.jpg", s[0]) for i, s in enumerate(SPECIES)]
    pd.DataFrame([(i, p) for i, p, _ in audio], columns=["id", "file_path"]).to_csv(ids / "audio_index.csv", index=False)
    pd.DataFrame([(i, p) for i, p, _ in image], columns=["id", "file_path"]).to_csv(ids / "image_index.csv", index=False)
    pd.DataFrame([(i, s, g, f, c, n) for i, (s, g, f, c, n) in enumerate(SPECIES)],
                 columns=["id", "species", "genus", "family", "class", "common_name"]).to_csv(ids / "text_index.csv", index=False)
    taxa = {s[0]: s for s in SPECIES}
    audio_of = {s: [i for i, _, x in audio if x == s] for s in taxa}
    image_of = {s: [i for i, _, x in image if x == s] for s in taxa}
    text_of = {s[0]: [i] for i, s in enumerate(SPECIES)}
    rows = []
    for query, _, species in audio:
        candidates = [s[0] for s in SPECIES if s[0] != species][:3] + [species]
        rows.append({"query_id": f"audio-{query}", "query_payload_id": query, "task": "A2T_species",
                     "taxon_level": "species", "correct_taxon": species, "candidates_taxa": json.dumps(candidates),
                     "candidates_target_ids": json.dumps([text_of[c] for c in candidates]),
                     "taxon_class": taxa[species][3]})
    (root / "species").mkdir()
    pd.DataFrame(rows).to_csv(root / "species" / "test_audio_to_text.csv", index=False)
    rows = []
    for query, _, species in image:
        candidates = [species] + [s[0] for s in SPECIES if s[0] != species]
        rows.append({"query_id": f"image-{query}", "query_payload_id": query, "task": "I2A", "taxon_level": "species",
                     "correct_taxon": species, "candidates_taxa": json.dumps(candidates),
                     "candidates_target_ids": json.dumps([audio_of[c] for c in candidates]), "taxon_class": taxa[species][3]})
    pd.DataFrame(rows).to_csv(root / "species" / "test_image_to_audio.csv", index=False)


def test_published_layout_loads(tmp_path: Path):
    root = tmp_path / "published"
    write_published_benchmark(root)
    benchmark = load_benchmark(root)
    assert benchmark.scenarios() == [("published", "species", "A2T"), ("published", "species", "I2A")]
    assert benchmark.audio_index["file_path"].iloc[0] == str(root / "audio" / "migratorius_0.mp3")
    task = benchmark.task("published", "species", "A2T")
    assert task.n_queries == 10
    assert task.candidate_counts().tolist() == [4] * 10
    assert (task.correct == 3).all()
    i2a = benchmark.task("published", "species", "I2A")
    assert [i2a.group(g).tolist() for g in i2a.candidates[0]] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_published_text_index_fields(tmp_path: Path):
    root = tmp_path / "published"
    write_published_benchmark(root)
    text = load_benchmark(root).text_index
    assert text_strings(text, "genus") == [s[1] for s in SPECIES]
    assert text_strings(text, "common_name") == [s[4] for s in SPECIES]
    assert text_strings(text, "species") == [s[0] for s in SPECIES]
    with pytest.raises(ValueError, match="no column text_order or order"):
        text_strings(text, "order")
    renamed = text.drop(columns=["common_name"]).assign(com_canon=[s[4].lower() for s in SPECIES])
    assert text_strings(renamed, "common_name") == [s[4].lower() for s in SPECIES]


def test_classes_from_text_index_when_file_has_none(tmp_path: Path):
    root = tmp_path / "published"
    write_published_benchmark(root)
    path = root / "species" / "test_audio_to_text.csv"
    pd.read_csv(path).drop(columns=["taxon_class"]).to_csv(path, index=False)
    task = load_benchmark(root).task("published", "species", "A2T")
    assert task.taxon_classes.tolist() == [taxon_class for s in SPECIES for taxon_class in (s[3], s[3])]


def test_published_layout_scores(tmp_path: Path):
    root = tmp_path / "published"
    write_published_benchmark(root)
    # Audio features point at their species' text; image features at the species before theirs (always wrong).
    text = np.eye(8, dtype=np.float32)[:5]
    audio = np.repeat(text, 2, axis=0)
    image = np.roll(np.repeat(text, 2, axis=0)[::2], 1, axis=0)
    a2t = score_task_file(root / "species" / "test_audio_to_text.csv", np.arange(10), audio, np.arange(5), text)
    assert a2t["top1"] == 100.0
    assert a2t["n_queries"] == 10
    assert a2t["n_candidates"] == 4
    assert set(a2t["per_class"]) == {"Aves", "Mammalia", "Amphibia"}
    assert a2t["per_class"]["Aves"]["n_queries"] == 6
    i2a = score_task_file(root / "species" / "test_image_to_audio.csv", np.arange(5), image, np.arange(10), audio,
                          ks=(1, 5))
    assert i2a["top1"] == 0.0
    assert i2a["top5"] == 100.0


def test_ids_folder_next_to_split_folders(tmp_path: Path):
    root = tmp_path / "bench"
    write_published_benchmark(root / "seen")
    (root / "seen" / "ids").rename(root / "ids")
    benchmark = load_benchmark(root)
    assert benchmark.splits == ["seen"]
    assert benchmark.ids_dir == root / "ids"
    assert len(load_benchmark(root / "seen").text_index) == 5  # a split folder finds ids/ one level up


def test_missing_ids_folder_named(tmp_path: Path):
    (tmp_path / "bench" / "species").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no ids/ folder"):
        load_benchmark(tmp_path / "bench")


def test_our_benchmark_round_trips(tmp_path: Path):
    built = build_benchmark(example_manifest(), tmp_path / "ours", load_config("smoke"))
    copy = tmp_path / "copy"
    for split, level, direction in built.scenarios():
        write_task_csv(built.task(split, level, direction), copy / split / level / task_filename(direction))
    for name in ("audio", "image", "text"):
        (copy / "ids").mkdir(exist_ok=True)
        (copy / "ids" / f"{name}_index.csv").write_bytes((built.ids_dir / f"{name}_index.csv").read_bytes())
    again = load_benchmark(copy)
    assert again.scenarios() == built.scenarios()
    for key in built.scenarios():
        first, second = built.task(*key), again.task(*key)
        for field in ("query_payload_ids", "candidates", "correct", "group_offsets", "group_items"):
            assert np.array_equal(getattr(first, field), getattr(second, field)), (key, field)
        assert first.group_taxa.tolist() == second.group_taxa.tolist()
        assert first.taxon_classes.tolist() == second.taxon_classes.tolist()
        assert (built.task_files[key].read_bytes() == again.task_files[key].read_bytes())


def test_task_file_columns_are_published_ones(tmp_path: Path):
    built = build_benchmark(example_manifest(), tmp_path / "ours", load_config("smoke"))
    for key, path in built.task_files.items():
        header = path.read_text().splitlines()[0].split(",")
        assert header == ["query_id", "query_payload_id", "task", "taxon_level", "correct_taxon", "candidates_taxa",
                          "candidates_target_ids", "taxon_class"], path
    text = pd.read_csv(built.ids_dir / "text_index.csv")
    assert {"id", "species", "genus", "family", "class", "common_name"} <= set(text.columns)
    for modality in ("audio", "image"):
        assert {"id", "file_path"} <= set(pd.read_csv(built.ids_dir / f"{modality}_index.csv").columns)
    task = read_task_csv(built.root / "unseen" / "species" / task_filename("A2I"))
    assert task.direction == "A2I"
