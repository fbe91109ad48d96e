"""``transferkit audit`` on scikit-learn's digits written as an image folder with injected faults:
images moved into a wrong class folder, test images copied into the training folder. The store's
features are the digits' 64 pixels (what the audit reads), its paths the real PNG files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import assert_fails_cleanly, assert_succeeds, invoke_cli, tree_digest
from PIL import Image
from sklearn.datasets import load_digits

from transferkit import api
from transferkit.store import create_store

NAMES = [f"digit-{i}" for i in range(10)]
RECIPE = {"backbone": "efficientnet-lite0", "weights": "default", "pooling": "avg",
          "input_size": [64, 64]}  # fmt: skip
MOVED = 24  # training images put in a wrong class folder
COPIED = 12  # test images copied into the training folder


def _png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = (255 - pixels * 255 / 16).astype(np.uint8)
    Image.fromarray(grey).resize((24, 24), Image.Resampling.NEAREST).convert("RGB").save(path)


def write_store(path: Path, X: np.ndarray, y: np.ndarray, paths: list[str], **meta: Any) -> Path:
    with create_store(path, feature_dim=X.shape[1], label_names=NAMES,
                      metadata={**RECIPE, **meta}) as writer:  # fmt: skip
        writer.append(X.astype(np.float32), y, paths)
    return path


def faulty_digits(root: Path) -> dict[str, Any]:
    """A training and a test folder of digit PNGs (and their stores): ``MOVED`` training images
    in a wrong class folder, ``COPIED`` test images also in the training folder."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:1200], order[1200:1500]
    moved = rng.choice(len(train), MOVED, replace=False)
    given = y[train].copy()
    given[moved] = (given[moved] + rng.integers(1, 10, MOVED)) % 10
    train_paths = []
    for n, (i, label) in enumerate(zip(train, given, strict=True)):
        path = root / "train" / NAMES[label] / f"{n}.png"
        _png(X[i].reshape(8, 8), path)
        train_paths.append(str(path))
    test_paths = []
    for n, i in enumerate(test):
        path = root / "test" / NAMES[y[i]] / f"t{n}.png"
        _png(X[i].reshape(8, 8), path)
        test_paths.append(str(path))
    copied = rng.choice(len(test), COPIED, replace=False)
    X_train, y_train = list(X[train]), list(given)
    for c in copied:
        target = root / "train" / NAMES[y[test[c]]] / f"copy-{c}.png"
        shutil.copy(test_paths[c], target)
        train_paths.append(str(target))
        X_train.append(X[test[c]])
        y_train.append(y[test[c]])
    train_store = write_store(root / "train.h5", np.array(X_train), np.array(y_train), train_paths)
    test_store = write_store(root / "test.h5", X[test], y[test], test_paths)
    return {
        "train": train_store,
        "test": test_store,
        "moved": {train_paths[m] for m in moved},
        "copied": {
            (test_paths[c], str(root / "train" / NAMES[y[test[c]]] / f"copy-{c}.png"))
            for c in copied
        },  # fmt: skip
        "train_paths": train_paths,
    }


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return faulty_digits(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def audited(digits: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report") / "audit"
    return api.audit(digits["train"], test=digits["test"], out=out)


def test_label_issues_find_the_moved_images(
    digits: dict[str, Any], audited: dict[str, Any]
) -> None:
    issues = audited["label_issues"]
    top = {f["path"] for f in issues[: 2 * MOVED]}
    recall = len(top & digits["moved"]) / MOVED
    precision = len(top & digits["moved"]) / len(top)
    assert recall >= 0.8 and precision >= 0.4, (recall, precision, len(issues))
    confident = {f["path"] for f in issues if f["confident"]}
    assert len(confident & digits["moved"]) / len(confident) > 0.5
    scores = [f["score"] for f in issues]
    assert scores == sorted(scores, reverse=True)
    moved = next(f for f in issues if f["path"] in digits["moved"])
    truth = Path(moved["path"]).parent.name
    assert moved["given"] == truth and moved["suggested"] != truth


def test_copied_test_images_are_leakage_and_exact_duplicates(
    digits: dict[str, Any], audited: dict[str, Any]
) -> None:
    leaked = {(f["test_path"], f["train_path"]) for f in audited["leakage"] if f["exact"]}
    copied_tests = {t for t, _ in digits["copied"]}
    assert {t for t, _ in leaked} == copied_tests  # recall 1.0 of the exact copies
    for f in audited["leakage"]:
        # the digits hold byte-identical images of their own; every pair is the same picture
        same = Path(f["test_path"]).read_bytes() == Path(f["train_path"]).read_bytes()
        assert same or f["similarity"] >= 0.97
    exact = [p for p in audited["near_duplicates"] if p["exact"]]
    assert all(Path(p["path"]).read_bytes() == Path(p["other_path"]).read_bytes() for p in exact)
    summary = audited["summary"]
    assert summary["rows"] == 1200 + COPIED and summary["test_rows"] == 300
    assert sum(summary["classes"].values()) == summary["rows"]


def test_pairs_inside_the_test_store_are_near_duplicates_too(tmp_path: Path) -> None:
    X, y = load_digits(return_X_y=True)
    train, test = np.arange(0, 200), np.arange(200, 240)
    paths = []
    for n, i in enumerate(test):
        paths.append(str(tmp_path / "test" / NAMES[y[i]] / f"t{n}.png"))
        _png(X[i].reshape(8, 8), Path(paths[-1]))
    # test row 5's file copied over row 9's place (an exact pair), row 20's features nudged
    # into row 30's (a near pair whose files differ)
    X_test, y_test = X[test].copy(), y[test].copy()
    X_test[9], y_test[9] = X_test[5], y_test[5]
    copy = tmp_path / "test" / NAMES[y_test[5]] / "copy-of-t5.png"
    shutil.copy(paths[5], copy)
    paths[9] = str(copy)
    X_test[30] = X_test[20] + 0.01
    train_paths = [f"train-{i}.png" for i in train]
    train_store = write_store(tmp_path / "train.h5", X[train], y[train], train_paths)
    test_store = write_store(tmp_path / "test.h5", X_test, y_test, paths)
    report = api.audit(train_store, test=str(test_store), files=False)
    inside = {(p["path"], p["other_path"]) for p in report["near_duplicates"]
              if p["store"] == "test"}  # fmt: skip
    assert {(paths[5], paths[9]), (paths[20], paths[30])} <= inside
    assert all(p["store"] == "train" for p in report["near_duplicates"]
               if p["path"] in train_paths)  # fmt: skip
    assert report["summary"]["near_duplicates_test"] == len(inside)
    # with the files read, the copy is an exact pair of the test store as well
    for i, name in enumerate(train_paths):
        _png(X[train[i]].reshape(8, 8), tmp_path / name)
    with_files = api.audit(train_store, test=str(test_store), root=str(tmp_path),
                           out=str(tmp_path / "report"))  # fmt: skip
    exact = [p for p in with_files["near_duplicates"] if p["exact"] and p["store"] == "test"]
    assert [(p["path"], p["other_path"]) for p in exact] == [(paths[5], paths[9])]
    rows = Path(with_files["files"]["csv"]).read_text().splitlines()
    assert rows[0].endswith(",store") and any(r.endswith(",test") for r in rows)


def test_outliers_are_ranked_and_beyond_the_fence(audited: dict[str, Any]) -> None:
    fence = audited["summary"]["thresholds"]["outlier_distance"]
    scores = [f["score"] for f in audited["outliers"]]
    assert scores == sorted(scores, reverse=True) and all(s > fence for s in scores)
    assert len(scores) < 0.05 * audited["summary"]["rows"]


def test_report_files_json_csv_and_page(audited: dict[str, Any]) -> None:
    files = audited["files"]
    saved = json.loads(Path(files["json"]).read_text())
    for key in ("label_issues", "near_duplicates", "leakage", "outliers", "summary"):
        assert saved[key] == json.loads(json.dumps(audited[key]))
    lines = Path(files["csv"]).read_text().splitlines()
    total = sum(len(audited[k]) for k in ("label_issues", "near_duplicates", "leakage",
                                           "outliers"))  # fmt: skip
    assert lines[0].startswith("finding,rank,path") and len(lines) == 1 + total
    page = Path(files["html"]).read_text()
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') >= len(
        audited["label_issues"]
    )
    assert 'src="file:' not in page and "http" not in page.split("<body>")[1]


def test_a_missing_image_is_a_placeholder_on_the_page(tmp_path: Path) -> None:
    from transferkit.jobs.audit_report import thumbnail

    assert 'class="missing"' in thumbnail(tmp_path / "gone.png")
    assert "data:image/jpeg" not in thumbnail(tmp_path / "gone.png")


def _refused(tmp_path: Path, *args: Any, needle: str) -> None:
    """The command line refuses with one line naming ``needle`` and writes nothing."""
    before = tree_digest(tmp_path)
    result = invoke_cli("audit", *args, "--out", tmp_path / "report")
    assert_fails_cleanly(result, 2, needle)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert tree_digest(tmp_path) == before


def test_bad_stores_are_one_line_and_nothing_is_written(
    digits: dict[str, Any], tmp_path: Path
) -> None:
    X, y = load_digits(return_X_y=True)
    paths = [f"img/{i}.png" for i in range(40)]
    empty = write_store(tmp_path / "empty.h5", X[:0], y[:0], [])
    _refused(tmp_path, empty, needle="has no rows")
    one = write_store(tmp_path / "one.h5", X[y == 3][:40], y[y == 3][:40], paths)
    _refused(tmp_path, one, needle="only class 'digit-3'")
    nan = X[:40].copy()
    nan[7, 3] = np.nan
    broken = write_store(tmp_path / "nan.h5", nan, y[:40], paths)
    _refused(tmp_path, broken, needle="NaN or infinite features (first: img/7.png)")
    other = write_store(tmp_path / "other.h5", X[:40], y[:40], paths, pooling="max")
    _refused(tmp_path, digits["train"], "--test", other, needle="was not made with the recipe")
    moved = write_store(tmp_path / "moved.h5", X[:40], y[:40], paths)
    _refused(tmp_path, moved, needle="not where it recorded them (first: img/0.png)")
    assert_succeeds(invoke_cli("audit", moved, "--no-files", "--folds", "2", "--json"))


def test_a_folder_of_other_files_is_never_written_into(
    digits: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    result = invoke_cli("audit", digits["train"], "--out", tmp_path / "report")
    assert_fails_cleanly(result, 2, "holds files transferkit did not make")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["notes.txt"]


def test_the_command_prints_each_finding_and_moved_images_resolve_under_root(
    digits: dict[str, Any], tmp_path: Path
) -> None:
    root = Path(digits["train"]).parent
    X, y = load_digits(return_X_y=True)
    relative = [str(Path(p).relative_to(root)) for p in digits["train_paths"][:300]]
    store = write_store(tmp_path / "rel.h5", X[:300], y[:300], relative)
    result = invoke_cli("audit", store, "--root", root, "--folds", "3")
    assert_succeeds(result)
    for heading in ("label issues:", "near duplicates:", "leakage: 0", "outliers:"):
        assert heading in result.stdout
    assert "300 rows, out-of-fold accuracy" in result.stdout


@pytest.mark.process
def test_the_page_renders_in_headless_chromium(audited: dict[str, Any], tmp_path: Path) -> None:
    import os
    import subprocess

    from test_report_browser import REQUIRE_BROWSER_ENV, chromium

    browser = chromium()
    if browser is None:
        if os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0"):
            pytest.fail(f"no Chromium installed, and {REQUIRE_BROWSER_ENV} requires one")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    common = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1000,1400",
    ]  # fmt: skip
    url = Path(audited["files"]["html"]).as_uri()
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("label_issues", "near_duplicates", "leakage", "outliers"):
        assert f'id="{section}"' in dom.stdout
    assert dom.stdout.count('class="label_issues"') == len(audited["label_issues"])
    shot = tmp_path / "audit.png"
    taken = subprocess.run(
        [*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    with Image.open(shot) as picture:
        pixels = np.asarray(picture.convert("L"), dtype=np.int16)
    # the thumbnails were decoded: each of the digits' 8x8 pixels is a square of ink 12 pixels
    # wide on the screen (a 24-pixel image shown 96 high), which no text (nor a broken image's
    # alternative text) fills
    dark = pixels < 80
    blocks = dark[: 1400 // 10 * 10, : 1000 // 10 * 10].reshape(1400 // 10, 10, 1000 // 10, 10)
    assert (blocks.mean(axis=(1, 3)) > 0.95).sum() >= 20


@pytest.mark.slow
def test_an_image_folder_is_audited_through_the_feature_cache(
    digits: dict[str, Any], tiny: str, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    for name in NAMES[:4]:
        (folder / name).mkdir(parents=True)
        for path in sorted((Path(digits["test"]).parent / "test" / name).iterdir())[:15]:
            shutil.copy(path, folder / name / path.name)
    refused = invoke_cli("audit", folder)
    assert_fails_cleanly(refused, 2, "is a folder of images; pass --backbone")
    cache = tmp_path / "cache"
    report = api.audit(folder, backbone=tiny, cache_dir=cache, progress=False, folds=3)
    assert report["summary"]["rows"] == 60 and report["summary"]["feature_dim"] == 8
    assert all(Path(f["path"]).is_file() for f in report["label_issues"])
    assert len(list(cache.rglob("*.h5"))) == 1  # extracted once, kept for the next run
