"""What ``train`` adds to a fitted classifier so that its predictions can be weighed: calibration
on held-out folds, the expected calibration error before and after, the conformal scores of
prediction sets and the reference sample of unfamiliar inputs (:mod:`transferkit.trust`).

Held-out probabilities come from stratified, seeded folds of the training rows (``folds``, at
most the smallest class's count): each fold's rows are scored by a copy fitted on the others.
``temperature`` fits one temperature on them; ``sigmoid`` and ``isotonic`` are scikit-learn's
``CalibratedClassifierCV`` over the same folds, whose own held-out probabilities (for the
conformal scores) take one more round of folds. A calibration is kept only when it lowers the
expected calibration error of the held-out probabilities by at least ``MIN_GAIN`` and lowers it
in at least ``MIN_SUPPORT`` of paired bootstrap resamples of the held-out rows
(``calibration_support``), both measured on the folds for the recipe of the saved model, never
on the test rows; otherwise the uncalibrated model is kept (``calibration_status: skipped``).
The conformal scores come from ``conformal_folds`` folds (10 by default: copies fitted on more of
the rows, closer to the saved model). Nothing here is computed unless it is asked for: the
folds only when calibrating or when a saved model keeps conformal scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import estimators
from ..errors import UsageError
from ..options import TrainOptions
from ..trust import (
    TemperatureScaled,
    conformal_scores,
    ece,
    ece_gain_support,
    fit_temperature,
    make_reference,
    temper,
)

log = logging.getLogger(__name__)

# The least fall of the held-out folds' calibration error for which a calibration is kept: a
# smaller gain is within what a few hundred rows can tell apart, and a calibration fitted to
# folds that are already calibrated (a temperature far from 1 for a gain of 0.001) distorts the
# probabilities of any image unlike the training rows.
MIN_GAIN = 0.005
# ... and the share of paired bootstrap resamples of the held-out rows in which it falls at all
# (a one-sided test at 10 %): the error of a few hundred rows moves by about 0.01 with the rows
# drawn, so a fall of 0.005 can be chance; a calibration kept by chance raised the test rows'
# error on random splits of the digits (bench/RESULTS.md, "Audit and trust")
MIN_SUPPORT = 0.9


def _folds(y: np.ndarray, folds: int, seed: int) -> Any:
    from sklearn.model_selection import StratifiedKFold

    smallest = min(c for c in np.bincount(y) if c > 0) if len(y) else 0
    n = min(folds, smallest)
    if n < 2:
        return None
    return StratifiedKFold(n_splits=n, shuffle=True, random_state=seed)


def out_of_fold(
    model: Any, X: np.ndarray, y: np.ndarray, classes: np.ndarray, splitter: Any
) -> np.ndarray:
    """Held-out probabilities of every row: each fold scored by a fresh copy of ``model``
    fitted on the other folds."""
    from sklearn.base import clone

    proba = np.zeros((len(y), len(classes)))
    for fit_rows, held in splitter.split(X, y):
        fitted = estimators.fit(clone(model), X[fit_rows], y[fit_rows], classes=classes)
        proba[held] = estimators.predict_proba(fitted, X[held], classes)
    return proba


def _calibrated(model: Any, method: str, splitter: Any) -> Any:
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(clone(model), method=method, cv=splitter)


def add_trust(
    model: Any,
    fitted: Any,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    classes: np.ndarray,
    options: TrainOptions,
    saving: bool,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(the estimator to keep, the scores to add to the result, the model's trust record)``
    for ``fitted`` (``model`` fitted on ``X_train``), scored on ``X_test``."""
    X_train, y_train, X_test, y_test = data
    river = estimators.library_of(model) == "river"
    added: dict[str, Any] = {}
    trust: dict[str, Any] = {}
    added["ece"] = ece(estimators.predict_proba(fitted, X_test, classes), y_test)
    calibrate = options.calibrate
    if calibrate and river:
        raise UsageError(
            f"--calibrate {calibrate} needs a scikit-learn classifier; river models are not "
            "calibrated (leave --calibrate out)"
        )
    wants_sets = saving and options.conformal and not river
    if not (calibrate or wants_sets):
        if saving and options.reference_size > 0:
            trust.update(_reference(X_train, options))
        return fitted, added, trust
    splitter = _folds(y_train, options.folds, options.seed)
    if splitter is None:
        if calibrate:
            raise UsageError(
                f"--calibrate {calibrate} needs at least 2 training rows of every class (one "
                "fold to fit, one to calibrate on); add images or leave --calibrate out"
            )
        log.warning("warning: too few rows per class for conformal scores; predict --coverage "
                    "will refuse this model")  # fmt: skip
        wants_sets = False
    kept = fitted
    held: np.ndarray | None = None
    if calibrate:
        held = out_of_fold(model, X_train, y_train, classes, splitter)
    if calibrate and held is not None:
        kept, held = _calibrate(model, fitted, calibrate, held, (X_train, y_train, classes),
                                splitter, options, added)  # fmt: skip
        added["ece_before"] = added["ece"]
        added["ece"] = ece(estimators.predict_proba(kept, X_test, classes), y_test)
        added["calibration"] = calibrate
        if kept is not fitted:
            log.info(f"calibrated ({calibrate}): ECE {added['ece_before']:.4f} -> "
                     f"{added['ece']:.4f}")  # fmt: skip
        if kept is not fitted and added["ece"] > added["ece_before"]:
            log.warning(
                f"warning: {calibrate} calibration raised the test rows' calibration error "
                f"({added['ece_before']:.4f} -> {added['ece']:.4f}); with few rows a calibration "
                "can overfit its folds: try another --calibrate method, or none"
            )
    if wants_sets:
        sets_held = _conformal_held(model, kept, held, (X_train, y_train, classes), options)
        trust["conformal"] = conformal_scores(sets_held, y_train, options.seed)
    if saving and options.reference_size > 0:
        trust.update(_reference(X_train, options))
    return kept, added, trust


