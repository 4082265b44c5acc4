"""An image file as the 8-bit RGB picture a VLM's processor expects, or an error saying what is wrong.

PIL's `convert("RGB")` clips 16-bit and float pixels instead of scaling them (a 16-bit grayscale PNG
becomes pure black and white, a float TIFF solid black) and drops alpha, showing whatever colour lies
under transparent pixels (often black). Here high-bit-depth pixels are scaled to 8 bits, float pixels in
[0, 1] are scaled, other float ranges are refused, and transparency is laid over white, as Qwen-VL's own
image loader does.
"""

from __future__ import annotations

import errno
import hashlib
import stat
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

BACKGROUND = (255, 255, 255)  # what transparent pixels show
_SIXTEEN_BIT = 65535
NOT_FOUND = "image file not found"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif"}  # else the format's name


def image_file_problem(path: Path) -> str:
    """Why `path` holds no image file to read ("" when it does), told apart so that the fix is plain: a
    folder or a symlink loop is not a file that went missing."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symlink to a missing file" if path.is_symlink() else NOT_FOUND
    except OSError as err:
        return "a symlink loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    return "" if stat.S_ISREG(mode) else "not a regular file"


def _to_eight_bit(image: Image.Image, path: str) -> Image.Image:
    """16-bit integer pixels (modes I;16*, I) divided by 257; float pixels (F) in [0, 1] times 255."""
    pixels = np.asarray(image, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "F":
        if not np.isfinite(pixels).all() or low < 0 or high > 1:
            raise ValueError(
                f"image {path} has float pixels in [{low:g}, {high:g}], not [0, 1], so their brightness is "
                "unknown; save it as an 8-bit (or 16-bit) image"
            )
        scaled = pixels * 255
    else:
        if low < 0 or high > _SIXTEEN_BIT:
            raise ValueError(
                f"image {path} has integer pixels in [{low:g}, {high:g}], beyond 16 bits; save it as an "
                "8-bit or 16-bit image"
            )
        scaled = pixels / 257
    return Image.fromarray(np.round(scaled).astype(np.uint8))  # 2-D uint8: mode L


def to_rgb(image: Image.Image, path: str) -> Image.Image:
    if image.mode in ("F", "I") or image.mode.startswith("I;16"):
        image = _to_eight_bit(image, path)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def load_image(path: str) -> Image.Image:
    """The image as 8-bit RGB, or an error that names the file and what is wrong with it."""
    if problem := image_file_problem(Path(path)):
        raise FileNotFoundError(f"image {path}: {problem} (check data.images_dir)")
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"image {path} is too large to decode safely ({err}); resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image {path} cannot be decoded ({err}); replace or remove the file") from None


def embedded_image(value: object) -> tuple[str, bytes | None]:
    """A dataset's image cell as (name, bytes): a path stays a name without bytes; raw bytes, or a Hugging
    Face Image cell ({"bytes": ..., "path": ...}, what parquet and `save_to_disk` hold), bring their bytes
    and keep the name they came with ("" when none)."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return str(value.get("path") or ""), bytes(value["bytes"])
    if isinstance(value, dict):
        return str(value.get("path") or ""), None
    if isinstance(value, bytes | bytearray | memoryview):
        return "", bytes(value)
    return str(value), None


def embedded_image_problem(data: bytes) -> str:
    """Why bytes embedded in a dataset are no image ("" when PIL can read their header)."""
    try:
        with Image.open(BytesIO(data)) as image:
            return "" if image.format else "embedded bytes of no known image format"
    except (UnidentifiedImageError, OSError, SyntaxError):
        return "embedded bytes that are not an image"


def write_embedded(data: bytes, folder: Path) -> Path:
    """The bytes as a file named by their SHA-256 in `folder` (the same bytes, the same file, written
    once), with the extension of their format."""
    with Image.open(BytesIO(data)) as image:
        kind = str(image.format)
    path = folder / f"{hashlib.sha256(data).hexdigest()}{SUFFIXES.get(kind, '.' + kind.lower())}"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
    return path
