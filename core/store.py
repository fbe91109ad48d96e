"""Feature stores: one schema, one base class, thin backends (HDF5, Zarr) registered as plugins.

Schema on disk, the same for every format::

    features     (N, D) float32, chunked along rows, optional compression
    labels       (N,)   int64
    label_names  (K,)   strings
    paths        (N,)   strings
    attributes   metadata (JSON-encoded where not scalar), ``skipped`` (JSON list of
                 [path, reason]), ``rows`` (rows committed to disk), ``complete``

All the logic (buffering, resume, the guard against overwriting, the lock against two writers,
metadata, skipped records, range reads) lives in :class:`FeatureStore`; a backend only opens its
container and creates arrays. ``features``/``labels``/``paths`` are written first and the ``rows``
attribute last, so a process killed at any moment leaves a store whose first ``rows`` rows are
whole; a resumed writer truncates anything past them.

Crash safety: Zarr 3 replaces every file it writes atomically, so a killed writer leaves a
readable store. HDF5 is not journaled: a process killed in the few milliseconds of a write can
leave a damaged file, which resume reports (use ``--overwrite`` then).

A "classic" store (HDF5 with only ``features``, ``labels``, ``label_names``, as the Keras
features recipe writes it with h5py) opens with the same reader.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import TransferkitError, UsageError
from .outputs import ensure_parent, output_error, refuse_replacing, replacing, writing

MODES = ("create", "overwrite", "resume")
SCHEMA_VERSION = 1
_RESERVED_ATTRS = ("rows", "complete", "skipped", "schema_version", "feature_dim", "sharding")
_READ_WINDOW = 4096  # rows read at once by read_rows when picking scattered indices


class StoreExistsError(UsageError):
    """The output store already exists and neither overwrite nor resume was asked for."""


class StoreLockedError(TransferkitError):
    """Another live process is writing the store."""


def _encode_attr(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) and not isinstance(value, np.generic):
        return value
    return "json:" + json.dumps(value, default=_json_default)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


class StoreDamagedError(TransferkitError):
    """A file opened as a store is not one transferkit can read: damaged, hostile or foreign."""


# metadata keys whose type a reader checks: a store that says otherwise is refused
_INT_ATTRS = ("rows", "feature_dim", "schema_version", "image_count")
_MAX_ATTR_DEPTH = 32
_MAX_UNNAMED_CLASSES = 1 << 16  # a store without label_names numbers its classes up to this


def _depth(value: Any, limit: int = _MAX_ATTR_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (stops counting past ``limit``)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _checked_attrs(path: str, raw: Any) -> dict[str, Any]:
    """The store's attributes decoded, each checked: one clear error for anything malformed."""
    attrs: dict[str, Any] = {}
    for key, value in raw:
        key = str(key)
        try:
            decoded = _decode_attr(value)
        except (ValueError, RecursionError) as exc:  # bad JSON, nesting past Python's stack
            raise StoreDamagedError(
                f"{path}: attribute {key!r} cannot be decoded ({type(exc).__name__}); the store "
                f"is damaged or was not written by transferkit"
            ) from None
        if isinstance(decoded, np.ndarray):
            decoded = decoded.tolist()
        if _depth(decoded) > _MAX_ATTR_DEPTH:
            raise StoreDamagedError(
                f"{path}: attribute {key!r} nests deeper than {_MAX_ATTR_DEPTH} levels"
            )
        attrs[key] = decoded
    for key in _INT_ATTRS:
        if key in attrs:
            value = attrs[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StoreDamagedError(
                    f"{path}: attribute {key!r} must be a whole number >= 0, not {value!r}"
                )
    if "complete" in attrs and not isinstance(attrs["complete"], bool | int):
        raise StoreDamagedError(f"{path}: attribute 'complete' must be true or false")
    skipped = attrs.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in skipped
    ):
        raise StoreDamagedError(f"{path}: attribute 'skipped' must be a list of [path, reason]")
    for key in ("backbone", "pooling", "weights", "task"):
        if key in attrs and attrs[key] is not None and not isinstance(attrs[key], str):
            raise StoreDamagedError(f"{path}: attribute {key!r} must be text, not {attrs[key]!r}")
    if attrs.get("input_size") not in (None, ""):
        from .sizes import parse_input_size

        try:
            parse_input_size(attrs["input_size"], minimum=1)
        except UsageError as exc:
            raise StoreDamagedError(f"{path}: attribute 'input_size': {exc}") from None
    return attrs


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    return str(value)


