"""Audio decoding on the bundled sample and on generated files in every format and state."""
from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import soundfile as sf


def tone(seconds: float, sample_rate: int, channels: int = 1, frequency: float = 440.0,
         amplitude: float = 0.3) -> np.ndarray:
    """Return a sine tone shaped (frames, channels), each channel a little quieter than the one before."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = amplitude * np.sin(2 * np.pi * frequency * t)
    return np.stack([wave * (1.0 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_soundfile(path: Path, data: np.ndarray, sample_rate: int, format: str, subtype: str) -> Path:
    sf.write(str(path), data, sample_rate, format=format, subtype=subtype)
    return path


def write_pyav(path: Path, data: np.ndarray, sample_rate: int, container_format: str, codec: str) -> Path:
    """Encode (frames, channels) float samples with FFmpeg through PyAV."""
    layout = "mono" if data.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = layout
        pts = 0
        for start in range(0, len(data), 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[start:start + 4096].T), format="fltp",
                                               layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = pts
            pts += frame.samples
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def wav_with_format_tag(path: Path, format_tag: int, data: bytes = b"\x00" * 400) -> Path:
    """Write a RIFF/WAVE file whose fmt chunk names `format_tag` as its codec."""
    fmt = struct.pack("<HHIIHH", format_tag, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _syncsafe(size: int) -> bytes:
    return bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])


def prepend_id3(source: Path, target: Path, payload_bytes: int) -> Path:
    """Copy an MP3 behind an ID3v2.3 tag holding one PRIV frame of `payload_bytes` bytes."""
    payload = b"biovita-test\x00" + bytes(range(256)) * (payload_bytes // 256)
    frame = b"PRIV" + struct.pack(">I", len(payload)) + b"\x00\x00" + payload
    tag = b"ID3\x03\x00\x00" + _syncsafe(len(frame)) + frame
    target.write_bytes(tag + source.read_bytes())
    return target


def dominant_frequency(wave: np.ndarray, sample_rate: int) -> float:
    """Return the frequency of the largest FFT bin of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sample_rate / len(wave))


import logging
import math

import pandas as pd
import pytest
import torch

from biovita_nb import audio
from biovita_nb.audio import AudioDecodeError, audio_info, load_audio, load_clip, mix_to_mono
from biovita_nb.config import sample_dir

SAMPLE = sample_dir()


# --- the bundled sample ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recordings() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "recordings.csv")


def test_sample_decodes_to_table_values(recordings):
    for row in recordings.itertuples():
        path = SAMPLE / row.file_name
        wave = load_audio(path, sample_rate=None)
        info = audio_info(path)
        assert wave.shape == (row.channels, row.frames), row.file_name
        assert info.sample_rate == row.sample_rate, row.file_name
        assert info.channels == row.channels, row.file_name
        assert info.codec == "mp3"
        assert abs(info.duration_s - row.header_duration_s) < 0.02, row.file_name
        assert abs(wave.shape[1] / row.sample_rate - row.duration_s) < 0.01, row.file_name
        assert torch.isfinite(wave).all()


def test_sample_resamples_to_48k(recordings):
    row = recordings.set_index("file_name").loc["audio/clarks-nutcracker.mp3"]
    wave = load_audio(SAMPLE / "audio/clarks-nutcracker.mp3", mono=True)
    assert row.sample_rate == 22050
    assert wave.shape == (1, math.ceil(row.frames * 48000 / 22050))


def test_sample_cut_file_still_decodes():
    info = audio_info(SAMPLE / "audio/wilsons-snipe.mp3", exact=True)
    assert info.frames == 3839616
    assert info.sample_rate == 44100


# --- formats --------------------------------------------------------------------------------------

