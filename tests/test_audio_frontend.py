"""ClapMelFrontend against transformers' ClapFeatureExtractor on the real recordings of the sample."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from biovita_nb.audio import ClapMelFrontend, _mel_power, _rfft, load_clip, reference_feature_extractor
from biovita_nb.config import sample_dir

SAMPLE = sample_dir()


@pytest.fixture(scope="module")
def extractor():
    return reference_feature_extractor()


@pytest.fixture(scope="module")
def sample_clips() -> dict[str, torch.Tensor]:
    """Onset clips of all 27 recordings and random clips of the long ones, keyed by a readable name."""
    table = pd.read_csv(SAMPLE / "recordings.csv")
    clips = {}
    for row in table.itertuples():
        clips[f"{row.file_name}:onset"] = load_clip(SAMPLE / row.file_name, mode="onset").wave
        if row.duration_s > 30:
            generator = torch.Generator().manual_seed(row.Index)
            clips[f"{row.file_name}:random"] = load_clip(SAMPLE / row.file_name, generator=generator).wave
    return clips


@pytest.fixture(scope="module")
def expected(extractor, sample_clips) -> torch.Tensor:
    waves = [clip.numpy() for clip in sample_clips.values()]
    return extractor(waves, sampling_rate=48000, return_tensors="pt")["input_features"]


def test_sample_has_all_recordings(sample_clips, expected):
    assert sum(name.endswith(":onset") for name in sample_clips) == 27
    assert expected.shape == (len(sample_clips), 1, 1001, 64)


def test_float64_matches_extractor(sample_clips, expected):
    frontend = ClapMelFrontend().double()
    features = frontend(torch.stack(list(sample_clips.values())).double())
    assert features.dtype == torch.float64
    difference = (features - expected.double()).abs()
    worst = difference.amax(dim=(1, 2, 3))
    assert float(worst.max()) < 1e-4, dict(zip(sample_clips, worst.tolist()))


def test_float32_matches_extractor(sample_clips, expected):
    features = ClapMelFrontend()(torch.stack(list(sample_clips.values())))
    assert features.dtype == torch.float32
    difference = (features - expected).abs().flatten().double()
    assert float(torch.quantile(difference[::7], 0.999)) < 1e-3
    assert float((difference > 1e-3).double().mean()) < 1e-3
    assert float(difference.max()) < 5e-3


def test_float32_unrefined_is_worse_near_floor(sample_clips, expected):
    """Without the float64 refinement the 22.05 kHz recording drifts near the floor; the default does not."""
    index = list(sample_clips).index("audio/clarks-nutcracker.mp3:onset")
    clip = sample_clips["audio/clarks-nutcracker.mp3:onset"]
    plain = (ClapMelFrontend(refine_below=0)(clip) - expected[index]).abs().max()
    refined = (ClapMelFrontend()(clip) - expected[index]).abs().max()
    assert float(plain) > 5e-3
    assert float(refined) < 1e-3


def test_clip_same_alone_and_in_batch(sample_clips):
    frontend = ClapMelFrontend()
    clips = list(sample_clips.values())[:5]
    alone = frontend(clips[2])
    stacked = frontend(torch.stack(clips))
    varied = frontend([clips[0][:123457], clips[1][:48000], clips[2], clips[3][:479999], clips[4][:7]])
    padded = frontend(torch.stack(clips), lengths=torch.tensor([123457, 48000, 480000, 479999, 7]))
    assert torch.equal(alone[0], stacked[2])
    assert torch.equal(alone[0], varied[2])
    assert torch.equal(varied, padded)


@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_short_input_follows_extractor(extractor, sample_clips, padding):
    short = sample_clips["audio/common-loon.mp3:onset"][:130000]
    expected = extractor(short.numpy(), sampling_rate=48000, padding=padding, return_tensors="pt")["input_features"]
    features = ClapMelFrontend(padding=padding)(short)
    assert features.shape == (1, 1, 1001, 64)
    assert float((features - expected).abs().max()) < 1e-3


def test_long_input_keeps_first_ten_seconds(sample_clips):
    frontend = ClapMelFrontend()
    clip = sample_clips["audio/common-loon.mp3:onset"]
    longer = torch.cat([clip, torch.randn(96000)])
    assert torch.equal(frontend(longer), frontend(clip))


def test_half_module_computes_in_float32(sample_clips):
    clip = sample_clips["audio/coyote.mp3:onset"]
    reference = ClapMelFrontend()(clip)
    half = ClapMelFrontend().half()(clip)
    assert half.dtype == torch.float16
    assert float((half.float() - reference).abs().max()) < 0.1


def test_autocast_does_not_change_features(sample_clips):
    clip = sample_clips["audio/coyote.mp3:onset"]
    frontend = ClapMelFrontend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = frontend(clip)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, frontend(clip))


def test_no_state_dict_entries():
    assert ClapMelFrontend().state_dict() == {}
    assert list(ClapMelFrontend().parameters()) == []


def test_bad_frontend_input():
    frontend = ClapMelFrontend()
    with pytest.raises(ValueError, match="empty waveform"):
        frontend([torch.zeros(0)])
    with pytest.raises(ValueError, match="2 lengths for 3 waveforms"):
        frontend(torch.zeros(3, 1000), lengths=[5, 6])
    with pytest.raises(ValueError, match="mix channels to mono"):
        frontend(torch.zeros(1, 2, 480000))
    with pytest.raises(ValueError, match=r"shape \(2, 48000\) for clip 1; mix channels to mono"):
        frontend([torch.zeros(48000), torch.zeros(2, 48000)])
    with pytest.raises(ValueError, match="no waveforms"):
        frontend([])
    with pytest.raises(ValueError, match="floating-point waveforms in \\[-1, 1\\], got torch.int16"):
        frontend(torch.zeros(2, 480000, dtype=torch.int16))
    with_nan = torch.zeros(2, 480000)
    with_nan[1, 100] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite samples in clip 1"):
        frontend(with_nan)
    with pytest.raises(ValueError, match="NaN or infinite samples in clip 1"):
        frontend([torch.zeros(1000), torch.full((1000,), float("inf"))])
    with pytest.raises(ValueError, match="got torch.complex64; pass real-valued audio samples"):
        frontend(torch.zeros(1, 480000, dtype=torch.complex64))
    assert frontend([torch.zeros(1, 48000)]).shape == (1, 1, 1001, 64)  # a (1, samples) clip is mono


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_extractor(sample_clips, expected):
    batch = torch.stack(list(sample_clips.values()))
    features32 = ClapMelFrontend().cuda()(batch.cuda()).cpu()
    features64 = ClapMelFrontend().double().cuda()(batch.double().cuda()).cpu()
    difference32 = (features32 - expected).abs().flatten().double()
    assert float((features64 - expected.double()).abs().max()) < 1e-4
    assert float((difference32 > 1e-3).double().mean()) < 1e-3
    assert float(difference32.max()) < 5e-3


def test_cpu_fft_matches_torch_fft():
    frames = torch.randn(3, 50, 1024, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        ours = _rfft(frames.to(dtype))
        assert ours.dtype == torch.fft.rfft(frames.to(dtype)).dtype
        scale = float(torch.fft.rfft(frames).abs().max())
        tolerance = 1e-5 if dtype == torch.float32 else 1e-12
        assert float((ours.to(torch.complex128) - torch.fft.rfft(frames)).abs().max()) < tolerance * scale


def test_single_thread_and_autograd_paths_agree(sample_clips):
    clip = sample_clips["audio/coyote.mp3:onset"]
    reference = ClapMelFrontend()(clip)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = ClapMelFrontend()(clip)
    finally:
        torch.set_num_threads(threads)
    wave = clip.clone().requires_grad_(True)
    tracked = ClapMelFrontend()(wave)
    tracked.sum().backward()
    assert float((single - reference).abs().max()) < 1e-3
    assert float((tracked.detach() - reference).abs().max()) < 1e-3
    assert wave.grad is not None
    assert bool(torch.isfinite(wave.grad).all())


def test_mel_power_matches_magnitude_product():
    spectrum = torch.randn(4, 7, 30, dtype=torch.complex64)
    filters = torch.rand(30, 5)
    expected = (spectrum.abs().square()) @ filters
    assert torch.allclose(_mel_power(spectrum, filters), expected, rtol=1e-5, atol=1e-6)
