"""One split and one score: ``transferkit.splits`` and ``transferkit.metrics.score``, and
``train`` and ``spotcheck`` reporting the same numbers for the same store, classifier and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score, f1_score
from test_train import DIGIT_NAMES, RECIPE, write_digits

from transferkit import UsageError, api
from transferkit.metrics import score
from transferkit.models import load_model
from transferkit.splits import split_indices, stratified_split, subset_indices
from transferkit.store import create_store


def test_stratified_split():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3)
    train, val = stratified_split(y, (0.8, 0.2), seed=0)
    assert len(train) + len(val) == len(y)
    assert not set(train) & set(val)
    assert np.bincount(y[train]).tolist() == [40, 24, 2]
    assert np.bincount(y[val]).tolist() == [10, 6, 1]
    again = stratified_split(y, (0.8, 0.2), seed=0)
    assert all((a == b).all() for a, b in zip((train, val), again, strict=True))
    other = stratified_split(y, (0.8, 0.2), seed=1)
    assert not (other[0] == train).all()
    a, b, c = stratified_split(y, (0.6, 0.2, 0.2), seed=2)
    assert sorted(np.concatenate([a, b, c]).tolist()) == list(range(len(y)))
    assert (np.bincount(y[c], minlength=3) >= 1).all()  # the 3-image class reaches every part
    assert len(stratified_split(y, 0.5)) == 2
    with pytest.raises(UsageError, match="summing to 1"):
        stratified_split(y, (0.5, 0.3))


def test_split_indices_and_subset_are_stratified_and_checked():
    y = np.array([0] * 40 + [1] * 20)
    train, test = split_indices(y, 0.25, seed=4)
    assert np.bincount(y[test]).tolist() == [10, 5] and (np.diff(train) > 0).all()
    same = stratified_split(y, 0.75, 4)
    assert (train == same[0]).all() and (test == same[1]).all()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match="--test-size"):
            split_indices(y, bad)
    assert np.bincount(y[subset_indices(y, 0.5, seed=1)]).tolist() == [20, 10]
    assert len(subset_indices(y, None)) == 60
    with pytest.raises(UsageError, match="--subset"):
        subset_indices(y, 0.0)


def test_a_class_absent_from_the_test_rows_does_not_count():
    # class 2 is predicted once but has no test row: its F1 is undefined and left out
    scores = score([0, 0, 1, 1], [0, 0, 1, 2], labels=range(3))
    assert scores["accuracy"] == 0.75
    assert scores["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)  # 0.833, not 0.556
    assert scores["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    # scikit-learn's default averages over predicted classes too: the 0.556 of the issue
    assert f1_score([0, 0, 1, 1], [0, 0, 1, 2], average="macro") == pytest.approx(5 / 9)


def test_a_class_never_predicted_counts_with_f1_zero():
    scores = score([0, 0, 1, 1, 2], [0, 0, 1, 1, 1], labels=range(4))  # 2 never predicted
    assert scores["macro_f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert scores["balanced_accuracy"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert scores["accuracy"] == 0.8


def test_score_agrees_with_scikit_learn_over_the_present_classes():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)  # classes 0..4 of 7: 5 and 6 absent from the test rows
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 7, 200))
    scores = score(y_true, y_pred, labels=range(7))
    present = sorted(set(y_true.tolist()))
    assert scores["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    )
    with pytest.warns(UserWarning):  # scikit-learn warns of the predicted classes 5 and 6
        expected = balanced_accuracy_score(y_true, y_pred)
    assert scores["balanced_accuracy"] == pytest.approx(expected)
    assert scores["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert score(y_true, y_pred) == scores  # labels= only names the classes; absent ones drop


def test_score_refuses_what_cannot_be_scored():
    with pytest.raises(ValueError, match="not among labels"):
        score([0, 3], [0, 1], labels=range(3))
    with pytest.raises(ValueError, match="predictions"):
        score([0, 1], [0])
    with pytest.raises(ValueError, match="no rows"):
        score([], [])


KEYS = ("accuracy", "macro_f1", "balanced_accuracy")


def test_train_and_spotcheck_give_the_same_numbers(tmp_path: Path) -> None:
    store = write_digits(tmp_path / "digits.h5", rows=600)
    grid = ["knn-3", "logistic-regression"]
    report = api.spotcheck([str(store)], classifiers=grid, seed=3, test_size=0.25, jobs=1,
                           progress=False)  # fmt: skip
    rows = {r["classifier"]: r for r in report["rows"]}
    for name in grid:
        trained = api.train(store, classifier=name, seed=3, test_size=0.25)
        assert rows[name]["status"] == "ok"
        assert {k: rows[name][k] for k in KEYS} == {k: trained[k] for k in KEYS}, name
    assert rows["knn-3"]["accuracy"] != rows["logistic-regression"]["accuracy"]


def test_train_and_spotcheck_agree_on_a_test_store_missing_a_class(tmp_path: Path) -> None:
    train_store = write_digits(tmp_path / "train.h5", rows=300)
    X, y = load_digits(return_X_y=True)
    keep = np.flatnonzero(y[1000:1300] != 9) + 1000  # no 9 among the test rows
    test_store = tmp_path / "test.h5"
    with create_store(test_store, feature_dim=64, label_names=DIGIT_NAMES, metadata=RECIPE) as w:
        w.append(X[keep].astype(np.float32), y[keep], [f"t/{i}.png" for i in keep])
    trained = api.train(train_store, classifier="knn-3", test=test_store, out=tmp_path / "m")
    report = api.spotcheck([str(train_store)], classifiers="knn-3", test=str(test_store),
                           isolate=False, progress=False)  # fmt: skip
    (row,) = report["rows"]
    assert {k: row[k] for k in KEYS} == {k: trained[k] for k in KEYS}
    predicted = load_model(trained["model_path"]).estimator.predict(X[keep].astype(np.float32))
    assert (predicted == 9).sum() > 0  # the absent class is predicted: wrong, but no F1 of its own
    assert trained["macro_f1"] == pytest.approx(
        score(y[keep], predicted, labels=range(10))["macro_f1"]
    )
    assert trained["macro_f1"] > f1_score(y[keep], predicted, average="macro") + 0.05
