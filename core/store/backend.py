"""The backend protocol: :class:`FeatureStore`, the class a store format subclasses, and
:func:`backend_for`, which finds the format of a path among the registered store plugins."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, ClassVar

import numpy as np

from ..errors import TransferkitError

_READ_WINDOW = 4096  # rows read at once by take_rows when picking scattered indices

# a shape, as create_array takes it
Shape = tuple[int, ...]


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
        cls, root: Any, name: str, shape: Shape, dtype: str, chunks: Shape, compression: str | None
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


def backend_for(path: str | os.PathLike[str], store: str | None = None) -> type[FeatureStore]:
    """The store class for ``path`` (by suffix) or for the format named ``store``."""
    from .. import registry

    spec = registry.store_for_path(str(path), store)
    cls: Any = spec.factory  # the class itself, or a function returning it
    if not (isinstance(cls, type) and issubclass(cls, FeatureStore)):
        cls = cls()
    if not (isinstance(cls, type) and issubclass(cls, FeatureStore)):
        raise TransferkitError(
            f"store plugin {spec.name!r} ({spec.plugin}) must return a FeatureStore subclass"
        )
    return cls
