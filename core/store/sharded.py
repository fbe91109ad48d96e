"""Sharded writes: a store that many processes fill at once, one shard of rows each.

:class:`ShardedStoreWriter` (the client) creates the store sized for every image and holds its
lock; :func:`write_shard` (a worker, in any process that sees the store) writes one shard's
rows; :meth:`ShardedStoreWriter.finish` makes the store exactly what
:class:`~transferkit.store.FeatureStoreWriter` would have written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TransferkitError, UsageError
from ..outputs import writing
from . import attrs as codec
from .attrs import SHARDING, path_text, text_list
from .backend import FeatureStore, backend_for
from .writer import FeatureStoreWriter, as_rows, default_chunk_rows

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .writer import StoreSettings

DEFAULT_SHARD_ROWS = 1024
SHARD_MARKS = "shard_marks"  # int64 per shard: 0 while not complete, else the rows written + 1
SHARD_SKIPPED = "shard_skipped"  # text per shard: JSON list of [path, reason]
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
        images: int,
        shard_rows: int | None = None,
        **settings: Unpack[StoreSettings],
    ) -> None:
        if images <= 0:
            raise UsageError("a sharded store needs at least one image")
        self.shard_rows, self.chunk_rows = shard_layout(settings["feature_dim"], shard_rows)
        self.images = int(images)
        self.shards = -(-self.images // self.shard_rows)
        super().__init__(backend, path, buffer_rows=1, chunk_rows=self.chunk_rows, **settings)

    def _layout(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "shard_rows": self.shard_rows,
            "shards": self.shards,
            "compacted": 0,  # shards before this one are at their final rows
            "moving": None,  # [shard, rows] whose rows are in the move arrays
        }

    def _index_rows(self, feature_rows: int) -> int:
        return self.shard_rows  # one chunk of labels and of paths per shard

    def _create(self) -> None:
        super()._create()
        b, n = self.backend, self.images
        for arr in (self._features, self._labels, self._paths):
            b.resize_array(arr, n)
        b.create_array(self.root, SHARD_MARKS, (self.shards,), "int64", (1,), None)
        b.create_array(self.root, SHARD_SKIPPED, (self.shards,), "str", (1,), None)
        self._journal = self._layout()
        self.root.attrs[SHARDING] = codec.encode_attr(self._journal)
        self.complete_before = False

    def _open_for_resume(self, metadata: Mapping[str, Any], must_match: Sequence[str]) -> None:
        b = self.backend
        root = b.open_root(self.path, "r")
        try:
            attrs = codec.checked_attrs(self.path, root.attrs.items())
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
        self._refuse_other_settings(attrs, metadata, must_match)
        self._journal = journal
        self._rows_on_disk = 0
        self._skipped = []
        self._done_paths, self._stored_paths = set(), []
        self.existing_metadata = {k: v for k, v in attrs.items() if k not in codec.RESERVED_ATTRS}
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
        paths = text_list(self._paths[start : start + rows]) if rows else []
        return paths, _shard_skips(self.path, self.root, shard)

    def _save_journal(self) -> None:
        self.root.attrs[SHARDING] = codec.encode_attr(self._journal)
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
        self._release()

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
        root.attrs["skipped"] = codec.encode_attr(skipped)
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
            self._lock.release()


def _shard_skips(path: str, root: Any, shard: int) -> list[list[str]]:
    text = text_list(root[SHARD_SKIPPED][shard : shard + 1])[0]
    if not text:
        return []
    try:
        skips = json.loads(text)
    except ValueError:
        damaged = f"{path}: the skipped files of shard {shard} are damaged"
        raise codec.StoreDamagedError(damaged) from None
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
    x, y = as_rows(features, labels, paths)
    with writing(path):
        root = backend.open_root(path, "a")
        try:
            journal = codec.decode_attr(root.attrs.get(SHARDING))
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
