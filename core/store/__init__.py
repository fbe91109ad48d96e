"""Feature stores: one schema, one writer and one reader, thin backends (HDF5, Zarr) registered
as plugins.

Schema on disk, the same for every format::

    features     (N, D) float32, chunked along rows, optional compression
    labels       (N,)   int64
    label_names  (K,)   strings
    paths        (N,)   strings
    attributes   metadata (JSON-encoded where not scalar), ``skipped`` (JSON list of
                 [path, reason]), ``rows`` (rows committed to disk), ``complete``

All the logic (buffering, resume, the guard against overwriting, the lock against two writers,
metadata, skipped records, range reads) lives in this package; a backend
(:class:`FeatureStore`) only opens its container and creates arrays. The package's rooms, each
importing only those before it:

* ``attrs``: the attribute codec, the one check of what a store says, ``path_text``;
* ``lock``: the process-id lock file, one writer at a time (also the spot-check's journal);
* ``backend``: the :class:`FeatureStore` protocol and :func:`backend_for`;
* ``writer``: :func:`check_output` and the buffered :class:`FeatureStoreWriter`;
* ``sharded``: :class:`ShardedStoreWriter` and :func:`write_shard`, a store filled by many
  processes at once;
* ``reader``: :class:`FeatureStoreReader`;
* here: :func:`create_store` and :func:`open_store`, the entry points.

Crash safety: Zarr 3 replaces every file it writes atomically, so a killed writer leaves a
readable store. HDF5 is not journaled: a process killed in the few milliseconds of a write can
leave a damaged file, which resume reports (use ``--overwrite`` then).

A "classic" store (HDF5 with only ``features``, ``labels``, ``label_names``, as the Keras
features recipe writes it with h5py) opens with the same reader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .attrs import SCHEMA_VERSION, SHARDING, StoreDamagedError, path_text
from .backend import FeatureStore, backend_for
from .lock import PidLock, StoreLockedError, lock_holder
from .reader import FeatureStoreReader
from .sharded import (
    DEFAULT_SHARD_ROWS,
    SHARD_MARKS,
    SHARD_SKIPPED,
    ShardedStoreWriter,
    is_sharded,
    shard_layout,
    shard_progress,
    write_shard,
)
from .writer import (
    FREE_SPACE_MARGIN,
    MODES,
    FeatureStoreWriter,
    StoreExistsError,
    check_output,
    check_replaceable_store,
    default_chunk_rows,
)

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "FREE_SPACE_MARGIN",
    "MODES",
    "SCHEMA_VERSION",
    "SHARDING",
    "SHARD_MARKS",
    "SHARD_SKIPPED",
    "FeatureStore",
    "FeatureStoreReader",
    "FeatureStoreWriter",
    "PidLock",
    "ShardedStoreWriter",
    "StoreDamagedError",
    "StoreExistsError",
    "StoreLockedError",
    "backend_for",
    "check_output",
    "check_replaceable_store",
    "create_store",
    "default_chunk_rows",
    "is_sharded",
    "lock_holder",
    "open_store",
    "path_text",
    "shard_layout",
    "shard_progress",
    "write_shard",
]


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
