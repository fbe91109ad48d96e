"""Read a PyTorch state dict saved in the legacy (non-zip) format, without PyTorch, safely.

The legacy ``torch.save`` format is a sequence of pickles followed by raw storage records::

    pickle(magic number) pickle(protocol version) pickle(system info)
    pickle(state dict; tensors refer to storages through persistent ids)
    pickle(list of storage keys)
    for each key: int64 element count, then the storage's bytes (little-endian)

:func:`load_state_dict` reads it with a restricted unpickler: the only globals a file may name
are the tensor rebuild functions, the storage types and ``collections.OrderedDict``, each mapped
to a harmless NumPy stand-in; anything else (``os.system``,
``builtins.eval``...) raises ``UnpicklingError`` before anything runs. No code from the file
is ever executed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for ``torch.<X>Storage``: only remembers the element type."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A storage record; its bytes are filled in after the state dict pickle has been read."""

    __slots__ = ("data", "dtype", "key", "size")

    def __init__(self, key: str, dtype: np.dtype, size: int) -> None:
        self.key = key
        self.dtype = dtype
        self.size = size
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy storage view: ``size`` elements of ``root`` from element ``offset``."""

    __slots__ = ("offset", "root", "size")

    def __init__(self, root: _Storage, offset: int, size: int) -> None:
        self.root = root
        self.offset = offset
        self.size = size


class _LazyTensor:
    """What ``torch._utils._rebuild_tensor_v2`` returns here: a recipe for a NumPy array."""

    __slots__ = ("offset", "shape", "storage", "stride")

    def __init__(self, storage: Any, offset: int, shape: tuple, stride: tuple) -> None:
        if not isinstance(storage, _Storage | _StorageView):
            raise pickle.UnpicklingError("a tensor must be built from a storage")
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        storage = self.storage
        offset = self.offset
        if isinstance(storage, _StorageView):
            offset += storage.offset
            storage = storage.root
        data = storage.data
        if data is None:
            raise pickle.UnpicklingError(f"storage {storage.key!r} has no data record")
        count = int(np.prod(self.shape)) if self.shape else 1
        if count == 0:
            return np.zeros(self.shape, dtype=data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if offset < 0 or last >= data.size:
            raise pickle.UnpicklingError("a tensor reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[offset:],
            shape=self.shape,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="))


def _rebuild_tensor_v2(
    storage: Any, offset: int, shape: tuple, stride: tuple, *_ignored: Any
) -> _LazyTensor:
    return _LazyTensor(storage, offset, shape, stride)


def _rebuild_tensor(storage: Any, offset: int, shape: tuple, stride: tuple) -> _LazyTensor:
    return _LazyTensor(storage, offset, shape, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    if not isinstance(data, _LazyTensor):
        raise pickle.UnpicklingError("a parameter must wrap a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    if args:
        raise pickle.UnpicklingError("OrderedDict is only allowed empty (items come by SETITEMS)")
    return collections.OrderedDict()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensor rebuild functions, storage types and OrderedDict."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self.storages = storages if storages is not None else {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only tensors, storages and OrderedDict "
            f"are allowed in a weights file"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, size, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("a storage must name a torch storage type")
        key = str(key)
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, storage_type.dtype, int(size))
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return _StorageView(root, int(offset), int(view_size))
        return root


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _plain_load(file: BinaryIO) -> Any:
    return _NoGlobals(file).load()


def _to_numpy(value: Any) -> Any:
    if isinstance(value, _LazyTensor):
        return value.to_numpy()
    if isinstance(value, dict):
        return collections.OrderedDict((k, _to_numpy(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy(v) for v in value)
    return value


def load_state_dict(path_or_file: Any) -> collections.OrderedDict:
    """The state dict in a legacy ``torch.save`` file, as an ordered dict of NumPy arrays.

    Raises ``pickle.UnpicklingError`` for a file that names anything but tensors, storages and
    ``OrderedDict``, and ``ValueError`` for a file in another format.
    """
    if hasattr(path_or_file, "read"):
        file = path_or_file
        return _load(file)
    with open(path_or_file, "rb") as file:
        return _load(io.BufferedReader(file, buffer_size=1 << 20))  # type: ignore[arg-type]


def _load(file: BinaryIO) -> collections.OrderedDict:
    head = file.read(2)
    file.seek(-len(head), io.SEEK_CUR)
    if head == b"PK":
        raise ValueError(
            "this is a zip-format torch file; only the legacy (non-zip) format is supported"
        )
    if _plain_load(file) != MAGIC_NUMBER:
        raise ValueError("not a legacy torch.save file (wrong magic number)")
    protocol = _plain_load(file)
    if protocol != 1001:
        raise ValueError(f"unsupported torch.save protocol version {protocol!r}")
    sys_info = _plain_load(file)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}
    result = RestrictedUnpickler(file, storages).load()
    keys = _plain_load(file)
    if not isinstance(keys, list):
        raise pickle.UnpicklingError("the storage key list is missing")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise pickle.UnpicklingError(f"storage record {key!r} is not used by any tensor")
        (count,) = struct.unpack("<q", file.read(8))
        nbytes = count * storage.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"truncated storage record {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    state = _to_numpy(result)
    if not isinstance(state, dict):
        raise pickle.UnpicklingError("the file does not hold a state dict")
    return state
