"""Building manifests: the bundled sample, BioVITA-layout tables served over HTTP, resume and repeatability."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import biovita_nb.data as data
from biovita_nb.cli import run_stage
from biovita_nb.config import load_config, run_paths, sample_dir
from biovita_nb.data import (SourceFormatError, build_manifest, load_manifest, read_recordings, run_data_stage,
                             sha256_file)
from test_download import FaultServer

RECORDING_COLUMNS = {"item_id", "path", "url", "source", "status", "sha256", "bytes", "duration_s", "sample_rate",
                     "channels", "kingdom", "phylum", "class", "order", "family", "genus", "scientific_name",
                     "accepted_name", "common_name", "species_key", "genus_key", "family_key", "species_set"}
IMAGE_COLUMNS = RECORDING_COLUMNS - {"duration_s", "sample_rate", "channels"} | {"width", "height"}
SPLIT_COLUMNS = {"modality", "item_id", "split", "species_set", "start_s", "end_s"}


def quiet(preset: str = "smoke", **overrides) -> dict:
    return load_config(preset, overrides)


def test_sample_manifest_contract(tmp_path):
    manifest = build_manifest(quiet("demo"), tmp_path / "manifest", progress=False)
    assert RECORDING_COLUMNS <= set(manifest.recordings.columns)
    assert IMAGE_COLUMNS <= set(manifest.images.columns)
    assert SPLIT_COLUMNS <= set(manifest.splits.columns)
    assert manifest.recordings["status"].eq("ok").all()
    assert manifest.images["status"].eq("ok").all()
    assert manifest.recordings["item_id"].is_unique
    assert manifest.images["item_id"].is_unique
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest.recordings["path"])
    expected = pd.read_csv(sample_dir() / "recordings.csv")
    assert manifest.recordings["sha256"].tolist() == expected["sha256"].tolist()
    assert manifest.recordings["sample_rate"].tolist() == expected["sample_rate"].tolist()
    assert manifest.recordings["channels"].tolist() == expected["channels"].tolist()
    # Header durations: the MP3 headers overstate the decoded length by 0.3 to 1.6 s.
    assert np.allclose(manifest.recordings["duration_s"], expected["header_duration_s"], atol=0.5)
    assert manifest.images["width"].tolist() == pd.read_csv(sample_dir() / "images.csv")["width"].tolist()
    for name in ("recordings.parquet", "images.parquet", "splits.parquet", "card.md", "summary.json", "manifest.json"):
        assert (tmp_path / "manifest" / name).is_file()


def test_sample_species_sets_and_splits(tmp_path):
    manifest = build_manifest(quiet("demo"), tmp_path / "manifest", progress=False)
    unseen = manifest.species("unseen")
    assert len(unseen) == 4
    tri_modal = set(manifest.recordings["species_key"]) & set(manifest.images["species_key"])
    assert set(unseen) <= tri_modal
    assert set(manifest.recordings.loc[manifest.recordings["species_key"].isin(unseen), "species_set"]) == {"unseen"}
    unseen_rows = manifest.splits[manifest.splits["species_set"] == "unseen"]
    assert unseen_rows["split"].eq("test").all()
    assert unseen_rows["start_s"].isna().all()

    seen_audio = manifest.splits[(manifest.splits["modality"] == "audio") & (manifest.splits["species_set"] == "seen")]
    for item_id, rows in seen_audio.groupby("item_id"):
        if len(rows) == 2:  # a time split: two stretches that touch but never overlap
            train, test = rows.set_index("split").loc["train"], rows.set_index("split").loc["test"]
            assert train["start_s"] == 0.0
            assert train["end_s"] == test["start_s"] < test["end_s"]
            duration = test["end_s"]
            assert test["end_s"] - test["start_s"] == pytest.approx(max(0.1 * duration, min(10.0, duration / 2)))
        else:
            assert rows["split"].tolist() == ["train"]
            assert rows["start_s"].isna().all()
    short = seen_audio[seen_audio["reason"] == "too_short_to_split"]
    assert set(short["item_id"]) == {"ysl-a015"}  # red fox, 8.7 s
    bison = seen_audio[seen_audio["species_key"] == "Bison bison"]
    if len(bison):
        assert sorted(bison["reason"]) == ["other_recording", "time_split", "time_split"]

    seen_images = manifest.splits[(manifest.splits["modality"] == "image") & (manifest.splits["species_set"] == "seen")]
    assert seen_images["shared"].all()
    assert seen_images["reason"].eq("single_image_shared").all()
    for item_id, rows in seen_images.groupby("item_id"):
        assert sorted(rows["split"]) == ["test", "train"], item_id
    card = (tmp_path / "manifest" / "card.md").read_text()
    assert "shared between training and test" in card
    assert "Unseen species (4)" in card


def test_split_settings_change_splits(tmp_path):
    manifest = build_manifest(quiet("demo", **{"data.single_image": "train", "data.unseen.rule": "random",
                                              "data.unseen.count": 2}), tmp_path / "m", progress=False)
    images = manifest.splits[(manifest.splits["modality"] == "image") & (manifest.splits["species_set"] == "seen")]
    assert images["split"].eq("train").all()
    assert not images["shared"].any()
    assert len(manifest.species("unseen")) == 2


def test_build_twice_gives_same_manifest(tmp_path):
    config = quiet()
    first = build_manifest(config, tmp_path / "a", progress=False)
    second = build_manifest(config, tmp_path / "b", progress=False, force=True)
    for name in ("recordings", "images", "splits"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert (tmp_path / "a" / "card.md").read_text() == (tmp_path / "b" / "card.md").read_text()
    for name in ("recordings.parquet", "images.parquet", "splits.parquet", "summary.json"):
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name), name


def test_seed_changes_unseen_species(tmp_path):
    species = {tuple(build_manifest(quiet(seed=seed), tmp_path / str(seed), progress=False).summary["unseen_species"])
               for seed in (0, 1, 2, 3)}
    assert len(species) > 1


def test_complete_manifest_reused(tmp_path, monkeypatch):
    config = quiet()
    first = build_manifest(config, tmp_path / "m", progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a complete manifest must not be measured again")

    monkeypatch.setattr(data, "probe_audio", refuse)
    monkeypatch.setattr(data, "probe_image", refuse)
    again = build_manifest(config, tmp_path / "m", progress=False)
    pd.testing.assert_frame_equal(first.splits, again.splits)
    rebuilt = build_manifest(quiet(seed=5), tmp_path / "m", progress=False)  # other settings: rebuilt, measurements reused
    assert rebuilt.summary["seed"] == 5


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    config = quiet()
    reference = build_manifest(config, tmp_path / "reference", progress=False)
    original = data.probe_audio
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "probe_audio", failing)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        build_manifest(config, tmp_path / "m", progress=False, chunk_rows=4)
    assert not (tmp_path / "m" / "manifest.json").exists()
    assert len(list((tmp_path / "m" / ".build").glob("audio-probe-*.parquet"))) == 2  # two full chunks of 4 saved

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "probe_audio", counting)
    resumed = build_manifest(config, tmp_path / "m", progress=False, chunk_rows=4)
    assert counted["n"] == 27 - 8
    for name in ("recordings", "images", "splits"):
        pd.testing.assert_frame_equal(getattr(resumed, name), getattr(reference, name))

    counted["n"] = 0
    build_manifest(config, tmp_path / "m", progress=False, chunk_rows=4, force=True)
    assert counted["n"] == 27  # force drops the saved measurements


@pytest.fixture()
def broken_sample(sample_copy):
    """A copy of the sample with one changed file, one undecodable file and one missing file."""
    table = pd.read_csv(sample_copy / "recordings.csv")
    changed = sample_copy / "audio" / "bald-eagle.mp3"
    changed.write_bytes(changed.read_bytes()[:-100])
    garbage = sample_copy / "audio" / "coyote.mp3"
    garbage.write_bytes(b"ID3" + bytes(5000))
    table.loc[table["file_name"] == "audio/coyote.mp3", "sha256"] = sha256_file(garbage)
    (sample_copy / "audio" / "red-fox.mp3").unlink()
    table.to_csv(sample_copy / "recordings.csv", index=False)
    return sample_copy


def test_bad_files_recorded_with_reasons(broken_sample, tmp_path):
    config = quiet(**{"data.source": "tables", "data.recordings_table": str(broken_sample / "recordings.csv"),
                      "data.images_table": str(broken_sample / "images.csv")})
    manifest = build_manifest(config, tmp_path / "m", progress=False)
    status = manifest.recordings.set_index("item_id")["status"]
    assert status["ysl-a003"] == "checksum_mismatch"
    assert status["ysl-a013"] == "decode_error"
    assert status["ysl-a015"] == "missing_file"
    assert (status == "ok").sum() == 24
    detail = manifest.recordings.set_index("item_id")["status_detail"]
    assert "expected sha256 73fa4589" in detail["ysl-a003"]
    assert "coyote.mp3" in detail["ysl-a013"]
    assert not manifest.splits["item_id"].isin(["ysl-a003", "ysl-a013", "ysl-a015"]).any()
    assert manifest.summary["recordings"]["status"] == {"ok": 24, "missing_file": 1, "checksum_mismatch": 1,
                                                       "decode_error": 1}
    card = (tmp_path / "m" / "card.md").read_text()
    assert "| recordings | checksum_mismatch | 1 |" in card


def test_many_recordings_split_by_recording(tmp_path):
    rows = pd.read_csv(sample_dir() / "recordings.csv")
    coyote = rows[rows["recording_id"] == "ysl-a013"]
    many = pd.concat([coyote.assign(recording_id=f"ysl-c{i:02d}") for i in range(15)], ignore_index=True)
    table = tmp_path / "recordings.csv"
    both = pd.concat([rows, many])
    both["file_name"] = [str(sample_dir() / name) for name in both["file_name"]]
    both.to_csv(table, index=False)
    manifest = build_manifest(quiet(**{"data.source": "tables", "data.recordings_table": str(table),
                                       "data.unseen.count": 0}), tmp_path / "m", progress=False)
    coyote_rows = manifest.splits[manifest.splits["species_key"] == "Canis latrans"]
    assert len(coyote_rows) == 16
    assert coyote_rows["reason"].eq("recording_split").all()
    assert (coyote_rows["split"] == "test").sum() == 2  # 10 % of 16, rounded half up
    assert coyote_rows["start_s"].isna().all()


def test_unknown_and_missing_columns_named(tmp_path):
    table = pd.read_csv(sample_dir() / "recordings.csv").rename(columns={"order": "ordre"})
    path = tmp_path / "recordings.csv"
    table.to_csv(path, index=False)
    with pytest.raises(SourceFormatError, match=r"recordings\.csv: missing column 'order'"):
        read_recordings(path, extra_columns="ignore")
    with pytest.raises(SourceFormatError, match=r"recordings\.csv: unknown column\(s\) 'ordre'"):
        build_manifest(quiet(**{"data.source": "tables", "data.recordings_table": str(path)}), tmp_path / "m")


def test_missing_table_setting_explained(tmp_path):
    with pytest.raises(ValueError, match="needs data.recordings_table"):
        build_manifest(quiet(**{"data.source": "biovita"}), tmp_path / "m")


def test_traits_carried_into_manifest(tmp_path):
    traits = tmp_path / "traits.csv"
    pd.DataFrame({"scientific_name": ["Bison bison", "Canis lupus", "Ursus arctos"],
                  "diet": ["herbivore", "carnivore", "omnivore"], "habitat": ["grassland", "", "forest"]}
                 ).to_csv(traits, index=False)
    manifest = build_manifest(quiet(**{"data.traits_table": str(traits)}), tmp_path / "m", progress=False)
    assert manifest.traits["species_key"].tolist() == ["Bison bison", "Canis lupus", "Ursus arctos"]
    assert manifest.traits["habitat"].isna().tolist() == [False, True, False]
    assert manifest.summary["traits"] == {"species": 3, "columns": ["diet", "habitat"], "species_in_manifest": 2}
    assert "## Traits" in (tmp_path / "m" / "card.md").read_text()


def test_images_from_published_folders(tmp_path):
    folders = tmp_path / "images"
    for species, file in (("bison_bison", "american-bison.jpg"), ("canis_lupus", "gray-wolf.jpg"),
                          ("elk_unknown", "elk.jpg")):
        (folders / species).mkdir(parents=True)
        shutil.copy(sample_dir() / "images" / file, folders / species / file)
    config = quiet(**{"data.source": "tables", "data.recordings_table": str(sample_dir() / "recordings.csv"),
                      "data.images_table": str(folders), "data.unseen.count": 1})
    images = build_manifest(config, tmp_path / "m", progress=False).images.set_index("item_id")
    assert images.loc["bison_bison/american-bison", "family_key"] == "Bovidae"  # ranks from the recordings
    assert images.loc["canis_lupus/gray-wolf", "common_name"] == "Gray Wolf"
    assert images.loc["elk_unknown/elk", "species_key"] == "Elk unknown"
    assert images["status"].eq("ok").all()


def biovita_table(server: FaultServer, rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """A BioVITA metadata table: (recording_id, url behaviour, file, species) per row."""
    sample = pd.read_csv(sample_dir() / "recordings.csv").set_index("file_name")
    records = []
    for recording_id, behaviour, file, species in rows:
        taxon = sample.loc[f"audio/{file}"] if species == "" else None
        records.append({
            "download_url": server.url(behaviour, file) if behaviour else "", "source": "xc",
            "recording_id": recording_id, "file_name": "",
            "scientific_name": species or taxon["scientific_name"], "accepted_name": "" if species else taxon["accepted_name"],
            "class": "Aves" if species else taxon["class"], "order": "Passeriformes" if species else taxon["order"],
            "family": "Corvidae" if species else taxon["family"], "genus": species.split()[0] if species else taxon["genus"],
            "com": "" if species else taxon["com"]})
    return pd.DataFrame(records)


def test_biovita_layout_built_from_server(tmp_path):
    files = {name: (sample_dir() / "audio" / name).read_bytes()
             for name in ("coyote.mp3", "gray-wolf.mp3", "bald-eagle.mp3", "american-bison.mp3", "american-bison-2.mp3")}
    files.update({name: (sample_dir() / "images" / name).read_bytes()
                  for name in ("coyote.jpg", "gray-wolf.jpg", "bald-eagle.jpg", "american-bison.jpg")})
    with FaultServer(files, slow_s=1.0) as server:
        recordings = biovita_table(server, [
            ("101", "file", "coyote.mp3", ""), ("102", "flaky", "gray-wolf.mp3", ""),
            ("103", "file", "bald-eagle.mp3", ""), ("104", "drop-once", "american-bison.mp3", ""),
            ("105", "file", "american-bison-2.mp3", ""), ("106", "missing", "coyote.mp3", ""),
            ("107", "html", "coyote.mp3", ""), ("../../108", "file", "gray-wolf.mp3", ""),
            ("109", "slow", "coyote.mp3", ""), ("101", "file", "coyote.mp3", ""),
            ("110", "file", "coyote.mp3", "Corvus sp."), ("111", "", "coyote.mp3", "")])
        table = tmp_path / "metadata.csv"
        recordings.to_csv(table, index=False)
        images = pd.DataFrame({"image_id": ["i1", "i2", "i3", "i4"], "source": "inat",
                               "scientific_name": ["Canis latrans", "Canis lupus", "Haliaeetus leucocephalus", "Bison bison"],
                               "url": [server.url("file", n) for n in ("coyote.jpg", "gray-wolf.jpg", "bald-eagle.jpg",
                                                                       "american-bison.jpg")]})
        images.to_csv(tmp_path / "images.csv", index=False)
        config = quiet(**{"data.source": "biovita", "data.recordings_table": str(table),
                          "data.images_table": str(tmp_path / "images.csv"), "data.files_root": str(tmp_path / "files"),
                          "data.download.enabled": True, "data.download.timeout_s": 0.3, "data.download.retries": 1,
                          "data.download.backoff_s": 0.01, "data.download.workers": 4, "data.unseen.count": 1})
        manifest = build_manifest(config, tmp_path / "manifest", progress=False)

        status = manifest.recordings.set_index("item_id")["status"]
        assert status.to_dict() == {
            "xc-101": "ok", "xc-102": "ok", "xc-103": "ok", "xc-104": "ok", "xc-105": "ok",
            "xc-106": "download_failed", "xc-107": "download_failed", "xc-../../108": "ok", "xc-109": "download_failed",
            "xc-101~2": "duplicate_id", "xc-110": "missing_species", "xc-111": "no_file"}
        ok = manifest.recordings[manifest.recordings["status"] == "ok"]
        root = (tmp_path / "files").resolve()
        assert all(Path(p).resolve().is_relative_to(root / "audio") for p in ok["path"])
        assert ok.set_index("item_id").loc["xc-102", "sha256"] == sha256_file(sample_dir() / "audio" / "gray-wolf.mp3")
        assert manifest.images["status"].eq("ok").all()
        assert manifest.images.set_index("item_id").loc["inat-i4", "family_key"] == "Bovidae"

        failures = pd.read_csv(tmp_path / "manifest" / "download_failures.csv")
        assert dict(zip(failures["item_id"], failures["reason"])) == {
            "xc-106": "http_client_error", "xc-107": "html_page", "xc-109": "timeout"}
        assert manifest.summary["download_failures"] == {"audio/html_page": 1, "audio/http_client_error": 1,
                                                         "audio/timeout": 1}
        assert len(manifest.species("unseen")) == 1
        assert "Failed downloads by reason" in (tmp_path / "manifest" / "card.md").read_text()

        hits = sum(server.hits.values())
        rebuilt = build_manifest(config, tmp_path / "manifest", progress=False, force=True)
        pd.testing.assert_frame_equal(rebuilt.recordings, manifest.recordings)
        assert sum(server.hits.values()) - hits == 1 + 1 + 2  # only the failures are fetched again (timeouts twice)


def test_download_disabled_marks_rows(tmp_path):
    with FaultServer({}) as server:
        recordings = biovita_table(server, [("1", "file", "coyote.mp3", ""), ("2", "file", "gray-wolf.mp3", "")])
        recordings.to_csv(tmp_path / "metadata.csv", index=False)
        config = quiet(**{"data.source": "biovita", "data.recordings_table": str(tmp_path / "metadata.csv"),
                          "data.download.enabled": False, "data.unseen.count": 0})
        manifest = build_manifest(config, tmp_path / "m", progress=False)
        assert manifest.recordings["status"].eq("not_downloaded").all()
        assert sum(server.hits.values()) == 0
        assert len(manifest.splits) == 0


def test_run_data_stage_writes_run_folder():
    config = quiet()
    manifest = run_data_stage(config, "stage", progress=False)
    paths = run_paths("stage")
    assert (paths.config).is_file()
    assert load_manifest("stage").splits.equals(manifest.splits)
    assert (paths.manifest / "card.md").read_text().startswith("# Data card: smoke preset, run stage")


def test_stage_notebook_builds_manifest():
    executed = run_stage("data", preset="smoke", run_name="notebook")
    manifest = load_manifest("notebook")
    assert executed.is_file()
    assert manifest.summary["recordings"]["usable"] == 27
    assert (run_paths("notebook").logs / "data.log").read_text().count("Data stage of run notebook finished") == 1


def test_sample_source_warns_of_unread_tables(tmp_path, caplog):
    config = load_config("demo", [f"data.recordings_table={tmp_path / 'nope.csv'}"])
    with caplog.at_level("WARNING", logger="biovita_nb.data"):
        sources = data.read_sources(config)
    assert len(sources.recordings) == 27
    assert "data.source is 'sample', so data.recordings_table is not read" in caplog.text
    caplog.clear()
    config = load_config("demo", [f"data.images_table={tmp_path / 'nope.csv'}", f"data.files_root={tmp_path}"])
    with caplog.at_level("WARNING", logger="biovita_nb.data"):
        data.read_sources(config)
    assert "data.images_table and data.files_root are not read" in caplog.text
    assert "to build from them" in caplog.text
