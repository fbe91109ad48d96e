"""The buffered writer of a store, and the one check of an output before anything is written.

:func:`check_output` is what every writer, and every job before it builds a network, asks of an
output store: it refuses a store that exists without ``overwrite`` or ``resume``, one that
another live process writes, and, to replace, anything but a store transferkit wrote.
:class:`FeatureStoreWriter` buffers rows and writes them in blocks: ``features``, ``labels``
and ``paths`` first, the ``rows`` attribute last, so a process killed at any moment leaves a
store whose first ``rows`` rows are whole; a resumed writer truncates anything past them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TransferkitError, UsageError
from ..outputs import ensure_parent, refuse_replacing, replacing, writing
from .attrs import (
    RESERVED_ATTRS,
    SCHEMA_VERSION,
    SHARDING,
    StoreDamagedError,
    checked_attrs,
    decode_attr,
    encode_attr,
    path_text,
    text_list,
)
from .backend import FeatureStore
from .lock import PidLock, refuse_locked

if TYPE_CHECKING:
    from typing import TypedDict

    from typing_extensions import NotRequired

    class StoreSettings(TypedDict):
        """What every writer of a store is given besides its backend and path (the sharded
        writer takes the same): see :class:`FeatureStoreWriter`."""

        feature_dim: int
        label_names: Sequence[str]
        metadata: Mapping[str, Any]
        mode: str
        compression: str | None
        must_match: NotRequired[Sequence[str]]


MODES = ("create", "overwrite", "resume")
FREE_SPACE_MARGIN = 64 << 10  # bytes kept free beyond a block's own size (formats that check)


class StoreExistsError(UsageError):
    """The output store already exists and neither overwrite nor resume was asked for."""


def check_output(backend: type[FeatureStore], path: str, mode: str) -> None:
    """Refuse to write the store ``path`` in ``mode`` (``create``, ``overwrite`` or ``resume``)
    before anything is written: a store that exists when ``mode`` is ``create``
    (:class:`StoreExistsError`), a store that another live process writes
    (:class:`~transferkit.store.StoreLockedError`), or, to overwrite, a path that is not a store
    transferkit wrote (:func:`check_replaceable_store`)."""
    if mode not in MODES:
        raise UsageError(f"unknown store mode {mode!r}; allowed: {list(MODES)}")
    exists = backend.exists(path)
    if exists and mode == "create":
        raise StoreExistsError(
            f"{path} already exists; pass --overwrite to replace it or --resume to continue an "
            f"interrupted extraction into it (overwrite=True or resume=True in Python)"
        )
    if exists and mode == "overwrite":
        check_replaceable_store(backend, path)
    else:
        refuse_locked(path)


def check_replaceable_store(backend: type[FeatureStore], path: str) -> None:
    """Raise ``UsageError`` unless ``path`` (which exists) is a store transferkit wrote
    (``StoreLockedError`` when another live process is writing it)."""
    refuse_locked(path)
    if not backend.is_transferkit_store(path):
        kind = "folder" if os.path.isdir(path) else "file"
        raise refuse_replacing(
            path,
            f"output {kind}",
            f"a {backend.name or 'feature'} store written by transferkit",
        )


def default_chunk_rows(feature_dim: int) -> int:
    """Rows of one chunk of features: about 1 MiB of them, at least 16 rows, at most 8192."""
    return int(max(16, min(8192, (1 << 20) // (4 * max(1, feature_dim)))))


def _chunk_bytes(array: Any) -> int:
    """Bytes of one uncompressed chunk of ``array`` (0 when it has no chunks): what a format
    may allocate at once when a block starts a new chunk."""
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return 0
    itemsize = getattr(getattr(array, "dtype", None), "itemsize", 8) or 8
    return int(np.prod(chunks)) * int(itemsize)


def as_rows(
    features: Any, labels: Any, paths: Sequence[str], feature_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32, labels int64)`` of rows to write, checked against each other (and
    against ``feature_dim`` when given)."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if feature_dim is not None and (x.ndim != 2 or x.shape[1] != feature_dim):
        raise ValueError(f"features must be (n, {feature_dim}), got {x.shape}")
    if not (len(x) == len(y) == len(paths)):
        raise ValueError(f"{len(x)} features, {len(y)} labels and {len(paths)} paths differ")
    return x, y


class FeatureStoreWriter:
    """Buffered writer of one store. Made by :func:`create_store`; use it as a context manager."""

    def __init__(
        self,
        backend: type[FeatureStore],
        path: str,
        *,
        feature_dim: int,
        label_names: Sequence[str],
        metadata: Mapping[str, Any],
        mode: str,
        compression: str | None,
        buffer_rows: int,
        chunk_rows: int | None = None,
        must_match: Sequence[str] = (),
    ) -> None:
        if feature_dim <= 0:
            raise UsageError(f"feature_dim must be positive, got {feature_dim}")
        check_output(backend, str(path), mode)
        self.backend = backend
        self.path = str(path)
        self.feature_dim = int(feature_dim)
        self.label_names = [path_text(n) for n in label_names]
        self.buffer_rows = max(1, int(buffer_rows))
        self._compression = compression
        self._chunk_rows = chunk_rows
        self._buf_x: list[np.ndarray] = []
        self._buf_y: list[np.ndarray] = []
        self._buf_p: list[str] = []
        self._buf_n = 0
        self._pending_skipped: list[list[str]] = []
        self._closed = False
        self.resumed = False
        self._lock = PidLock(self.path)

        exists = backend.exists(self.path)
        ensure_parent(self.path)
        self._lock.acquire()
        try:
            if exists and mode == "resume":
                self._open_for_resume(metadata, must_match)
                with writing(self.path):
                    self._write_attrs(metadata, initial=False)
            else:
                # the old store stays aside until the new one is created, and comes back if
                # creating it fails (a full disk, say)
                with replacing(self.path), writing(self.path):
                    try:
                        self._create()
                        self._write_attrs(metadata, initial=True)
                    except BaseException:
                        if getattr(self, "root", None) is not None:
                            with contextlib.suppress(Exception):
                                backend.close_root(self.root)
                        if not exists:  # what was made of the new store: nothing to resume
                            with contextlib.suppress(OSError):
                                backend.remove(self.path)
                        raise
        except BaseException:
            self._lock.release()
            raise

    # ------------------------------------------------------------------ open / create

    def _index_rows(self, feature_rows: int) -> int:
        """Rows of one chunk of labels and of paths, given those of a chunk of features."""
        return max(feature_rows, 1024)

    def _create(self) -> None:
        b = self.backend
        self.root = b.open_root(self.path, "w")
        d, compression = self.feature_dim, self._compression
        # aim at ~1 MiB chunks of features, at least 16 rows
        rows_per_chunk = self._chunk_rows or default_chunk_rows(d)
        index_rows = self._index_rows(rows_per_chunk)
        self._features = b.create_array(
            self.root, "features", (0, d), "float32", (rows_per_chunk, d), compression
        )
        self._labels = b.create_array(
            self.root, "labels", (0,), "int64", (index_rows,), compression
        )
        self._paths = b.create_array(self.root, "paths", (0,), "str", (index_rows,), compression)
        names = b.create_array(
            self.root,
            "label_names",
            (len(self.label_names),),
            "str",
            (max(1, len(self.label_names)),),
            None,
        )
        if self.label_names:
            names[:] = np.array(self.label_names, dtype=object)
        self._rows_on_disk = 0
        self._skipped: list[list[str]] = []
        self._done_paths: set[str] = set()
        self._stored_paths: list[str] = []

    def _open_for_resume(self, metadata: Mapping[str, Any], must_match: Sequence[str]) -> None:
        b = self.backend
        try:
            self.root = b.open_root(self.path, "a")
        except Exception as exc:
            raise UsageError(
                f"cannot open {self.path} to resume it ({type(exc).__name__}: {exc}); it may "
                f"have been damaged when its writer was killed mid-write; pass --overwrite to "
                f"start again"
            ) from exc
        for name in ("features", "labels", "paths", "label_names"):
            if not b.has_array(self.root, name):
                b.close_root(self.root)
                raise UsageError(
                    f"{self.path} has no {name!r} array, so it cannot be resumed; "
                    f"pass --overwrite to replace it"
                )
        if "schema_version" not in self.root.attrs:  # arrays of those names, not our store
            b.close_root(self.root)
            raise UsageError(
                f"{self.path} is not a store transferkit wrote (it has no schema_version), so "
                "it cannot be resumed; choose another output"
            )
        self._features = self.root["features"]
        self._labels = self.root["labels"]
        self._paths = self.root["paths"]
        try:
            attrs = checked_attrs(self.path, self.root.attrs.items())
        except StoreDamagedError as exc:
            b.close_root(self.root)
            raise UsageError(f"cannot resume: {exc}; pass --overwrite to start again") from None
        if SHARDING in attrs:  # its rows are in shards: only a sharded writer may continue it
            b.close_root(self.root)
            raise UsageError(
                f"cannot resume {self.path} in one process: shards on a cluster were writing "
                f"it; resume it with --scheduler, or pass --overwrite to start again"
            )
        self._refuse_other_settings(attrs, metadata, must_match)
        rows = int(attrs.get("rows", self._features.shape[0]))
        rows = min(rows, self._features.shape[0], self._labels.shape[0], self._paths.shape[0])
        # anything past the committed rows is a half-written buffer: drop it
        for arr in (self._features, self._labels, self._paths):
            if arr.shape[0] != rows:
                b.resize_array(arr, rows)
        self._rows_on_disk = rows
        self._skipped = [list(s) for s in attrs.get("skipped", [])]
        self._stored_paths = text_list(self._paths[:rows]) if rows else []
        self._done_paths = set(self._stored_paths)
        self.resumed = True

    def _refuse_other_settings(
        self, attrs: Mapping[str, Any], metadata: Mapping[str, Any], must_match: Sequence[str]
    ) -> None:
        """Close the open store and refuse to resume it when it was made with other settings
        than this run's: its feature width, its class names, or a ``must_match`` metadata key."""
        stored_dim = int(self._features.shape[1])
        stored_names = text_list(self.root["label_names"][:])
        problems = []
        if stored_dim != self.feature_dim:
            problems.append(f"feature width {stored_dim} vs {self.feature_dim}")
        if stored_names != self.label_names:
            problems.append(f"label names {stored_names[:5]}... vs {self.label_names[:5]}...")
        problems += [
            f"{k}: {attrs[k]!r} -> {metadata.get(k)!r}"
            for k in must_match
            if k in attrs and attrs[k] != decode_attr(encode_attr(metadata.get(k)))
        ]
        if problems:
            self.backend.close_root(self.root)
            raise UsageError(
                f"cannot resume {self.path}: it was made with other settings ("
                + "; ".join(problems)
                + "); pass --overwrite to start again"
            )

    def _write_attrs(self, metadata: Mapping[str, Any], initial: bool) -> None:
        attrs = self.root.attrs
        values: dict[str, Any] = {}
        if initial:
            values["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in metadata.items():
            if key in RESERVED_ATTRS:
                raise UsageError(f"metadata key {key!r} is reserved by the store")
            values[key] = value
        values["schema_version"] = SCHEMA_VERSION
        values["feature_dim"] = self.feature_dim
        values["complete"] = False
        values["skipped"] = self._skipped
        values["rows"] = self._rows_on_disk
        for key, value in values.items():
            attrs[key] = encode_attr(value)
        self.backend.flush_root(self.root)

    # ------------------------------------------------------------------ public API

    @property
    def rows(self) -> int:
        """Rows written, including those still in the buffer."""
        return self._rows_on_disk + self._buf_n

    @property
    def done_paths(self) -> set[str]:
        """Paths already stored (rows) -- what a resumed extraction need not compute again."""
        return set(self._done_paths)

    @property
    def stored_paths(self) -> list[str]:
        """The paths of the rows on disk, in row order (repeats kept)."""
        return list(self._stored_paths)

    @property
    def skipped_paths(self) -> set[str]:
        return {s[0] for s in self._skipped} | {s[0] for s in self._pending_skipped}

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(p, r) for p, r in self._skipped + self._pending_skipped]

    def append(self, features: Any, labels: Any, paths: Sequence[str]) -> None:
        """Add rows; they reach the disk when the buffer is full (or on flush/close)."""
        if self._closed:
            raise TransferkitError(f"{self.path} is closed")
        x, y = as_rows(features, labels, paths, self.feature_dim)
        if len(x) == 0:
            return
        self._buf_x.append(x)
        self._buf_y.append(y)
        self._buf_p.extend(path_text(p) for p in paths)
        self._buf_n += len(x)
        if self._buf_n >= self.buffer_rows:
            self.flush()

    def record_skipped(self, path: str, reason: str) -> None:
        """Record a file that could not be used; stored with the next flush."""
        self._pending_skipped.append([path_text(path), path_text(reason)])

    @property
    def committed_rows(self) -> int:
        """Rows on disk, committed (what a resumed run keeps)."""
        return self._rows_on_disk

    def flush(self) -> None:
        """Write the buffer: data first, then the committed row count, then make it durable.

        An operating-system error (a full disk) is an ``OutputError``; the rows committed before
        it stay, and a resumed writer drops anything written past them."""
        with writing(self.path):
            self._flush()

    def _flush(self) -> None:
        b = self.backend
        if self._buf_n:
            x = np.concatenate(self._buf_x)
            y = np.concatenate(self._buf_y)
            p = np.array(self._buf_p, dtype=object)
            if b.checks_free_space:
                chunks = sum(_chunk_bytes(a) for a in (self._features, self._labels, self._paths))
                block = x.nbytes + y.nbytes + sum(len(q) for q in self._buf_p)
                self._check_free_space(2 * block + chunks)
            start, stop = self._rows_on_disk, self._rows_on_disk + self._buf_n
            for arr, data in ((self._features, x), (self._labels, y), (self._paths, p)):
                if arr.shape[0] < stop:
                    b.resize_array(arr, stop)
                arr[start:stop] = data
            self._done_paths.update(self._buf_p)
            self._stored_paths.extend(self._buf_p)
            self._rows_on_disk = stop
            self._buf_x, self._buf_y, self._buf_p, self._buf_n = [], [], [], 0
        if self._pending_skipped:
            self._skipped.extend(self._pending_skipped)
            self._pending_skipped = []
            self.root.attrs["skipped"] = encode_attr(self._skipped)
        self.root.attrs["rows"] = self._rows_on_disk
        b.flush_root(self.root)

    def _check_free_space(self, nbytes: int) -> None:
        """Refuse a block the disk cannot take before writing any of it: a format that cannot
        recover from a full disk mid-write (HDF5) keeps its committed rows intact this way."""
        folder = os.path.dirname(os.path.abspath(self.path))
        need = nbytes + FREE_SPACE_MARGIN  # with room for metadata to spare
        free = shutil.disk_usage(folder).free
        if free < need:
            raise OSError(
                errno.ENOSPC,
                f"{os.strerror(errno.ENOSPC)} (the next block needs about {need >> 10} KiB, "
                f"{free >> 10} KiB are free)",
                self.path,
            )

    def close(self, complete: bool = True) -> None:
        """Flush, mark the store complete (unless ``complete=False``), close, release the lock."""
        if self._closed:
            return
        try:
            with writing(self.path):
                self._flush()
                self.root.attrs["complete"] = bool(complete)
                self.root.attrs["image_count"] = self._rows_on_disk + len(self._skipped)
                self.backend.flush_root(self.root)
        finally:
            self._release()

    def _release(self) -> None:
        """Close the container, then release the lock (even when closing fails)."""
        self._closed = True
        try:
            with writing(self.path):
                self.backend.close_root(self.root)
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Flush what is buffered and close without marking the store complete.

        Used when a run fails: an error while flushing (the disk that caused the failure is
        still full) is not raised again, the rows committed before it stay."""
        with contextlib.suppress(Exception):
            self.close(complete=False)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(complete=exc_type is None)