FORMATS = [
    # name, writer, sample rate, channels, decoder that must handle it
    ("pcm.wav", lambda p, d, r: write_soundfile(p, d, r, "WAV", "PCM_16"), 48000, 2, "soundfile"),
    ("lossless.flac", lambda p, d, r: write_soundfile(p, d, r, "FLAC", "PCM_16"), 44100, 2, "soundfile"),
    ("vorbis.ogg", lambda p, d, r: write_soundfile(p, d, r, "OGG", "VORBIS"), 22050, 1, "soundfile"),
    ("speech.opus", lambda p, d, r: write_soundfile(p, d, r, "OGG", "OPUS"), 48000, 1, "soundfile"),
    ("layer3.mp3", lambda p, d, r: write_soundfile(p, d, r, "MP3", "MPEG_LAYER_III"), 44100, 2, "soundfile"),
    ("aac.m4a", lambda p, d, r: write_pyav(p, d, r, "mp4", "aac"), 44100, 2, "pyav"),
    ("opus.webm", lambda p, d, r: write_pyav(p, d, r, "webm", "libopus"), 48000, 1, "pyav"),
]


@pytest.mark.parametrize("name, writer, rate, channels, decoder", FORMATS, ids=[f[0] for f in FORMATS])
def test_format_decodes_tone(tmp_path, monkeypatch, name, writer, rate, channels, decoder):
    path = writer(tmp_path / name, tone(3.0, rate, channels), rate)
    used = []
    for backend in ("soundfile", "pyav"):
        original = getattr(audio, f"_decode_{backend}")
        monkeypatch.setattr(audio, f"_decode_{backend}",
                            lambda *args, _o=original, _b=backend, **kw: used.append(_b) or _o(*args, **kw))

    wave = load_audio(path)
    info = audio_info(path)
    assert used[-1] == decoder
    assert wave.dtype == torch.float32
    assert wave.shape[0] == channels
    assert abs(wave.shape[1] - 3 * 48000) < 0.05 * 3 * 48000
    assert info.sample_rate == rate
    assert info.channels == channels
    assert abs(dominant_frequency(wave[0].numpy(), 48000) - 440.0) < 5.0
    assert 0.2 < float(wave[0].abs().median() * math.sqrt(2)) < 0.4


def test_six_channel_wav(tmp_path):
    data = tone(1.0, 48000, channels=6)
    path = write_soundfile(tmp_path / "surround.wav", data, 48000, "WAV", "FLOAT")
    wave = load_audio(path)
    mono = load_audio(path, mono=True)
    assert wave.shape == (6, 48000)
    assert mono.shape == (1, 48000)
    assert torch.allclose(mono, torch.from_numpy(data.mean(axis=1))[None], atol=1e-6)
    assert torch.equal(mix_to_mono(wave), mono)


def test_mono_22k_and_stereo_44k(tmp_path):
    mono = write_soundfile(tmp_path / "mono22.wav", tone(2.0, 22050), 22050, "WAV", "PCM_16")
    stereo = write_soundfile(tmp_path / "stereo44.wav", tone(2.0, 44100, 2), 44100, "WAV", "PCM_16")
    assert load_audio(mono).shape == (1, 96000)
    assert load_audio(stereo).shape == (2, 96000)
    assert load_audio(stereo, mono=True).shape == (1, 96000)
    assert load_audio(mono, sample_rate=None).shape == (1, 44100)


def test_mp3_large_id3_tag(tmp_path):
    plain = write_soundfile(tmp_path / "plain.mp3", tone(2.0, 44100, 2), 44100, "MP3", "MPEG_LAYER_III")
    tagged = prepend_id3(plain, tmp_path / "tagged.mp3", payload_bytes=2 << 20)
    assert tagged.stat().st_size > plain.stat().st_size + (2 << 20)
    assert torch.equal(load_audio(tagged), load_audio(plain))
    assert audio_info(tagged).sample_rate == 44100


# --- bad input ------------------------------------------------------------------------------------

def _decode_error(path) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(path)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_decode_error_is_value_error():
    assert issubclass(AudioDecodeError, ValueError)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty (0 bytes)" in _decode_error(path).reason
    with pytest.raises(AudioDecodeError, match="empty"):
        audio_info(path)


def test_html_page_named_mp3(tmp_path):
    path = tmp_path / "page.mp3"
    path.write_text("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body></body></html>\n")
    assert "HTML page" in _decode_error(path).reason


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("recording failed, see log\n")
    assert "plain text" in _decode_error(path).reason


