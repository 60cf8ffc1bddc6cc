"""Vectorised benchmark scoring against a plain per-query loop, on randomised tasks with ties."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import biovita_nb.benchmark as benchmark
from biovita_nb.benchmark import (TIE_BREAKS, MissingFeatureError, Task, read_task_csv, score_task, score_task_file,
                                  task_filename, write_task_csv)

ROUTES = ["dense", "pairs"]  # "auto" picks one of these two


def random_task(seed: int, n_queries: int = 60, n_taxa: int = 40, n_candidates: int = 25, max_items: int = 50,
                ragged: bool = False) -> Task:
    """A task with groups of 1 to `max_items` items, shuffled ids and (optionally) rows of different lengths."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_items + 1, size=n_taxa)
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    item_ids = rng.permutation(10 * offsets[-1])[:offsets[-1]].astype(np.int64)  # sparse, unordered ids
    candidates = np.full((n_queries, n_candidates), -1, dtype=np.int64)
    correct = np.zeros(n_queries, dtype=np.int64)
    for q in range(n_queries):
        width = int(rng.integers(2, n_candidates + 1)) if ragged else n_candidates
        candidates[q, :width] = rng.choice(n_taxa, size=width, replace=False)
        correct[q] = rng.integers(0, width)
    taxa = np.array([f"taxon{g}" for g in range(n_taxa)], dtype=object)
    classes = np.array(["Aves", "Mammalia", "Insecta", "Amphibia"], dtype=object)
    return Task(level="species", direction="A2I", query_ids=np.array([f"q{q}" for q in range(n_queries)], dtype=object),
                query_payload_ids=rng.permutation(5 * n_queries)[:n_queries].astype(np.int64),
                correct_taxa=taxa[candidates[np.arange(n_queries), correct]],
                taxon_classes=classes[candidates[np.arange(n_queries), correct] % 4],
                candidates=candidates, correct=correct, group_taxa=taxa, group_offsets=offsets, group_items=item_ids)


def integer_features(rng: np.random.Generator, n: int, dim: int = 12, low: int = -2, high: int = 2) -> np.ndarray:
    """Small integer embeddings: every dot product is exact in float32, and equal scores are common."""
    return rng.integers(low, high + 1, size=(n, dim)).astype(np.float32)


def loop_score(task: Task, query_ids, queries, target_ids, targets, ks, tie_break) -> dict:
    """The reference: one query at a time, one candidate at a time, one item at a time."""
    query_row = {int(i): r for r, i in enumerate(query_ids)}
    target_row = {int(i): r for r, i in enumerate(target_ids)}
    ranks, taxa, classes = [], [], []
    for q in range(task.n_queries):
        if task.correct[q] < 0:
            continue
        query = queries[query_row[int(task.query_payload_ids[q])]]
        row = [int(g) for g in task.candidates[q] if g >= 0]
        scores = []
        for group in row:
            best = -np.inf
            for item in task.group(group):
                best = max(best, float(np.dot(query.astype(np.float64), targets[target_row[int(item)]].astype(np.float64))))
            scores.append(best)
        slot = int(task.correct[q])
        above = 0
        for j, score in enumerate(scores):
            if j == slot:
                continue
            if score > scores[slot] or (score == scores[slot] and (tie_break == "pessimistic" or j < slot)):
                above += 1
        ranks.append(1 + above)
        taxa.append(task.correct_taxa[q])
        classes.append(task.taxon_classes[q])
    result = {f"top{k}": percent(ranks, k) for k in ks}
    result["ranks"] = ranks
    result["per_taxon"] = {t: {f"top{k}": percent([r for r, x in zip(ranks, taxa) if x == t], k) for k in ks}
                           for t in set(taxa)}
    result["per_class"] = {c: {f"top{k}": percent([r for r, x in zip(ranks, classes) if x == c], k) for k in ks}
                           for c in set(classes)}
    return result


def percent(ranks, k) -> float:
    """Share of ranks up to k, in percent."""
    return 100.0 * sum(1 for r in ranks if r <= k) / len(ranks)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tie_break", TIE_BREAKS)
