"""The tf.data input pipeline on real files (the stratified split: test_scores.py)."""

from __future__ import annotations

import numpy as np
import pytest
from imagefiles import add_bad_files, exif_rotated_jpeg, photo

from transferkit import UsageError
from transferkit.images import ImageRecord, ImageSource, decode_image, open_source
from transferkit.pipeline import (
    image_dataset,
    probe_codes,
    resize_image,
    skip_reason,
)


def _mixed_folder(root):
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    photo("coffee", (40, 30)).save(a / "1_plain.jpg", quality=90)
    photo("chelsea", (30, 40)).convert("L").save(a / "2_gray.png")
    photo("rocket", (36, 36)).convert("CMYK").save(a / "3_cmyk.jpg")
    photo("astronaut", (28, 20)).convert("RGBA").save(b / "4_rgba.png")
    exif_rotated_jpeg(b / "5_exif.jpg")
    photo("coffee", (20, 20)).save(b / "6_plain.png")
    add_bad_files(b)  # empty.jpg, notes.jpg, truncated.jpg -> sorted among b's files


def _expected(tf, arr, size):
    return resize_image(tf.constant(arr), size).numpy()


def test_resize_image_rule():
    import tensorflow as tf

    img = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 60, 3)), tf.uint8)
    for size, method in [((30, 40), "bilinear"), ((20, 30), "bilinear"), ((10, 29), "area")]:
        want = tf.image.resize(img, size, method=method).numpy()
        np.testing.assert_array_equal(resize_image(img, size).numpy(), want)
    assert resize_image(img, (80, 120)).shape == (80, 120, 3)


def test_pipeline_decodes_every_kind_and_drops_bad_files(tmp_path, monkeypatch):
    import tensorflow as tf

    import transferkit.pipeline as pipeline

    # header checks ahead of the pipeline, in chunks of 2, 3, 3, ... rows
    monkeypatch.setattr(pipeline, "PROBE_CHUNKS", (2, 3))
    _mixed_folder(tmp_path)
    src = open_source(tmp_path)
    names = [p.split("/")[-1] for p in src.paths]
    bad = {i for i, n in enumerate(names) if n in ("empty.jpg", "notes.jpg", "truncated.jpg")}
    assert len(bad) == 3
    ds = image_dataset(src, input_size=(16, 24), batch_size=4, with_index=True)
    got_x, got_y, got_i = [], [], []
    for x, y, idx in ds:
        assert x.dtype == tf.float32 and y.dtype == tf.int32 and idx.dtype == tf.int64
        got_x.append(x.numpy())
        got_y.append(y.numpy())
        got_i.append(idx.numpy())
    indices = np.concatenate(got_i)
    assert indices.tolist() == [i for i in range(len(src)) if i not in bad]
    images = np.concatenate(got_x)
    assert images.shape == (len(src) - 3, 16, 24, 3)
    np.testing.assert_array_equal(np.concatenate(got_y), src.labels[indices])
    for row, i in enumerate(indices):
        # native (TF) and Pillow paths both give the Pillow decoding, resized
        want = _expected(tf, decode_image(src.paths[i]), (16, 24))
        tol = 1e-3
        assert np.abs(images[row] - want).max() <= tol, names[i]
    # header checks inside the pipeline, or all done beforehand (probe_codes), give the same
    # batches as the checks a chunk ahead
    for probes in ("inline", probe_codes(src, np.arange(len(src)), input_size=(16, 24))):
        other = image_dataset(
            src, input_size=(16, 24), batch_size=4, with_index=True, probes=probes
        )
        np.testing.assert_array_equal(np.concatenate([b[2].numpy() for b in other]), indices)
        np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in other]), images)
    # the chunked checks start again with each pass of a repeated dataset
    again = image_dataset(src, input_size=(16, 24), batch_size=len(indices), repeat=True)
    first, second = [x.numpy() for x, _ in again.take(2)]
    np.testing.assert_array_equal(first, images)
    np.testing.assert_array_equal(second, images)
    reasons = {names[i]: skip_reason(src, i) for i in bad}
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "zero bytes"
    assert reasons["notes.jpg"] == "not an image"


def test_rotation_preprocess_and_augment(tmp_path):
    import tensorflow as tf

    for i, name in enumerate(["coffee", "chelsea", "rocket", "astronaut"]):
        (tmp_path / "c").mkdir(exist_ok=True)
        photo(name, (24, 16)).save(tmp_path / "c" / f"{i}.png")
    rot = open_source(tmp_path, task="rotation", seed=3)
    ds = image_dataset(
        rot,
        input_size=(12, 12),
        batch_size=3,
        preprocess=lambda x: x / 127.5 - 1.0,
        augment=lambda x: 255.0 - x,
    )
    x, y = next(iter(ds.unbatch().batch(4)))
    assert y.numpy().tolist() == [r.label for r in rot.records]
    for k in range(4):
        want = _expected(tf, np.rot90(decode_image(rot.paths[k]), rot.records[k].label), (12, 12))
        np.testing.assert_allclose(x[k].numpy(), (255.0 - want) / 127.5 - 1.0, atol=1e-4)


