"""Reading users' image folders: strict (a bad file is named, never skipped) and read-only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dbexp.errors import UserInputError

#: Suffixes read as images (MPO is the multi-picture JPEG many cameras write).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".mpo", ".bmp", ".tif", ".tiff"})
#: Files that operating systems drop into folders; they are not the user's content.
SYSTEM_FILES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r"})


def list_image_files(folder: str | Path, key: str) -> list[Path]:
    """The image files of ``folder`` (sorted), or a :class:`UserInputError` naming ``key``.

    Hidden files and OS litter are ignored; any other file that is not an image is an error,
    because silently training on fewer photos than the user put there is worse than stopping.
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise UserInputError(f"{key}={folder}: folder does not exist; point {key} at a folder of photos")
    if not path.is_dir():
        raise UserInputError(f"{key}={folder}: is a file, not a folder; point {key} at a folder of photos")
    files = sorted(p for p in path.iterdir() if p.is_file() and not _is_litter(p))
    if not files:
        raise UserInputError(f"{key}={folder}: folder holds no images; add 3-5 photos (jpg, png, webp)")
    for file in files:
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserInputError(
                f"{file}: not an image file (supported: {', '.join(sorted(IMAGE_SUFFIXES))}); move it out of {key}"
            )
    return files


def load_image_rgb(path: str | Path) -> Image.Image:
    """Decode one image fully, apply its EXIF orientation and return 8-bit RGB.

    Alpha is composited on white (transparent product shots would otherwise turn black),
    16-bit and float images are scaled to 8 bit, CMYK and palette images are converted.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode everything now: a truncated file fails here, not mid-training
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserInputError(
            f"{path}: cannot be read as an image ({err}); replace it with a valid jpg/png/webp or remove it"
        ) from None


def load_image_folder(folder: str | Path, key: str) -> list[Image.Image]:
    """Every image of a folder, validated and decoded (nothing in the folder is ever written)."""
    return [load_image_rgb(file) for file in list_image_files(folder, key)]


def _is_litter(path: Path) -> bool:
    return path.name.startswith(".") or path.name in SYSTEM_FILES


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0  # 16-bit range → 8-bit range
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
