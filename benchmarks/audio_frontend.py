"""Throughput of the audio input path on the bundled sample, each figure against a baseline of the same run.

(a) 10-s training windows from recordings longer than a minute: `load_clip` (header, seek, decode the
    window, resample) against decoding and resampling the whole file first, then `random_crop`.
(b) `ClapMelFrontend` on the CPU in float32 against transformers' `ClapFeatureExtractor` with the
    settings of `laion/clap-htsat-unfused`, with the largest absolute difference in dB.
(c) When CUDA is available: the same frontend on the GPU, float32 and float64, against the same baseline.

Run from the repository root: `.venv/bin/python benchmarks/audio_frontend.py [--repeats N]`. The
targets are at least 3x for (a) and (b). Timings depend on the machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from biovita_nb.audio import (ClapMelFrontend, load_audio, load_clip, random_crop, reference_feature_extractor)
from biovita_nb.config import sample_dir


def best_seconds(runs: dict[str, Callable[[], object]], repeats: int,
                 synchronize: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Return the fastest of `repeats` timed runs of each callable, alternating between them.

    Alternating the runs spreads any change in machine load over all of them, so the ratios stay fair on
    a shared machine. Each timed run follows an untimed run of the same callable. Otherwise the callable
    timed right after another one pays for that one's work: memory that the allocator handed back to
    the system and has to fault in again, and caches refilled with other data. In our runs this added
    about half to the time of a 30-ms frontend call that followed the extractor.
    """
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            timings[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in timings.items()}


def long_recordings(min_seconds: float = 60.0) -> tuple[list[Path], float]:
    """Return the sample recordings longer than `min_seconds` and their total length in seconds."""
    table = pd.read_csv(sample_dir() / "recordings.csv")
    long = table[table["duration_s"] > min_seconds]
    return [sample_dir() / name for name in long["file_name"]], float(long["duration_s"].sum())


def bench_windows(repeats: int) -> None:
    paths, total_s = long_recordings()

    def windows() -> None:
        for index, path in enumerate(paths):
            load_clip(path, mode="random", generator=torch.Generator().manual_seed(index))

    def whole_files() -> None:
        for index, path in enumerate(paths):
            random_crop(load_audio(path, mono=True), 10.0, torch.Generator().manual_seed(index))

    # DataLoader workers run torch with one thread each; decoding is timed the same way.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = best_seconds({"windows": windows, "whole": whole_files}, repeats)
        window_s, whole_s = seconds["windows"], seconds["whole"]
    finally:
        torch.set_num_threads(threads)
    print(f"(a) 10-s windows from {len(paths)} recordings over 60 s ({total_s / 60:.1f} min in all), "
          "1 torch thread as in a DataLoader worker")
    print(f"    seek + decode window:      {len(paths) / window_s:8.1f} clips/s")
    print(f"    decode whole file, crop:   {len(paths) / whole_s:8.1f} clips/s")
    print(f"    ratio:                     {whole_s / window_s:8.1f}x  (target >= 3x)")


def onset_clips() -> torch.Tensor:
    table = pd.read_csv(sample_dir() / "recordings.csv")
    return torch.stack([load_clip(sample_dir() / name, mode="onset").wave for name in table["file_name"]])


def bench_frontend(clips: torch.Tensor, repeats: int, batch_size: int) -> None:
    extractor = reference_feature_extractor()
    batches = list(torch.split(clips, batch_size))
    expected = torch.cat([extractor(list(b.numpy()), sampling_rate=48000, return_tensors="pt")["input_features"]
                          for b in batches])

    def run_extractor() -> None:
        for batch in batches:
            extractor(list(batch.numpy()), sampling_rate=48000, return_tensors="pt")

    variants = {"ClapMelFrontend CPU float32": (ClapMelFrontend(), torch.float32),
                "  same, refine_below=0": (ClapMelFrontend(refine_below=0), torch.float32),
                "ClapMelFrontend CPU float64": (ClapMelFrontend().double(), torch.float64)}
    runs = {"extractor": run_extractor}
    for name, (frontend, dtype) in variants.items():
        inputs = [b.to(dtype) for b in batches]
        runs[name] = lambda frontend=frontend, inputs=inputs: [frontend(b) for b in inputs]
    with torch.inference_mode():
        seconds = best_seconds(runs, repeats)
    baseline_s = seconds["extractor"]
    count = len(clips)
    print(f"(b) log-mel features of {count} onset clips (10 s, 48 kHz), batches of {batch_size}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"    ClapFeatureExtractor (numpy):      {count / baseline_s:8.1f} clips/s")
    for name, (frontend, dtype) in variants.items():
        with torch.inference_mode():
            features = torch.cat([frontend(b.to(dtype)) for b in batches])
        difference = (features.double() - expected.double()).abs()
        print(f"    {name:<34} {count / seconds[name]:8.1f} clips/s  {baseline_s / seconds[name]:5.1f}x  "
              f"max |diff| {float(difference.max()):.2e} dB  "
              f"share > 1e-3 dB {float((difference > 1e-3).double().mean()):.1e}")
    print("    target: float32 on the CPU >= 3x the extractor")

    if not torch.cuda.is_available():
        print("(c) GPU: skipped, CUDA is not available on this machine")
        return
    device = torch.device("cuda")
    print(f"(c) GPU: {torch.cuda.get_device_name(device)}")
    variants = {"ClapMelFrontend GPU float32": (ClapMelFrontend().to(device), torch.float32),
                "ClapMelFrontend GPU float64": (ClapMelFrontend().double().to(device), torch.float64)}
    runs = {}
    for name, (frontend, dtype) in variants.items():
        inputs = [b.to(device=device, dtype=dtype) for b in batches]
        runs[name] = lambda frontend=frontend, inputs=inputs: [frontend(b) for b in inputs]
    with torch.inference_mode():
        seconds = best_seconds(runs, repeats, torch.cuda.synchronize)
    for name, (frontend, dtype) in variants.items():
        with torch.inference_mode():
            features = torch.cat([frontend(b.to(device=device, dtype=dtype)) for b in batches]).cpu()
        difference = (features.double() - expected.double()).abs()
        print(f"    {name:<34} {count / seconds[name]:8.1f} clips/s  {baseline_s / seconds[name]:5.1f}x  "
              f"max |diff| {float(difference.max()):.2e} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the fastest counts)")
    parser.add_argument("--batch-size", type=int, default=9, help="clips per frontend call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads for the frontend, as in the training process (default: torch's "
                             "default for this machine); the numpy extractor uses one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    bench_windows(args.repeats)
    bench_frontend(onset_clips(), args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
