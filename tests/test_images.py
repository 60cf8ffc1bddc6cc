"""Image decoding and transforms on the bundled photos and on generated odd and broken files."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from biovita_nb.config import sample_dir
from biovita_nb.images import (ImageDecodeError, ImageInfo, eval_transform, image_info, image_transform, load_image,
                               train_transform, transform_settings)

SAMPLE = sample_dir()
WEBP_UNDER_JPG_NAME = {"images/common-raven.jpg", "images/mountain-bluebird.jpg", "images/ruffed-grouse.jpg"}


# --- the bundled sample ---------------------------------------------------------------------------

def test_sample_photos_decode():
    """All 20 photos decode at their table size, including three that are WebP data under a .jpg name."""
    table = pd.read_csv(SAMPLE / "images.csv")
    transform = eval_transform(224)
    assert len(table) == 20
    for row in table.itertuples():
        path = SAMPLE / row.file_name
        image = load_image(path)
        info = image_info(path)
        assert image.mode == "RGB", row.file_name
        assert image.size == (row.width, row.height), row.file_name
        assert (info.width, info.height) == (row.width, row.height), row.file_name
        assert info.format == ("WEBP" if row.file_name in WEBP_UNDER_JPG_NAME else "JPEG"), row.file_name
        assert transform(image).shape == (3, 224, 224)


# --- odd but valid files --------------------------------------------------------------------------

def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(path)
    assert image_info(path).mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((20, 15))
    assert red > 240
    assert green < 15
    assert blue < 15


def test_png_with_alpha(tmp_path):
    path = tmp_path / "alpha.png"
    pixels = np.zeros((10, 20, 4), np.uint8)
    pixels[:, :10] = (200, 0, 0, 255)
    pixels[:, 10:] = (0, 0, 0, 0)
    Image.fromarray(pixels, "RGBA").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((2, 5)) == (200, 0, 0)
    assert image.getpixel((15, 5)) == (255, 255, 255)
    assert load_image(path, alpha_background=None).getpixel((15, 5)) == (0, 0, 0)


def test_palette_png_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.paste(0, (0, 0, 4, 8))
    image.save(path, transparency=0)
    rgb = load_image(path)
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((6, 1)) == (0, 255, 0)


def test_grayscale_and_16_bit(tmp_path):
    gray = tmp_path / "gray.jpg"
    Image.new("L", (16, 16), 100).save(gray)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(deep)
    assert load_image(gray).getpixel((3, 3))[0] == pytest.approx(100, abs=2)
    assert image_info(deep).mode.startswith("I")
    assert load_image(deep).getpixel((3, 3)) == (156, 156, 156)


def test_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (40, 20), (10, 20, 30)).save(path, exif=exif)
    assert image_info(path) == ImageInfo(20, 40, "JPEG", "RGB")
    assert load_image(path).size == (20, 40)


# --- broken and hostile files ---------------------------------------------------------------------

def _decode_error(path, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        load_image(path, **kwargs)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_decode_error_is_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """Write a valid small PNG, then rewrite its IHDR chunk (with a correct CRC) to claim another size."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(bytes(data))
    return path


def test_png_header_bomb(tmp_path):
    path = _png_claiming_size(tmp_path / "bomb.png", 100_000, 100_000)
    assert "pixels" in _decode_error(path).reason
    with pytest.raises(ImageDecodeError, match="pixels"):
        image_info(path)


def test_max_pixels_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    reason = _decode_error(path, max_pixels=50_000).reason
    assert "300 x 200 = 60,000 pixels" in reason
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_truncated_jpeg(tmp_path):
    source = SAMPLE / "images" / "bald-eagle.jpg"
    path = tmp_path / "cut.jpg"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _decode_error(path).reason


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("This photo is no longer available.\n")
    assert "plain text" in _decode_error(path).reason


def test_html_page_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("<html><body>Rate limit exceeded</body></html>")
    assert "HTML page" in _decode_error(path).reason


def test_zero_byte_and_random_bytes(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    assert "empty (0 bytes)" in _decode_error(empty).reason
    assert "does not recognise" in _decode_error(noise).reason


# --- transforms -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A small random open_clip model whose preprocessing differs from every default."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    config = {
        "model_cfg": {"embed_dim": 32,
                      "vision_cfg": {"image_size": 96, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
        "preprocess_cfg": {"size": 96, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                           "interpolation": "bilinear", "resize_mode": "longest", "fill_color": 7},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return open_clip.create_model_and_transforms(f"local-dir:{folder}", pretrained=None, load_weights=False)


def test_eval_transform_equals_preprocess_val(tiny_open_clip):
    model, _, preprocess_val = tiny_open_clip
    settings = transform_settings(model)
    ours = eval_transform(**settings)
    assert settings["resize_mode"] == "longest"
    assert settings["interpolation"] == "bilinear"
    for name in ("american-dipper.jpg", "elk.jpg", "coyote.jpg"):
        image = load_image(SAMPLE / "images" / name)
        expected = preprocess_val(image)
        assert torch.equal(ours(image), expected), name
        assert torch.equal(image_transform("eval", **settings)(image), expected), name


def test_train_transform_is_random(tiny_open_clip):
    model, preprocess_train, _ = tiny_open_clip
    settings = transform_settings(model)
    square = load_image(SAMPLE / "images" / "elk.jpg").resize((300, 300))
    torch.manual_seed(5)
    ours = [train_transform(**settings)(square) for _ in range(3)]
    torch.manual_seed(5)
    theirs = [preprocess_train(square) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not torch.equal(ours[0], ours[1])
