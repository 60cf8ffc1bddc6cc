"""Manifest build throughput on a generated BioVITA-layout metadata table with local files.

Writes N tiny WAV files (default 100,000) and a metadata table in the BioVITA `train/metadata.csv`
layout into a temporary folder, then times `build_manifest` on it (downloads off) and prints rows per
second and peak memory. As the baseline it times, in the same run and with the same number of
threads, the least work any manifest build has to do per file: hashing it and reading its header
with soundfile. The ratio build/baseline is the overhead of everything else (reading the table,
taxonomy, statuses, splits, Parquet, the card).

    .venv/bin/python benchmarks/manifest_build.py              # 100,000 rows
    .venv/bin/python benchmarks/manifest_build.py --rows 20000 --tracemalloc
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import os
import platform
import resource
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from biovita_nb.config import load_config
from biovita_nb.data import build_manifest, sha256_file


def wav_bytes(seed: int, sample_rate: int = 8000, seconds: float = 0.05) -> bytes:
    """Return a short 16-bit mono WAV whose samples depend on `seed`."""
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(sample_rate * seconds)) * 1000).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", len(samples))
    return header + samples


def generate(folder: Path, rows: int, species: int) -> Path:
    """Write `rows` WAV files and their metadata table; return the table's path."""
    audio = folder / "audio"
    records = []
    for row in range(rows):
        shard = audio / f"{row % 256:02x}"
        shard.mkdir(parents=True, exist_ok=True)
        path = shard / f"xc_{row}.wav"
        path.write_bytes(wav_bytes(row))
        s = row % species
        genus, family, order = f"Genus{s // 4}", f"Family{s // 20}", f"Order{s // 100}"
        records.append({"download_url": f"https://example.org/{row}.wav", "source": "xc", "recording_id": str(row),
                        "file_name": str(path), "scientific_name": f"{genus} species{s}", "accepted_name": "",
                        "class": "Aves", "order": order, "family": family, "genus": genus, "com": f"Bird {s}"})
    table = folder / "metadata.csv"
    pd.DataFrame(records).to_csv(table, index=False)
    return table


def baseline(paths: list[str], workers: int) -> float:
    """Return the seconds that hashing and reading the header of every file take with `workers` threads."""
    def one(path: str) -> tuple[str, int]:
        return sha256_file(path), soundfile.info(path).frames

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths, chunksize=256))
    return time.perf_counter() - started


def peak_rss_mib() -> float:
    """Return the peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows (and files) in the generated table")
    parser.add_argument("--species", type=int, default=14_000, help="distinct species among the rows")
    parser.add_argument("--workers", type=int, default=8, help="threads that measure files (data.probe_workers)")
    parser.add_argument("--tracemalloc", action="store_true", help="also report the peak of Python allocations "
                        "during the build (slows the build)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        table = generate(folder, args.rows, min(args.species, args.rows))
        print(f"generated {args.rows} files and {table.name} in {time.perf_counter() - started:.1f} s")
        config = load_config("paper", {"data.source": "biovita", "data.recordings_table": str(table),
                                       "data.download.enabled": False, "data.probe_workers": args.workers,
                                       "data.unseen.count": 325})
        rss_before = peak_rss_mib()
        if args.tracemalloc:
            tracemalloc.start()
        started = time.perf_counter()
        manifest = build_manifest(config, folder / "manifest", progress=False)
        build_s = time.perf_counter() - started
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else None
        tracemalloc.stop()
        rss_after = peak_rss_mib()
        assert manifest.summary["recordings"]["usable"] == args.rows, manifest.summary["recordings"]

        started = time.perf_counter()
        build_manifest(config, folder / "manifest", progress=False)
        reuse_s = time.perf_counter() - started
        started = time.perf_counter()
        build_manifest(load_config(config, {"seed": 1}), folder / "manifest", progress=False)
        remeasure_s = time.perf_counter() - started

        base_s = baseline(manifest.recordings["path"].tolist(), args.workers)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"rows: {args.rows}, species: {min(args.species, args.rows)}, measuring threads: {args.workers}")
    print(f"build:    {build_s:8.2f} s  {args.rows / build_s:10.0f} rows/s")
    print(f"baseline: {base_s:8.2f} s  {args.rows / base_s:10.0f} rows/s  (sha256 + soundfile.info per file only)")
    print(f"ratio build/baseline: {build_s / base_s:.2f}")
    print(f"reuse of the complete manifest: {reuse_s:.2f} s; rebuild with saved measurements (new seed): {remeasure_s:.2f} s")
    print(f"peak RSS: {rss_after:.0f} MiB (before the build: {rss_before:.0f} MiB)")
    if traced_peak is not None:
        print(f"peak traced Python allocations during the build: {traced_peak:.0f} MiB")


if __name__ == "__main__":
    main()
