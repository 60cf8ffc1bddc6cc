"""The bundled Yellowstone sample: packaged, complete and checked file by file."""
from __future__ import annotations

import importlib.resources

import pytest

from biovita_nb.data import ChecksumError, load_sample, sha256_file


def test_sample_is_package_data():
    root = importlib.resources.files("biovita_nb") / "sample" / "ysl"
    assert (root / "recordings.csv").is_file()
    assert (root / "audio" / "wilsons-snipe.mp3").is_file()


def test_sample_tables_and_files_verify():
    sample = load_sample()
    assert len(sample.recordings) == 27
    assert len(sample.images) == 20
    assert sample.recordings["accepted_name"].nunique() == 25
    assert sample.images["accepted_name"].nunique() == 20
    assert set(sample.recordings["sample_rate"]) == {22050, 44100, 48000}


def test_corrupted_file_named_with_checksums(sample_copy):
    target = sample_copy / "images" / "bald-eagle.jpg"
    expected = sha256_file(target)
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    actual = sha256_file(target)
    with pytest.raises(ChecksumError) as info:
        load_sample(sample_copy)
    message = str(info.value)
    assert "1 file(s)" in message
    assert "images/bald-eagle.jpg" in message
    assert expected in message
    assert actual in message


def test_missing_file_reported(sample_copy):
    (sample_copy / "audio" / "coyote.mp3").unlink()
    (sample_copy / "audio" / "red-fox.mp3").write_bytes(b"")
    with pytest.raises(ChecksumError) as info:
        load_sample(sample_copy)
    message = str(info.value)
    assert "2 file(s)" in message
    assert "coyote.mp3: expected sha256" in message
    assert "got missing" in message
    assert "red-fox.mp3" in message


def test_unverified_load_skips_checks(sample_copy):
    (sample_copy / "audio" / "coyote.mp3").unlink()
    assert len(load_sample(sample_copy, verify=False).recordings) == 27
