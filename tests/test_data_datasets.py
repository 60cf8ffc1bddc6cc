"""The species-capped sampler, stage-2 triplets and the training datasets on the bundled sample."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import biovita_nb.data as data
from biovita_nb.config import load_config
from biovita_nb.data import (SpeciesEpochSampler, Stage1Dataset, Stage2Dataset, build_manifest, build_triplets,
                             species_epoch_indices)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = load_config("smoke")
    return config, build_manifest(config, tmp_path_factory.mktemp("data") / "manifest", progress=False)


def small_image(image):
    return TF.to_tensor(image.resize((24, 24)))


def keys(counts: dict[str, int]) -> list[str]:
    return [key for key, n in counts.items() for _ in range(n)]


def test_epoch_caps_per_species():
    species = keys({"many": 45, "some": 12, "five": 5, "few": 3, "one": 1})
    epoch = species_epoch_indices(species, epoch=0, seed=1)
    counts = collections.Counter(species[i] for i in epoch)
    assert counts == {"many": 20, "some": 12, "five": 5, "few": 5, "one": 5}
    many = [i for i in epoch if species[i] == "many"]
    assert len(set(many)) == 20  # drawn without replacement
    assert sorted(i for i in epoch if species[i] == "some") == list(range(45, 57))  # all of them, once
    assert set(i for i in epoch if species[i] == "one") == {65}  # five draws of the only item


def test_epoch_reseeded_and_repeatable():
    species = keys({"a": 60, "b": 30})
    first = species_epoch_indices(species, epoch=4, seed=9)
    assert np.array_equal(first, species_epoch_indices(species, epoch=4, seed=9))
    assert not np.array_equal(first, species_epoch_indices(species, epoch=5, seed=9))
    assert not np.array_equal(first, species_epoch_indices(species, epoch=4, seed=10))
    picked = {tuple(sorted(species_epoch_indices(species, epoch=e, seed=9))) for e in range(5)}
    assert len(picked) == 5  # a different subset of the capped species each epoch


def test_sampler_shards_are_disjoint():
    species = keys({"a": 33, "b": 7, "c": 2})  # 20 + 7 + 5 = 32 per epoch
    for epoch in (0, 1):
        samplers = [SpeciesEpochSampler(species, seed=2, num_replicas=4, rank=r) for r in range(4)]
        parts = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            parts.append(list(sampler))
        assert [len(p) for p in parts] == [8, 8, 8, 8]
        positions = samplers[0].epoch_indices()
        assert sorted(sum(parts, [])) == sorted(positions.tolist())
        for rank, part in enumerate(parts):
            assert part == positions[rank::4].tolist()


def test_sampler_pads_or_drops():
    species = keys({"a": 30, "b": 7, "c": 2})  # 32 items, 3 ranks
    padded = [list(SpeciesEpochSampler(species, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(p) for p in padded] == [11, 11, 11]
    dropped = [list(SpeciesEpochSampler(species, num_replicas=3, rank=r, drop_last=True)) for r in range(3)]
    assert [len(p) for p in dropped] == [10, 10, 10]
    flat = sum(dropped, [])
    assert len(flat) == 30


def test_triplets_per_species_with_replacement():
    audio = keys({"a": 30, "b": 2, "c": 4})
    image = keys({"a": 1, "b": 40, "d": 3})
    triplets = build_triplets(audio, image, per_species=20, seed=0)
    assert triplets["species_key"].value_counts().to_dict() == {"a": 20, "b": 20}
    a = triplets[triplets["species_key"] == "a"]
    assert a["audio_index"].nunique() == 20
    assert set(a["image_index"]) == {0}
    b = triplets[triplets["species_key"] == "b"]
    assert set(b["audio_index"]) <= {30, 31}
    assert b["image_index"].nunique() == 20
    assert triplets.equals(build_triplets(audio, image, per_species=20, seed=0))


def test_stage1_items_and_stretches(built, monkeypatch):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config, epoch=0, epoch_view=False)
    requested = []
    original = data.load_clip

    def recording(path, **kwargs):
        requested.append((path, kwargs["start_s"], kwargs["end_s"], kwargs["mode"]))
        return original(path, **kwargs)

    monkeypatch.setattr(data, "load_clip", recording)
    items = dataset.audio.items
    time_split = items.index[items["reason"] == "time_split"][:2].tolist()
    whole = items.index[items["reason"] == "too_short_to_split"][:1].tolist()
    assert time_split
    assert whole
    for position in time_split + whole:
        item = dataset[position]
        assert item["audio"].shape == (480000,)
        assert item["item_id"] == dataset.audio.ids[position]
        assert item["replaced"] == 0
    for (path, start, end, mode), position in zip(requested, time_split + whole):
        row = items.loc[position]
        assert path == row["path"]
        assert mode == "random"
        if row["reason"] == "time_split":
            assert (start, end) == (0.0, row["end_s"])  # the training stretch ends where the test stretch starts
        else:
            assert (start, end) == (0.0, None)


def test_stage1_epoch_view_changes(built):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config, epoch=0)
    first = dataset.order.copy()
    dataset.set_epoch(1)
    assert len(dataset.order) == len(first)
    assert not np.array_equal(dataset.order, first)


def test_stage1_test_split_uses_common_names(built):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config, split="test", species_set="unseen")
    item = dataset[0]
    taxon = manifest.taxa()[item["species_key"]]
    assert item["text"] == taxon.common_name
    assert len(dataset) == len(manifest.species("unseen"))


def test_stage1_failed_item_replaced_and_counted(built, tmp_path, caplog):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config, epoch_view=False)
    bison = [i for i, key in enumerate(dataset.species_keys) if key == "Bison bison"]
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"<html>this is not audio</html>" * 50)
    dataset.audio.items.loc[bison[0], "path"] = str(broken)
    item = dataset[bison[0]]
    assert item["replaced"] == 1
    assert item["item_id"] == dataset.audio.ids[bison[1]]
    assert item["audio"].abs().sum() > 0
    again = dataset[bison[0]]  # a known failure is skipped without decoding it again
    assert again["replaced"] == 1
    assert "failed to load and is replaced" in caplog.text
    assert caplog.text.count("failed to load and is replaced") == 1
    dataset.set_epoch(1)
    assert "Stage-1 epoch 0: 2 failed recording load(s) replaced" in caplog.text
    assert dataset.audio.replaced == 0


def test_stage1_species_without_readable_items_raises(built, tmp_path):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config, epoch_view=False)
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"<html>this is not audio</html>" * 50)
    wolf = dataset.species_keys.index("Canis lupus")
    dataset.audio.items.loc[wolf, "path"] = str(broken)
    with pytest.raises(RuntimeError, match="No recording of species 'Canis lupus' could be loaded"):
        dataset[wolf]


def test_stage2_triplets_and_image_replacement(built, tmp_path):
    config, manifest = built
    dataset = Stage2Dataset(manifest, config, small_image)
    species = set(dataset.audio.items["species_key"]) & set(dataset.images.items["species_key"])
    assert len(dataset) == 20 * len(species)
    item = dataset[0]
    assert item["image"].shape == (3, 24, 24)
    assert item["audio"].shape == (480000,)
    assert item["species_key"] in species

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not an image</html>")
    target = dataset.triplets.iloc[int(dataset.order[5])]
    dataset.images.items.loc[int(target["image_index"]), "path"] = str(broken)
    with pytest.raises(RuntimeError, match="No image of species"):  # one photo per species: nothing to fall back on
        dataset[5]


def test_stage2_prompt_policies(built):
    config, manifest = built
    per_item = Stage2Dataset(manifest, config, small_image)
    species = per_item.triplets["species_key"].to_numpy()[per_item.order]
    same_species = np.flatnonzero(species == species[0])[:6]
    texts = {per_item[int(index)]["text"] for index in same_species}
    assert len(texts) > 1  # templates vary within a species

    fixed = Stage2Dataset(manifest, load_config(config, {"data.triplet_prompt": "per_species"}), small_image)
    assert set(fixed.fixed_prompts) == set(fixed.triplets["species_key"])
    for index in range(3):
        item = fixed[index]
        assert item["text"] == fixed.fixed_prompts[item["species_key"]]


def test_dataloader_collates_batches(built):
    config, manifest = built
    dataset = Stage1Dataset(manifest, config)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["audio"].shape == (4, 480000)
    assert len(batch["text"]) == 4
    assert int(batch["replaced"].sum()) == 0