@pytest.mark.parametrize("route", ROUTES)
def test_scoring_matches_loop_with_ties(seed, tie_break, route):
    task = random_task(seed, ragged=seed % 2 == 1)
    rng = np.random.default_rng(100 + seed)
    queries = integer_features(rng, len(task.query_payload_ids))
    targets = integer_features(rng, len(task.group_items))
    target_ids = task.group_items[::-1].copy()  # feature rows in another order than the task lists them
    targets = targets[::-1].copy()
    ks = (1, 5, 10)
    expected = loop_score(task, task.query_payload_ids, queries, target_ids, targets, ks, tie_break)
    # A tiny block size forces the chunked path (queries and items split across blocks and groups cut in two).
    for block_mb in (256, 2000 / 2**20):
        result = score_task(task, task.query_payload_ids, queries, target_ids, targets, ks, tie_break=tie_break,
                            block_mb=block_mb, route=route, details=True)
        assert result["queries"]["rank"].tolist() == expected["ranks"]
        for k in ks:
            assert result[f"top{k}"] == expected[f"top{k}"]
        assert {t: {k: v for k, v in d.items() if k != "n_queries"} for t, d in result["per_taxon"].items()} == expected["per_taxon"]
        assert {c: {k: v for k, v in d.items() if k != "n_queries"} for c, d in result["per_class"].items()} == expected["per_class"]


@pytest.mark.parametrize("route", ROUTES)
def test_groups_without_items_score_minus_infinity(route):
    task = random_task(12, n_taxa=10, n_candidates=6)
    empty = [0, 9]  # the first and the last group list no ids
    sizes = np.diff(task.group_offsets)
    keep = ~np.isin(np.repeat(np.arange(10), sizes), empty)
    sizes[empty] = 0
    task.group_items = task.group_items[keep]
    task.group_offsets = np.r_[0, np.cumsum(sizes)]
    rng = np.random.default_rng(12)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    expected = loop_score(task, task.query_payload_ids, queries, task.group_items, targets, (1, 3), "pessimistic")
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets, (1, 3), route=route, details=True)
    assert result["queries"]["rank"].tolist() == expected["ranks"]
    assert result["skipped"]["missing_target_features"] == 0


def test_sorted_and_shuffled_ids_score_alike():
    task = random_task(13)
    rng = np.random.default_rng(13)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    order = np.argsort(task.group_items)  # increasing ids take the path without a sort
    shuffled = score_task(task, task.query_payload_ids, queries, task.group_items, targets, details=True)
    in_order = score_task(task, task.query_payload_ids, queries, task.group_items[order], targets[order], details=True)
    assert (task.group_items[order][1:] > task.group_items[order][:-1]).all()
    assert in_order["queries"]["rank"].tolist() == shuffled["queries"]["rank"].tolist()
    assert in_order["per_taxon"] == shuffled["per_taxon"]


def test_per_class_omits_unknown_classes():
    task = random_task(14)
    task.taxon_classes = task.taxon_classes.copy()
    task.taxon_classes[:3] = ["", None, np.nan]
    rng = np.random.default_rng(14)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets)
    assert list(result["per_class"]) == sorted(set(task.taxon_classes[3:]))
    assert sum(entry["n_queries"] for entry in result["per_class"].values()) == task.n_queries - 3
    assert list(result["per_taxon"]) == sorted(result["per_taxon"])
    assert sum(entry["n_queries"] for entry in result["per_taxon"].values()) == task.n_queries


def test_random_features_include_ties():
    task = random_task(0)
    rng = np.random.default_rng(100)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    pessimistic = score_task(task, task.query_payload_ids, queries, task.group_items, targets, (1,), details=True)
    first = score_task(task, task.query_payload_ids, queries, task.group_items, targets, (1,), tie_break="first", details=True)
    assert (pessimistic["queries"]["rank"] > first["queries"]["rank"]).any()  # the test data really has ties


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("route", ROUTES)
def test_scoring_matches_loop_real_valued(seed, route):
    task = random_task(seed, n_queries=80, n_taxa=120, n_candidates=100, max_items=40)
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(task.n_queries, 64)).astype(np.float32)
    targets = rng.normal(size=(len(task.group_items), 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    expected = loop_score(task, task.query_payload_ids, queries, task.group_items, targets, (1, 5, 10), "pessimistic")
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets, route=route, details=True)
    assert result["queries"]["rank"].tolist() == expected["ranks"]


def unit_rows(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    """Random float32 unit vectors, one per row."""
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("block_mb", [256, 0.01])
def test_repeated_vectors_tie_exactly(route, block_mb):
    # Real-valued vectors, where a product's rounding can depend on the row's position, shared by many items.
    task = random_task(16, n_taxa=40, n_candidates=25, max_items=3)
    rng = np.random.default_rng(16)
    queries = unit_rows(rng, task.n_queries)
    targets = unit_rows(rng, 5)[rng.integers(0, 5, size=len(task.group_items))]
    expected = loop_score(task, task.query_payload_ids, queries, task.group_items, targets, (1, 5, 10), "pessimistic")
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets, block_mb=block_mb, route=route,
                        details=True)
    assert result["queries"]["rank"].tolist() == expected["ranks"]
    collapsed = np.repeat(targets[:1], len(targets), axis=0)  # one vector for every item: every candidate ties
    result = score_task(task, task.query_payload_ids, queries, task.group_items, collapsed, block_mb=block_mb,
                        route=route, details=True)
    assert (result["queries"]["rank"] == 25).all()


@pytest.mark.parametrize("route", ROUTES)
def test_unlisted_non_finite_item_rejected(route):
    task = random_task(17, n_taxa=10, n_candidates=6)
    group = int(task.candidates[0, 0])
    task.correct[(task.candidates == group).any(axis=1)] = -1  # no scored row lists this group
    assert (task.correct >= 0).any()
    rng = np.random.default_rng(17)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    targets[task.group_offsets[group]] = np.nan
    bad_id = task.group_items[task.group_offsets[group]]
    with pytest.raises(ValueError, match=rf"non-finite target embeddings .* \[{bad_id}\]"):
        score_task(task, task.query_payload_ids, queries, task.group_items, targets, route=route)


def test_identical_scores_count_against_correct():
    task = random_task(3)
    queries = np.ones((task.n_queries, 4), dtype=np.float32)
    targets = np.ones((len(task.group_items), 4), dtype=np.float32)
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets, (1, 5, 10))
    assert result["top1"] == 0.0
    assert result["top10"] == 0.0  # every one of the 25 candidates ties, so the correct one ranks 25th


