"""``transferkit train``: fit one classifier on a feature store and report per-class scores.

The store's rows are split stratified and seeded (default 80/20); ``subset`` first keeps a
stratified fraction of the store. With ``test`` (a second store: the features of a separate test
folder, made with the same recipe and holding the same class names, which
:func:`check_test_store` checks) every row of the first store trains and the test store scores.
Only the selected rows are read from disk. The result holds accuracy, macro F1, fit and predict
seconds, and scikit-learn's per-class precision/recall/F1 report with the store's class names;
``out`` saves the fitted model with its feature recipe.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators, registry
from ..errors import TransferkitError, UsageError
from ..metrics import score
from ..models import (
    SavedModel,
    check_model_out,
    model_path_for,
    save_model,
    store_fields,
)
from ..options import TrainOptions
from ..plugin_manager import notify_exception
from ..splits import split_indices, subset_indices

# a test set smaller than this gives scores too rough to compare; train says so
FEW_TEST_ROWS = 10

log = logging.getLogger(__name__)


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


RECIPE_FIELDS = ("backbone", "weights", "input_size", "pooling", "precision", "feature_dim")


def check_test_store(train_reader: Any, test_reader: Any, train_path: Any, test_path: Any) -> None:
    """Refuse a test store whose features were made another way or whose classes differ."""
    fa, fb = store_fields(train_reader), store_fields(test_reader)
    a, b = ({**f, **f["recipe"].to_metadata()} for f in (fa, fb))
    differ = [f"{name} {a[name]!r} vs {b[name]!r}" for name in RECIPE_FIELDS if a[name] != b[name]]
    if differ:
        raise UsageError(
            f"test store {test_path} was not made with the recipe of {train_path} "
            f"({'; '.join(differ)}); extract the test images with the same backbone settings"
        )
    if a["label_names"] != b["label_names"]:
        missing = [n for n in b["label_names"] if n not in a["label_names"]]
        detail = f"classes not in training: {missing}" if missing else "classes in another order"
        raise UsageError(
            f"test store {test_path} has class names {b['label_names']}, training store "
            f"{train_path} has {a['label_names']} ({detail}); give both folders the same "
            "class sub-folders"
        )


def read_test_store(
    train_reader: Any, train_path: Any, test_path: str | Path, store: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All rows of the test store ``test_path``, after :func:`check_test_store`."""
    test_reader = open_reader(test_path, store)
    try:
        check_test_store(train_reader, test_reader, train_path, test_path)
        rows = np.arange(len(np.asarray(test_reader.labels)))
        if not len(rows):
            raise UsageError(f"test store {test_path} has no rows")
        X, y = test_reader.read_rows(rows)
    finally:
        test_reader.close()
    return X, y


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and balanced accuracy (:func:`transferkit.metrics.score`), and the
    per-class report (dict and text; a class absent from the test rows shows support 0)."""
    from sklearn.metrics import classification_report

    labels = list(range(len(label_names)))
    kwargs: dict[str, Any] = {"labels": labels, "target_names": label_names, "zero_division": 0}
    return {
        **score(y_true, y_pred, labels=labels),
        "per_class": classification_report(y_true, y_pred, output_dict=True, **kwargs),
        "report_text": classification_report(y_true, y_pred, digits=3, **kwargs),
    }


def _estimator_for(classifier: Any, seed: int, params: Any) -> tuple[Any, str, str]:
    """``(fresh estimator, its name, its library)`` for a registered name or a user's estimator;
    unknown names and parameters fail here, before any reading."""
    from ..user_objects import (
        apply_params,
        estimator_label,
        fresh_estimator,
        is_estimator,
        parse_params,
    )

    values = parse_params(params)
    if is_estimator(classifier):
        model = apply_params(fresh_estimator(classifier), values, estimator_label(classifier))
        return model, estimator_label(model), estimators.library_of(model)
    if not isinstance(classifier, str):
        raise UsageError(
            f"classifier must be a name (see `transferkit classifiers`) or an estimator with "
            f"fit/get_params; got {type(classifier).__name__}"
        )
    estimators.select(classifier)
    spec = registry.classifier(classifier)
    model = apply_params(estimators.build(classifier, seed=seed), values, classifier)
    return model, classifier, spec.library


def train(store_path: str | Path, *, classifier: Any, options: TrainOptions) -> dict[str, Any]:
    """Fit ``classifier`` on a stratified split of the store (or all of it, scored on the store
    ``test``); see the module docstring.

    ``classifier`` is a registered name or an estimator of the caller's (scikit-learn or river,
    cloned before fitting); ``params`` (``{"C": 0.1}`` or ``["C=0.1"]``) are set on it, each
    checked against its ``get_params()``.
    """
    test_size, subset, seed, out = options.test_size, options.subset, options.seed, options.out
    store, overwrite, test = options.store, options.overwrite, options.test
    model, classifier, library = _estimator_for(classifier, seed, options.params)
    if options.calibrate and library == "river":
        raise UsageError(
            f"--calibrate {options.calibrate} needs a scikit-learn classifier; river models are "
            "not calibrated (leave --calibrate out)"
        )
    if out is not None:  # refused before any work: an input, or a file that is not ours
        check_model_out(model_path_for(out, library), overwrite=overwrite, inputs=[store_path])
    reader = open_reader(store_path, store)
    try:
        label_names = [str(n) for n in reader.label_names]
        labels = np.asarray(reader.labels)
        if len(labels) < 2:
            raise UsageError(f"store {store_path} has {len(labels)} rows; training needs more")
        rows = subset_indices(labels, subset, seed)
        check_trainable(labels[rows], label_names, store_path, split=test is None)
        if test is not None:
            X_test, y_test = read_test_store(reader, store_path, test, store)
            train_rows, test_rows = rows, np.arange(len(y_test))
        else:
            train_pos, test_pos = split_indices(labels[rows], test_size, seed)
            train_rows, test_rows = rows[train_pos], rows[test_pos]
            X_test, y_test = reader.read_rows(test_rows)
        X_train, y_train = reader.read_rows(train_rows)
        kept = store_fields(reader)
    finally:
        reader.close()

    classes = np.arange(len(label_names))
    log.info(
        f"training {classifier} on {len(train_rows)} rows, testing on {len(test_rows)} "
        f"({X_train.shape[1]} features, {len(label_names)} classes)"
    )
    log.debug("estimator: %s", " ".join(repr(model).split()))  # on one line
    if len(test_rows) < FEW_TEST_ROWS:
        log.warning(
            f"warning: only {len(test_rows)} test rows; the scores below are rough "
            "(more images, or a larger --test-size, make them meaningful)"
        )
    try:
        start = time.perf_counter()
        fitted = estimators.fit(model, X_train, y_train, classes=classes)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predicted = estimators.predict(fitted, X_test)
        predict_seconds = time.perf_counter() - start
        from .train_trust import add_trust

        data = (X_train, y_train, X_test, y_test)
        kept_model, trust_scores, trust = add_trust(
            model, fitted, data, classes, options, saving=out is not None
        )
        if kept_model is not fitted:  # calibrated: the scores are the saved model's
            before = score(y_test, predicted, labels=classes)["accuracy"]
            trust_scores["accuracy_before"] = before
            predicted = estimators.predict(kept_model, X_test)
            fitted = kept_model
    except UsageError:
        raise
    except Exception as exc:
        notify_exception(exc, "fit", classifier=classifier, store=str(store_path))
        raise TransferkitError(
            f"classifier {classifier} failed to fit: {type(exc).__name__}: {exc}; "
            "try another classifier (`transferkit classifiers`) or check the store's features"
        ) from exc

    result: dict[str, Any] = {
        "store": str(store_path),
        "classifier": classifier,
        "library": library,
        "n_train": int(len(train_rows)),
        "n_test": int(len(test_rows)),
        "feature_dim": int(X_train.shape[1]),
        "label_names": label_names,
        "seed": seed,
        "test_size": None if test is not None else test_size,
        "test_store": None if test is None else str(test),
        "subset": subset,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        **evaluate(y_test, predicted, label_names),
        **trust_scores,
    }
    if out is not None:
        estimator = fitted.model if isinstance(fitted, estimators.Incremental) else fitted
        library = estimators.library_of(estimator)
        path = model_path_for(out, library)
        check_model_out(path, overwrite=overwrite, inputs=[store_path])
        saved = SavedModel(
            estimator=estimator,
            **kept,
            classifier=classifier,
            library=library,
            info={k: result[k] for k in ("accuracy", "macro_f1", "n_train", "seed", "store")},
            trust=trust,
        )
        result["model_path"] = str(save_model(saved, path))
    return result
