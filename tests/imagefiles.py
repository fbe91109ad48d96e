"""Real image files for tests, made with Pillow from photographs shipped by scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small RGB crop of a scikit-image photograph, ``size`` = (width, height)."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    return Image.fromarray(arr).convert("RGB").resize(size, Image.Resampling.BILINEAR)


def make_folder(
    root: Path, per_class: int = 3, classes: tuple[str, ...] = ("cat", "rocket"), size: int = 40
) -> list[Path]:
    """An image-folder tree: one sub-folder per class, JPEGs (one in a nested folder)."""
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            img = photo(PHOTOS[(c + i) % len(PHOTOS)], (size + 4 * i, size))
            folder = root / name / ("nested" if i == per_class - 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}_{i}.jpg"
            img.save(path, quality=90)
            paths.append(path)
    return paths


def add_bad_files(folder: Path) -> dict[str, str]:
    """A truncated JPEG, a zero-byte file and a text file named .jpg; returns name -> reason."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "tmp_full.jpg"
    photo("coffee", (64, 64)).save(good, quality=95)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are not pixels\n")
    return {"truncated.jpg": "truncated", "empty.jpg": "zero bytes", "notes.jpg": "not an image"}


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A 30x20 (w x h) JPEG whose EXIF says to rotate it; returns the stored pixels."""
    img = photo("astronaut", (30, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    return np.asarray(Image.open(path).convert("RGB"))


def folder_with_bad_files(root: Path, per_class: int) -> Path:
    """A class folder tree of ``per_class`` images a class, and the bad files of
    :func:`add_bad_files` in its ``rocket`` class."""
    make_folder(root, per_class=per_class, size=36)
    add_bad_files(root / "rocket")
    return root