def path_text(path: Any) -> str:
    """``path`` as the text a store records (paths, skipped files, class names).

    A file name whose bytes are not valid UTF-8 reaches Python with each bad byte as a lone
    surrogate (``surrogateescape``); HDF5 and Zarr hold only UTF-8, so each such byte is
    recorded as ``\\xNN`` (``backslashreplace``). The name is recorded faithfully and the same
    name always gives the same text (a resume matches it), but a name holding a literal
    ``\\xNN`` cannot be told from one holding that byte.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name can hold
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _to_str_list(values: Any) -> list[str]:
    out = []
    for v in np.asarray(values).tolist():
        out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The live process (not this one) that holds the writer lock of the store at ``path``, if
    any: lets a job refuse a second writer before it loads a network."""
    lock = os.fspath(path).rstrip("/") + ".lock"
    try:
        pid = int(Path(lock).read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and _pid_alive(pid) else None


def _chunk_bytes(array: Any) -> int:
    """Bytes of one uncompressed chunk of ``array`` (0 when it has no chunks): what a format
    may allocate at once when a block starts a new chunk."""
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return 0
    itemsize = getattr(getattr(array, "dtype", None), "itemsize", 8) or 8
    return int(np.prod(chunks)) * int(itemsize)


def default_chunk_rows(feature_dim: int) -> int:
    """Rows of one chunk of features: about 1 MiB of them, at least 16 rows, at most 8192."""
    return int(max(16, min(8192, (1 << 20) // (4 * max(1, feature_dim)))))


FREE_SPACE_MARGIN = 64 << 10  # bytes kept free beyond a block's own size (formats that check)


class FeatureStore:
    """Base class of every store format: the backend protocol a store plugin implements.

    A format is a subclass whose class methods open a container and make arrays; everything else
    (schema, buffering, resume, locking, metadata, checks) is :class:`FeatureStoreWriter`'s and
    :class:`FeatureStoreReader`'s. A container ("root") is a mapping of array names to arrays
    (``root[name]``, ``shape``, ``dtype``, slicing, slice assignment) with an ``attrs`` mapping
    of scalar attributes, as an h5py file or a Zarr group is.

    Required: :meth:`open_root`, :meth:`create_array`, :meth:`resize_array`.
    Optional (defaults here): :meth:`flush_root`, :meth:`close_root`, :meth:`has_array`,
    :meth:`take_rows`, :meth:`exists`, :meth:`is_transferkit_store`, :meth:`remove`, and the class
    attributes ``name``, ``suffixes`` and ``checks_free_space``.

    Use :func:`create_store` and :func:`open_store` rather than this class directly.
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    # a format that cannot recover from a full disk in the middle of a write sets this: each
    # block is then refused, whole, when the disk has no room for it
    checks_free_space: ClassVar[bool] = False
    # a format whose chunks several processes may write at once (one writer per chunk) sets
    # this: a cluster extraction writes only such a store
    concurrent_writers: ClassVar[bool] = False

    # ------------------------------------------------------------------ the backend protocol

    @classmethod
    def open_root(cls, path: str, mode: str) -> Any:
        """Open the container: ``mode`` is ``"r"`` (read), ``"a"`` (read/write) or ``"w"`` (new)."""
        raise NotImplementedError

    @classmethod
    def create_array(
        cls,
        root: Any,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        chunks: tuple[int, ...],
        compression: str | None,
    ) -> Any:
        """Create a row-resizable array (``dtype`` is ``"float32"``, ``"int64"`` or ``"str"``)."""
        raise NotImplementedError

    @classmethod
    def resize_array(cls, array: Any, rows: int) -> None:
        """Grow or shrink ``array`` to ``rows`` rows (its other dimensions unchanged)."""
        raise NotImplementedError

    @classmethod
    def flush_root(cls, root: Any) -> None:
        """Make everything written so far durable."""

    @classmethod
    def close_root(cls, root: Any) -> None:
        """Close the container."""

    @classmethod
    def has_array(cls, root: Any, name: str) -> bool:
        """Whether the container holds an array called ``name``."""
        return name in root

    @classmethod
    def take_rows(cls, array: Any, sorted_unique: np.ndarray) -> np.ndarray:
        """Rows at sorted unique indices. The default reads windows of contiguous rows."""
        parts = []
        i = 0
        n = len(sorted_unique)
        while i < n:
            start = int(sorted_unique[i])
            j = int(np.searchsorted(sorted_unique, start + _READ_WINDOW, side="left"))
            stop = int(sorted_unique[j - 1]) + 1
            block = np.asarray(array[start:stop])
            parts.append(block[sorted_unique[i:j] - start])
            i = j
        if not parts:
            return np.asarray(array[0:0])
        return np.concatenate(parts)

    @classmethod
    def delete_array(cls, root: Any, name: str) -> None:
        """Remove the array ``name`` (a sharded store drops its bookkeeping once complete)."""
        del root[name]

    @classmethod
    def exists(cls, path: str) -> bool:
        """Whether something (a store or not) is at ``path``."""
        return os.path.lexists(path)

    @classmethod
    def is_transferkit_store(cls, path: str) -> bool:
        """Whether ``path`` is a store that transferkit wrote (its arrays and schema version), the
        only kind of path ``overwrite`` may replace."""
        if os.path.islink(path):
            return False
        try:
            root = cls.open_root(path, "r")
        except Exception:
            return False
        try:
            return "schema_version" in root.attrs and all(
                cls.has_array(root, name) for name in ("features", "labels", "paths")
            )
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                cls.close_root(root)

    @classmethod
    def remove(cls, path: str) -> None:
        """Delete the store at ``path`` (a file or a folder)."""
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


# ---------------------------------------------------------------------------- writer


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
        if mode not in MODES:
            raise UsageError(f"unknown store mode {mode!r}; allowed: {list(MODES)}")
        if feature_dim <= 0:
            raise UsageError(f"feature_dim must be positive, got {feature_dim}")
        self.backend = backend
        self.path = str(path)
        self.feature_dim = int(feature_dim)
        self.label_names = [path_text(n) for n in label_names]
        self.buffer_rows = max(1, int(buffer_rows))
        self._buf_x: list[np.ndarray] = []
        self._buf_y: list[np.ndarray] = []
        self._buf_p: list[str] = []
        self._buf_n = 0
        self._pending_skipped: list[list[str]] = []
        self._closed = False
        self.resumed = False
        self._lock_path = self.path.rstrip("/") + ".lock"

        exists = backend.exists(self.path)
        if exists and mode == "create":
            raise StoreExistsError(
                f"{self.path} already exists; pass --overwrite to replace it or --resume to "
                f"continue an interrupted extraction into it (overwrite=True or resume=True "
                f"in Python)"
            )
        if exists and mode == "overwrite":
            check_replaceable_store(backend, self.path)
        ensure_parent(self.path)
        self._acquire_lock()
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
                        self._create(metadata, compression, chunk_rows)
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
            self._release_lock()
            raise

    # ------------------------------------------------------------------ lock

    def _acquire_lock(self) -> None:
        lock = self._lock_path
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(Path(lock).read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid != os.getpid() and _pid_alive(pid):
                    raise StoreLockedError(
                        f"{self.path} is being written by process {pid}; wait for it to finish "
                        f"or stop it (if no process writes it, delete {lock})"
                    ) from None
                # a stale lock left by a killed process
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            except OSError as exc:  # a read-only file system, no permission
                raise output_error(lock, exc, "create the lock file") from exc
            try:
                with writing(lock, "write the lock file"), os.fdopen(fd, "w") as fh:
                    fh.write(str(os.getpid()))
            except BaseException:
                self._release_lock()
                raise
            return
        raise StoreLockedError(f"cannot lock {self.path}; delete {lock} if no process writes it")

    def _release_lock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._lock_path)

    # ------------------------------------------------------------------ open / create

    def _create(
        self,
        metadata: Mapping[str, Any],
        compression: str | None,
        chunk_rows: int | None,
        index_chunk_rows: int | None = None,
    ) -> None:
        b = self.backend
        self.root = b.open_root(self.path, "w")
        d = self.feature_dim
        # aim at ~1 MiB chunks of features, at least 16 rows
        rows_per_chunk = chunk_rows or default_chunk_rows(d)
        index_rows = index_chunk_rows or max(rows_per_chunk, 1024)
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
            attrs = _checked_attrs(self.path, self.root.attrs.items())
        except StoreDamagedError as exc:
            b.close_root(self.root)
            raise UsageError(f"cannot resume: {exc}; pass --overwrite to start again") from None
        if SHARDING in attrs:  # its rows are in shards: only a sharded writer may continue it
            b.close_root(self.root)
            raise UsageError(
                f"cannot resume {self.path} in one process: shards on a cluster were writing "
                f"it; resume it with --scheduler, or pass --overwrite to start again"
            )
        stored_dim = int(self._features.shape[1])
        stored_names = _to_str_list(self.root["label_names"][:])
        problems = []
        if stored_dim != self.feature_dim:
            problems.append(f"feature width {stored_dim} vs {self.feature_dim}")
        if stored_names != self.label_names:
            problems.append(f"label names {stored_names[:5]}... vs {self.label_names[:5]}...")
        problems += [
            f"{k}: {attrs[k]!r} -> {metadata.get(k)!r}"
            for k in must_match
            if k in attrs and attrs[k] != _decode_attr(_encode_attr(metadata.get(k)))
        ]
        if problems:
            b.close_root(self.root)
            raise UsageError(
                f"cannot resume {self.path}: it was made with other settings ("
                + "; ".join(problems)
                + "); pass --overwrite to start again"
            )
        rows = int(attrs.get("rows", self._features.shape[0]))
        rows = min(rows, self._features.shape[0], self._labels.shape[0], self._paths.shape[0])
        # anything past the committed rows is a half-written buffer: drop it
        for arr in (self._features, self._labels, self._paths):
            if arr.shape[0] != rows:
                b.resize_array(arr, rows)
        self._rows_on_disk = rows
        self._skipped = [list(s) for s in attrs.get("skipped", [])]
        self._stored_paths = _to_str_list(self._paths[:rows]) if rows else []
        self._done_paths = set(self._stored_paths)
        self.resumed = True

    def _write_attrs(self, metadata: Mapping[str, Any], initial: bool) -> None:
        attrs = self.root.attrs
        values: dict[str, Any] = {}
        if initial:
            values["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in metadata.items():
            if key in _RESERVED_ATTRS:
                raise UsageError(f"metadata key {key!r} is reserved by the store")
            values[key] = value
        values["schema_version"] = SCHEMA_VERSION
        values["feature_dim"] = self.feature_dim
        values["complete"] = False
        values["skipped"] = self._skipped
        values["rows"] = self._rows_on_disk
        for key, value in values.items():
            attrs[key] = _encode_attr(value)
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
        x = np.asarray(features, dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (n, {self.feature_dim}), got {x.shape}")
        if not (len(x) == len(y) == len(paths)):
            raise ValueError(f"{len(x)} features, {len(y)} labels and {len(paths)} paths differ")
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
            self.root.attrs["skipped"] = _encode_attr(self._skipped)
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
            self._closed = True
            try:
                with writing(self.path):
                    self.backend.close_root(self.root)
            finally:
                self._release_lock()

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


# ---------------------------------------------------------------------------- sharded writes

DEFAULT_SHARD_ROWS = 1024
SHARD_MARKS = "shard_marks"  # int64 per shard: 0 while not complete, else the rows written + 1
SHARD_SKIPPED = "shard_skipped"  # text per shard: JSON list of [path, reason]
SHARDING = "sharding"  # attribute of a store that shards are writing: layout and journal
_MOVES = ("move_features", "move_labels", "move_paths")  # one shard's rows while they move


def shard_layout(feature_dim: int, shard_rows: int | None = None) -> tuple[int, int]:
    """``(rows of a shard, rows of a chunk of features)`` for a store written by shards: a
    shard is a whole number of feature chunks (and one chunk of labels and of paths), so that
    two writers never write the same chunk."""
    want = DEFAULT_SHARD_ROWS if shard_rows is None else int(shard_rows)
    if want <= 0:
        raise UsageError(f"shard rows must be positive, got {want}")
    chunk = default_chunk_rows(feature_dim)
    chunk = min(1 << (chunk.bit_length() - 1), want)  # a power of two divides the default
    return -(-want // chunk) * chunk, chunk


def is_sharded(path: str | os.PathLike[str], store: str | None = None) -> bool:
    """Whether ``path`` is a store that shards are writing (started, not yet complete)."""
    backend = backend_for(path, store)
    if not backend.exists(os.fspath(path)):
        return False
    try:
        root = backend.open_root(os.fspath(path), "r")
    except Exception:
        return False
    try:
        return SHARDING in root.attrs
    finally:
        backend.close_root(root)


def shard_progress(path: str | os.PathLike[str], store: str | None = None) -> tuple[int, int]:
    """``(complete shards, shards)`` of a store that shards are writing (``(0, 0)`` for any
    other store)."""
    if not is_sharded(path, store):
        return 0, 0
    backend = backend_for(path, store)
    root = backend.open_root(os.fspath(path), "r")
    try:
        marks = np.asarray(root[SHARD_MARKS][:])
        return int((marks > 0).sum()), int(marks.size)
    finally:
        backend.close_root(root)


class ShardedStoreWriter(FeatureStoreWriter):
    """The writer of a store that many processes fill at once, one shard each.

    The client (this object) creates the store with its arrays sized for every image, holds
    the lock, and at the end :meth:`finish` makes it exactly what :class:`FeatureStoreWriter`
    would have written: shard ``s`` owns the rows ``s * shard_rows`` up to the next shard, and
    :func:`write_shard` (run by a worker) writes its rows there, then its skipped files, then
    its completion mark, last. A shard with skipped files leaves rows unused at its end;
    :meth:`finish` moves the later rows down over them (a move journaled in the store, so
    that a client killed mid-way resumes it), sizes the arrays to the rows, records the
    skipped files in order, drops the bookkeeping and marks the store complete.
    """

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
        images: int,
        shard_rows: int | None = None,
        must_match: Sequence[str] = (),
    ) -> None:
        if images <= 0:
            raise UsageError("a sharded store needs at least one image")
        self.shard_rows, self.chunk_rows = shard_layout(feature_dim, shard_rows)
        self.images = int(images)
        self.shards = -(-self.images // self.shard_rows)
        self._compression = compression
        super().__init__(
            backend,
            path,
            feature_dim=feature_dim,
            label_names=label_names,
            metadata=metadata,
            mode=mode,
            compression=compression,
            buffer_rows=1,
            chunk_rows=self.chunk_rows,
            must_match=must_match,
        )

    def _layout(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "shard_rows": self.shard_rows,
            "shards": self.shards,
            "compacted": 0,  # shards before this one are at their final rows
            "moving": None,  # [shard, rows] whose rows are in the move arrays
        }

    def _create(
        self,
        metadata: Mapping[str, Any],
        compression: str | None,
        chunk_rows: int | None,
        index_chunk_rows: int | None = None,
    ) -> None:
        super()._create(metadata, compression, chunk_rows, index_chunk_rows=self.shard_rows)
        b, n = self.backend, self.images
        for arr in (self._features, self._labels, self._paths):
            b.resize_array(arr, n)
        b.create_array(self.root, SHARD_MARKS, (self.shards,), "int64", (1,), None)
        b.create_array(self.root, SHARD_SKIPPED, (self.shards,), "str", (1,), None)
        self._journal = self._layout()
        self.root.attrs[SHARDING] = _encode_attr(self._journal)
        self.complete_before = False

    def _open_for_resume(self, metadata: Mapping[str, Any], must_match: Sequence[str]) -> None:
        b = self.backend
        root = b.open_root(self.path, "r")
        try:
            attrs = _checked_attrs(self.path, root.attrs.items())
        finally:
            b.close_root(root)
        if SHARDING not in attrs:
            if attrs.get("complete"):  # finished already: the ordinary resume reads it as is
                super()._open_for_resume(metadata, must_match)
                self.complete_before = True
                return
            raise UsageError(
                f"cannot resume {self.path} with --scheduler: it was started by one process; "
                f"resume it without --scheduler, or pass --overwrite to start again"
            )
        journal = attrs[SHARDING]
        want = self._layout()
        if not isinstance(journal, dict) or any(
            journal.get(k) != want[k] for k in ("images", "shard_rows", "shards")
        ):
            raise UsageError(
                f"cannot resume {self.path}: its shards were cut for "
                f"{journal.get('images') if isinstance(journal, dict) else '?'} images of "
                f"{journal.get('shard_rows') if isinstance(journal, dict) else '?'} rows, this "
                f"run has {self.images} images of {self.shard_rows}; pass --overwrite to start "
                f"again"
            )
        self.root = b.open_root(self.path, "a")
        self._features, self._labels, self._paths = (
            self.root[k] for k in ("features", "labels", "paths")
        )
        stored_names = _to_str_list(self.root["label_names"][:])
        problems = []
        if int(self._features.shape[1]) != self.feature_dim:
            problems.append(f"feature width {self._features.shape[1]} vs {self.feature_dim}")
        if stored_names != self.label_names:
            problems.append(f"label names {stored_names[:5]}... vs {self.label_names[:5]}...")
        problems += [
            f"{k}: {attrs[k]!r} -> {metadata.get(k)!r}"
            for k in must_match
            if k in attrs and attrs[k] != _decode_attr(_encode_attr(metadata.get(k)))
        ]
        if problems:
            b.close_root(self.root)
            raise UsageError(
                f"cannot resume {self.path}: it was made with other settings ("
                + "; ".join(problems)
                + "); pass --overwrite to start again"
            )
        self._journal = journal
        self._rows_on_disk = 0
        self._skipped = []
        self._done_paths, self._stored_paths = set(), []
        self.existing_metadata = {k: v for k, v in attrs.items() if k not in _RESERVED_ATTRS}
        self.resumed = True
        self.complete_before = False

    # ------------------------------------------------------------------ shards

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """The positions in the run's order (and the rows) that shard ``shard`` owns."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.images)

    def done_shards(self) -> dict[int, int]:
        """Complete shards and the rows each wrote."""
        if self.complete_before:
            return {}
        marks = np.asarray(self.root[SHARD_MARKS][:], dtype=np.int64)
        return {int(s): int(marks[s]) - 1 for s in np.flatnonzero(marks > 0)}

    @property
    def finishing(self) -> bool:
        """Whether a :meth:`finish` began moving rows (every shard is complete then)."""
        journal = getattr(self, "_journal", None) or {}
        return bool(journal.get("compacted") or journal.get("moving"))

    def shard_written(self, shard: int, rows: int) -> tuple[list[str], list[list[str]]]:
        """The paths of the ``rows`` rows complete shard ``shard`` wrote (see
        :meth:`done_shards`) and its skipped files, before :meth:`finish` moves anything."""
        start = shard * self.shard_rows
        paths = _to_str_list(self._paths[start : start + rows]) if rows else []
        return paths, _shard_skips(self.path, self.root, shard)

    def _save_journal(self) -> None:
        self.root.attrs[SHARDING] = _encode_attr(self._journal)
        self.backend.flush_root(self.root)

    def finish(self, listed_skipped: Sequence[Sequence[str]] = ()) -> None:
        """Every shard is complete: close the gaps, record the skipped files (``listed_skipped``,
        what the listing left out, first), mark the store complete, release the lock."""
        if self._closed:
            return
        if self.complete_before:
            super().close(complete=True)
            return
        with writing(self.path):
            self._finish(listed_skipped)
        self._closed = True
        try:
            with writing(self.path):
                self.backend.close_root(self.root)
        finally:
            self._release_lock()

    def _finish(self, listed_skipped: Sequence[Sequence[str]]) -> None:
        b, root = self.backend, self.root
        marks = np.asarray(root[SHARD_MARKS][:], dtype=np.int64)
        missing = np.flatnonzero(marks <= 0)
        if len(missing):
            raise TransferkitError(
                f"{self.path}: {len(missing)} of {self.shards} shards are not complete "
                f"(shard {int(missing[0])} first); run again with --resume"
            )
        counts = marks - 1
        skipped = [[path_text(p), path_text(r)] for p, r in listed_skipped]
        for s in range(self.shards):
            skipped += _shard_skips(self.path, root, s)
        self._compact(counts)
        total = int(counts.sum())
        for arr in (self._features, self._labels, self._paths):
            if arr.shape[0] != total:
                b.resize_array(arr, total)
        self._skipped = skipped
        self._rows_on_disk = total
        root.attrs["skipped"] = _encode_attr(skipped)
        root.attrs["rows"] = total
        root.attrs["image_count"] = total + len(skipped)
        b.flush_root(root)
        root.attrs["complete"] = True
        b.flush_root(root)
        for name in (SHARD_MARKS, SHARD_SKIPPED, *_MOVES):
            if b.has_array(root, name):
                b.delete_array(root, name)
        del root.attrs[SHARDING]
        b.flush_root(root)

    def _compact(self, counts: np.ndarray) -> None:
        """Move each shard's rows down to follow the previous shard's, in order. A move that
        overlaps its own rows goes through the move arrays first, so that a move cut short is
        done again from there."""
        b, root, journal = self.backend, self.root, self._journal
        first = int(journal.get("compacted", 0))
        dst = int(counts[:first].sum())
        arrays = (self._features, self._labels, self._paths)
        for s in range(first, self.shards):
            n, src = int(counts[s]), s * self.shard_rows
            if n and dst != src:
                moving = journal.get("moving")
                if moving and int(moving[0]) == s:  # cut short last time: its rows wait here
                    data = [np.asarray(root[m][: int(moving[1])]) for m in _MOVES]
                else:
                    data = [np.asarray(a[src : src + n]) for a in arrays]
                    if dst + n > src:
                        for name, block in zip(_MOVES, data, strict=True):
                            if not b.has_array(root, name):
                                kind = "float32" if block.ndim == 2 else str(block.dtype)
                                kind = "str" if block.dtype.kind in "OUT" else kind
                                b.create_array(
                                    root,
                                    name,
                                    (0, *block.shape[1:]),
                                    kind,
                                    (self.shard_rows, *block.shape[1:]),
                                    None,
                                )
                            arr = root[name]
                            b.resize_array(arr, n)
                            arr[:n] = (
                                block if block.dtype.kind not in "OUT" else block.astype(object)
                            )
                        journal["moving"] = [s, n]
                        self._save_journal()
                for arr, block in zip(arrays, data, strict=True):
                    arr[dst : dst + n] = (
                        block if block.dtype.kind not in "OUT" else block.astype(object)
                    )
                journal["compacted"], journal["moving"] = s + 1, None
                self._save_journal()
            dst += n

    def close(self, complete: bool = True) -> None:
        """Release the store without finishing it (its complete shards stay for --resume)."""
        if complete and not self._closed:
            self.finish()
            return
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(Exception), writing(self.path):
                self.backend.flush_root(self.root)
                self.backend.close_root(self.root)
        finally:
            self._release_lock()


def _shard_skips(path: str, root: Any, shard: int) -> list[list[str]]:
    text = _to_str_list(root[SHARD_SKIPPED][shard : shard + 1])[0]
    if not text:
        return []
    try:
        skips = json.loads(text)
    except ValueError:
        raise StoreDamagedError(f"{path}: the skipped files of shard {shard} are damaged") from None
    return [[str(p), str(r)] for p, r in skips]


def write_shard(
    path: str | os.PathLike[str],
    shard: int,
    features: Any,
    labels: Any,
    paths: Sequence[str],
    skipped: Sequence[Sequence[str]] = (),
    *,
    store: str | None = None,
    before_mark: Callable[[], None] | None = None,
) -> int:
    """Write the rows of shard ``shard`` into a store a :class:`ShardedStoreWriter` holds (from
    any process that sees the store): rows first, then the skipped files, then the shard's
    completion mark (``before_mark`` is called just before it). Writing a shard again writes
    the same rows over the same rows. Returns the rows written."""
    backend = backend_for(path, store)
    path = os.fspath(path)
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not (len(x) == len(y) == len(paths)):
        raise ValueError(f"{len(x)} features, {len(y)} labels and {len(paths)} paths differ")
    with writing(path):
        root = backend.open_root(path, "a")
        try:
            journal = _decode_attr(root.attrs.get(SHARDING))
            if not isinstance(journal, dict):
                raise TransferkitError(f"{path} is not a store that shards are writing")
            size = int(journal["shard_rows"])
            start = int(shard) * size
            room = min(size, int(journal["images"]) - start)
            if not 0 <= shard < int(journal["shards"]) or len(x) > room:
                raise ValueError(f"shard {shard} cannot hold {len(x)} rows")
            if len(x):
                root["features"][start : start + len(x)] = x
                root["labels"][start : start + len(x)] = y
                root["paths"][start : start + len(x)] = np.array(
                    [path_text(p) for p in paths], dtype=object
                )
            root[SHARD_SKIPPED][shard] = json.dumps(
                [[path_text(p), path_text(r)] for p, r in skipped]
            )
            backend.flush_root(root)
            if before_mark is not None:
                before_mark()
            root[SHARD_MARKS][shard] = len(x) + 1
            backend.flush_root(root)
        finally:
            backend.close_root(root)
    return len(x)


# ---------------------------------------------------------------------------- reader


class FeatureStoreReader:
    """Reads a store (any registered format, or a classic HDF5 features file) without loading it
    whole: :meth:`read` and :meth:`iter_batches` touch only the rows asked for."""

    def __init__(self, backend: type[FeatureStore], path: str) -> None:
        self.backend = backend
        self.path = str(path)
        if not backend.exists(self.path):
            raise UsageError(f"no feature store at {self.path}; run `transferkit extract` first")
        try:
            self.root = backend.open_root(self.path, "r")
        except Exception as exc:
            problem = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise StoreDamagedError(
                f"cannot open {self.path} as a {backend.name or 'feature'} store: {problem}"
            ) from exc
        try:
            self._n = self._validate()
        except BaseException as exc:
            backend.close_root(self.root)
            self.root = None
            if isinstance(exc, TransferkitError) or not isinstance(exc, Exception):
                raise
            problem = " ".join(str(exc).split())[:300]
            raise StoreDamagedError(
                f"{self.path} cannot be read as a feature store ({type(exc).__name__}: {problem})"
            ) from None

    def _validate(self) -> int:
        """Check the store once, when it is opened: the arrays transferkit reads, their types
        and row counts, the labels against the class names, and the metadata transferkit uses.
        Returns the number of readable rows. Raises :class:`StoreDamagedError`."""
        b, path = self.backend, self.path
        for name in ("features", "labels"):
            if not b.has_array(self.root, name):
                raise StoreDamagedError(f"{path} is not a feature store: it has no {name!r} array")
        arrays = {}
        for name in ("features", "labels", "paths", "label_names"):
            if name in ("paths", "label_names") and not b.has_array(self.root, name):
                continue
            arr = self.root[name]
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                raise StoreDamagedError(f"{path}: {name!r} is not an array")
            arrays[name] = arr
        features, labels = arrays["features"], arrays["labels"]
        if len(features.shape) != 2 or np.dtype(features.dtype).kind not in "fiub":
            raise StoreDamagedError(
                f"{path}: 'features' must be a 2-D array of numbers, not {features.dtype} "
                f"{tuple(features.shape)}"
            )
        if features.shape[1] < 1:
            raise StoreDamagedError(f"{path}: 'features' has no columns")
        if len(labels.shape) != 1 or np.dtype(labels.dtype).kind not in "iu":
            raise StoreDamagedError(
                f"{path}: 'labels' must be a 1-D array of class indexes, not {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        for name in ("paths", "label_names"):
            if name in arrays and len(arrays[name].shape) != 1:
                raise StoreDamagedError(f"{path}: {name!r} must be a 1-D array of text")
        attrs = _checked_attrs(path, self.root.attrs.items())
        if "rows" in attrs:  # written by transferkit: arrays may run past the committed rows
            n = int(attrs["rows"])
            short = [
                k for k in ("features", "labels", "paths") if k in arrays and arrays[k].shape[0] < n
            ]
            if short:
                raise StoreDamagedError(
                    f"{path}: the store says it holds {n} rows but "
                    + ", ".join(f"{k!r} has {arrays[k].shape[0]}" for k in short)
                )
        else:  # a classic store: every array holds one entry per row
            n = int(features.shape[0])
            counts = {
                k: int(arrays[k].shape[0]) for k in ("features", "labels", "paths") if k in arrays
            }
            if len(set(counts.values())) > 1:
                raise StoreDamagedError(
                    f"{path}: its arrays disagree on the number of rows ("
                    + ", ".join(f"{k} {v}" for k, v in counts.items())
                    + ")"
                )
        if "feature_dim" in attrs and int(attrs["feature_dim"]) != int(features.shape[1]):
            raise StoreDamagedError(
                f"{path}: the store says its features are {attrs['feature_dim']}-d but the "
                f"'features' array has {features.shape[1]} columns"
            )
        self._attrs_cache = attrs
        if "label_names" in arrays:
            names = _to_str_list(arrays["label_names"][:])
            if len(set(names)) != len(names):
                raise StoreDamagedError(f"{path}: 'label_names' holds a name twice")
        else:
            names = None
        if n:
            y = np.asarray(labels[:n])
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= (len(names) if names is not None else _MAX_UNNAMED_CLASSES):
                raise StoreDamagedError(
                    f"{path}: label indexes run from {low} to {high} but the store names "
                    f"{len(names) if names is not None else 0} classes (0 to "
                    f"{len(names) - 1 if names else -1}); the store is damaged"
                )
        self._label_names = names
        self._features, self._labels = features, labels
        return n

    def _attrs(self) -> dict[str, Any]:
        return dict(self._attrs_cache)

    def __len__(self) -> int:
        return self._n

    @property
    def feature_dim(self) -> int:
        shape = self._features.shape
        return int(np.prod(shape[1:])) if len(shape) > 1 else 1

    @property
    def label_names(self) -> list[str]:
        if self._label_names is not None:
            return list(self._label_names)
        # a store without names: number the classes
        k = int(self.labels.max()) + 1 if len(self) else 0
        return [str(i) for i in range(k)]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._labels[: self._n]).astype(np.int64).reshape(-1)

    @property
    def paths(self) -> list[str]:
        if not self.backend.has_array(self.root, "paths"):
            return []
        return _to_str_list(self.root["paths"][: self._n])

    @property
    def metadata(self) -> dict[str, Any]:
        attrs = self._attrs()
        attrs.pop("skipped", None)
        attrs.setdefault("rows", self._n)
        return attrs

    @property
    def complete(self) -> bool:
        attrs = self._attrs()
        return bool(attrs.get("complete", True))

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(str(p), str(r)) for p, r in self._attrs().get("skipped", [])]

    def _x(self, block: Any) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        return x.reshape(len(x), self.feature_dim)

    def _bounds(self, start: int, stop: int | None) -> tuple[int, int]:
        n = self._n
        stop = n if stop is None else stop
        if start < 0:
            start += n
        if stop < 0:
            stop += n
        start = max(0, min(start, n))
        stop = max(start, min(stop, n))
        return start, stop

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` as ``(X float32, y int64)``; only those rows are read."""
        start, stop = self._bounds(start, stop)
        x = self._x(self._features[start:stop])
        y = np.asarray(self._labels[start:stop]).astype(np.int64).reshape(-1)
        return x, y

    def read_rows(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Rows at any ``indices`` (repeats and any order allowed), returned in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros(0, np.int64)
        idx = np.where(idx < 0, idx + self._n, idx)
        if idx.min() < 0 or idx.max() >= self._n:
            raise IndexError(f"row index out of range for a store of {self._n} rows")
        uniq, inverse = np.unique(idx, return_inverse=True)
        x = self._x(self.backend.take_rows(self._features, uniq))
        y = np.asarray(self.backend.take_rows(self._labels, uniq)).astype(np.int64)
        return x[inverse], y.reshape(-1)[inverse]

    def iter_batches(
        self,
        batch_size: int,
        start: int = 0,
        stop: int | None = None,
        indices: Any = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches ``(X, y)`` of a row range, or of ``indices`` in their order."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            for i in range(0, len(idx), batch_size):
                yield self.read_rows(idx[i : i + batch_size])
            return
        start, stop = self._bounds(start, stop)
        for i in range(start, stop, batch_size):
            yield self.read(i, min(i + batch_size, stop))

    def close(self) -> None:
        if getattr(self, "root", None) is not None:
            self.backend.close_root(self.root)
            self.root = None

    def __enter__(self) -> FeatureStoreReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FeatureStoreReader {self.path} rows={len(self)} dim={self.feature_dim}>"


# ---------------------------------------------------------------------------- entry points


def check_replaceable_store(backend: type[FeatureStore], path: str) -> None:
    """Raise ``UsageError`` unless ``path`` (which exists) is a store transferkit wrote
    (``StoreLockedError`` when another live process is writing it)."""
    lock = str(path).rstrip("/") + ".lock"
    pid = lock_holder(path)
    if pid is not None:
        raise StoreLockedError(
            f"{path} is being written by process {pid}; wait for it to finish or stop it "
            f"(if no process writes it, delete {lock})"
        )
    if not backend.is_transferkit_store(path):
        kind = "folder" if os.path.isdir(path) else "file"
        raise refuse_replacing(
            path,
            f"output {kind}",
            f"a {backend.name or 'feature'} store written by transferkit",
        )


def backend_for(path: str | os.PathLike[str], store: str | None = None) -> type[FeatureStore]:
    """The store class for ``path`` (by suffix) or for the format named ``store``."""
    from . import registry

    spec = registry.store_for_path(str(path), store)
    cls: Any = spec.factory  # the class itself, or a function returning it
    if not (isinstance(cls, type) and issubclass(cls, FeatureStore)):
        cls = cls()
    if not (isinstance(cls, type) and issubclass(cls, FeatureStore)):
        raise TransferkitError(
            f"store plugin {spec.name!r} ({spec.plugin}) must return a FeatureStore subclass"
        )
    return cls


def create_store(
    path: str | os.PathLike[str],
    *,
    feature_dim: int,
    label_names: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    store: str | None = None,
    mode: str = "create",
    compression: str | None = "gzip",
    buffer_rows: int = 1024,
    chunk_rows: int | None = None,
    must_match: Sequence[str] = (),
) -> FeatureStoreWriter:
    """Open a writer. ``mode``: ``create`` (an existing store is an error), ``overwrite``, or
    ``resume`` (keep the rows already written; see :attr:`FeatureStoreWriter.done_paths`).

    On resume, the feature width, the label names and the ``must_match`` metadata keys must
    equal the store's, else nothing is touched and a ``UsageError`` names the differences."""
    backend = backend_for(path, store)
    return FeatureStoreWriter(
        backend,
        str(path),
        feature_dim=feature_dim,
        label_names=label_names,
        metadata=dict(metadata or {}),
        mode=mode,
        compression=compression,
        buffer_rows=buffer_rows,
        chunk_rows=chunk_rows,
        must_match=must_match,
    )


def open_store(path: str | os.PathLike[str], store: str | None = None) -> FeatureStoreReader:
    """Open a store for reading (HDF5 ``.h5``/``.hdf5``, Zarr ``.zarr``, or ``store=NAME``)."""
    return FeatureStoreReader(backend_for(path, store), str(path))
