"""The fault suite for inputs: image folders of any shape, and options and files that cannot be
right. Every case runs the command line (in this process, click's ``CliRunner``) on a corpus the
test builds, and checks the exit code, the message, that no traceback was printed and that the
user's files are unchanged (``tree_digest``)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from cli_faults import assert_fails_cleanly, assert_succeeds, invoke_cli, tree_digest
from imagefiles import photo

from transferkit import hookimpl

BACKBONE = ("--backbone", "efficientnet-lite0", "--input-size", "32")
BAD_NAME = b"caf\xe9-\xff.jpg"  # Latin-1 and a byte no encoding decodes: not valid UTF-8


def _jpeg(path: Path | bytes, name: str = "coffee", size: tuple[int, int] = (40, 36)) -> None:
    photo(name, size).save(os.fsdecode(path) if isinstance(path, bytes) else path, "JPEG")


def _image_folder_of_every_shape(root: Path) -> dict[str, Any]:
    """Two real classes plus every awkward shape; returns what the listing must make of it."""
    cat, dog = root / "cat", root / "dog"
    (cat / "nested").mkdir(parents=True)
    dog.mkdir()
    (root / "empty").mkdir()  # an empty class folder
    _jpeg(cat / "a.jpg", "chelsea")
    _jpeg(cat / "nested" / "b.jpg", "astronaut")
    _jpeg(dog / "c.jpg", "rocket")
    _jpeg(os.fsencode(dog) + b"/" + BAD_NAME, "coffee")  # a name that is not UTF-8
    bad_class = os.fsencode(root) + b"/b\xe4r"  # a class folder whose name is not UTF-8
    os.mkdir(bad_class)
    _jpeg(bad_class + b"/d.jpg", "astronaut")
    os.symlink("..", cat / "nested" / "up")  # a loop: cat/nested/up -> cat
    os.symlink(root, dog / "root")  # a link to the whole folder, classes included
    os.symlink("a.jpg", cat / "alias.jpg")  # a second path to one file
    os.link(cat / "a.jpg", dog / "hard.jpg")  # a hard link, across classes
    os.symlink("gone.jpg", dog / "broken.jpg")  # a link to nothing
    os.mkfifo(dog / "pipe.jpg")  # reading it would block forever
    return {
        "rows": 5,  # a, b, c, the bad name, d
        "skipped": {
            "cat/alias.jpg": "same file as",
            "dog/hard.jpg": "same file as",
            "dog/broken.jpg": "broken symbolic link",
            "dog/pipe.jpg": "not a regular file",
        },
    }


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert_succeeds(result)
    return json.loads(result.stdout)


def _check_folder_run(summary: dict[str, Any], expected: dict[str, Any], root: Path) -> None:
    assert summary["rows"] == expected["rows"]
    assert summary["rows"] + summary["skipped"] == summary["files_found"]
    assert summary["empty_classes"] == ["empty"]
    reasons = {os.path.relpath(p, root): r for p, r in summary["skipped_files"]}
    assert set(reasons) == set(expected["skipped"]), reasons
    for rel, needle in expected["skipped"].items():
        assert needle in reasons[rel], (rel, reasons[rel])


def _stored(path: Path) -> tuple[list[str], list[str]]:
    from transferkit.store import open_store

    with open_store(path) as reader:
        return reader.paths, reader.label_names


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_an_image_folder_of_every_shape(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "photos"
    expected = _image_folder_of_every_shape(root)
    before = tree_digest(root)
    out = tmp_path / f"features{suffix}"
    summary = _summary(invoke_cli("extract", root, *BACKBONE, "-o", out, "--no-progress", "--json"))
    _check_folder_run(summary, expected, root)
    paths, names = _stored(out)
    # each real file once, the name that is not UTF-8 recorded with \xNN escapes
    assert len(paths) == len(set(paths)) == 5
    assert str(root / "dog" / "caf\\xe9-\\xff.jpg") in paths
    assert names == ["b\\xe4r", "cat", "dog"]
    assert {os.path.basename(p) for p in paths} == {
        "a.jpg",
        "b.jpg",
        "c.jpg",
        "d.jpg",
        "caf\\xe9-\\xff.jpg",
    }
    if suffix == ".zarr":
        assert tree_digest(root) == before
        return
    # a second run resumes the finished store: nothing is read or recorded twice
    again = _summary(
        invoke_cli("extract", root, *BACKBONE, "-o", out, "--resume", "--no-progress", "--json")
    )
    assert again["rows"] == 5 and again["skipped"] == summary["skipped"]
    assert _stored(out)[0] == paths
    assert tree_digest(root) == before


def test_one_class_warns_and_train_refuses_it(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "only").mkdir(parents=True)
    for i, name in enumerate(("coffee", "rocket", "chelsea")):
        _jpeg(root / "only" / f"{i}.jpg", name)
    before = tree_digest(root)
    out = tmp_path / "one.h5"
    result = invoke_cli("extract", root, *BACKBONE, "-o", out, "--no-progress")
    assert_succeeds(result)
    assert "one class (only)" in result.stderr and "at least two" in result.stderr
    trained = invoke_cli("train", out, "--classifier", "ridge-1", "--out", tmp_path / "m.skops")
    assert_fails_cleanly(trained, 2, "only class 'only'", "at least two classes")
    assert not (tmp_path / "m.skops").exists()
    streamed = invoke_cli("stream", out, "--classifier", "river-logreg")
    assert_fails_cleanly(streamed, 2, "only class 'only'")
    checked = invoke_cli("spotcheck", out, "-c", "ridge-1", "--out", tmp_path / "report")
    assert_fails_cleanly(checked, 2, "only class 'only'")
    assert tree_digest(root) == before


class Vandal:
    """A plugin that damages the image folder once the run has listed it (``on_extract_start``):
    it deletes one file and truncates another, so that a test sees files that vanish or change
    between the listing and the reading, deterministically."""

    def __init__(self, delete: Path, truncate: Path) -> None:
        self.delete, self.truncate = delete, truncate
        self.damaged: str | None = None

    @hookimpl
    def on_extract_start(self, total: int) -> None:
        os.remove(self.delete)
        size = os.path.getsize(self.truncate)
        with open(self.truncate, "r+b") as fh:
            fh.truncate(size // 2)
        self.damaged = f"damaged 2 of {total} files"


def test_files_that_vanish_or_change_during_a_run_are_skipped(
    tmp_path: Path, register_plugin: Any
) -> None:
    root = tmp_path / "photos"
    for cls, names in (("cat", ("chelsea", "coffee", "astronaut")), ("dog", ("rocket", "coffee"))):
        (root / cls).mkdir(parents=True)
        for i, name in enumerate(names):
            _jpeg(root / cls / f"{i}.jpg", name)
    gone, cut = root / "cat" / "1.jpg", root / "dog" / "0.jpg"
    out = tmp_path / "f.h5"
    vandal = register_plugin(Vandal(gone, cut), "vandal")
    result = invoke_cli("extract", root, *BACKBONE, "-o", out, "--no-progress", "--json")
    summary = _summary(result)
    assert vandal.damaged == "damaged 2 of 5 files"
    reasons = dict(summary["skipped_files"])
    assert reasons == {str(gone): "file not found", str(cut): "truncated file"}
    assert summary["rows"] == 3 and summary["rows"] + summary["skipped"] == summary["files_found"]
    assert len(set(_stored(out)[0])) == 3


@pytest.mark.parametrize(
    ("command", "size", "needle"),
    [
        ("extract", "100000", "too large"),
        ("extract", "96x", "not understood"),
        ("extract", "4", "too small"),
        ("extract", "96x96x3", "not understood"),
        ("finetune", "100000x96", "too large"),
        ("spotcheck", "efficientnet-lite0@96x", "not understood"),
    ],
)
def test_input_sizes_that_cannot_be_right_are_usage_errors(
    tmp_path: Path, command: str, size: str, needle: str
) -> None:
    root = tmp_path / "photos"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        _jpeg(root / cls / "0.jpg")
    before = tree_digest(tmp_path)
    out = tmp_path / "out"
    if command == "extract":
        args = [
            "extract",
            root,
            "-b",
            "efficientnet-lite0",
            "--input-size",
            size,
            "-o",
            f"{out}.h5",
        ]
    elif command == "finetune":
        args = ["finetune", root, "-b", "efficientnet-lite0", "--input-size", size, "--out", out]
    else:
        args = ["spotcheck", root, "-b", size, "-c", "ridge-1", "--out", out]
    result = invoke_cli(*args)
    assert_fails_cleanly(result, 2, needle)
    assert tree_digest(tmp_path) == before  # nothing was written or allocated on disk


def test_a_batch_larger_than_the_machine_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "photos" / "a").mkdir(parents=True)
    _jpeg(tmp_path / "photos" / "a" / "0.jpg")
    before = tree_digest(tmp_path)
    args = ["--input-size", "2048", "--batch-size", "1000000", "-o", tmp_path / "f.h5"]
    result = invoke_cli("extract", tmp_path / "photos", *BACKBONE[:2], *args)
    assert_fails_cleanly(result, 2, "more than a quarter of this machine's")
    assert tree_digest(tmp_path) == before


def _store(path: Path, **changes: Any) -> Path:
    """A small valid HDF5 store with one thing changed."""
    rng = np.random.default_rng(0)
    features = changes.pop("features", rng.normal(size=(12, 4)).astype(np.float32))
    labels = changes.pop("labels", np.arange(12) % 2)
    attrs = {"rows": 12, "feature_dim": 4, "complete": True, **changes.pop("attrs", {})}
    with h5py.File(path, "w") as f:
        f["features"] = features
        f["labels"] = labels
        f["label_names"] = np.array([b"cat", b"dog"])
        f["paths"] = np.array([f"img{i}.jpg".encode() for i in range(12)])
        for key, value in attrs.items():
            f.attrs[key] = value
    assert not changes
    return path


HOSTILE_STORES: dict[str, tuple[dict[str, Any], str]] = {
    "label-outside-names": ({"labels": np.array([0, 1] * 5 + [2, 1])}, "label indexes run"),
    "negative-label": ({"labels": np.array([0, 1] * 5 + [-1, 1])}, "label indexes run"),
    "rows-disagree": ({"attrs": {"rows": 20}}, "holds 20 rows"),
    "width-contradicts": ({"attrs": {"feature_dim": 9}}, "9-d"),
    "text-features": ({"features": np.array([b"x"] * 12)}, "'features' must be"),
    "deep-nesting": ({"attrs": {"note": "json:" + "[" * 50_000 + "]" * 50_000}}, "'note'"),
    "bad-json": ({"attrs": {"skipped": "json:[[1"}}, "'skipped'"),
    "wrong-type": ({"attrs": {"rows": 'json:{"a": 1}'}}, "'rows' must be"),
    "bad-input-size": ({"attrs": {"input_size": "json:[96, -1]"}}, "input_size"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_STORES))
def test_train_on_a_hostile_store_fails_in_one_line(tmp_path: Path, case: str) -> None:
    changes, needle = HOSTILE_STORES[case]
    store = _store(tmp_path / "hostile.h5", **changes)
    before = tree_digest(tmp_path)
    result = invoke_cli("train", store, "--classifier", "ridge-1", "--out", tmp_path / "m.skops")
    assert_fails_cleanly(result, 1, needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree_digest(tmp_path) == before


def test_files_that_are_not_stores_fail_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    zarr_dir = tmp_path / "junk.zarr"
    zarr_dir.mkdir()
    (zarr_dir / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"')
    for path in (junk, zarr_dir):
        result = invoke_cli("train", path, "--classifier", "ridge-1")
        assert_fails_cleanly(result, 1, "cannot open")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_train_refuses_classes_too_small_to_split(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.h5", labels=np.array([0] * 11 + [1]))
    result = invoke_cli("train", store, "--classifier", "ridge-1")
    assert_fails_cleanly(result, 2, "at least 2 rows", "'dog' (1)")
    tiny = _store(tmp_path / "tiny.h5", labels=np.array([0, 1] * 6))
    ok = invoke_cli("train", tiny, "--classifier", "ridge-1", "--json")
    assert_succeeds(ok)
    assert "only 2 test rows" in ok.stderr and "rough" in ok.stderr


def _skops_model(path: Path, header: Any, classes: int = 2) -> Path:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.normal(size=(30, 4)), np.arange(30) % classes)
    sio.dump(
        {"header": header if isinstance(header, str) else json.dumps(header), "estimator": model},
        path,
    )
    return path


def _header(**recipe: Any) -> dict[str, Any]:
    base = {
        "backbone": "efficientnet-lite0",
        "weights": "default",
        "input_size": [32, 32],
        "pooling": "avg",
        "label_names": ["cat", "dog"],
        "feature_dim": 4,
        "store_metadata": {},
    }
    return {
        "format": "transferkit-model",
        "version": 1,
        "classifier": "ridge-1",
        "library": "scikit-learn",
        "recipe": {**base, **recipe},
        "info": {},
    }


def test_predict_says_what_a_file_is_when_it_is_not_a_model(tmp_path: Path) -> None:
    image = tmp_path / "x.jpg"
    _jpeg(image)
    store = _store(tmp_path / "features.h5")
    noise = tmp_path / "noise.skops"
    noise.write_bytes(os.urandom(2048))
    other_pickle = tmp_path / "dict.pkl"
    other_pickle.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    from river import linear_model

    header = json.dumps(_header())
    river_pickle = tmp_path / "river.pkl"
    river_pickle.write_bytes(
        pickle.dumps({"header": header, "estimator": linear_model.LogisticRegression()})
    )
    cases = [
        (store, 2, "HDF5 file (a feature store?), not a model"),
        (noise, 2, "not a model file that transferkit knows"),
        (other_pickle, 2, "a pickle but not a transferkit model"),
        (river_pickle, 1, "--trust"),
    ]
    before = tree_digest(tmp_path)
    for path, code, needle in cases:
        result = invoke_cli("predict", path, image)
        assert_fails_cleanly(result, code, needle)
        if path != river_pickle:
            assert "--trust" not in result.stderr
    assert tree_digest(tmp_path) == before


HOSTILE_MODELS: dict[str, tuple[Any, int, str]] = {
    "classes-beyond-names": (_header(label_names=["cat", "dog"]), 3, "predicts classes [0, 1, 2]"),
    "unknown-recipe-key": (_header(surprise=1), 2, "unknown recipe keys ['surprise']"),
    "wrong-type": (_header(label_names="cat,dog"), 2, "'label_names' has the wrong type"),
    "deep-header": ("[" * 100_000 + "]" * 100_000, 2, "header is not valid JSON"),
    "newer-version": ({**_header(), "version": 99}, 2, "format version 99"),
    "bad-input-size": (_header(input_size=[32]), 2, "recipe input size"),
    "width-contradicts": (_header(feature_dim=7), 2, "takes 4 features but the recipe says 7"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MODELS))
def test_predict_with_a_hostile_model_fails_in_one_line(tmp_path: Path, case: str) -> None:
    header, classes, needle = HOSTILE_MODELS[case]
    model = _skops_model(tmp_path / "m.skops", header, classes)
    image = tmp_path / "x.jpg"
    _jpeg(image)
    result = invoke_cli("predict", model, image)
    assert_fails_cleanly(result, 1, "not a usable transferkit model", needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


HOSTILE_CONFIGS: dict[str, tuple[str | bytes, str]] = {
    "deep-nesting": ("batch-size: " + "[" * 20_000 + "]" * 20_000 + "\n", "nests too deeply"),
    "mapping-value": ("batch-size: {a: {b: 1}}\n", "a mapping is not a valid value"),
    "list-for-one": ("pooling: [avg, max]\n", "a list is not valid here"),
    "bool-for-int": ("batch-size: true\n", "True is not valid"),
    "fraction-for-int": ("batch-size: 1.5\n", "not a whole number"),
    "unknown-key": ("backbone: x\nfoo: {bar: 1}\n", "unknown config key 'foo'"),
    "not-utf8": (b"backbone: caf\xe9\n", "not UTF-8"),
    "not-a-mapping": ("- a\n- b\n", "must hold a mapping"),
    "bad-yaml": ("a: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_a_hostile_config_file_is_a_usage_error(tmp_path: Path, case: str) -> None:
    text, needle = HOSTILE_CONFIGS[case]
    config = tmp_path / "job.yaml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    (tmp_path / "photos").mkdir()
    result = invoke_cli("extract", tmp_path / "photos", "--config", config, "--print-config")
    assert_fails_cleanly(result, 2, needle)
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # click's usage + error
