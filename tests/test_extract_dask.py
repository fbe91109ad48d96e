"""Extraction on a Dask cluster: a LocalCluster of 2 worker processes (one thread each) writes
one Zarr store by shards; it must equal the single-process store row for row, survive a worker
killed mid-shard and a client killed mid-run, and refuse what it cannot do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_backbone
from cli_faults import python_output
from click.testing import CliRunner
from imagefiles import folder_with_bad_files

import transferkit
from transferkit import UsageError
from transferkit.jobs.extract_dask import PAUSE_ENV
from transferkit.store import open_store, shard_progress

TESTS = Path(__file__).parent
# a local Dask cluster starts worker processes, each importing TensorFlow
pytestmark = pytest.mark.process

# 10 good images and 3 bad ones, shuffled: shards of 4 images, some with skipped files
COMMON: dict[str, Any] = {
    "batch_size": 3,
    "shuffle": True,
    "seed": 3,
    "runtime": "keras",
    "progress": False,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return folder_with_bad_files(tmp_path_factory.mktemp("images"), per_class=5)


@pytest.fixture(scope="module")
def cluster() -> Any:
    from distributed import Client, LocalCluster

    env = {"TRANSFERKIT_LOAD_PLUGINS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    local = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env
    )
    client = Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The single-process store of the same run."""
    from transferkit import plugin_manager

    out = tmp_path_factory.mktemp("reference") / "single.zarr"
    pm = plugin_manager.get_plugin_manager()
    pm.register(tiny_backbone, name="tiny-reference")
    try:
        transferkit.extract(images, backbone=tiny_backbone.NAME, out=out, **COMMON)
    finally:
        pm.unregister(name="tiny-reference")
    return out


def _assert_same_store(got: Path, want: Path) -> None:
    import zarr

    with open_store(got) as a, open_store(want) as b:
        assert a.complete and b.complete
        assert a.paths == b.paths and len(a) == len(b) == 10
        assert np.array_equal(a.labels, b.labels)
        xa, xb = a.read()[0], b.read()[0]
        np.testing.assert_allclose(xa, xb, atol=1e-5, rtol=0)
        assert xa.std(axis=0).min() > 0 and len(np.unique(xa.round(4), axis=0)) == 10
        assert a.skipped == b.skipped and len(a.skipped) == 3
        ma, mb = a.metadata, b.metadata
        ma.pop("created"), mb.pop("created")
        assert ma == mb
    keys = [sorted(zarr.open_group(p, mode="r").keys()) for p in (got, want)]
    assert keys[0] == keys[1]  # no bookkeeping arrays left behind


def _pause_workers(client: Any, value: str | None) -> None:
    def setenv(value: str | None) -> None:
        if value is None:
            os.environ.pop(PAUSE_ENV, None)
        else:
            os.environ[PAUSE_ENV] = value

    client.run(setenv, value, on_error="ignore")  # a worker just killed cannot answer


def on_cluster(images: Path, tiny: str, out: Path, cluster: Any, **options: Any) -> dict[str, Any]:
    """``transferkit.extract`` of ``images`` into ``out`` on ``cluster``, by shards of 4."""
    return transferkit.extract(
        images,
        backbone=tiny,
        out=out,
        scheduler=cluster.scheduler.address,
        shard_rows=4,
        **{**COMMON, **options},
    )


def test_cluster_store_equals_the_single_process_store(tiny, images, cluster, reference, tmp_path):
    out = tmp_path / "cluster.zarr"
    result = on_cluster(images, tiny, out, cluster)
    assert result["rows"] == 10 and result["skipped"] == 3 and result["shards"] == 4
    assert result["workers"] == 2 and result["computed"] == 13
    _assert_same_store(out, reference)
    shards = result["shard_results"]
    assert [r["shard"] for r in shards] == [0, 1, 2, 3]
    assert sum(r["rows"] for r in shards) == 10
    # each worker built the backbone once, not once per shard
    assert all(r["builds"] == 1 for r in shards)
    assert not (tmp_path / "cluster.zarr.lock").exists()