def test_random_bytes_named_flac(tmp_path):
    path = tmp_path / "noise.flac"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    reason = _decode_error(path).reason
    assert any(text in reason for text in ("recognise the format", "no audio stream", "no audio samples")), reason


def test_unsupported_codec(tmp_path):
    path = wav_with_format_tag(tmp_path / "odd_codec.wav", 0x1234)
    assert "unsupported audio codec" in _decode_error(path).reason


def test_zero_decoded_samples(tmp_path):
    path = write_soundfile(tmp_path / "no_frames.wav", np.zeros((0, 1), np.float32), 8000, "WAV", "PCM_16")
    assert "no audio samples" in _decode_error(path).reason


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad_value):
    data = tone(0.5, 8000)
    data[1000, 0] = bad_value
    path = write_soundfile(tmp_path / "float.wav", data, 8000, "WAV", "FLOAT")
    reason = _decode_error(path).reason
    assert "NaN or infinite" in reason
    assert "0.125 s" in reason


CUT_FORMATS = [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
               ("OGG", "OPUS", "opus"), ("MP3", "MPEG_LAYER_III", "mp3")]


@pytest.mark.parametrize("format, subtype, extension", CUT_FORMATS, ids=[f[2] for f in CUT_FORMATS])
def test_cut_file_decodes_with_warning(tmp_path, caplog, format, subtype, extension):
    full = write_soundfile(tmp_path / f"full.{extension}", tone(5.0, 48000, 2), 48000, format, subtype)
    cut = cut_in_half(full, tmp_path / f"cut.{extension}")
    with caplog.at_level(logging.WARNING, logger="biovita_nb.audio"):
        wave = load_audio(cut, sample_rate=None)
        load_audio(cut, sample_rate=None)
    warnings = [r for r in caplog.records if "cut off mid-stream" in r.getMessage()]
    assert 0.1 * 240000 < wave.shape[1] < 0.7 * 240000
    assert len(warnings) == 1
    assert str(cut) in warnings[0].getMessage()
    assert audio_info(cut, exact=True).problem != ""
    assert audio_info(full, exact=True).problem == ""


def test_cut_m4a_named_in_error_or_warning(tmp_path, caplog):
    full = write_pyav(tmp_path / "full.m4a", tone(5.0, 44100, 1), 44100, "mp4", "aac")
    cut = cut_in_half(full, tmp_path / "cut.m4a")
    with caplog.at_level(logging.WARNING, logger="biovita_nb.audio"):
        try:
            wave = load_audio(cut)
        except AudioDecodeError as error:
            # MP4 keeps its index (moov) at the end by default, so the cut file has none left.
            assert "moov" in error.reason or "recognise" in error.reason
            return
    assert wave.shape[1] < 4 * 48000
    assert any("cut off mid-stream" in r.getMessage() for r in caplog.records)


# --- short, silent and long files ----------------------------------------------------------------

def test_short_clip_is_padded(tmp_path):
    path = write_soundfile(tmp_path / "short.wav", tone(0.3, 48000), 48000, "WAV", "FLOAT")
    for mode in ("random", "onset"):
        clip = load_clip(path, mode=mode, generator=torch.Generator().manual_seed(0))
        assert clip.wave.shape == (480000,)
        assert clip.valid_samples == 14400
        assert clip.padded
        assert clip.start_s == 0.0
        assert clip.wave[14400:].abs().max() == 0


def test_silent_file_onset_clip(tmp_path):
    path = write_soundfile(tmp_path / "silence.wav", np.zeros((3 * 48000, 1), np.float32), 48000, "WAV", "PCM_16")
    clip = load_clip(path, mode="onset")
    assert clip.start_s == 0.0
    assert clip.valid_samples == 3 * 48000
    assert clip.wave.abs().max() == 0


