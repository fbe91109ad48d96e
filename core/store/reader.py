"""The reader of a store: :class:`FeatureStoreReader`, any registered format or a classic HDF5
features file, checked once when opened, read by row ranges or scattered rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import TransferkitError, UsageError
from .attrs import StoreDamagedError, checked_attrs, text_list
from .backend import FeatureStore

_MAX_UNNAMED_CLASSES = 1 << 16  # a store without label_names numbers its classes up to this


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
        attrs = checked_attrs(path, self.root.attrs.items())
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
            names = text_list(arrays["label_names"][:])
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
        return text_list(self.root["paths"][: self._n])

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
