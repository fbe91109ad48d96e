"""Feature stores: real HDF5 files and Zarr directories, both through the one base class."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from transferkit import UsageError
from transferkit.store import (
    PidLock,
    StoreExistsError,
    StoreLockedError,
    backend_for,
    check_output,
    create_store,
    open_store,
)

FORMATS = ["h5", "zarr"]


def _data(n: int = 50, d: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    paths = [f"img/{i:03d}_é.jpg" for i in range(n)]
    return x, y, paths


def _write(path: str, x, y, paths, **kwargs) -> None:
    with create_store(
        path,
        feature_dim=x.shape[1],
        label_names=["cat", "dog", "émeu"],
        metadata={"backbone": "tiny", "input_size": [32, 32], "seed": 3},
        buffer_rows=8,
        **kwargs,
    ) as w:
        for i in range(0, len(x), 5):
            w.append(x[i : i + 5], y[i : i + 5], paths[i : i + 5])
        w.record_skipped("bad.jpg", "truncated image")


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_and_range_reads(tmp_path, fmt):
    path = str(tmp_path / f"f.{fmt}")
    x, y, paths = _data()
    _write(path, x, y, paths)
    with open_store(path) as r:
        assert len(r) == 50
        assert r.feature_dim == 7
        assert r.label_names == ["cat", "dog", "émeu"]
        np.testing.assert_array_equal(r.labels, y)
        assert r.labels.dtype == np.int64
        assert r.paths == paths
        assert r.skipped == [("bad.jpg", "truncated image")]
        meta = r.metadata
        assert meta["backbone"] == "tiny"
        assert meta["input_size"] == [32, 32]
        assert meta["seed"] == 3
        assert meta["complete"] is True
        assert meta["image_count"] == 51
        assert "created" in meta
        xs, ys = r.read(10, 17)
        np.testing.assert_array_equal(xs, x[10:17])
        np.testing.assert_array_equal(ys, y[10:17])
        idx = np.array([49, 3, 3, 20, 0])
        xr, yr = r.read_rows(idx)
        np.testing.assert_array_equal(xr, x[idx])
        np.testing.assert_array_equal(yr, y[idx])
        batches = list(r.iter_batches(16, start=5, stop=45))
        assert [len(b[0]) for b in batches] == [16, 16, 8]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[5:45])
        perm = np.random.default_rng(1).permutation(50)
        got = np.concatenate([b[1] for b in r.iter_batches(7, indices=perm)])
        np.testing.assert_array_equal(got, y[perm])


def test_range_read_touches_only_those_rows(tmp_path):
    # the features dataset is chunked along rows, and read() slices it without a full load
    path = str(tmp_path / "f.h5")
    x, y, paths = _data(n=300, d=4)
    _write(path, x, y, paths, chunk_rows=32)
    with h5py.File(path) as f:
        assert f["features"].chunks == (32, 4)
        assert f["features"].compression == "gzip"
    with open_store(path) as r:
        r._features = _CountingArray(r._features)
        xs, _ = r.read(40, 50)
        assert r._features.rows_read == 10
        np.testing.assert_array_equal(xs, x[40:50])


class _CountingArray:
    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.rows_read = 0

    def __getitem__(self, key):
        out = self.array[key]
        self.rows_read += len(out)
        return out


def test_classic_h5py_store_is_readable(tmp_path):
    path = str(tmp_path / "classic.hdf5")
    x, y, _ = _data(n=20, d=5)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x)
        f.create_dataset("labels", data=y)
        f.create_dataset("label_names", data=np.array([b"a", b"b", b"c"]))
    with open_store(path) as r:
        assert len(r) == 20
        assert r.feature_dim == 5
        assert r.label_names == ["a", "b", "c"]
        assert r.paths == []
        assert r.skipped == []
        np.testing.assert_array_equal(r.read()[0], x)
        np.testing.assert_array_equal(r.labels, y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_store_is_never_overwritten_silently(tmp_path, fmt):
    path = str(tmp_path / f"f.{fmt}")
    x, y, paths = _data(n=10)
    _write(path, x, y, paths)
    with pytest.raises(StoreExistsError, match="--overwrite") as info:
        _write(path, x, y, paths)
    assert "--resume" in str(info.value)
    with open_store(path) as r:
        assert len(r) == 10  # untouched
    x2, y2, p2 = _data(n=5, seed=9)
    _write(path, x2, y2, p2, mode="overwrite")
    with open_store(path) as r:
        assert len(r) == 5
        np.testing.assert_array_equal(r.read()[0], x2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_keeps_rows_and_drops_half_written_buffer(tmp_path, fmt):
    path = str(tmp_path / f"f.{fmt}")
    x, y, paths = _data(n=40)
    w = create_store(path, feature_dim=7, label_names=["a", "b", "c"], buffer_rows=10)
    w.append(x[:25], y[:25], paths[:25])  # 25 rows reach the disk (buffer flushes at >= 10)
    w.record_skipped("x.png", "zero bytes")
    w.append(x[25:28], y[25:28], paths[25:28])  # buffered only: lost in a crash
    assert w.rows == 28
    # simulate a crash: the process dies without closing; its lock names a dead process
    w.root.close() if fmt == "h5" else None
    with open(path.rstrip("/") + ".lock", "w") as fh:
        fh.write("999999999")

    with create_store(
        path, feature_dim=7, label_names=["a", "b", "c"], mode="resume", buffer_rows=10
    ) as w2:
        assert w2.resumed
        assert w2.rows == 25
        assert w2.done_paths == set(paths[:25])
        todo = [i for i, p in enumerate(paths) if p not in w2.done_paths]
        w2.append(x[todo], y[todo], [paths[i] for i in todo])
    with open_store(path) as r:
        assert len(r) == 40
        np.testing.assert_array_equal(r.read()[0], x)
        assert r.paths == paths
        assert r.metadata["complete"] is True
    assert not os.path.exists(path + ".lock")


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_refuses_other_settings_and_live_writer(tmp_path, fmt):
    path = str(tmp_path / f"f.{fmt}")
    x, y, paths = _data(n=10)
    _write(path, x, y, paths)
    with pytest.raises(UsageError, match="feature width"):
        create_store(path, feature_dim=9, label_names=["cat", "dog", "émeu"], mode="resume")
    w = create_store(path, feature_dim=7, label_names=["cat", "dog", "émeu"], mode="resume")
    try:
        with open(path + ".lock", "w") as fh:  # another live process (our parent) holds it
            fh.write(str(os.getppid()))
        with pytest.raises(StoreLockedError, match="being written"):
            create_store(path, feature_dim=7, label_names=["cat", "dog", "émeu"], mode="resume")
        with open(path + ".lock", "w") as fh:
            fh.write(str(os.getpid()))
    finally:
        w.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_output_refuses_what_the_writer_refuses_and_writes_nothing(tmp_path, fmt):
    path = str(tmp_path / f"f.{fmt}")
    backend = backend_for(path)
    for mode in ("create", "overwrite", "resume"):  # nothing there: nothing to refuse
        check_output(backend, path, mode)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UsageError, match="unknown store mode 'append'"):
        check_output(backend, path, "append")
    x, y, paths = _data(n=4)
    _write(path, x, y, paths)
    with pytest.raises(StoreExistsError, match="--overwrite to replace it or --resume") as info:
        check_output(backend, path, "create")
    assert "(overwrite=True or resume=True in Python)" in str(info.value)
    check_output(backend, path, "overwrite")
    check_output(backend, path, "resume")
    with open(path + ".lock", "w") as fh:  # another live process (our parent) writes it
        fh.write(str(os.getppid()))
    for mode in ("overwrite", "resume"):
        with pytest.raises(StoreLockedError) as locked:
            check_output(backend, path, mode)
        assert str(locked.value) == (
            f"{path} is being written by process {os.getppid()}; wait for it to finish or "
            f"stop it (if no process writes it, delete {path}.lock)"
        )
    os.remove(path + ".lock")
    foreign = tmp_path / f"notes.{fmt}"
    if fmt == "zarr":
        foreign.mkdir()
        (foreign / "mine.txt").write_text("keep me")
    else:
        foreign.write_text("keep me")
    with pytest.raises(UsageError, match="is not a .* store written by transferkit"):
        check_output(backend, str(foreign), "overwrite")
    with open_store(path) as r:
        assert len(r) == 4  # untouched


def test_one_pid_lock_refuses_a_live_holder_and_takes_a_stale_one(tmp_path):
    target = tmp_path / "journal.jsonl"
    lock = PidLock(target, busy=lambda pid: f"busy {pid}", idle="nothing runs")
    with open(str(target) + ".lock", "w") as fh:
        fh.write("999999999")  # left by a killed process
    lock.acquire()
    assert lock.held and (tmp_path / "journal.jsonl.lock").read_text() == str(os.getpid())
    lock.release()
    assert not lock.held and not (tmp_path / "journal.jsonl.lock").exists()
    (tmp_path / "journal.jsonl.lock").write_text(str(os.getppid()))
    with pytest.raises(StoreLockedError, match=f"^busy {os.getppid()}$"):
        lock.acquire()
    lock.release()  # not held: another process's lock stays
    assert (tmp_path / "journal.jsonl.lock").read_text() == str(os.getppid())


def test_unknown_suffix_names_the_options(tmp_path):
    with pytest.raises(UsageError, match="--store"):
        create_store(str(tmp_path / "f.txt"), feature_dim=3, label_names=[])
    path = str(tmp_path / "features.bin")
    with create_store(path, feature_dim=3, label_names=["a"], store="zarr") as w:
        w.append(np.ones((2, 3)), [0, 0], ["p", "q"])
    with open_store(path, store="zarr") as r:
        assert len(r) == 2


def test_resume_of_a_damaged_file_says_what_to_do(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)  # a header and nothing else
    with pytest.raises(UsageError, match="--overwrite"):
        create_store(str(path), feature_dim=3, label_names=["a"], mode="resume")
    assert not os.path.exists(str(path) + ".lock")


def test_a_plugin_store_format_is_used_by_suffix(tmp_path, register_plugin):
    from transferkit import StoreSpec, hookimpl
    from transferkit.plugins.stores import HDF5Store

    class FeatStore(HDF5Store):
        name = "feat"
        suffixes = (".feat",)

    class Plugin:
        @hookimpl
        def register_feature_stores(self, register):
            register(
                StoreSpec(
                    name="feat",
                    description="HDF5 under another suffix",
                    factory=lambda: FeatStore,
                    suffixes=(".feat",),
                )
            )

    register_plugin(Plugin(), "feat-store")
    path = str(tmp_path / "x.feat")
    with create_store(path, feature_dim=2, label_names=["a"]) as w:
        w.append(np.ones((3, 2)), [0, 0, 0], ["p", "q", "r"])
    with open_store(path) as r:
        assert r.backend is FeatStore and len(r) == 3
        assert r.paths == ["p", "q", "r"]