@pytest.fixture(scope="module")
def two_hour_flac(tmp_path_factory) -> Path:
    """A 2-hour mono FLAC at 8 kHz whose samples encode their own time (a slow ramp plus a tone)."""
    rate, seconds = 8000, 2 * 3600
    t = np.arange(rate * seconds) / rate
    data = (0.4 * t / seconds + 0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None]
    return write_soundfile(tmp_path_factory.mktemp("long") / "two_hours.flac", data, rate, "FLAC", "PCM_16")


class _ReadCounter:
    """Wrap `soundfile.SoundFile.seek` and `.read` to record seeks and count the frames read."""

    def __init__(self, monkeypatch):
        self.seeks: list[int] = []
        self.frames_read = 0
        seek, read = sf.SoundFile.seek, sf.SoundFile.read

        def counting_seek(handle, frames, whence=sf.SEEK_SET):
            if whence == sf.SEEK_SET:
                self.seeks.append(frames)
            return seek(handle, frames, whence)

        def counting_read(handle, *args, **kwargs):
            block = read(handle, *args, **kwargs)
            self.frames_read += len(block)
            return block

        monkeypatch.setattr(sf.SoundFile, "seek", counting_seek)
        monkeypatch.setattr(sf.SoundFile, "read", counting_read)


def test_long_file_window_seeks(two_hour_flac, monkeypatch):
    counter = _ReadCounter(monkeypatch)
    wave = load_audio(two_hour_flac, sample_rate=None, offset_s=3600.0, duration_s=10.0)
    # soundfile itself seeks after each read to keep its position, so only the first seek is ours.
    assert counter.seeks[0] == 3600 * 8000
    assert counter.frames_read == 10 * 8000
    expected = 0.4 * 3600 / 7200 + 0.05 * np.sin(2 * np.pi * 440 * np.arange(80000) / 8000)
    assert np.abs(wave[0].numpy() - expected).max() < 1e-3


def test_long_file_random_clip_reads_window(two_hour_flac, monkeypatch):
    counter = _ReadCounter(monkeypatch)
    clip = load_clip(two_hour_flac, generator=torch.Generator().manual_seed(3))
    assert counter.frames_read == 10 * 8000
    assert counter.seeks[0] == int(round(clip.start_s * 8000))
    assert clip.valid_samples == 480000
    assert abs(float(clip.wave[:48000].mean()) - 0.4 * clip.start_s / 7200) < 2e-3


class _CountingContainer:
    """Proxy of a PyAV input container that counts the packets its demuxer yields."""

    def __init__(self, container, counts: list[int]):
        self._container, self._counts = container, counts

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            self._counts[-1] += 1
            yield packet


def test_long_m4a_window_seeks(tmp_path, monkeypatch):
    rate, seconds = 8000, 600
    path = write_pyav(tmp_path / "ten_minutes.m4a", tone(seconds, rate, frequency=440.0), rate, "mp4", "aac")
    counts: list[int] = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        counts.append(0)
        return _CountingContainer(real_open(*args, **kwargs), counts)

    monkeypatch.setattr(av, "open", counting_open)
    full = load_audio(path, sample_rate=None)
    window = load_audio(path, sample_rate=None, offset_s=400.0, duration_s=10.0)
    full_packets, window_packets = counts[0], counts[-1]
    assert window.shape == (1, 80000)
    assert window_packets < 0.05 * full_packets
    assert torch.allclose(window, full[:, 400 * rate:410 * rate], atol=1e-4)


def test_overstated_mp3_header_gives_full_windows():
    """gray-wolf.mp3 decodes 25.00 s but its header claims 26.63 s; late windows move back, never pad."""
    path = SAMPLE / "audio/gray-wolf.mp3"
    decoded_s = audio_info(path, exact=True).duration_s
    assert audio_info(path).duration_s - decoded_s > 1.5
    starts = []
    for seed in range(40):
        clip = load_clip(path, generator=torch.Generator().manual_seed(seed))
        starts.append(clip.start_s)
        assert clip.valid_samples == 480000, seed
        assert clip.start_s <= decoded_s - 10.0 + 1 / 44100, seed
    assert max(starts) > decoded_s - 10.5
