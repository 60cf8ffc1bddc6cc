"""Embeddings per second of each BioVITA tower, with ratios against baselines measured in the same run.

CPU section: the `tiny-random` towers of the smoke preset, in float32:
- each tower batched against the same tower fed one input at a time;
- audio with the in-model torch mel frontend against the published route (transformers'
  ClapFeatureExtractor in NumPy, then the same tower).
GPU section (only when CUDA is available): the published architectures (`full-size-random`:
ViT-L/14 and HTS-AT with random weights), bf16 autocast, against float32 on the same GPU.

Run: .venv/bin/python benchmarks/encode.py [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from biovita_nb.config import load_config
from biovita_nb.model import CLIP_SAMPLES, build_model

PROMPT = "Aves Passeriformes Turdidae Turdus migratorius with common name American robin"


def timed(function, repeats: int, synchronize=lambda: None) -> float:
    """Median wall-clock seconds of `function` over `repeats` runs, after one warm-up run."""
    with torch.no_grad():
        function()
        synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(model, batch: dict[str, int], device: torch.device) -> dict:
    """Random clips, random pixels at the tower's image size, and prompts, per modality."""
    size = model.spec["image_text"]["open_clip_config"]["preprocess_cfg"]["size"]
    size = size if isinstance(size, int) else size[0]
    generator = torch.Generator().manual_seed(0)
    return {"audio": (torch.randn(batch["audio"], CLIP_SAMPLES, generator=generator) * 0.1).to(device),
            "image": torch.randn(batch["image"], 3, size, size, generator=generator).to(device),
            "text": [f"{PROMPT} {i}" for i in range(batch["text"])]}


def report(label: str, count: int, seconds: float, baseline_label: str, baseline_seconds: float, baseline_count: int):
    rate, baseline_rate = count / seconds, baseline_count / baseline_seconds
    print(f"  {label:<34} {rate:10.1f} emb/s   {baseline_label:<34} {baseline_rate:10.1f} emb/s   "
          f"ratio {rate / baseline_rate:5.2f}x")


def cpu_section(repeats: int) -> None:
    model = build_model(load_config("smoke"))
    batch = {"audio": 16, "image": 64, "text": 64}
    data = inputs(model, batch, torch.device("cpu"))
    print(f"CPU, tiny-random towers, float32, {torch.get_num_threads()} threads; batches {batch}")
    for modality in ("audio", "image", "text"):
        encode, items = getattr(model, f"encode_{modality}"), data[modality]
        batched = timed(lambda: encode(items), repeats)
        first_item = items[:1]
        single = timed(lambda: encode(first_item), repeats)
        report(f"{modality} batched", len(items), batched, f"{modality} one at a time", single, 1)

    from transformers import ClapFeatureExtractor
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    clips = data["audio"]

    def published_route():
        features = extractor([c.numpy() for c in clips], sampling_rate=48_000, return_tensors="pt")["input_features"]
        return torch.nn.functional.normalize(model.adapter(model.audio(input_features=features).audio_embeds), dim=-1)

    ours = timed(lambda: model.encode_audio(clips), repeats)
    published = timed(published_route, repeats)
    report("audio, torch mel frontend", len(clips), ours, "audio, ClapFeatureExtractor (NumPy)", published, len(clips))


def gpu_section(repeats: int) -> None:
    if not torch.cuda.is_available():
        print("GPU section skipped: CUDA is not available on this machine (it measures ViT-L/14 and HTS-AT in bf16).")
        return
    device = torch.device("cuda")
    config = load_config("smoke", {"model": {"image_text": {"name": "full-size-random"},
                                             "audio": {"name": "full-size-random"}}})
    model = build_model(config, device=device)
    batch = {"audio": 64, "image": 128, "text": 256}
    data = inputs(model, batch, device)
    print(f"GPU {torch.cuda.get_device_name(device)}, full-size-random towers; batches {batch}")
    for modality in ("audio", "image", "text"):
        encode, items = getattr(model, f"encode_{modality}"), data[modality]

        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return encode(items)

        fast = timed(bf16, repeats, torch.cuda.synchronize)
        full = timed(lambda: encode(items), repeats, torch.cuda.synchronize)
        report(f"{modality} bf16 autocast", len(items), fast, f"{modality} float32", full, len(items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_section(args.repeats)
    gpu_section(args.repeats)


if __name__ == "__main__":
    main()