def test_subset_shuffle_repeat_and_custom_source(tmp_path):
    class Gradient(ImageSource):
        def load(self, index):
            return np.full((5, 7, 3), index * 10, np.uint8)

    src = Gradient([ImageRecord(f"img{i}", i % 2) for i in range(10)], ["even", "odd"])
    assert src.plan() is None
    ds = image_dataset(src, [1, 4, 6], input_size=(5, 7), batch_size=2, with_index=True)
    idx = np.concatenate([b[2].numpy() for b in ds])
    assert idx.tolist() == [1, 4, 6]
    x = np.concatenate([b[0].numpy() for b in ds])
    np.testing.assert_allclose(x[:, 0, 0, 0], [10, 40, 60])

    def order(seed):
        ds = image_dataset(
            src, input_size=(5, 7), batch_size=10, shuffle=True, seed=seed, with_index=True
        )
        return next(iter(ds))[2].numpy().tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(10)) and order(1) != list(range(10))
    looped = image_dataset(src, [0, 1, 2], input_size=(5, 7), batch_size=2, repeat=True)
    assert sum(1 for _ in looped.take(5)) == 5
    with pytest.raises(UsageError):
        image_dataset(src, [11], input_size=(5, 7), batch_size=2)


def test_large_jpegs_decode_at_reduced_scale(tmp_path):
    import tensorflow as tf

    from transferkit.pipeline import _jpeg_ratio

    assert _jpeg_ratio(640, 480, 224) == 2 and _jpeg_ratio(2000, 1800, 224) == 8
    assert _jpeg_ratio(300, 200, 224) == 1
    (tmp_path / "c").mkdir()
    photo("astronaut", (256, 256)).save(tmp_path / "c" / "big.jpg", quality=95)
    src = open_source(tmp_path)
    want = _expected(tf, decode_image(src.paths[0]), (32, 32))
    exact = next(iter(image_dataset(src, input_size=(32, 32), batch_size=1, fast_jpeg=False)))
    np.testing.assert_allclose(exact[0][0].numpy(), want, atol=1e-3)
    fast = next(iter(image_dataset(src, input_size=(32, 32), batch_size=1)))[0][0].numpy()
    # scaled in the DCT (8x8 block means) instead of filtered: close, not identical
    assert 0 < np.abs(fast - want).mean() < 8.0
    assert np.corrcoef(fast.ravel(), want.ravel())[0, 1] > 0.97


def test_pipelines_run_without_the_autotune_model(tmp_path):
    """tf.data's autotuning model thread is joined when an iterator is destroyed, which can
    stall for seconds at the end of a pass; every input pipeline turns it off."""
    from transferkit.trainer import ArrayDataModule

    for i in range(4):
        (tmp_path / "c").mkdir(exist_ok=True)
        photo("coffee", (20, 16)).save(tmp_path / "c" / f"{i}.png")
    src = open_source(tmp_path)
    pipelines = [
        image_dataset(src, input_size=(8, 8), batch_size=2),
        image_dataset(src, input_size=(8, 8), batch_size=2, shuffle=True, probes="inline"),
    ]
    data = ArrayDataModule(np.zeros((8, 8, 8, 3)), [0, 1] * 4, fractions=(0.5, 0.5))
    data.setup(preprocess=None, input_size=(8, 8))
    pipelines += [data.train_dataset(), data.val_dataset(), data.train_segment(0, 2)[0]]
    for ds in pipelines:
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is True
    assert sum(len(x) for x, _ in pipelines[0]) == 4
    with pytest.raises(UsageError, match="cannot shuffle"):
        image_dataset(src, input_size=(8, 8), batch_size=2, shuffle=True, probes="ahead")
    with pytest.raises(UsageError, match="probes must be"):
        image_dataset(src, input_size=(8, 8), batch_size=2, probes="later")


def test_a_failing_header_check_falls_back_to_pillow(tmp_path, monkeypatch):
    import transferkit.pipeline as pipeline

    for i in range(3):
        (tmp_path / "c").mkdir(exist_ok=True)
        photo("chelsea", (20, 16)).save(tmp_path / "c" / f"{i}.jpg")
    src = open_source(tmp_path)  # full-scale decodes (12 px > 16 px / 2): both decoders agree
    want = np.concatenate(
        [x.numpy() for x, _ in image_dataset(src, input_size=(12, 12), batch_size=3)]
    )
    real = pipeline.probe_image_size

    def flaky(path, **kwargs):
        if path.endswith("1.jpg"):
            raise RuntimeError("header reader broke")
        return real(path, **kwargs)

    monkeypatch.setattr(pipeline, "probe_image_size", flaky)
    codes = probe_codes(src, np.arange(3), input_size=(12, 12))
    assert codes[1] == pipeline.PILLOW and codes[0] != pipeline.PILLOW
    got = np.concatenate(
        [x.numpy() for x, _ in image_dataset(src, input_size=(12, 12), batch_size=3)]
    )
    np.testing.assert_allclose(got, want, atol=1e-3)
    # a shuffled pass (header checks inline, as training reads) keeps the file too
    for probes in ("auto", "inline"):
        shuffled = image_dataset(
            src, input_size=(12, 12), batch_size=2, shuffle=True, seed=3, with_index=True,
            probes=probes,
        )  # fmt: skip
        seen = {int(i): x for xs, _, idx in shuffled for x, i in zip(xs.numpy(), idx, strict=True)}
        assert sorted(seen) == [0, 1, 2], probes
        np.testing.assert_allclose(np.stack([seen[i] for i in range(3)]), want, atol=1e-3)
