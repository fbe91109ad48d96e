"""Image sources and safe decoding.

:func:`decode_image` turns any common image file into an RGB ``uint8`` array ``(H, W, 3)``:
grayscale and palette images are expanded, transparency (RGBA, LA, palette with a transparent
colour) is composited on white, CMYK and other colour spaces are converted, 16-bit images are
scaled to 8 bits, and the EXIF orientation is applied. A file that cannot be used raises
:class:`SkipImage` with a short ``reason`` (zero bytes, not an image, truncated, too large) that
the extraction records in the store.

An :class:`ImageSource` is an ordered list of :class:`ImageRecord` (path, label) with class
names; :func:`open_source` builds one through the dataset plugins (``image-folder``) and wraps it
in a task transform (``rotation``) when asked.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Pillow's own decompression-bomb threshold; anything larger is skipped unless raised.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source: its path and its class index."""

    path: str
    label: int


class SkipImage(Exception):
    """An image that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


# ---------------------------------------------------------------------------- decoding


def _open(path_or_bytes: Any) -> tuple[Any, str]:
    from PIL import Image, UnidentifiedImageError

    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
        name = ""
        if not data:
            raise SkipImage("zero bytes")
        fp: Any = io.BytesIO(data)
    else:
        name = os.fspath(path_or_bytes)
        try:
            size = os.path.getsize(name)
        except FileNotFoundError:
            raise SkipImage("file not found", name) from None
        except OSError as exc:
            raise SkipImage(f"cannot read file: {exc.strerror}", name) from None
        if size == 0:
            raise SkipImage("zero bytes", name)
        fp = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise SkipImage("not an image", name) from None
    except Image.DecompressionBombError as exc:
        raise SkipImage(f"too many pixels ({exc})", name) from None
    except OSError as exc:
        if "truncated" in str(exc).lower():  # cut short before its header ends
            raise SkipImage("truncated file", name) from None
        raise SkipImage(f"cannot open: {exc}", name) from None
    return im, name


def _check_pixels(im: Any, name: str, max_pixels: int | None) -> None:
    w, h = im.size
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit > 0 and w * h > limit:
        raise SkipImage(f"too many pixels ({w}x{h} > max_pixels {limit})", name)
    if w <= 0 or h <= 0:
        raise SkipImage("empty image", name)


def _to_rgb(im: Any) -> np.ndarray:
    """Any Pillow image (already loaded and oriented) to an RGB uint8 array."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr.astype(np.float64) / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=-1))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def decode_image(path_or_bytes: Any, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file (path or bytes) to RGB ``uint8`` ``(H, W, 3)``; raises :class:`SkipImage`.

    ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`; ``0`` for no limit) skips larger images
    before their pixels are decoded.
    """
    from PIL import Image, ImageOps

    im, name = _open(path_or_bytes)
    try:
        _check_pixels(im, name, max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()  # Pillow's own bomb limit stays (a process-wide setting: header
                # checks run in another thread at the same time)
        except Image.DecompressionBombError as exc:
            raise SkipImage(f"too many pixels ({exc})", name) from None
        except OSError as exc:
            text = str(exc)
            reason = "truncated file" if "truncated" in text else f"corrupt image ({text})"
            raise SkipImage(reason, name) from None
        except (ValueError, SyntaxError, EOFError) as exc:
            raise SkipImage(f"corrupt image ({exc})", name) from None
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block: keep the pixels as stored
            oriented = im
        return _to_rgb(oriented if oriented is not None else im)
    finally:
        im.close()


_PNG_END = b"IEND\xaeB`\x82"


def _ends_whole(path: Any, fmt: str) -> bool:
    """Whether a JPEG ends with its EOI marker, or a PNG with its IEND chunk (``path`` may be
    the file's bytes)."""
    if isinstance(path, bytes | bytearray | memoryview):
        tail = bytes(path[-8:])
    else:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8))
            tail = fh.read()
    return tail.endswith(b"\xff\xd9") if fmt == "JPEG" else tail.endswith(_PNG_END)


def probe_image(path: str, *, max_pixels: int | None = None) -> str:
    """How the input pipeline should decode ``path``, reading only its header.

    Returns ``"native-jpeg"`` or ``"native-png"`` when TensorFlow's own decoders give
    :func:`decode_image`'s colours (an 8-bit grey or RGB JPEG or PNG, whole, without
    transparency or EXIF rotation), else ``"pillow"``. Raises :class:`SkipImage` for files
    that cannot be used.
    """
    return probe_image_size(path, max_pixels=max_pixels)[0]


def probe_image_size(path: Any, *, max_pixels: int | None = None) -> tuple[str, int, int]:
    """:func:`probe_image`'s answer with the stored width and height (``path`` may be the
    file's bytes, as :func:`decode_image` takes them)."""
    im, name = _open(path)
    try:
        _check_pixels(im, name, max_pixels)
        width, height = im.size
        fmt = im.format
        if fmt not in ("JPEG", "PNG"):
            return "pillow", width, height
        if im.mode not in ("RGB", "L") or "transparency" in im.info:
            return "pillow", width, height
        if fmt == "PNG" and getattr(im, "n_frames", 1) != 1:
            return "pillow", width, height
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
        if orientation not in (None, 1):
            return "pillow", width, height
        if any(";16" in str(tile[3]) for tile in getattr(im, "tile", []) or []):
            return "pillow", width, height  # 16 bits per channel
        if not _ends_whole(path, fmt):
            return "pillow", width, height  # truncated or trailing bytes: Pillow tells which
        return ("native-jpeg" if fmt == "JPEG" else "native-png"), width, height
    finally:
        im.close()


