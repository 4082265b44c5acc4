"""Image files of every common kind reach the model as the picture a person sees, or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from halp.data.images import load_image
from halp.digests import file_digest

RAMP = np.linspace(0, 1, 32 * 48).reshape(32, 48)  # a left-to-right, top-to-bottom brightness ramp


def saved(tmp_path, image: Image.Image, name: str) -> str:
    path = tmp_path / name
    image.save(path)
    return str(path)


def grey(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image)
    assert image.mode == "RGB" and rgb.dtype == np.uint8
    assert (rgb == rgb[..., :1]).all(), "grey stays grey"
    return rgb[..., 0].astype(int)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)), "ramp16.png")
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_allclose(grey(load_image(path)), RAMP * 255, atol=0.51)


def test_float_pixels_in_unit_range_are_scaled(tmp_path):
    path = saved(tmp_path, Image.fromarray(RAMP.astype(np.float32)), "ramp.tiff")
    assert Image.open(path).mode == "F"
    np.testing.assert_allclose(grey(load_image(path)), RAMP * 255, atol=0.51)


def test_float_pixels_of_unknown_range_are_refused(tmp_path):
    path = saved(tmp_path, Image.fromarray((RAMP * 1000 - 3).astype(np.float32)), "raw.tiff")
    with pytest.raises(ValueError, match=r"raw.tiff has float pixels in \[-3, 997\], not \[0, 1\]"):
        load_image(path)


def test_transparency_is_laid_over_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (200, 10, 10, 255)  # opaque red on the left, fully transparent black on the right
    half = np.asarray(load_image(saved(tmp_path, Image.fromarray(rgba), "rgba.png")))
    assert (half[:, :4] == (200, 10, 10)).all() and (half[:, 4:] == 255).all()

    palette = Image.fromarray(rgba).convert("P")  # a GIF-style palette with one transparent entry
    palette.info["transparency"] = palette.getpixel((7, 7))
    flat = np.asarray(load_image(saved(tmp_path, palette, "palette.png")))
    assert (flat[:, 4:] == 255).all() and (flat[:, :4] == (200, 10, 10)).all()

    grey_alpha = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    assert (np.asarray(load_image(saved(tmp_path, grey_alpha, "la.png")))[:, 4:] == 255).all()


def test_ordinary_images_are_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        np.asarray(load_image(saved(tmp_path, Image.fromarray(pixels), "a.png"))), pixels
    )
    bits = Image.fromarray(pixels[..., 0] > 127)
    assert set(np.unique(np.asarray(load_image(saved(tmp_path, bits, "b.png"))))) == {0, 255}


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone.png: image file not found \(check data.images_dir\)"):
        load_image(str(tmp_path / "gone.png"))
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder.png: a folder, not an image file"):
        load_image(str(tmp_path / "folder.png"))
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(FileNotFoundError, match=r"loop.png: a symlink loop"):
        load_image(str(tmp_path / "loop.png"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(ValueError, match=r"bad.png cannot be decoded"):
        load_image(str(tmp_path / "bad.png"))
    assert file_digest(str(tmp_path / "gone.png")) == ""
    assert len(file_digest(str(tmp_path / "bad.png"))) == 64


def test_a_decompression_bomb_is_a_data_error_naming_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(path)  # 27 KB on disk, 225 million pixels
    with pytest.raises(ValueError, match=r"bomb.png is too large to decode safely .*exceeds limit"):
        load_image(str(path))
