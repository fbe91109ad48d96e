"""``transferkit stream`` on real stores: progressive validation, held-out accuracy, memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits
from test_train import DIGIT_NAMES, RECIPE

from transferkit import api
from transferkit.cli import build_cli
from transferkit.errors import UsageError
from transferkit.models import load_model
from transferkit.store import create_store


@pytest.fixture(scope="module")
def sorted_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits written class after class, as an image-folder extraction writes them."""
    X, y = load_digits(return_X_y=True)
    order = np.argsort(y, kind="stable")
    path = tmp_path_factory.mktemp("stream") / "sorted.h5"
    with create_store(path, feature_dim=64, label_names=DIGIT_NAMES, metadata=RECIPE) as w:
        w.append(X[order].astype(np.float32), y[order], [f"{i}.png" for i in order])
    return path


@pytest.mark.parametrize(
    ("classifier", "floor"),
    [
        # one pass over 1,437 rows (chance: 0.1); the accuracies measured: bench/RESULTS.md
        ("sgd", 0.7),
        ("passive-aggressive", 0.65),
        ("river-logreg", 0.65),
        ("river-hoeffding-tree", 0.75),
    ],
)
def test_stream_learns_a_class_sorted_store(
    sorted_digits: Path, classifier: str, floor: float
) -> None:
    result = api.stream(
        sorted_digits, classifier=classifier, batch_size=64, report_every=300, progress=False
    )
    assert result["n_train"] + result["n_test"] == 1797 and result["n_test"] in (359, 360)
    assert result["accuracy"] > floor, result["accuracy"]
    points = result["progressive"]
    assert [p["samples"] for p in points[:2]] == [320, 640]  # every >= 300 samples, by batch
    assert points[-1]["samples"] == result["n_train"]
    # test-then-train: the running accuracy starts low and climbs
    assert points[0]["accuracy"] < points[-1]["accuracy"]
    assert result["batched"] is (classifier != "river-hoeffding-tree")


def test_stream_is_seeded_and_saves_a_model_for_predict(
    sorted_digits: Path, tmp_path: Path
) -> None:
    a = api.stream(sorted_digits, classifier="sgd", out=tmp_path / "sgd", progress=False)
    b = api.stream(sorted_digits, classifier="sgd", progress=False)
    assert a["accuracy"] == b["accuracy"]
    saved = load_model(a["model_path"])
    assert saved.info["trained_by"] == "stream" and saved.label_names == DIGIT_NAMES
    X, y = load_digits(return_X_y=True)
    assert np.mean(saved.estimator.predict(X.astype(np.float32)) == y) > 0.7


def test_batches_read_ahead_are_the_rows_asked_for_in_the_seeded_order(tmp_path: Path) -> None:
    from transferkit.jobs.stream import shuffled_batches
    from transferkit.jobs.train import split_indices
    from transferkit.store import open_store

    _, y = load_digits(return_X_y=True)
    y = np.sort(y)  # class after class
    X = np.stack([np.arange(len(y)), y, np.zeros(len(y))], axis=1).astype(np.float32)
    path = tmp_path / "rows.h5"
    with create_store(path, feature_dim=3, label_names=DIGIT_NAMES, metadata=RECIPE) as w:
        w.append(X, y, [""] * len(y))  # feature 0 is the row's index
    with open_store(path) as reader:
        train, _ = split_indices(y, 0.2, 0)  # sorted indices, with gaps
        for shuffle_blocks in (0, 4):
            ahead = list(shuffled_batches(reader, train, 100, shuffle_blocks, 7, read_ahead=True))
            plain = list(shuffled_batches(reader, train, 100, shuffle_blocks, 7))
            assert len(ahead) == len(plain) == -(-len(train) // 100)
            for (Xa, ya), (Xp, yp) in zip(ahead, plain, strict=True):
                assert np.array_equal(Xa, Xp) and np.array_equal(ya, yp) and len(ya) <= 100
            rows = np.concatenate([b[0][:, 0] for b in ahead]).astype(np.int64)
            labels = np.concatenate([b[1] for b in ahead])
            assert sorted(rows.tolist()) == train.tolist()  # every training row exactly once
            assert np.array_equal(labels, y[rows])  # with its own label
            mixed = not np.array_equal(rows, np.sort(rows))
            assert mixed is (shuffle_blocks > 0)  # store order without a shuffle buffer
        # a class-sorted store reaches the learner mixed: the first batch holds several classes
        assert len(np.unique(ahead[0][1])) > 3


def test_batch_only_classifiers_are_refused(sorted_digits: Path) -> None:
    with pytest.raises(UsageError, match="incrementally"):
        api.stream(sorted_digits, classifier="random-forest")


def _wide_digits(path: Path, copies: int) -> Path:
    """Digits repeated ``copies`` times as 512-d rows (the 64 pixels tiled 8 times, jittered)."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    with create_store(
        path, feature_dim=512, label_names=DIGIT_NAMES, metadata=RECIPE, compression=None
    ) as w:
        for _ in range(copies * 3):
            feats = np.tile(X, 8).astype(np.float32) + rng.normal(0, 0.5, (len(X), 512))
            w.append(feats.astype(np.float32), y, [""] * len(y))
    return path


def test_peak_memory_is_bounded_by_the_batch_not_the_store(tmp_path: Path) -> None:
    small = _wide_digits(tmp_path / "x1.h5", 1)  # 5,391 rows, 11 MB of features
    large = _wide_digits(tmp_path / "x4.h5", 4)  # 21,564 rows, 44 MB
    peaks = {}
    api.stream(small, batch_size=256, progress=False)  # imports, caches; softmax, the default
    for name, path in (("x1", small), ("x4", large)):
        tracemalloc.start()
        try:
            result = api.stream(path, batch_size=256, progress=False)  # reads a window ahead
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result["accuracy"] > 0.9
    large_bytes = 21564 * 512 * 4
    assert peaks["x4"] < large_bytes / 4, peaks  # far below the store's size
    assert peaks["x4"] < 1.5 * peaks["x1"], peaks  # 4x the rows, about the same peak


def test_cli_stream(sorted_digits: Path) -> None:
    result = CliRunner().invoke(
        build_cli(),
        ["stream", str(sorted_digits), "-c", "passive-aggressive", "--report-every", "500"],
    )
    assert result.exit_code == 0, result.output
    assert "progressive accuracy" in result.stdout and "held-out accuracy" in result.stdout
    assert "digit-4" in result.stdout
