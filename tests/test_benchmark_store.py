"""The feature store: atomic sets, resumable and sharded extraction, failures, and torch.distributed ranks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from biovita_nb.benchmark import (FeatureStore, MissingFeatureError, ModalityUnavailable, build_benchmark,
                                  example_manifest, score_task, write_feature_set)
from biovita_nb.config import load_config


class Encoder:
    """Stand-in encoder: row p is (p, p + 0.5, 1), the positions in `fail` fail, and every batch is recorded."""

    def __init__(self, fail=(), stop_after: int | None = None):
        self.fail, self.stop_after, self.encoded = set(fail), stop_after, []

    def __call__(self, positions: np.ndarray):
        if self.stop_after is not None and len(self.encoded) >= self.stop_after:
            raise KeyboardInterrupt("interrupted")
        self.encoded.append(positions.tolist())
        failures = {int(p): f"cannot read item {p}" for p in positions if p in self.fail}
        readable = [p for p in positions if p not in self.fail]
        return np.array([[p, p + 0.5, 1.0] for p in readable], dtype=np.float32).reshape(-1, 3), failures


IDS = np.arange(1000, 1023)


def test_single_process_set(tmp_path: Path):
    store = FeatureStore(tmp_path)
    assert write_feature_set(store, "audio", IDS, Encoder(), batch_size=5, dtype="float32", rank=0, world_size=1)
    features = store.load("audio")
    assert isinstance(features.embeddings, np.memmap)
    assert features.ids.tolist() == IDS.tolist()
    assert features.embeddings[7].tolist() == [7.0, 7.5, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio.ids.npy", "audio.json", "audio.npy"]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_shards_merge_in_any_order(tmp_path: Path, order):
    reference = FeatureStore(tmp_path / "one")
    write_feature_set(reference, "image", IDS, Encoder(fail=[4]), batch_size=4, dtype="float16", rank=0, world_size=1)
    store = FeatureStore(tmp_path / "three")
    done = [write_feature_set(store, "image", IDS, Encoder(fail=[4]), batch_size=4, dtype="float16", rank=rank,
                              world_size=3) for rank in order]
    assert done == [False, False, True]  # the last rank to finish merges
    merged, single = store.load("image"), reference.load("image")
    assert merged.embeddings.dtype == np.float16
    assert np.array_equal(merged.embeddings, single.embeddings, equal_nan=True)
    assert merged.failures == single.failures == {1004: "cannot read item 4"}
    assert not (tmp_path / "three" / "_shards").joinpath("image").exists()


def test_interrupted_shard_resumes_without_redoing_batches(tmp_path: Path):
    store = FeatureStore(tmp_path)
    first = Encoder(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        write_feature_set(store, "audio", IDS, first, batch_size=5, dtype="float32", rank=0, world_size=1)
    assert not store.is_complete("audio")
    assert not (tmp_path / "audio.npy").exists()
    second = Encoder()
    assert write_feature_set(store, "audio", IDS, second, batch_size=5, dtype="float32", rank=0, world_size=1)
    assert [p for batch in second.encoded for p in batch] == list(range(10, 23))
    assert store.load("audio").embeddings[:, 0].tolist() == list(range(23))


def test_complete_set_is_reused_unless_changed_or_forced(tmp_path: Path):
    store = FeatureStore(tmp_path)
    write_feature_set(store, "audio", IDS, Encoder(), batch_size=8, fingerprint="a", rank=0, world_size=1)
    again = Encoder()
    write_feature_set(store, "audio", IDS, again, batch_size=8, fingerprint="a", rank=0, world_size=1)
    assert again.encoded == []
    changed = Encoder()
    write_feature_set(store, "audio", IDS, changed, batch_size=8, fingerprint="b", rank=0, world_size=1)
    assert len(changed.encoded) == 3
    assert store.meta("audio")["fingerprint"] == "b"
    forced = Encoder()
    write_feature_set(store, "audio", IDS, forced, batch_size=8, fingerprint="b", rank=0, world_size=1, force=True)
    assert len(forced.encoded) == 3


def test_stale_shard_progress_is_discarded(tmp_path: Path):
    store = FeatureStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        write_feature_set(store, "audio", IDS, Encoder(stop_after=1), batch_size=5, fingerprint="old", rank=0, world_size=1)
    fresh = Encoder()
    write_feature_set(store, "audio", IDS, fresh, batch_size=5, fingerprint="new", rank=0, world_size=1)
    assert [p for batch in fresh.encoded for p in batch] == list(range(23))


def test_rank_without_items(tmp_path: Path):
    store = FeatureStore(tmp_path)
    ids = np.array([5, 6])
    results = [write_feature_set(store, "text-genus", ids, Encoder(), batch_size=4, rank=rank, world_size=4)
               for rank in (3, 2, 1, 0)]
    assert results[-1]
    assert store.load("text-genus").embeddings[:, 0].tolist() == [0.0, 1.0]


def test_failed_items_are_nan_and_block_scoring(tmp_path: Path):
    store = FeatureStore(tmp_path)
    benchmark = build_benchmark(example_manifest(), tmp_path / "bench", load_config("smoke"))
    task = benchmark.task("seen", "species", "T2A")
    audio_ids = benchmark.audio_index["id"].to_numpy()
    write_feature_set(store, "audio", audio_ids, Encoder(fail=[0]), batch_size=3, rank=0, world_size=1)
    write_feature_set(store, "text", benchmark.text_index["id"].to_numpy(), Encoder(), batch_size=3, rank=0, world_size=1)
    audio, text = store.load("audio"), store.load("text")
    assert np.isnan(audio.embeddings[0]).all()
    assert audio.failures == {0: "cannot read item 0"}
    assert audio.scoring_arrays()[0].tolist() == audio_ids[1:].tolist()
    with pytest.raises(MissingFeatureError, match=r"no audio feature for id\(s\) 0\b"):
        score_task(task, *text.scoring_arrays(), *audio.scoring_arrays())
    skipped = score_task(task, *text.scoring_arrays(), *audio.scoring_arrays(), on_missing="skip")
    assert skipped["n_queries"] == task.n_queries  # item 0 was one of two stretches of its species: no group emptied


def test_nothing_encoded_is_an_error(tmp_path: Path):
    with pytest.raises(RuntimeError, match="No item of feature set audio could be encoded"):
        write_feature_set(FeatureStore(tmp_path), "audio", IDS[:3], Encoder(fail=[0, 1, 2]), batch_size=2,
                          rank=0, world_size=1)


def test_unavailable_modality_recorded(tmp_path: Path):
    store = FeatureStore(tmp_path)
    store.mark_unavailable("audio", "model 'bioclip2' has no audio encoder", "x")
    assert store.is_complete("audio", "x")
    with pytest.raises(ModalityUnavailable, match="no audio encoder"):
        store.load("audio")
    with pytest.raises(FileNotFoundError, match="extract features first"):
        store.load("image")


def _distributed_worker(rank: int, world_size: int, init_file: str, root: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        complete = write_feature_set(FeatureStore(root), "audio", IDS, Encoder(fail=[3]), batch_size=4, dtype="float32")
        (Path(root) / f"rank{rank}.json").write_text(json.dumps({"complete": complete}))
    finally:
        torch.distributed.destroy_process_group()


def test_torch_distributed_ranks_share_the_work(tmp_path: Path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "store")), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / "store" / f"rank{rank}.json").read_text()) == {"complete": True}
    features = FeatureStore(tmp_path / "store").load("audio")
    assert np.isnan(features.embeddings[3]).all()
    valid = np.delete(np.arange(23), 3)
    assert features.embeddings[valid, 0].tolist() == valid.astype(float).tolist()
    assert features.failures == {1003: "cannot read item 3"}


def test_environment_rank_used_without_process_group(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    store = FeatureStore(tmp_path)
    assert not write_feature_set(store, "audio", IDS, Encoder(), batch_size=4)
    assert (tmp_path / "_shards" / "audio" / "rank-0001-of-0002.json").is_file()
    monkeypatch.setenv("RANK", "0")
    assert write_feature_set(store, "audio", IDS, Encoder(), batch_size=4)
