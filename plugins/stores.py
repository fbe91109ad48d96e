"""Built-in feature store formats: HDF5 (h5py) and Zarr 3.

Both are thin backends of :class:`transferkit.store.FeatureStore`, which holds the schema,
buffering, resume and locking; here each format only opens its container and creates arrays.
"""

from __future__ import annotations

from typing import Any

from transferkit import StoreSpec, hookimpl
from transferkit.plugin import FeatureStore

Shape = tuple[int, ...]  # an array's shape or chunks, as create_array takes them


class HDF5Store(FeatureStore):
    """HDF5 through h5py: chunked, resizable datasets; metadata as file attributes."""

    name = "hdf5"
    suffixes = (".h5", ".hdf5")
    # HDF5 is not journaled: a write that fails on a full disk can leave the file unreadable
    checks_free_space = True

    @classmethod
    def open_root(cls, path: str, mode: str) -> Any:
        import h5py

        return h5py.File(path, {"r": "r", "a": "r+", "w": "w"}[mode])

    @classmethod
    def create_array(
        cls, root: Any, name: str, shape: Shape, dtype: str, chunks: Shape, compression: str | None
    ) -> Any:
        import h5py

        h5_dtype = h5py.string_dtype("utf-8") if dtype == "str" else dtype
        maxshape = (None, *shape[1:])
        return root.create_dataset(
            name,
            shape=shape,
            maxshape=maxshape,
            dtype=h5_dtype,
            chunks=chunks,
            compression=compression,
        )

    @classmethod
    def resize_array(cls, array: Any, rows: int) -> None:
        array.resize(rows, axis=0)

    @classmethod
    def is_transferkit_store(cls, path: str) -> bool:
        """A readable store with transferkit's schema, or an HDF5 file damaged by a killed writer
        that still holds the names of transferkit's arrays and attributes (so that
        ``--overwrite`` can replace what resume reports as damaged)."""
        if super().is_transferkit_store(path):
            return True
        import mmap
        import os

        if os.path.islink(path) or not os.path.isfile(path):
            return False
        try:
            with open(path, "rb") as fh:
                if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                    return False
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    return all(
                        data.find(name) >= 0
                        for name in (b"schema_version", b"label_names", b"features")
                    )
        except (OSError, ValueError):
            return False

    @classmethod
    def flush_root(cls, root: Any) -> None:
        root.flush()

    @classmethod
    def close_root(cls, root: Any) -> None:
        root.close()


class ZarrStore(FeatureStore):
    """Zarr 3 directory store: chunked arrays in a group; metadata as group attributes."""

    name = "zarr"
    suffixes = (".zarr",)
    # each chunk is its own file, replaced whole: writers of different chunks never meet
    concurrent_writers = True

    @classmethod
    def open_root(cls, path: str, mode: str) -> Any:
        import zarr

        return zarr.open_group(path, mode={"r": "r", "a": "r+", "w": "w"}[mode])

    @classmethod
    def create_array(
        cls, root: Any, name: str, shape: Shape, dtype: str, chunks: Shape, compression: str | None
    ) -> Any:
        import warnings

        import zarr

        compressors: Any = None
        if compression == "gzip":
            compressors = zarr.codecs.GzipCodec()
        elif compression:
            compressors = zarr.codecs.BloscCodec(cname=compression)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # variable-length strings are "unstable" in zarr 3
            return root.create_array(
                name,
                shape=shape,
                dtype=str if dtype == "str" else dtype,
                chunks=chunks,
                compressors=compressors,
            )

    @classmethod
    def resize_array(cls, array: Any, rows: int) -> None:
        array.resize((rows, *array.shape[1:]))

    @classmethod
    def take_rows(cls, array: Any, sorted_unique: Any) -> Any:
        import numpy as np

        return np.asarray(array.oindex[sorted_unique])


@hookimpl
def register_feature_stores(register: Any) -> None:
    register(
        StoreSpec(
            name="hdf5",
            description="HDF5 file via h5py: chunked, compressed, one file",
            factory=HDF5Store,
            suffixes=HDF5Store.suffixes,
        )
    )
    register(
        StoreSpec(
            name="zarr",
            description="Zarr 3 directory: chunked, compressed, cloud-friendly",
            factory=ZarrStore,
            suffixes=ZarrStore.suffixes,
        )
    )
