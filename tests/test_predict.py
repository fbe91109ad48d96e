"""Image folders end to end: the spot-check's feature cache, then predict with a saved model.

Real images (scikit-learn's digits as PNG files, 20 per class) and the real offline
efficientnet-lite0 backbone at 64 px.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from transferkit import api, hookimpl
from transferkit.cli import build_cli
from transferkit.errors import TransferkitError
from transferkit.jobs.demo import write_digits

BACKBONE = "efficientnet-lite0@64"


class ExtractCounter:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_extract_start(self, backbone: str) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20 training images per digit, plus the demo's two "new" images per digit."""
    root = tmp_path_factory.mktemp("digit-images")
    images = write_digits(root)
    for label in range(10):
        for extra in sorted((root / "images" / str(label)).iterdir())[20:]:
            extra.unlink()
    return {**images, "cache": str(root / "cache"), "root": root}


@pytest.fixture(scope="module")
def spotchecked(digits_folder: dict[str, Any]) -> dict[str, Any]:
    return api.spotcheck(
        [digits_folder["images"]],
        backbones=[BACKBONE],
        classifiers="logistic-regression,knn-3",
        cache_dir=digits_folder["cache"],
        jobs=2,
        progress=False,
    )


def test_second_spotcheck_extracts_nothing(
    digits_folder: dict[str, Any], spotchecked: dict[str, Any], register_plugin: Any
) -> None:
    assert spotchecked["features"][0]["extracted"] is True
    assert spotchecked["best_accuracy"] > 0.6  # 40 test images of 10 digits
    counter = register_plugin(ExtractCounter(), "counter")
    again = api.spotcheck(
        [digits_folder["images"]],
        backbones=[BACKBONE],
        classifiers="logistic-regression,knn-3",
        cache_dir=digits_folder["cache"],
        progress=False,
    )
    assert counter.calls == 0 and again["features"][0]["extracted"] is False
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in spotchecked["rows"]]
    # another pooling is another cache entry; so is a changed image
    from transferkit.images import open_source
    from transferkit.jobs.feature_cache import cache_key, image_list_digest, parse_backbone

    records = open_source(digits_folder["images"]).records
    digest = image_list_digest(records)
    key = cache_key(parse_backbone(BACKBONE), "default", digest)
    assert key != cache_key(parse_backbone(BACKBONE + ":max"), "default", digest)
    assert key != cache_key(parse_backbone(BACKBONE), None, digest)
    first = records[0].path
    stat = os.stat(first)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert image_list_digest(open_source(digits_folder["images"]).records) != digest
    finally:
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class BatchCounter:
    def __init__(self) -> None:
        self.batches = 0
        self.stores: list[str] = []

    @hookimpl
    def on_extract_start(self, output: str) -> None:
        self.stores.append(output)

    @hookimpl
    def on_extract_batch(self) -> None:
        self.batches += 1


def test_poolings_of_one_backbone_share_one_pass(
    digits_folder: dict[str, Any], spotchecked: dict[str, Any], register_plugin: Any
) -> None:
    """``-b lite0@64,lite0@64:max,lite0@64:flatten`` with avg cached: one pass for the two
    others, each written into its own cache entry."""
    counter = register_plugin(BatchCounter(), "batch-counter")
    report = api.spotcheck(
        [digits_folder["images"]],
        backbones=f"{BACKBONE},{BACKBONE}:max,{BACKBONE}:flatten",
        classifiers="knn-3",
        cache_dir=digits_folder["cache"],
        batch_size=50,
        jobs=2,
        progress=False,
    )
    assert [f["extracted"] for f in report["features"]] == [False, True, True]
    assert counter.batches == 200 // 50 and len(counter.stores) == 2  # one pass, two stores
    from transferkit.store import open_store

    widths = []
    for feature in report["features"]:
        with open_store(feature["store"]) as reader:
            widths.append(reader.feature_dim)
            assert len(reader) == 200
    assert widths == [1280, 1280, 2 * 2 * 1280]