def _calibrate(
    model: Any,
    fitted: Any,
    method: str,
    held: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    splitter: Any,
    options: TrainOptions,
    added: dict[str, Any],
) -> tuple[Any, np.ndarray]:
    """``(the estimator to keep, its held-out probabilities)``: the calibrated one when its
    held-out probabilities' ECE is lower than the uncalibrated ones' (``held``) by
    ``MIN_GAIN``, in ``MIN_SUPPORT`` of paired bootstrap resamples of the rows, else
    ``fitted`` itself. Both ECEs are measured on the held-out folds, never on the test rows,
    for the recipe of the model that is saved: each fold's temperature is fitted on held-out
    probabilities of inner folds of the other folds (as the saved model's is on the folds of
    all rows) and applied to the copy fitted on the other folds; sigmoid/isotonic are
    cross-validated inside each fold. ``added`` receives
    ``calibration_status`` (``kept``/``skipped``), ``folds_ece_before``, ``folds_ece`` and
    ``calibration_support``."""
    X, y, classes = rows
    if method == "temperature":
        temperature = fit_temperature(held, y)
        candidate: Any = TemperatureScaled(fitted, temperature)
        crossed = np.empty_like(held)
        for fit_rows, fold in splitter.split(X, y):
            # the saved model's recipe replayed on the other folds: the copy that scored this
            # fold (fitted on the other folds) tempered by a temperature fitted on that copy's
            # own held-out probabilities, so the estimate is of a model trained on all its rows
            inner = _folds(y[fit_rows], 3, options.seed)
            if inner is None:
                source = held[fit_rows]
            else:
                source = out_of_fold(model, X[fit_rows], y[fit_rows], classes, inner)
            crossed[fold] = temper(held[fold], fit_temperature(source, y[fit_rows]))
        calibrated_held = temper(held, temperature)  # the saved model's held-out probabilities
        added["temperature"] = temperature
    else:
        candidate = _calibrated(model, method, splitter).fit(X, y)
        inner = _folds(y, 3, options.seed)
        crossed = out_of_fold(_calibrated(model, method, inner), X, y, classes, splitter)
        calibrated_held = crossed
    before, after = ece(held, y), ece(crossed, y)
    support = ece_gain_support(held, crossed, y, seed=options.seed)
    added.update(folds_ece_before=before, folds_ece=after, calibration_support=support)
    if after <= before - MIN_GAIN and support >= MIN_SUPPORT:
        added["calibration_status"] = "kept"
        return candidate, calibrated_held
    added["calibration_status"] = "skipped"
    why = (
        f"by {MIN_GAIN}"
        if after > before - MIN_GAIN
        else f"in {MIN_SUPPORT:.0%} of resamples of their rows (only {support:.0%})"
    )
    log.warning(
        f"calibration skipped: {method} did not lower the calibration error on held-out folds "
        f"{why} ({before:.4f} -> {after:.4f}); the uncalibrated model is kept"
    )
    return fitted, held


def _conformal_held(
    model: Any,
    kept: Any,
    held: np.ndarray | None,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    options: TrainOptions,
) -> np.ndarray:
    """The held-out probabilities behind the conformal scores, from ``conformal_folds`` folds:
    a copy fitted on (k - 1) / k of the rows is less sure than the saved model, fitted on all,
    so scores from few folds make sets larger than the coverage asks for (on the photos of
    bench/RESULTS.md, 0.931 for 0.9 from 5 folds, 0.919 from 10). A kept temperature tempers them
    as it does the saved model; a kept sigmoid/isotonic calibration keeps the cross-validated
    probabilities of its check (``held``), the same recipe as the saved model's."""
    X, y, classes = rows
    if held is not None and hasattr(kept, "calibrated_classifiers_"):
        return held  # a kept sigmoid/isotonic: its check's cross-validated probabilities
    splitter = _folds(y, options.conformal_folds, options.seed)
    assert splitter is not None  # every class has 2 rows: checked before
    same = _folds(y, options.folds, options.seed)
    if held is not None and same is not None and splitter.n_splits == same.n_splits:
        return held  # the calibration's own folds (tempered when a temperature is kept)
    proba = out_of_fold(model, X, y, classes, splitter)
    if isinstance(kept, TemperatureScaled):
        proba = temper(proba, kept.temperature)
    return proba


def _reference(X: np.ndarray, options: Any) -> dict[str, Any]:
    return make_reference(
        X,
        size=options.reference_size,
        quantile=options.unfamiliar_quantile,
        seed=options.seed,
    )
