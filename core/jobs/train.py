"""``transferkit train``: fit one classifier on a feature store and report per-class scores.

The store's rows are split stratified and seeded (default 80/20); ``subset`` first keeps a
stratified fraction of the store. Only the selected rows are read from disk. The result holds
accuracy, macro F1, fit and predict seconds, and scikit-learn's per-class precision/recall/F1
report with the store's class names; ``out`` saves the fitted model with its feature recipe.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators, registry
from ..errors import TransferkitError, UsageError
from ..models import FeatureRecipe, SavedModel, default_suffix, save_model
from ..plugin_manager import notify_exception


def split_indices(
    labels: np.ndarray, test_size: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, test) row indices, each sorted (reads stay sequential)."""
    labels = np.asarray(labels)
    if not 0.0 < test_size < 1.0:
        raise UsageError(f"--test-size must be between 0 and 1 (exclusive), got {test_size}")
    try:
        from ..pipeline import stratified_split
    except ImportError:  # without the shared helper: scikit-learn's stratified split
        from sklearn.model_selection import train_test_split

        index = np.arange(len(labels))
        counts = np.bincount(labels) if len(labels) else np.array([])
        stratify = labels if len(counts) and counts[counts > 0].min() >= 2 else None
        train, test = train_test_split(
            index, test_size=test_size, random_state=seed, stratify=stratify
        )
    else:
        train, test = stratified_split(labels, fractions=(1.0 - test_size, test_size), seed=seed)
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


def subset_indices(labels: np.ndarray, fraction: float | None, seed: int = 0) -> np.ndarray:
    """A stratified, seeded fraction of the rows (all rows when ``fraction`` is None or 1)."""
    if fraction is None or fraction >= 1.0:
        return np.arange(len(labels))
    if fraction <= 0.0:
        raise UsageError(f"--subset must be a fraction in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(keep))


# a test set smaller than this gives scores too rough to compare; train says so
FEW_TEST_ROWS = 10


def check_trainable(
    labels: np.ndarray, label_names: list[str], store_path: Any, *, split: bool = True
) -> None:
    """Refuse rows that cannot be split and scored: fewer than two classes, or (``split``) a
    class with fewer than two rows (one to train on and one to test on)."""
    present, counts = np.unique(np.asarray(labels), return_counts=True)

    def name(i: int) -> str:
        return label_names[i] if 0 <= i < len(label_names) else str(i)

    if len(present) < 2:
        held = f"only class {name(int(present[0]))!r}" if len(present) else "no rows"
        raise UsageError(
            f"store {store_path} holds {held}; training a classifier needs rows of at least "
            f"two classes (extract a folder with one sub-folder per class)"
        )
    few = [f"{name(int(c))!r} ({int(k)})" for c, k in zip(present, counts, strict=True) if k < 2]
    few = few if split else []
    if few:
        raise UsageError(
            f"too few rows to split for training and testing: every class needs at least 2 "
            f"rows (one to train on, one to test on), but {', '.join(few[:10])} "
            f"{'has' if len(few) == 1 else 'have'} fewer; add images of "
            f"{'that class' if len(few) == 1 else 'those classes'} or leave it out"
        )


def open_reader(store_path: str | Path, store: str | None = None) -> Any:
    from ..store import open_store

    path = Path(store_path)
    if not path.exists():
        raise UsageError(
            f"feature store {path} does not exist; create one with `transferkit extract`"
        )
    return open_store(str(path), store=store)


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1, balanced accuracy and the per-class report (dict and text)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        classification_report,
        f1_score,
    )

    labels = list(range(len(label_names)))
    present = sorted(set(np.unique(y_true).tolist()))
    kwargs: dict[str, Any] = {"labels": labels, "target_names": label_names, "zero_division": 0}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": classification_report(y_true, y_pred, output_dict=True, **kwargs),
        "report_text": classification_report(y_true, y_pred, digits=3, **kwargs),
    }


def train(
    store_path: str | Path,
    *,
    classifier: str,
    test_size: float = 0.2,
    subset: float | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    store: str | None = None,
) -> dict[str, Any]:
    """Fit ``classifier`` on a stratified split of the store; see the module docstring."""
    estimators.select(classifier)  # unknown names fail before any reading
    spec = registry.classifier(classifier)
    reader = open_reader(store_path, store)
    try:
        label_names = [str(n) for n in reader.label_names]
        labels = np.asarray(reader.labels)
        if len(labels) < 2:
            raise UsageError(f"store {store_path} has {len(labels)} rows; training needs more")
        rows = subset_indices(labels, subset, seed)
        check_trainable(labels[rows], label_names, store_path)
        train_pos, test_pos = split_indices(labels[rows], test_size, seed)
        train_rows, test_rows = rows[train_pos], rows[test_pos]
        X_train, y_train = reader.read_rows(train_rows)
        X_test, y_test = reader.read_rows(test_rows)
        recipe = FeatureRecipe.from_store(reader)
    finally:
        reader.close()

    model = estimators.build(classifier, seed=seed)
    classes = np.arange(len(label_names))
    print(
        f"training {classifier} on {len(train_rows)} rows, testing on {len(test_rows)} "
        f"({X_train.shape[1]} features, {len(label_names)} classes)",
        file=sys.stderr,
    )
    if len(test_rows) < FEW_TEST_ROWS:
        print(
            f"transferkit: warning: only {len(test_rows)} test rows; the scores below are rough "
            "(more images, or a larger --test-size, make them meaningful)",
            file=sys.stderr,
        )
    try:
        start = time.perf_counter()
        fitted = estimators.fit(model, X_train, y_train, classes=classes)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predicted = estimators.predict(fitted, X_test)
        predict_seconds = time.perf_counter() - start
    except Exception as exc:
        notify_exception(exc, "fit", classifier=classifier, store=str(store_path))
        raise TransferkitError(
            f"classifier {classifier} failed to fit: {type(exc).__name__}: {exc}; "
            "try another classifier (`transferkit classifiers`) or check the store's features"
        ) from exc

    result: dict[str, Any] = {
        "store": str(store_path),
        "classifier": classifier,
        "library": spec.library,
        "n_train": int(len(train_rows)),
        "n_test": int(len(test_rows)),
        "feature_dim": int(X_train.shape[1]),
        "label_names": label_names,
        "seed": seed,
        "test_size": test_size,
        "subset": subset,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        **evaluate(y_test, predicted, label_names),
    }
    if out is not None:
        estimator = fitted.model if isinstance(fitted, estimators.Incremental) else fitted
        library = estimators.library_of(estimator)
        path = Path(out)
        if not path.suffix:
            path = path.with_suffix(default_suffix(library))
        saved = SavedModel(
            estimator=estimator,
            recipe=recipe,
            classifier=classifier,
            library=library,
            info={k: result[k] for k in ("accuracy", "macro_f1", "n_train", "seed", "store")},
        )
        result["model_path"] = str(save_model(saved, path))
    return result
