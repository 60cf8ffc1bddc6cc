"""Training-step throughput and the share of step time spent waiting for data.

CPU (always): the demo preset (small random-weight towers) on the bundled sample. Stage-1 steps and
stage-2 phase-1 steps run through the real loaders (10-s windows decoded from the MP3 files, images
through the evaluation transform) with 0 loader workers and with the preset's number, and, as the
baseline of the same run, on batches already held in memory. Each line prints samples per second, the
ratio to the in-memory baseline, and the data-wait share: the time the loop was blocked on the loader
divided by the whole step time.

GPU (only when CUDA is available): the same with the real-size architectures (random weights, bf16
autocast), with the paper preset's batch sizes and loader workers, from the sample files (each species
repeated so that an epoch is long) and from synthetic batches in memory. The target is a data-wait share
under 5 % with the default number of loader workers.

Run from the repository root: `.venv/bin/python benchmarks/train_step.py [--steps N]`. Timings depend on
the machine and its load; the ratios and shares are what to compare.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from itertools import islice

import torch

from biovita_nb.config import init_run, load_config
from biovita_nb.data import load_manifest, run_data_stage
from biovita_nb.model import build_model
from biovita_nb.train import (NonFiniteTracker, Phase1Schedule, Stage1Schedule, TrainContext, TrainingData,
                              apply_trainable, model_parts, setup_distributed, train_step)


def endless_batches(data: TrainingData, schedule):
    """Yield batches of consecutive epochs, as training does (a new loader, and new workers, per epoch)."""
    epoch = 0
    while True:
        yield from data.loader(schedule, epoch)
        epoch += 1


def timed_steps(step, batches, steps: int) -> tuple[float, float, int]:
    """Run `steps` steps after one warm-up step; return (seconds waiting for batches, total seconds, samples)."""
    batches = iter(batches)
    step(next(batches))
    waited = total = 0.0
    samples = 0
    for _ in range(steps):
        started = time.perf_counter()
        batch = next(batches)
        got = time.perf_counter()
        step(batch)
        finished = time.perf_counter()
        waited, total = waited + got - started, total + finished - started
        samples += len(batch["text"])
    return waited, total, samples


def bench_stage(config, manifest, context: TrainContext, stage: str, steps: int, workers: list[int]) -> None:
    model = build_model(config, device=context.device)
    if stage == "stage1":
        schedule = Stage1Schedule(config["train"]["stage1"])
    else:
        stage2 = config["train"]["stage2"]
        schedule = Phase1Schedule(stage2["phase1"], stage2["phase2"]["logit_scale_clamp"])
    parts = model_parts(model)
    trainable = apply_trainable(model, parts, schedule.active_parts(0))
    optimizer = schedule.optimizer(parts)
    scaler = torch.amp.GradScaler(context.device.type, enabled=False)
    tracker = NonFiniteTracker(1000)
    counter = iter(range(10**9))

    def step(batch):
        train_step(model, model, schedule, optimizer, scaler, trainable, batch, next(counter), context, tracker)
        if context.device.type == "cuda":
            torch.cuda.synchronize()

    label = "stage 1" if stage == "stage1" else "stage 2 phase 1"
    baseline = None
    for count in workers:
        settings = {**config, "train": {**config["train"], "num_workers": count}}
        data = TrainingData(manifest, settings, context, stage, image_transform=model.preprocess_image)
        data.set_schedules([schedule])
        if baseline is None:
            in_memory = list(islice(endless_batches(data, schedule), 3))
            _, total, samples = timed_steps(step, (in_memory[i % len(in_memory)] for i in range(10**9)), steps)
            baseline = samples / total
            print(f"{label}, batches in memory (baseline): {baseline:7.1f} samples/s, batch {data.batch_size}")
        waited, total, samples = timed_steps(step, endless_batches(data, schedule), steps)
        rate = samples / total
        print(f"{label}, {count} loader worker(s): {rate:7.1f} samples/s ({rate / baseline:4.2f}x the baseline), "
              f"data-wait share {100 * waited / total:5.1f} %")


def synthetic_batches(batch_size: int, image_size: int, with_images: bool):
    """Yield one batch of random audio (and images) on the host, again and again."""
    generator = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(batch_size, 480_000, generator=generator) * 0.1,
             "text": [f"Species number {i} with common name bird {i}" for i in range(batch_size)]}
    if with_images:
        batch["image"] = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    while True:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement (after one warm-up step)")
    args = parser.parse_args()

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as root:
        config = load_config("demo")
        run = init_run(config, "bench", root)
        run_data_stage(config, run, progress=False)
        manifest = load_manifest(run)
        cpu = setup_distributed("cpu", "auto")
        print(f"\nCPU, demo preset (small random towers, fp32), {config['train']['num_workers']} loader workers by default")
        for stage in ("stage1", "stage2"):
            bench_stage(config, manifest, cpu, stage, args.steps, [0, int(config["train"]["num_workers"])])

        if not torch.cuda.is_available():
            print("\nGPU: no CUDA device on this machine; the GPU section did not run.")
            return
        paper = load_config("paper")
        # Each species of the sample is repeated, so that one epoch has many batches of the paper's size.
        gpu_config = load_config("demo", {"model.image_text.name": "full-size-random",
                                          "model.audio.name": "full-size-random",
                                          "train.num_workers": paper["train"]["num_workers"],
                                          "train.stage1.batch_size": paper["train"]["stage1"]["batch_size"],
                                          "train.stage2.batch_size": paper["train"]["stage2"]["batch_size"],
                                          "data.sampler.min_per_species": 200, "data.sampler.max_per_species": 200,
                                          "data.triplets_per_species": 200})
        gpu = setup_distributed("cuda", "auto")
        print(f"\nGPU {torch.cuda.get_device_name(gpu.device)}, real-size towers (random weights), "
              f"{str(gpu.dtype).removeprefix('torch.')} autocast, {paper['train']['num_workers']} loader workers")
        for stage in ("stage1", "stage2"):
            bench_stage(gpu_config, manifest, gpu, stage, args.steps, [int(paper["train"]["num_workers"])])
        bench_synthetic(gpu_config, gpu, args.steps)


def bench_synthetic(config, context: TrainContext, steps: int) -> None:
    """Time stage-1 and stage-2 steps on synthetic batches already in host memory."""
    model = build_model(config, device=context.device)
    size = model.image_text.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    parts = model_parts(model)
    stage2 = config["train"]["stage2"]
    for label, schedule, batch_size in (
            ("stage 1", Stage1Schedule(config["train"]["stage1"]), config["train"]["stage1"]["batch_size"]),
            ("stage 2 phase 1", Phase1Schedule(stage2["phase1"], stage2["phase2"]["logit_scale_clamp"]),
             stage2["batch_size"])):
        trainable = apply_trainable(model, parts, schedule.active_parts(0))
        optimizer = schedule.optimizer(parts)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        tracker = NonFiniteTracker(1000)
        counter = iter(range(10**9))

        def step(batch):
            train_step(model, model, schedule, optimizer, scaler, trainable, batch, next(counter), context, tracker)
            torch.cuda.synchronize()

        waited, total, samples = timed_steps(step, synthetic_batches(batch_size, size, "image" in schedule.modalities),
                                             steps)
        print(f"{label}, synthetic batches in memory: {samples / total:7.1f} samples/s, batch {batch_size}")


if __name__ == "__main__":
    main()
