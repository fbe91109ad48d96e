"""Extraction end to end: real image files, a tiny real Keras CNN, real HDF5 and Zarr stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_backbone
from click.testing import CliRunner
from imagefiles import add_bad_files, folder_with_bad_files, make_folder

import transferkit
from transferkit import TransferkitError, UsageError, hookimpl
from transferkit.images import decode_image
from transferkit.pipeline import resize_image
from transferkit.store import StoreExistsError, open_store

TESTS = Path(__file__).parent
FORMATS = ["h5", "zarr"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return folder_with_bad_files(tmp_path_factory.mktemp("images"), per_class=4)


def _expected_features(path: str, pooling: str = "avg") -> np.ndarray:
    import tensorflow as tf

    net = transferkit.pool(tiny_backbone.build(), pooling)
    img = resize_image(tf.constant(decode_image(path)), (32, 32))
    return net.model(net.preprocess(img[None])).numpy()[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_api_into_both_formats(tiny, images, tmp_path, fmt):
    out = tmp_path / f"features.{fmt}"
    result = transferkit.extract(images, backbone=tiny, out=out, batch_size=3, progress=False)
    assert result["path"] == str(out)
    assert result["rows"] == 8 and result["skipped"] == 3
    assert result["feature_dim"] == 8 and result["backbone"] == "tiny-cnn"
    assert result["images_per_second"] > 0 and result["seconds"] > 0
    reasons = {Path(p).name: r for p, r in result["skipped_files"]}
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "zero bytes" and reasons["notes.jpg"] == "not an image"
    with open_store(out) as r:
        assert len(r) == 8
        assert r.label_names == ["cat", "rocket"]
        assert r.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert r.paths == sorted(r.paths) and all(p.endswith(".jpg") for p in r.paths)
        assert sorted(Path(p).name for p, _ in r.skipped) == sorted(reasons)
        meta = r.metadata
        for key in ("backbone", "weights_source", "input_size", "pooling", "preprocessing"):
            assert meta[key]
        assert meta["transferkit_version"] == transferkit.__version__
        assert meta["input_size"] == [32, 32] and meta["pooling"] == "avg"
        assert meta["image_count"] == 11 and meta["complete"] is True
        assert meta["task"] == "" and meta["seed"] == 0 and "created" in meta
        x, _ = r.read(2, 3)
        np.testing.assert_allclose(x[0], _expected_features(r.paths[2]), rtol=1e-5, atol=1e-6)


def test_rotation_task_flatten_and_shuffle(tiny, images, tmp_path):
    out = tmp_path / "rot.h5"
    result = transferkit.extract(
        images,
        backbone=tiny,
        out=out,
        task="rotation",
        pooling="flatten",
        shuffle=True,
        seed=5,
        progress=False,
        write_images=tmp_path / "rotated",
    )
    assert result["feature_dim"] == 8 * 8 * 8
    assert result["written_images"]["written"] == 8
    copies = transferkit.images.open_source(tmp_path / "rotated")
    assert len(copies) == 8 and set(copies.label_names) <= {"0", "90", "180", "270"}
    with open_store(out) as r:
        assert r.label_names == ["0", "90", "180", "270"]
        assert r.metadata["task"] == "rotation" and r.metadata["seed"] == 5
        assert r.paths != sorted(r.paths)  # shuffled order
        src = transferkit.images.open_source(images, task="rotation", seed=5)
        want = {rec.path: rec.label for rec in src.records}
        assert r.labels.tolist() == [want[p] for p in r.paths]


def test_existing_output_strict_and_hooks(tiny, images, tmp_path, register_plugin):
    calls: list[tuple[str, Any]] = []

    class Watcher:
        @hookimpl
        def on_extract_start(self, backbone, total, output):
            calls.append(("start", (backbone, total)))

        @hookimpl
        def on_extract_batch(self, rows_written, total, skipped):
            calls.append(("batch", (rows_written, total, skipped)))

        @hookimpl
        def on_extract_end(self, summary):
            calls.append(("end", summary["rows"]))

        @hookimpl
        def on_exception(self, exception, where):
            calls.append(("exception", where))

    register_plugin(Watcher(), "watcher")
    out = tmp_path / "f.zarr"
    transferkit.extract(images, backbone=tiny, out=out, batch_size=4, progress=False)
    assert calls[0] == ("start", ("tiny-cnn", 11))
    assert [c[1][0] for c in calls if c[0] == "batch"] == [4, 8]
    assert calls[-1] == ("end", 8)
    with pytest.raises(StoreExistsError, match="--overwrite"):
        transferkit.extract(images, backbone=tiny, out=out, progress=False)
    with pytest.raises(UsageError, match="exclude"):
        transferkit.extract(
            images, backbone=tiny, out=out, overwrite=True, resume=True, progress=False
        )
    calls.clear()
    with pytest.raises(TransferkitError, match="--strict"):
        transferkit.extract(
            images, backbone=tiny, out=out, overwrite=True, strict=True, progress=False
        )
    assert calls[-1] == ("exception", "extract")
    with open_store(out) as r:
        assert r.metadata["complete"] is False  # the failed run left a resumable store


def test_cli_extract(tiny, images, tmp_path):
    from transferkit.cli import build_cli

    runner = CliRunner()
    out = tmp_path / "cli.h5"
    args = ["extract", str(images), "--backbone", tiny, "--out", str(out), "--batch-size", "5"]
    result = runner.invoke(build_cli(), [*args, "--json", "--input-size", "40x48"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 8 and summary["skipped"] == 3
    assert summary["input_size"] == [40, 48]
    assert "img/s" in result.stderr or "img" in result.stderr  # the progress bar

    again = runner.invoke(build_cli(), args)
    assert again.exit_code == 2
    assert "--overwrite" in again.output and "--resume" in again.output

    human = runner.invoke(build_cli(), [*args, "--overwrite", "--pooling", "max"])
    assert human.exit_code == 0, human.output
    assert "Wrote 8 feature vectors (8-d" in human.stdout
    assert "Skipped 3 file(s)" in human.stdout and "zero bytes" in human.stdout

    strict = runner.invoke(build_cli(), [*args, "--overwrite", "--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output

    unknown = runner.invoke(build_cli(), [*args, "--overwrite", "--backbone", "tiny-cn"])
    assert unknown.exit_code == 2 and "Did you mean 'tiny-cnn'" in unknown.output

    missing = runner.invoke(build_cli(), ["extract", str(images), "--out", str(out)])
    assert missing.exit_code == 2 and "--backbone" in missing.output

    config = tmp_path / "extract.yaml"
    config.write_text(f"backbone: {tiny}\nout: {tmp_path / 'cfg.zarr'}\npooling: max\n")
    from_file = runner.invoke(build_cli(), ["extract", str(images), "--config", str(config)])
    assert from_file.exit_code == 0, from_file.output
    with open_store(tmp_path / "cfg.zarr") as r:
        assert len(r) == 8 and r.metadata["pooling"] == "max"


def test_resume_refuses_other_settings(tiny, images, tmp_path):
    out = tmp_path / "f.h5"
    transferkit.extract(images, backbone=tiny, out=out, progress=False)
    with pytest.raises(UsageError, match="pooling"):
        transferkit.extract(
            images, backbone=tiny, out=out, resume=True, pooling="max", progress=False
        )
    # resuming a finished store computes nothing and leaves it as it was
    result = transferkit.extract(images, backbone=tiny, out=out, resume=True, progress=False)
    assert result["rows"] == 8 and result["new_rows"] == 0 and result["resumed_from"] == 11


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny, tmp_path, fmt):
    folder = tmp_path / "imgs"
    make_folder(folder, per_class=10, size=32)
    add_bad_files(folder / "cat")  # skipped files are part of what is resumed
    full = tmp_path / f"full.{fmt}"
    transferkit.extract(folder, backbone=tiny, out=full, batch_size=4, progress=False)

    out = tmp_path / f"killed.{fmt}"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "TRANSFERKIT_LOAD_PLUGINS": ""}
    child = subprocess.Popen(
        [sys.executable, str(TESTS / "extract_child.py"), str(folder), str(out), "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    try:
        assert child.stdout is not None
        for line in child.stdout:
            assert not line.startswith("done"), "the child finished before it was killed"
            if int(line.split()[1]) >= 8:
                break
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with open_store(out) as r:
        on_disk = len(r)
        assert 8 <= on_disk < 20 and r.metadata["complete"] is False

    result = transferkit.extract(
        folder, backbone=tiny, out=out, batch_size=4, resume=True, progress=False
    )
    assert result["resumed"] and result["new_rows"] == 20 - on_disk
    with open_store(full) as a, open_store(out) as b:
        assert len(a) == len(b) == 20
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.read()[0], b.read()[0], rtol=1e-6, atol=1e-7)
        assert a.skipped == b.skipped and len(a.skipped) == 3
        assert a.label_names == b.label_names
        assert b.metadata["complete"] is True and b.metadata["image_count"] == 23


def test_backbone_failure_is_reported_and_leaves_no_store(images, tmp_path, register_plugin):
    from transferkit import BackboneSpec, WeightsUnavailableError

    seen = []

    def offline(**_):
        raise WeightsUnavailableError("cannot download; use --weights none")

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register(BackboneSpec(name="offline-net", description="x", factory=offline))

        @hookimpl
        def on_exception(self, exception, where, context):
            seen.append((type(exception).__name__, where, context["backbone"]))

    register_plugin(Plugin(), "offline")
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        transferkit.extract(images, backbone="offline-net", out=tmp_path / "f.h5", progress=False)
    assert seen == [("WeightsUnavailableError", "extract", "offline-net")]
    assert not (tmp_path / "f.h5").exists()


def test_chunked_reading_gives_the_same_store(tiny, images, tmp_path, monkeypatch):
    import transferkit.pipeline as pipeline

    one = transferkit.extract(images, backbone=tiny, out=tmp_path / "a.h5", progress=False)
    # file headers checked ahead in chunks of 3, 2, 2, ... rows
    monkeypatch.setattr(pipeline, "PROBE_CHUNKS", (3, 2))
    many = transferkit.extract(
        images, backbone=tiny, out=tmp_path / "b.h5", task=None, batch_size=3, progress=False
    )
    assert one["rows"] == many["rows"] == 8
    with open_store(tmp_path / "a.h5") as a, open_store(tmp_path / "b.h5") as b:
        assert a.paths == b.paths and a.skipped == b.skipped
        np.testing.assert_allclose(a.read()[0], b.read()[0], rtol=1e-5, atol=1e-6)


class CountingRuntime:
    """The keras runtime, counting the batches that go through the network."""

    batches = 0

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        from transferkit import RuntimeSpec, registry

        def factory(model: Any, **options: Any) -> Any:
            run = registry.runtime("keras").factory(model, **options)

            def forward(images: Any) -> Any:
                CountingRuntime.batches += 1
                return run(images)

            return forward

        register(RuntimeSpec(name="counting", description="keras, counted", factory=factory))


def test_several_poolings_run_the_network_once(tiny, images, tmp_path, register_plugin):
    register_plugin(CountingRuntime(), "counting-runtime")
    outs = {p: tmp_path / f"{p}.h5" for p in ("avg", "max", "flatten")}
    CountingRuntime.batches = 0
    summaries = transferkit.extract_many(
        images, backbone=tiny, outs=outs, batch_size=3, runtime="counting", progress=False
    )
    together = CountingRuntime.batches
    assert together == 1 + 3  # the warm-up batch, then 8 images in batches of 3
    assert [summaries[p]["feature_dim"] for p in outs] == [8, 8, 8 * 8 * 8]
    for pooling, out in outs.items():
        CountingRuntime.batches = 0
        alone = tmp_path / f"alone-{pooling}.h5"
        transferkit.extract(
            images,
            backbone=tiny,
            out=alone,
            pooling=pooling,
            batch_size=3,
            runtime="counting",
            progress=False,
        )
        assert CountingRuntime.batches == together  # each pooling alone: the whole pass again
        with open_store(out) as shared, open_store(alone) as own:
            assert shared.metadata["pooling"] == own.metadata["pooling"] == pooling
            for key in ("backbone", "weights", "input_size", "precision", "weights_source"):
                assert shared.metadata[key] == own.metadata[key]
            assert shared.paths == own.paths and shared.skipped == own.skipped
            assert shared.labels.tolist() == own.labels.tolist()
            x_shared, _ = shared.read(0, len(shared))
            x_own, _ = own.read(0, len(own))
            np.testing.assert_allclose(x_shared, x_own, rtol=1e-6, atol=1e-7)
            first = shared.paths[0]
        np.testing.assert_allclose(
            x_shared[0], _expected_features(first, pooling), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(UsageError, match="its own output store"):
        transferkit.extract_many(
            images, backbone=tiny, outs={"avg": tmp_path / "x.h5", "max": tmp_path / "x.h5"}
        )
