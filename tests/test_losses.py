"""Contrastive losses against a direct float64 computation and across two gloo ranks."""
from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from biovita_nb.losses import (AlignmentGate, NonFiniteLossError, NonFiniteTracker, contrastive_terms,
                               gather_embeddings, linear_ramp, symmetric_infonce)


def direct_infonce(x: list[list[float]], y: list[list[float]], scale: float) -> float:
    """The symmetric InfoNCE loss from its definition, with Python floats."""
    n = len(x)
    sim = [[scale * math.fsum(a * b for a, b in zip(x[i], y[j])) for j in range(n)] for i in range(n)]
    x_to_y = [math.log(math.fsum(math.exp(v) for v in sim[i])) - sim[i][i] for i in range(n)]
    y_to_x = [math.log(math.fsum(math.exp(sim[i][j]) for i in range(n))) - sim[j][j] for j in range(n)]
    return (math.fsum(x_to_y) / n + math.fsum(y_to_x) / n) / 2


def unit_rows(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=-1)


@pytest.mark.parametrize("n,d,scale", [(2, 3, 1.0), (7, 16, 14.285714), (32, 64, 100.0), (5, 4, 0.01)])
def test_infonce_matches_float64_definition(n, d, scale):
    x, y = unit_rows(n, d, seed=n), unit_rows(n, d, seed=n + 100)
    expected = direct_infonce(x.tolist(), y.tolist(), scale)

    assert symmetric_infonce(x, y, scale).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # The float32 path (the one training uses) stays close to the exact value.
    assert symmetric_infonce(x.float(), y.float(), scale).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_infonce_gradient_of_scale():
    x, y = unit_rows(6, 8, seed=1), unit_rows(6, 8, seed=2)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    symmetric_infonce(x, y, log_scale.exp()).backward()

    step = 1e-6
    plus = direct_infonce(x.tolist(), y.tolist(), math.exp(math.log(10.0) + step))
    minus = direct_infonce(x.tolist(), y.tolist(), math.exp(math.log(10.0) - step))
    assert log_scale.grad.item() == pytest.approx((plus - minus) / (2 * step), rel=1e-4, abs=1e-4)


def test_infonce_perfect_alignment_is_small():
    x = unit_rows(8, 32, seed=3)
    assert symmetric_infonce(x, x, 100.0).item() < 1e-3
    assert symmetric_infonce(x, x.flip(0), 100.0).item() > 10


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 4)
    assert gather_embeddings(x) is x


def test_gate_stays_on_when_loss_falls():
    gate = AlignmentGate(3.0)
    assert all(gate.update(3.0 - 0.01 * step) for step in range(50))
    assert gate.enabled
    assert gate.ema < 3.0


def test_gate_hysteresis_counts_consecutive_calm_steps():
    gate = AlignmentGate(1.0, alpha=1.0, off_ratio=1.1, on_ratio=1.0, on_steps=3)
    sequence = [1.2, 0.9, 0.9, 1.05, 0.9, 0.9, 0.9, 1.05]
    states = [gate.update(value) for value in sequence]
    # The gate goes off at 1.2. A value of 1.05 lies between the thresholds, so it breaks the calm count.
    assert states == [False, False, False, False, False, False, True, True]


def test_tracker_raises_after_consecutive_skips():
    tracker = NonFiniteTracker(max_consecutive=2)
    assert not tracker.record(False, 0)
    assert tracker.record(True, 1)
    assert not tracker.record(False, 2)
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        tracker.record(False, 3)
    assert tracker.skipped == 3


def test_ramp_reaches_maximum_and_stays():
    values = [linear_ramp(step, 600, 0.1) for step in range(0, 1201, 100)]
    assert values[0] == 0.0
    assert values[3] == pytest.approx(0.05)
    assert values[6:] == [0.1] * 7


# Two gloo ranks on 127.0.0.1, each holding half of a global batch.
WORLD_SIZE, PER_RANK, DIM, SCALE = 2, 5, 12, 14.285714


def global_batch() -> dict[str, torch.Tensor]:
    return {m: unit_rows(WORLD_SIZE * PER_RANK, DIM, seed=i, dtype=torch.float32)
            for i, m in enumerate(("audio", "image", "text"))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        batch = global_batch()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local = {m: e[rows].clone().requires_grad_(True) for m, e in batch.items()}
        scale = torch.tensor(SCALE, requires_grad=True)
        terms = contrastive_terms(local, scale, ("atc", "aic", "itc"))
        sum(terms.values()).backward()
        # Plain lists, because tensors sent through a queue need the sending process alive.
        results.put((rank, {t: v.item() for t, v in terms.items()},
                     {m: e.grad.tolist() for m, e in local.items()}, scale.grad.item()))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process():
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(rank_worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=True,
                       start_method="spawn")
    by_rank = dict((r[0], r[1:]) for r in (results.get() for _ in range(WORLD_SIZE)))

    batch = {m: e.clone().requires_grad_(True) for m, e in global_batch().items()}
    scale = torch.tensor(SCALE, requires_grad=True)
    expected = contrastive_terms(batch, scale, ("atc", "aic", "itc"))
    sum(expected.values()).backward()

    for rank, (losses, grads, scale_grad) in by_rank.items():
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for term, value in expected.items():
            assert losses[term] == pytest.approx(value.item(), abs=1e-6), (rank, term)
        for modality, grad in grads.items():
            # Each rank's backward pass gives exactly its own rows of the global gradient.
            torch.testing.assert_close(torch.tensor(grad), batch[modality].grad[rows], atol=1e-6, rtol=1e-5)
        assert scale_grad == pytest.approx(scale.grad.item(), abs=1e-5)