def test_score_task_file_round_trip(tmp_path: Path):
    task = random_task(5, ragged=True)
    task.correct[3] = -1  # a row whose correct taxon is not among its candidates
    task.correct_taxa[3] = "not-a-candidate"
    path = write_task_csv(task, tmp_path / "species" / task_filename("A2I"))
    rng = np.random.default_rng(5)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    direct = score_task(task, task.query_payload_ids, queries, task.group_items, targets)
    from_file = score_task_file(path, task.query_payload_ids, queries, task.group_items, targets)
    assert from_file == direct
    assert from_file["n_queries"] == task.n_queries - 1
    assert from_file["skipped"]["correct_not_in_candidates"] == 1


def test_float16_features_score_like_their_float32_values():
    task = random_task(6)
    rng = np.random.default_rng(6)
    queries = rng.normal(size=(task.n_queries, 32)).astype(np.float16)
    targets = rng.normal(size=(len(task.group_items), 32)).astype(np.float16)
    half = score_task(task, task.query_payload_ids, queries, task.group_items, targets, details=True)
    single = score_task(task, task.query_payload_ids, queries.astype(np.float32), task.group_items,
                        targets.astype(np.float32), details=True)
    assert half["queries"]["rank"].tolist() == single["queries"]["rank"].tolist()


def test_missing_target_ids_named_in_error():
    task = random_task(7)
    rng = np.random.default_rng(7)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    dropped = task.group_items[[0, 5]]
    keep = ~np.isin(task.group_items, dropped)
    with pytest.raises(MissingFeatureError) as error:
        score_task(task, task.query_payload_ids, queries, task.group_items[keep], targets[keep])
    for item in dropped:
        assert str(item) in str(error.value)
    assert "on_missing='skip'" in str(error.value)


@pytest.mark.parametrize("route", ROUTES)
def test_missing_ids_skipped_and_counted(route):
    task = random_task(8, max_items=1)  # one item per taxon: dropping one empties its group
    rng = np.random.default_rng(8)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    lost_group = 0
    keep = np.ones(len(task.group_items), dtype=bool)
    keep[task.group_offsets[lost_group]] = False
    query_keep = np.ones(task.n_queries, dtype=bool)
    query_keep[:2] = False
    result = score_task(task, task.query_payload_ids[query_keep], queries[query_keep], task.group_items[keep],
                        targets[keep], on_missing="skip", route=route)
    uses_lost = (task.candidates == lost_group).any(axis=1)
    assert result["skipped"]["missing_query_feature"] == 2
    assert result["skipped"]["missing_target_features"] == int((uses_lost & query_keep).sum())
    assert result["n_queries"] == int((~uses_lost & query_keep).sum())


@pytest.mark.parametrize("role, row, column, value", [("target", 4, slice(None), np.nan), ("target", 7, 3, np.inf),
                                                      ("target", 0, 0, -np.inf), ("query", 5, 2, np.inf),
                                                      ("query", 0, slice(None), np.nan)])
@pytest.mark.parametrize("block_mb", [256, 0.02])
@pytest.mark.parametrize("route", ROUTES)
def test_non_finite_features_rejected(role, row, column, value, block_mb, route):
    task = random_task(9)
    rng = np.random.default_rng(9)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    (targets if role == "target" else queries)[row, column] = value
    ids = task.query_payload_ids if role == "query" else task.group_items  # ids differ from row numbers
    with pytest.raises(ValueError, match=rf"non-finite {role} embeddings \(in float32\) for id\(s\) \[{ids[row]}\]"):
        score_task(task, task.query_payload_ids, queries, task.group_items, targets, block_mb=block_mb, route=route)