# ---------------------------------------------------------------------------- sources


class ImageSource:
    """An ordered, labelled list of images.

    Subclasses that make images some other way than by decoding ``record.path`` override
    :meth:`load` and return ``None`` from :meth:`plan`, so that the input pipeline calls
    :meth:`load` for each image.
    """

    name = "images"

    def __init__(
        self,
        records: Sequence[ImageRecord],
        label_names: Sequence[str],
        *,
        max_pixels: int | None = None,
        location: str = "",
    ) -> None:
        self.records: list[ImageRecord] = list(records)
        self.label_names: list[str] = [str(n) for n in label_names]
        self.max_pixels = max_pixels
        self.location = location
        self.task: str | None = None
        # what listing the images found but left out: [path, reason] (a second path to a file
        # already listed, a broken link, not a regular file), and class folders with no images
        self.listing_skipped: list[list[str]] = []
        self.empty_classes: list[str] = []
        self.warnings: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.location or ''} images={len(self)} "
            f"classes={len(self.label_names)}>"
        )

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def load(self, index: int) -> np.ndarray:
        """The image at ``index`` as RGB uint8 ``(H, W, 3)``; raises :class:`SkipImage`."""
        return decode_image(self.records[index].path, max_pixels=self.max_pixels)

    def rotations(self) -> np.ndarray | None:
        """Quarter turns (counter-clockwise) applied to each image on reading, or None."""
        return None

    def plan(self) -> dict[str, Any] | None:
        """What the input pipeline needs to read this source natively: ``paths``, ``labels``,
        ``rotations`` (quarter turns or None) and ``max_pixels``; None means "call load()"."""
        if type(self).load is not ImageSource.load:
            return None
        return {
            "paths": self.paths,
            "labels": self.labels,
            "rotations": self.rotations(),
            "max_pixels": self.max_pixels,
        }

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """A source of the images at ``indices`` (same class names)."""
        out = ImageSource(
            [self.records[i] for i in indices],
            self.label_names,
            max_pixels=self.max_pixels,
            location=self.location,
        )
        out.task = self.task
        return out


class TransformedSource(ImageSource):
    """A source wrapping another one (a task transform); records come from the wrapped source."""

    def __init__(
        self, base: ImageSource, records: Sequence[ImageRecord], label_names: Sequence[str]
    ) -> None:
        super().__init__(records, label_names, max_pixels=base.max_pixels, location=base.location)
        self.base = base
        self.listing_skipped = list(base.listing_skipped)
        self.empty_classes = list(base.empty_classes)
        self.warnings = list(base.warnings)


def write_images(source: ImageSource, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write every image of ``source`` as it is read (task transforms applied, e.g. rotated) to
    ``out_dir/<class name>/<n>_<name>.png``, an ``image-folder`` tree. Unusable files are
    skipped and listed. Returns ``out``, ``written``, ``skipped`` and ``skipped_files``."""
    from pathlib import Path

    from PIL import Image

    from . import outputs

    out = Path(out_dir)
    # a folder transferkit wrote before is replaced whole (the old one is deleted only once the
    # new one is written); anything else that is not empty is refused, untouched
    outputs.check_folder(out, "images", what="--write-images folder")
    written, skipped = 0, []
    with outputs.replacing(out), outputs.writing(out):
        outputs.mark_folder(out, "images")
        for name in source.label_names:
            (out / name).mkdir(parents=True, exist_ok=True)
        for i, record in enumerate(source.records):
            try:
                pixels = source.load(i)
            except SkipImage as exc:
                skipped.append([record.path, exc.reason])
                continue
            stem = Path(record.path).stem
            target = out / source.label_names[record.label] / f"{i:06d}_{stem}.png"
            Image.fromarray(pixels).save(target)
            written += 1
    return {"out": str(out), "written": written, "skipped": len(skipped), "skipped_files": skipped}


def open_source(
    location: Any,
    *,
    task: str | None = None,
    seed: int = 0,
    dataset: str = "image-folder",
    **options: Any,
) -> ImageSource:
    """An image source for ``location`` (a folder, a CSV/JSON list, or an :class:`ImageSource`),
    wrapped in the ``task`` transform (e.g. ``rotation``) when given."""
    from . import registry
    from .errors import UsageError

    if isinstance(location, ImageSource):
        source = location
        if options.get("max_pixels") is not None:
            source.max_pixels = options["max_pixels"]
    else:
        spec = registry.dataset(dataset)
        if spec.transform:
            raise UsageError(f"{dataset!r} is a task transform, not an image source")
        source = spec.factory(os.fspath(location), **options)
    if task:
        spec = registry.dataset(task)
        if not spec.transform:
            raise UsageError(
                f"{task!r} is an image source, not a task; tasks: "
                + ", ".join(
                    sorted(n for n, s in registry.all_specs("dataset").items() if s.transform)  # type: ignore[attr-defined]
                )
            )
        source = spec.factory(source, seed=seed)
        source.task = task
    return source