def test_h5_on_a_cluster_is_refused_before_any_work(tiny, images, tmp_path):
    out = tmp_path / "features.h5"
    with pytest.raises(UsageError, match=r"\.zarr"):
        transferkit.extract(images, backbone=tiny, out=out, scheduler="local", jobs=2)
    assert not out.exists()
    from transferkit.cli import build_cli

    args = ["extract", str(images), "-b", tiny, "-o", str(out), "--scheduler", "local"]
    run = CliRunner().invoke(build_cli(), args)
    assert run.exit_code == 2 and ".zarr" in run.output and "Traceback" not in run.output
    with pytest.raises(UsageError, match="--scheduler"):
        transferkit.extract(images, backbone=tiny, out=tmp_path / "f.zarr", jobs=2)


@pytest.mark.process
def test_extract_without_a_scheduler_does_not_import_dask():
    code = (
        "import sys, transferkit.api, transferkit.jobs.extract, transferkit.commands.extract\n"
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    assert python_output(code).strip() == "[]"


def test_worker_killed_mid_shard_loses_only_that_shard(tiny, images, cluster, reference, tmp_path):
    """A worker is SIGKILLed after writing a shard's rows, before the shard's mark: Dask runs
    the shard again on a worker, and the store has no lost or doubled row."""
    out, pauses = tmp_path / "killed.zarr", tmp_path / "pauses"
    pauses.mkdir()
    _pause_workers(cluster, f"2:{pauses}")
    results: dict[str, Any] = {}

    def run() -> None:
        try:
            results["summary"] = on_cluster(images, tiny, out, cluster)
        except BaseException as exc:  # reported by the main thread
            results["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not list(pauses.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        paused = sorted(pauses.iterdir(), key=lambda p: p.stat().st_mtime)
        assert paused, "no worker reached a shard's pause"
        shard, pid = (int(v) for v in paused[-1].name.split("."))  # the latest: still paused
        assert pid in cluster.run(os.getpid).values()
        os.kill(pid, signal.SIGKILL)  # rows written, mark not yet
    finally:
        _pause_workers(cluster, None)
        thread.join(timeout=180)
    assert "error" not in results, results.get("error")
    summary = results["summary"]
    again = next(r for r in summary["shard_results"] if r["shard"] == shard)
    assert f"process {pid})" not in again["host"]  # that shard ran again on another worker
    _assert_same_store(out, reference)
    cluster.wait_for_workers(2, timeout=60)  # the nanny has restarted it


@pytest.mark.process
def test_resume_after_the_client_is_killed(tiny, images, cluster, reference, tmp_path):
    out, pauses = tmp_path / "resumed.zarr", tmp_path / "pauses"
    pauses.mkdir()
    _pause_workers(cluster, f"1:{pauses}")
    args = [str(images), "-b", tiny, "-o", str(out), "--scheduler", cluster.scheduler.address]
    args += ["--shard-rows", "4", "--batch-size", "3", "--shuffle", "--seed", "3"]
    args += ["--runtime", "keras", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, str(TESTS / "extract_dask_child.py"), "extract", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and shard_progress(out)[0] >= 1:
                break
            time.sleep(0.05)
        done, total = shard_progress(out)
        assert child.poll() is None and 1 <= done < total, child.stdout.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert "Dask dashboard" in child.stdout.read().decode()  # its address, or why none
    finally:
        _pause_workers(cluster, None)
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    with open_store(out) as partial:
        assert not partial.complete and len(partial) == 0
    with pytest.raises(UsageError, match="--scheduler"):  # one process cannot continue it
        transferkit.extract(images, backbone=tiny, out=out, resume=True, **COMMON)
    result = on_cluster(images, tiny, out, cluster, resume=True)
    assert result["resumed"] and result["shards_before"] >= 1
    assert result["computed"] < 13 and result["resumed_from"] + result["computed"] == 13
    _assert_same_store(out, reference)
    from transferkit.cli import build_cli

    again = CliRunner().invoke(build_cli(), ["extract", *args, "--resume"])  # nothing left
    assert again.exit_code == 0, again.output
    assert "Nothing left to extract" in again.output and "On the Dask cluster" in again.output
    _assert_same_store(out, reference)


def test_a_worker_that_cannot_see_the_images_is_named(tiny, images, cluster, tmp_path, monkeypatch):
    """Relative paths name other files on workers started in another folder: the run stops
    before any work, naming the worker's host and the path it cannot read."""
    monkeypatch.chdir(images.parent)
    out = tmp_path / "nowhere.zarr"
    with pytest.raises(UsageError) as caught:
        transferkit.extract(
            images.name, backbone=tiny, out=out, scheduler=cluster.scheduler.address, **COMMON
        )
    message = str(caught.value)
    assert "2 of 2 Dask workers" in message and socket.gethostname() in message
    assert f"cannot read {images.name}{os.sep}" in message and "shared storage" in message
    assert not out.exists()


def _shards_by_hand(path: Path, writer_cls: Any = None, mode: str = "create") -> Any:
    """A store of 10 images in shards of 4, written through write_shard in this process: shard
    0 skips its second image and shard 1 its first and last, so later rows must move."""
    from transferkit.store import ShardedStoreWriter, backend_for, write_shard

    writer = (writer_cls or ShardedStoreWriter)(
        backend_for(path),
        str(path),
        feature_dim=3,
        label_names=["a", "b"],
        metadata={"backbone": "by-hand"},
        mode=mode,
        compression=None,
        images=10,
        shard_rows=4,
    )
    if mode == "create":
        kept = {0: [0, 2, 3], 1: [5, 6], 2: [8, 9]}
        for shard in (2, 0, 1):  # in any order
            rows = kept[shard]
            skipped = [
                [f"img{i}", "bad"]
                for i in range(4 * shard, min(4 * shard + 4, 10))
                if i not in rows
            ]
            x = np.array([[i, i + 0.5, -i] for i in rows], np.float32)
            write_shard(path, shard, x, [i % 2 for i in rows], [f"img{i}" for i in rows], skipped)
    return writer


def test_sharded_store_closes_the_gaps_in_order(tmp_path):
    out = tmp_path / "byhand.zarr"
    writer = _shards_by_hand(out)
    assert writer.done_shards() == {0: 3, 1: 2, 2: 2}
    writer.finish([["listed.jpg", "a second path to one file"]])
    kept = [0, 2, 3, 5, 6, 8, 9]
    with open_store(out) as store:
        assert store.complete and store.paths == [f"img{i}" for i in kept]
        np.testing.assert_array_equal(store.read()[0][:, 0], kept)
        assert store.labels.tolist() == [i % 2 for i in kept]
        assert [p for p, _ in store.skipped] == ["listed.jpg", "img1", "img4", "img7"]
        assert store.metadata["image_count"] == 11 and "sharding" not in store.metadata


def test_sharded_store_finishes_a_move_cut_short(tmp_path):
    """The client dies in the middle of moving a shard's rows over its own old rows: a second
    writer finishes the move from the rows the journal kept aside, and nothing is lost."""
    from transferkit.store import ShardedStoreWriter

    class Dies(ShardedStoreWriter):
        def _save_journal(self) -> None:
            super()._save_journal()
            if self._journal.get("moving"):  # half the move written over the old rows
                shard, rows = self._journal["moving"]
                self._features[4 * shard - 1 : 4 * shard + 1] = np.full((2, 3), -7, np.float32)
                raise KeyboardInterrupt

    out = tmp_path / "cut.zarr"
    writer = _shards_by_hand(out, Dies)
    with pytest.raises(KeyboardInterrupt):
        writer.finish()
    writer.close(complete=False)
    with open_store(out) as partial:
        assert not partial.complete
    _shards_by_hand(out, mode="resume").finish()
    kept = [0, 2, 3, 5, 6, 8, 9]
    with open_store(out) as store:
        assert store.complete and store.paths == [f"img{i}" for i in kept]
        np.testing.assert_array_equal(store.read()[0][:, 0], kept)


def test_strict_stops_at_a_bad_file_and_keeps_the_store_resumable(tiny, images, cluster, tmp_path):
    from transferkit import TransferkitError

    out = tmp_path / "strict.zarr"
    with pytest.raises(TransferkitError, match="--strict stops at the first bad file"):
        on_cluster(images, tiny, out, cluster, strict=True)
    assert not (tmp_path / "strict.zarr.lock").exists()  # the lock is released
    with open_store(out) as partial:
        assert not partial.complete and len(partial) == 0
    assert shard_progress(out)[1] == 4