@pytest.mark.parametrize("route", ROUTES)
def test_non_finite_features_skipped_and_counted(route):
    task = random_task(9)
    rng = np.random.default_rng(9)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    queries[5, 2] = np.inf
    targets[task.group_offsets[3]:task.group_offsets[4]] = np.nan  # every item of group 3
    result = score_task(task, task.query_payload_ids, queries, task.group_items, targets, on_missing="skip", route=route)
    uses_group = (task.candidates == 3).any(axis=1)
    assert result["skipped"]["missing_query_feature"] == 1
    assert result["skipped"]["missing_target_features"] == int(np.delete(uses_group, 5).sum())
    assert result["n_queries"] == task.n_queries - 1 - int(np.delete(uses_group, 5).sum())


@pytest.mark.parametrize("route", ROUTES)
def test_overflowing_similarities_rejected(route):
    task = random_task(9)
    rng = np.random.default_rng(9)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    task.source = "bench/test_audio_to_image.csv"
    with pytest.raises(ValueError, match=r"^bench/test_audio_to_image\.csv: similarities overflow .* L2-normalised"):
        score_task(task, task.query_payload_ids, queries * 1e20, task.group_items, targets * 1e20, route=route)



def test_auto_route_follows_the_listed_share(monkeypatch):
    calls = []
    real = benchmark._pair_scores

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(benchmark, "_pair_scores", counted)
    rng = np.random.default_rng(15)
    for n_taxa, expect_pairs in ((30, False), (400, True)):  # 25 candidates: a share of 0.83, then of 0.06
        task = random_task(15, n_taxa=n_taxa, max_items=5)
        queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
        calls.clear()
        auto = score_task(task, task.query_payload_ids, queries, task.group_items, targets, details=True)
        assert bool(calls) == expect_pairs
        assert auto["route"] == ("pairs" if expect_pairs else "dense")
        dense = score_task(task, task.query_payload_ids, queries, task.group_items, targets, route="dense", details=True)
        assert auto["queries"]["rank"].tolist() == dense["queries"]["rank"].tolist()
    with pytest.raises(ValueError, match="Invalid route 'sparse'"):
        score_task(task, task.query_payload_ids, queries, task.group_items, targets, route="sparse")


def test_ids_and_rows_must_match():
    task = random_task(9)
    rng = np.random.default_rng(9)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    with pytest.raises(ValueError, match="target ids for"):
        score_task(task, task.query_payload_ids, queries, np.arange(len(targets) + 3), targets)


@pytest.mark.parametrize("block_mb", [0, -5, float("nan")])
def test_block_budget_must_be_positive(block_mb):
    task = random_task(18)
    rng = np.random.default_rng(18)
    queries, targets = integer_features(rng, task.n_queries), integer_features(rng, len(task.group_items))
    with pytest.raises(ValueError, match="Invalid block_mb"):
        score_task(task, task.query_payload_ids, queries, task.group_items, targets, block_mb=block_mb)


def test_zero_width_embeddings_rejected():
    task = random_task(18)
    with pytest.raises(ValueError, match="zero width"):
        score_task(task, task.query_payload_ids, np.zeros((task.n_queries, 0), np.float32), task.group_items,
                   np.zeros((len(task.group_items), 0), np.float32))


def test_mismatched_widths_rejected():
    task = random_task(10)
    with pytest.raises(ValueError, match="same model"):
        score_task(task, task.query_payload_ids, np.zeros((task.n_queries, 8), np.float32), task.group_items,
                   np.zeros((len(task.group_items), 4), np.float32))


def test_duplicate_ids_rejected():
    task = random_task(11)
    ids = task.group_items.copy()
    ids[1] = ids[0]
    task.source = "bench/test_audio_to_image.csv"
    with pytest.raises(ValueError, match=r"^bench/test_audio_to_image\.csv: the target ids contain duplicates"):
        score_task(task, task.query_payload_ids, np.zeros((task.n_queries, 4), np.float32), ids,
                   np.zeros((len(ids), 4), np.float32))


def test_read_task_rejects_misaligned_row(tmp_path: Path):
    path = tmp_path / "species" / "test_audio_to_text.csv"
    path.parent.mkdir()
    pd.DataFrame([{"query_id": "a", "query_payload_id": 0, "task": "A2T", "taxon_level": "species",
                   "correct_taxon": "x", "candidates_taxa": json.dumps(["x", "y"]),
                   "candidates_target_ids": json.dumps([[0]]), "taxon_class": "Aves"}]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="row 0: 2 candidate taxa but 1 lists"):
        read_task_csv(path)