def test_a_test_folder_is_extracted_once_for_the_poolings_of_one_backbone(
    digits_folder: dict[str, Any], register_plugin: Any, tmp_path: Path
) -> None:
    """``--test FOLDER`` with ``-b lite0@64,lite0@64:max``: the test images go through the
    network once, into one test store per pooling."""
    import shutil

    from transferkit.jobs.feature_cache import cached_stores, parse_backbone
    from transferkit.options import CacheOptions

    test = tmp_path / "test-images"
    for path in digits_folder["new"]:  # two per digit, named by their digit
        label = Path(path).name.split("-")[0]
        (test / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, test / label / Path(path).name)
    backbones = [BACKBONE, f"{BACKBONE}:max"]
    settings = [parse_backbone(b) for b in backbones]
    cached_stores(  # the training features are cached before counting
        digits_folder["images"],
        settings,
        CacheOptions(cache_dir=str(digits_folder["cache"]), progress=False),
    )
    counter = register_plugin(BatchCounter(), "batch-counter")
    report = api.spotcheck(
        [digits_folder["images"]],
        backbones=",".join(backbones),
        classifiers="knn-3",
        test=str(test),
        cache_dir=digits_folder["cache"],
        batch_size=50,
        jobs=1,
        progress=False,
    )
    assert counter.batches == 1 and len(counter.stores) == 2  # 20 images, one pass, two stores
    assert [r["status"] for r in report["rows"]] == ["ok", "ok"]
    assert all(r["accuracy"] is not None and r["accuracy"] > 0.3 for r in report["rows"])


def test_predict_new_images_with_a_trained_model(
    digits_folder: dict[str, Any], spotchecked: dict[str, Any], tmp_path: Path
) -> None:
    store = spotchecked["features"][0]["store"]
    trained = api.train(store, classifier="logistic-regression", out=tmp_path / "model")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = api.predict(trained["model_path"], [*digits_folder["new"], str(broken)])
    rows = result["predictions"]
    assert len(rows) == 21 and result["backbone"] == "efficientnet-lite0"
    assert rows[-1]["status"] == "skipped" and rows[-1]["reason"]
    correct = sum(r["label"] == Path(r["path"]).name.split("-")[0] for r in rows[:-1])
    assert correct >= 12, rows  # 200 training images; chance would be 2 of 20
    assert all(0.0 < r["probability"] <= 1.0 for r in rows[:-1])
    folder = Path(digits_folder["new"][0]).parent  # one folder as a plain string, not a list
    by_folder = api.predict(trained["model_path"], str(folder))["predictions"]
    assert sorted(Path(r["path"]).name for r in by_folder) == sorted(
        Path(p).name for p in digits_folder["new"]
    )
    assert [r["label"] for r in sorted(by_folder, key=lambda r: Path(r["path"]).name)] == [
        r["label"] for r in sorted(rows[:-1], key=lambda r: Path(r["path"]).name)
    ]


def test_predict_a_streamed_river_model_needs_trust(
    digits_folder: dict[str, Any], spotchecked: dict[str, Any], tmp_path: Path
) -> None:
    store = spotchecked["features"][0]["store"]
    streamed = api.stream(
        store, classifier="river-logreg", batch_size=32, out=tmp_path / "river", progress=False
    )
    model = streamed["model_path"]
    with pytest.raises(TransferkitError, match="--trust"):
        api.predict(model, digits_folder["new"][:2])
    runner = CliRunner()
    refused = runner.invoke(build_cli(), ["predict", model, digits_folder["new"][0]])
    assert refused.exit_code == 1 and "--trust" in refused.output
    ok = runner.invoke(
        build_cli(), ["predict", model, *digits_folder["new"], "--trust", "--json", "--top", "3"]
    )
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert len(data["predictions"]) == 20
    assert all(len(p["top"]) == 3 for p in data["predictions"])
    correct = sum(p["label"] == Path(p["path"]).name.split("-")[0] for p in data["predictions"])
    assert correct >= 8  # a single pass of 160 rows; chance would be 2
