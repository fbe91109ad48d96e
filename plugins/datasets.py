"""Built-in image sources and tasks: ``image-folder`` and the ``rotation`` task.

``image-folder`` reads a folder with one sub-folder per class (searched recursively), or a CSV or
JSON list of ``path,label``. ``rotation`` wraps any source: each image is turned by a seeded random
0, 90, 180 or 270 degrees (counter-clockwise) while it is read, and that angle is its label.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit import DatasetSpec, UsageError, hookimpl
from transferkit.plugin import (
    IMAGE_SUFFIXES,
    ImageRecord,
    ImageSource,
    TransformedSource,
    write_images,
)

ROTATION_NAMES = ("0", "90", "180", "270")


# ---------------------------------------------------------------------------- image-folder


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Listing:
    """What a folder walk found: each real file once (by device and inode, so a second path
    through a symbolic or hard link is recorded, not read again), and what it left out."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self.seen: dict[tuple[int, int], str] = {}
        # folders walked on their own (the root, each class folder): a link to one of them from
        # elsewhere is not followed, and a folder reached twice is walked once
        self.visited: set[tuple[int, int]] = set()
        self.reserved = {k for k in map(_dir_key, reserved) if k is not None}
        self.skipped: list[list[str]] = []
        self.warnings: list[str] = []

    def keep(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError as exc:
            reason = "broken symbolic link" if os.path.islink(path) else exc.strerror
            self.skipped.append([path, f"cannot read file ({reason})"])
            return False
        if not stat.S_ISREG(st.st_mode):
            self.skipped.append([path, "not a regular file"])
            return False
        key = (st.st_dev, st.st_ino)
        first = self.seen.get(key)
        if first is not None:
            self.skipped.append([path, f"same file as {first} (read once)"])
            return False
        self.seen[key] = path
        return True

    def walk(self, folder: str) -> list[str]:
        """Image files under ``folder``, sorted; links are followed, but a folder reached again
        (a loop of links, or two links to one folder) is walked once."""
        found: list[str] = []
        top = _dir_key(folder)

        def failed(exc: OSError) -> None:
            self.warnings.append(f"cannot list {exc.filename}: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=failed):
            key = _dir_key(dirpath)
            if key is None or key in self.visited or (key in self.reserved and key != top):
                dirnames[:] = []
                continue
            self.visited.add(key)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                os.path.join(dirpath, name)
                for name in filenames
                if not name.startswith(".") and _is_image(name)
            )
        return [p for p in sorted(found) if self.keep(p)]


def _sort_names(names: set[str]) -> list[str]:
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _from_folder(root: str, max_pixels: int | None) -> ImageSource:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    listing = _Listing([root, *(os.path.join(root, name) for name in classes)])
    records: list[ImageRecord] = []
    names: list[str] = []
    empty: list[str] = []
    for name in classes:
        before = len(listing.skipped)
        files = listing.walk(os.path.join(root, name))
        if not files:
            if len(listing.skipped) == before:
                empty.append(name)
            continue
        label = len(names)
        names.append(name)
        records.extend(ImageRecord(p, label) for p in files)
    if not records and not listing.skipped:
        loose = [os.path.join(root, f) for f in sorted(os.listdir(root)) if _is_image(f)]
        loose = [p for p in loose if listing.keep(p)]
        if loose:  # a flat folder: one class named after it
            names = [os.path.basename(os.path.normpath(root)) or "images"]
            records = [ImageRecord(p, 0) for p in loose]
            empty = []
    if not records:
        unusable = f" ({len(listing.skipped)} file(s) could not be used)" if listing.skipped else ""
        raise UsageError(
            f"no images in {root}: expected one sub-folder per class holding "
            f"{', '.join(IMAGE_SUFFIXES)} files, or a CSV/JSON list of path,label{unusable}"
        )
    source = ImageSource(records, names, max_pixels=max_pixels, location=root)
    source.listing_skipped = listing.skipped
    source.empty_classes = empty
    source.warnings = listing.warnings
    return source


def _rows_from_csv(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save the list as UTF-8") from None
    except csv.Error as exc:
        raise UsageError(f"{path} is not a valid CSV list: {exc}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    out = []
    for i, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise UsageError(f"{path} line {i}: expected path,label, got {row!r}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def _rows_from_json(path: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save the list as UTF-8") from None
    except RecursionError:
        raise UsageError(f"{path} nests too deeply to be a list of images") from None
    if isinstance(data, dict):
        data = data.get("images", data.get("items"))
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of {{'path': ..., 'label': ...}} items")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "path" in item and "label" in item:
            out.append((str(item["path"]), str(item["label"])))
        elif isinstance(item, list | tuple) and len(item) >= 2:
            out.append((str(item[0]), str(item[1])))
        else:
            raise UsageError(f"{path} item {i}: expected path and label, got {item!r}")
    return out


def _from_list(path: str, max_pixels: int | None) -> ImageSource:
    rows = _rows_from_json(path) if path.lower().endswith(".json") else _rows_from_csv(path)
    if not rows:
        raise UsageError(f"{path} lists no images")
    base = os.path.dirname(os.path.abspath(path))
    names = _sort_names({label for _, label in rows})
    index = {n: i for i, n in enumerate(names)}
    records = [
        ImageRecord(p if os.path.isabs(p) else os.path.join(base, p), index[label])
        for p, label in rows
    ]
    return ImageSource(records, names, max_pixels=max_pixels, location=path)


def image_folder(location: str, *, max_pixels: int | None = None, **_: Any) -> ImageSource:
    """A source from a class-per-sub-folder tree or a CSV/JSON list of ``path,label``."""
    if os.path.isdir(location):
        return _from_folder(location, max_pixels)
    if os.path.isfile(location) and location.lower().endswith((".csv", ".json", ".txt")):
        return _from_list(location, max_pixels)
    if not os.path.exists(location):
        raise UsageError(f"{location} does not exist; give a folder of images or a CSV/JSON list")
    raise UsageError(
        f"{location} is neither a folder nor a .csv/.json list of path,label; "
        f"give a folder with one sub-folder per class"
    )


# ---------------------------------------------------------------------------- rotation task


class RotationSource(TransformedSource):
    """Each image turned by a seeded random multiple of 90 degrees; the angle is the label."""

    name = "rotation"

    def __init__(self, base: ImageSource, *, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.quarter_turns = rng.integers(0, 4, size=len(base)).astype(np.int64)
        records = [
            ImageRecord(r.path, int(k))
            for r, k in zip(base.records, self.quarter_turns, strict=True)
        ]
        super().__init__(base, records, ROTATION_NAMES)
        self.seed = seed
        self._base_native = base.plan() is not None

    def load(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(self.base.load(index), int(self.quarter_turns[index])))

    def rotations(self) -> np.ndarray | None:
        return self.quarter_turns

    def plan(self) -> dict[str, Any] | None:
        if not self._base_native:
            return None
        return {
            "paths": self.paths,
            "labels": self.labels,
            "rotations": self.quarter_turns,
            "max_pixels": self.max_pixels,
        }

    def subset(self, indices: Sequence[int]) -> ImageSource:
        return _RotatedSubset(self, list(indices))


class _RotatedSubset(RotationSource):
    def __init__(self, parent: RotationSource, indices: list[int]) -> None:
        ImageSource.__init__(
            self,
            [parent.records[i] for i in indices],
            ROTATION_NAMES,
            max_pixels=parent.max_pixels,
            location=parent.location,
        )
        self.base = parent.base.subset(indices)
        self.quarter_turns = parent.quarter_turns[indices]
        self.seed = parent.seed
        self._base_native = parent._base_native
        self.task = parent.task


def rotation(source: ImageSource, *, seed: int = 0, **_: Any) -> RotationSource:
    return RotationSource(source, seed=seed)


def write_rotated(
    source: ImageSource, out_dir: str | os.PathLike[str], *, seed: int = 0
) -> dict[str, Any]:
    """Write rotated copies of ``source`` (a rotation source, or any source rotated with ``seed``)
    as ``out_dir/<angle>/<n>_<name>.png``, an ``image-folder`` tree. Returns counts and skips."""
    rotated = source if isinstance(source, RotationSource) else RotationSource(source, seed=seed)
    return write_images(rotated, out_dir)


@hookimpl
def register_datasets(register: Any) -> None:
    register(
        DatasetSpec(
            name="image-folder",
            description="folder with one sub-folder per class (recursive), or CSV/JSON path,label",
            factory=image_folder,
            metadata={"suffixes": list(IMAGE_SUFFIXES)},
        )
    )
    register(
        DatasetSpec(
            name="rotation",
            description="task: each image turned by a seeded random 0/90/180/270 degrees, "
            "the angle is the label",
            factory=rotation,
            transform=True,
            # a flip or a rotation would change the labels: fine-tuning does not augment
            metadata={"label_names": list(ROTATION_NAMES), "augment": "none"},
        )
    )
