"""Decoding of every image mode, skip reasons, the image-folder source and the rotation task."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imagefiles import add_bad_files, exif_rotated_jpeg, make_folder, photo
from PIL import Image

from transferkit import UsageError
from transferkit.images import SkipImage, decode_image, open_source, probe_image


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


def test_rgb_jpeg_and_every_suffix(tmp_path):
    img = photo("chelsea", (32, 24))
    for suffix in ("jpg", "JPEG", "png", "bmp", "gif", "webp", "tif", "TIFF"):
        path = tmp_path / f"x.{suffix}"
        img.save(path, format={"jpg": "JPEG", "tif": "TIFF"}.get(suffix.lower()))
        arr = decode_image(path)
        _check_rgb(arr, (24, 32))
        if suffix.lower() in ("png", "bmp", "tif", "tiff"):  # lossless
            np.testing.assert_array_equal(arr, np.asarray(img))


def test_grayscale_palette_and_transparency(tmp_path):
    gray = photo("coffee", (20, 10)).convert("L")
    gray.save(tmp_path / "g.png")
    arr = decode_image(tmp_path / "g.png")
    _check_rgb(arr, (10, 20))
    np.testing.assert_array_equal(arr[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])

    pal = photo("coffee", (20, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 0] = 200  # red, transparent on the left half, opaque on the right
    rgba[:, 10:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = decode_image(tmp_path / "a.png")
    assert (arr[:, :10] == 255).all()  # composited on white
    assert (arr[:, 10:] == [200, 0, 0]).all()

    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    la.save(tmp_path / "la.png")
    arr = decode_image(tmp_path / "la.png")
    assert (arr[:, :10] == 255).all() and (arr[:, 10:] == 200).all()

    # palette with a transparent index (GIF)
    pimg = Image.new("P", (6, 4), 0)
    pimg.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pimg.putpixel((5, 3), 1)
    pimg.save(tmp_path / "t.gif", transparency=0)
    arr = decode_image(tmp_path / "t.gif")
    assert (arr[0, 0] == 255).all() and (arr[3, 5] == [0, 255, 0]).all()


def test_cmyk_and_16_bit(tmp_path):
    rgb = photo("rocket", (16, 12))
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    arr = decode_image(tmp_path / "c.jpg")
    _check_rgb(arr, (12, 16))
    assert np.abs(arr.astype(int) - np.asarray(rgb).astype(int)).mean() < 12

    deep = (np.linspace(0, 65535, 12 * 16).reshape(12, 16)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    Image.fromarray(deep).save(tmp_path / "d.tif")
    for name in ("d.png", "d.tif"):
        arr = decode_image(tmp_path / name)
        _check_rgb(arr, (12, 16))
        assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255
        np.testing.assert_allclose(arr[..., 1], deep / 257.0, atol=0.51)


def test_exif_orientation_is_applied(tmp_path):
    stored = exif_rotated_jpeg(tmp_path / "r.jpg", orientation=6)  # 90 degrees clockwise
    assert stored.shape == (20, 30, 3)
    arr = decode_image(tmp_path / "r.jpg")
    _check_rgb(arr, (30, 20))
    np.testing.assert_array_equal(arr, np.rot90(stored, k=-1))
    assert probe_image(str(tmp_path / "r.jpg")) == "pillow"


@pytest.mark.parametrize(
    "name,reason",
    [("truncated.jpg", "truncated"), ("empty.jpg", "zero bytes"), ("notes.jpg", "not an image")],
)
def test_bad_files_are_skipped_with_a_reason(tmp_path, name, reason):
    add_bad_files(tmp_path)
    with pytest.raises(SkipImage) as info:
        decode_image(tmp_path / name)
    assert reason in info.value.reason
    with pytest.raises(SkipImage) as info:  # the same from bytes
        decode_image((tmp_path / name).read_bytes())
    assert reason in info.value.reason


def test_pixel_limit_and_bytes(tmp_path):
    photo("coffee", (20, 20)).save(tmp_path / "c.png")
    with pytest.raises(SkipImage, match="too many pixels"):
        decode_image(tmp_path / "c.png", max_pixels=399)
    assert decode_image(tmp_path / "c.png", max_pixels=400).shape == (20, 20, 3)
    assert decode_image((tmp_path / "c.png").read_bytes()).shape == (20, 20, 3)
    with pytest.raises(SkipImage, match="zero bytes"):
        decode_image(b"")
    with pytest.raises(SkipImage, match="too many pixels"):
        probe_image(str(tmp_path / "c.png"), max_pixels=10)


def test_probe_sends_plain_jpeg_png_to_native_decoders(tmp_path):
    photo("coffee").save(tmp_path / "a.jpg")
    photo("coffee").convert("L").save(tmp_path / "b.png")
    photo("coffee").convert("RGBA").save(tmp_path / "c.png")
    photo("coffee").save(tmp_path / "d.bmp")
    photo("coffee").convert("CMYK").save(tmp_path / "e.jpg")
    got = {n: probe_image(str(tmp_path / n)) for n in ("a.jpg", "b.png", "c.png", "d.bmp", "e.jpg")}
    assert got == {
        "a.jpg": "native-jpeg",
        "b.png": "native-png",
        "c.png": "pillow",
        "d.bmp": "pillow",
        "e.jpg": "pillow",
    }


# ---------------------------------------------------------------------------- image-folder


def test_image_folder_recursive_sorted_case_insensitive(tmp_path):
    make_folder(tmp_path, per_class=3)
    photo("coffee").save(tmp_path / "cat" / "UPPER.JPG", format="JPEG")
    (tmp_path / "cat" / "readme.txt").write_text("not listed")
    (tmp_path / "empty_class").mkdir()
    src = open_source(tmp_path)
    assert src.label_names == ["cat", "rocket"]
    assert len(src) == 7
    paths = [r.path for r in src.records]
    assert paths == sorted(paths)
    assert any(p.endswith("UPPER.JPG") for p in paths)
    assert any("/nested/" in p for p in paths)
    assert [r.label for r in src.records] == [0, 0, 0, 0, 1, 1, 1]
    again = open_source(tmp_path)
    assert again.records == src.records
    _check_rgb(src.load(0), src.load(0).shape[:2])


def test_image_folder_from_csv_and_json(tmp_path):
    files = make_folder(tmp_path / "imgs", per_class=2)
    rel = [p.relative_to(tmp_path) for p in files]
    (tmp_path / "list.csv").write_text(
        "path,label\n" + "".join(f"{p},{'b' if i % 2 else 'a'}\n" for i, p in enumerate(rel))
    )
    src = open_source(tmp_path / "list.csv")
    assert src.label_names == ["a", "b"]
    assert [r.label for r in src.records] == [0, 1, 0, 1]
    assert src.records[0].path == str(files[0])
    (tmp_path / "list.json").write_text(
        json.dumps([{"path": str(p), "label": 10 if i < 2 else 2} for i, p in enumerate(rel)])
    )
    src = open_source(tmp_path / "list.json")
    assert src.label_names == ["2", "10"]  # numeric labels sort as numbers
    assert [r.label for r in src.records] == [1, 1, 0, 0]
    with pytest.raises(UsageError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "none").mkdir()
    with pytest.raises(UsageError, match="no images"):
        open_source(tmp_path / "none")


# ---------------------------------------------------------------------------- rotation


def test_rotation_task_rotates_while_reading_and_is_seeded(tmp_path):
    make_folder(tmp_path / "imgs", per_class=4)
    base = open_source(tmp_path / "imgs")
    rot = open_source(tmp_path / "imgs", task="rotation", seed=7)
    assert rot.label_names == ["0", "90", "180", "270"]
    assert rot.task == "rotation"
    labels = [r.label for r in rot.records]
    assert labels == [r.label for r in open_source(base, task="rotation", seed=7).records]
    assert labels != [r.label for r in open_source(base, task="rotation", seed=8).records]
    assert len(set(labels)) > 1
    for i in range(len(rot)):
        np.testing.assert_array_equal(rot.load(i), np.rot90(base.load(i), labels[i]))
    assert rot.plan()["rotations"].tolist() == labels
    with pytest.raises(UsageError, match="not a task"):
        open_source(tmp_path / "imgs", task="image-folder")


def test_write_rotated_copies(tmp_path):
    from transferkit.plugins.datasets import write_rotated

    make_folder(tmp_path / "imgs", per_class=3)
    add_bad_files(tmp_path / "imgs" / "cat")
    rot = open_source(tmp_path / "imgs", task="rotation", seed=1)
    result = write_rotated(rot, tmp_path / "out")
    assert result["written"] == 6 and result["skipped"] == 3
    copies = open_source(tmp_path / "out")
    assert len(copies) == 6
    assert set(copies.label_names) <= {"0", "90", "180", "270"}
    by_name = {p.split("/")[-1]: p for p in copies.paths}
    for i, rec in enumerate(rot.records):
        try:
            expected = rot.load(i)
        except SkipImage:
            continue
        match = [p for n, p in by_name.items() if n.startswith(f"{i:06d}_")]
        assert len(match) == 1 and f"/{rot.label_names[rec.label]}/" in match[0]
        np.testing.assert_array_equal(decode_image(match[0]), expected)


def test_a_plugin_image_source(tmp_path, register_plugin):
    from transferkit import DatasetSpec, hookimpl
    from transferkit.images import ImageRecord, ImageSource

    class Noise(ImageSource):
        def load(self, index):
            return np.random.default_rng(index).integers(0, 256, (8, 8, 3)).astype(np.uint8)

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register(
                DatasetSpec(
                    name="noise",
                    description="random pixels",
                    factory=lambda location, **_: Noise(
                        [ImageRecord(f"{location}/{i}", i % 2) for i in range(4)], ["a", "b"]
                    ),
                )
            )

    register_plugin(Plugin(), "noise")
    src = open_source("mem", dataset="noise", task="rotation", seed=0)
    assert len(src) == 4 and src.label_names == ["0", "90", "180", "270"]
    assert src.plan() is None  # the pipeline must call load() for this source
    np.testing.assert_array_equal(src.load(1), np.rot90(src.base.load(1), src.records[1].label))
