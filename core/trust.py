"""How far to trust a prediction: calibration, its error, unfamiliar inputs, prediction sets.

Used by ``train`` (calibration, the reference sample and the conformal scores it saves with a
model), ``stream`` (the reference sample), ``predict`` (``ood_score``, ``unfamiliar`` and
``prediction_set`` per image), ``finetune`` (the expected calibration error, the head's
temperature) and ``audit`` (the blocked nearest-neighbour search). NumPy only; SciPy for the one
temperature fit, imported on use.

* **Expected calibration error** (:func:`ece`): the top-label confidence cut into 15 equal bins;
  the mean gap between each bin's accuracy and its mean confidence, weighted by its rows
  (Guo et al., 2017).
* **Temperature** (:func:`fit_temperature`, :class:`TemperatureScaled`): the one number ``T`` that
  divides the log-probabilities before the softmax, fitted by minimising the negative
  log-likelihood of held-out probabilities; it changes confidences, never the ranking.
* **Unfamiliar inputs** (:func:`make_reference`, :func:`ood_scores`): a seeded sample of at most
  ``size`` training rows, scaled to unit length, is kept with the model (float16). A new row's
  ``ood_score`` is its cosine distance to its nearest reference row (the mean over its ``k``
  nearest; ``k`` = 1 by default, as in Sun et al., 2022, "Out-of-distribution detection with deep
  nearest neighbors"); the threshold of ``unfamiliar`` is the ``quantile`` of the reference rows'
  own scores (each against the others), so about ``1 - quantile`` of in-domain images are
  flagged. The features are not centred: on ``bench_audit``'s sets centring them on the training
  mean lowered the AUROC of foreign images (``bench/RESULTS.md``); the record's ``mean`` is the
  centre subtracted, zero.
* **Prediction sets** (:func:`conformal_threshold`, :func:`prediction_sets`): split conformal with
  the score ``1 - p(true class)`` (Sadinle et al., 2019) on held-out (out-of-fold) training
  probabilities. For a coverage ``c`` the threshold is the ``ceil((n + 1) c) / n`` empirical
  quantile of the ``n`` scores; a set holds every class whose score is at most that (it may be
  empty, see :func:`prediction_sets`). A few lines of NumPy: MAPIE would add a dependency for
  the same quantile.
* **Neighbours in blocks** (:func:`neighbours`): the ``k`` most similar rows of a reference for
  every query row, by blocks of query rows, so memory is ``block x len(reference)`` floats and
  never ``N^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

ECE_BINS = 15
# paired bootstrap resamples of the rows that weigh a fall of the calibration error
GAIN_ROUNDS = 1000
# the float32 similarities one block of the neighbour search holds (16 MiB; with the block's
# int64 partition indices and a row's top k, about 50 MiB in all)
BLOCK_FLOATS = 4 * 1024 * 1024
REFERENCE_SIZE = 1000
REFERENCE_K = 1
UNFAMILIAR_QUANTILE = 0.99
CONFORMAL_MAX_SCORES = 20000
TRUST_KEYS = ("mean", "reference", "k", "threshold", "quantile", "conformal")


# ---------------------------------------------------------------------- calibration


def ece(proba: Any, y: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error of ``proba`` (rows of class probabilities) against the class
    indices ``y``: top-label confidence, ``bins`` equal-width bins."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if proba.ndim != 2 or len(proba) != len(y) or not len(y):
        raise ValueError(f"ece needs one row of probabilities per label, got {proba.shape}")
    # per bin, |accuracy - mean confidence| x rows = |sum of (correct - confidence)|
    which, gap = _ece_terms(proba, y, bins)
    return float(np.abs(np.bincount(which, gap, minlength=bins)).sum() / len(y))


def _ece_terms(proba: Any, y: Any, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's bin of :func:`ece` and its ``correct - confidence``."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return which, (proba.argmax(axis=1) == np.asarray(y).reshape(-1)) - confidence


def ece_gain_support(
    before: Any, after: Any, y: Any, rounds: int = GAIN_ROUNDS, seed: int = 0
) -> float:
    """The share of ``rounds`` paired bootstrap resamples of the rows in which ``after`` has a
    lower :func:`ece` than ``before`` (two sets of probabilities of the same rows): how sure the
    rows are that the fall of the error is no accident of which rows were drawn. Each resample
    draws the rows with replacement, the same rows for both, and computes both errors on them
    (as counts of each row, so a round costs three ``bincount`` over the rows)."""
    y = np.asarray(y).reshape(-1)
    n = len(y)
    bins_b, gap_b = _ece_terms(before, y, ECE_BINS)
    bins_a, gap_a = _ece_terms(after, y, ECE_BINS)
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(rounds):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        err_b = np.abs(np.bincount(bins_b, w * gap_b, minlength=ECE_BINS)).sum()
        err_a = np.abs(np.bincount(bins_a, w * gap_a, minlength=ECE_BINS)).sum()
        wins += bool(err_a < err_b)
    return wins / rounds if rounds else 0.0


def temper(proba: Any, temperature: float) -> np.ndarray:
    """``proba`` with its log-probabilities divided by ``temperature``, renormalised."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(proba: Any, y: Any) -> float:
    """The temperature minimising the negative log-likelihood of ``proba`` (held-out rows)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0))
    y = np.asarray(y).reshape(-1)

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    found = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return float(math.exp(found.x))


class TemperatureScaled:
    """A fitted classifier whose probabilities are tempered by ``temperature``; its predicted
    class is the classifier's own. Its state is the classifier and numbers, so it saves with
    skops and loads without ``--trust`` (``transferkit.models`` names it safe to rebuild)."""

    def __init__(self, estimator: Any, temperature: float) -> None:
        self.estimator = estimator
        self.temperature = float(temperature)
        self.classes_ = np.asarray(estimator.classes_)
        width = getattr(estimator, "n_features_in_", None)
        if width is not None:
            self.n_features_in_ = int(width)

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        if hasattr(self.estimator, "predict_proba"):
            proba = np.asarray(self.estimator.predict_proba(X))
        else:
            proba = softmax(np.asarray(self.estimator.decision_function(X), dtype=np.float64))
        return temper(proba, self.temperature)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"estimator": self.estimator, "temperature": self.temperature}


def softmax(scores: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    scores = scores - scores.max(axis=1, keepdims=True)
    out = np.exp(scores)
    return out / out.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- prediction sets


def conformal_scores(proba: Any, y: Any, seed: int = 0) -> np.ndarray:
    """``1 - p(true class)`` of held-out rows, sorted (a seeded sample of at most
    :data:`CONFORMAL_MAX_SCORES`), float32: what a model keeps to make prediction sets."""
    proba = np.asarray(proba)
    y = np.asarray(y).reshape(-1)
    scores = 1.0 - proba[np.arange(len(y)), y]
    if len(scores) > CONFORMAL_MAX_SCORES:
        keep = np.random.default_rng(seed).choice(len(scores), CONFORMAL_MAX_SCORES, replace=False)
        scores = scores[keep]
    return np.sort(scores).astype(np.float32)


def conformal_threshold(scores: Any, coverage: float) -> float:
    """The split-conformal threshold of ``coverage`` over the calibration ``scores``."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)
    if not n or rank > n:
        return 1.0  # too few calibration rows for this coverage: every class
    return float(scores[rank - 1])


def prediction_sets(proba: Any, threshold: float) -> list[list[int]]:
    """For each row the classes whose score ``1 - p`` is at most ``threshold``, most probable
    first. A set may be empty: no class is probable enough, which a classifier more accurate
    than the coverage asks for gives to a few rows (forcing the top class in would raise the
    coverage above the one asked for)."""
    proba = np.asarray(proba)
    sets = []
    for row in proba:
        order = np.argsort(-row, kind="stable")
        sets.append([int(k) for k in order if 1.0 - row[k] <= threshold + 1e-9])
    return sets


# ---------------------------------------------------------------------- neighbours


def centred_unit(X: Any, mean: Any) -> np.ndarray:
    """Rows of ``X`` minus ``mean``, scaled to unit length (float32; a zero row stays zero)."""
    Z = np.asarray(X, dtype=np.float32) - np.asarray(mean, dtype=np.float32)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.maximum(norms, 1e-12)


def block_rows(n_reference: int, block_floats: int = BLOCK_FLOATS) -> int:
    """Query rows per block so that one block's similarities stay within ``block_floats``."""
    return max(1, min(4096, block_floats // max(1, n_reference)))


def neighbours(
    Q: np.ndarray,
    R: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    block_floats: int = BLOCK_FLOATS,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, similarities, indices)`` per block of rows of ``Q``: each row's ``k`` most
    similar rows of ``R`` (inner products of unit rows: cosine similarity), most similar first.
    With ``exclude_self`` (``Q`` is ``R``) a row is never its own neighbour."""
    k = min(k, len(R) - (1 if exclude_self else 0))
    if k < 1:
        raise ValueError("too few reference rows for a nearest-neighbour search")
    step = block_rows(len(R), block_floats)
    for start in range(0, len(Q), step):
        negative = Q[start : start + step] @ R.T
        np.negative(negative, out=negative)  # in place: the most similar are the smallest
        if exclude_self:
            rows = np.arange(len(negative))
            negative[rows, start + rows] = np.inf
        part = np.argpartition(negative, k - 1, axis=1)[:, :k]
        top = -np.take_along_axis(negative, part, axis=1)
        del negative
        order = np.argsort(-top, axis=1, kind="stable")
        yield start, np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def knn_distance(Q: np.ndarray, R: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """Mean cosine distance of each row of ``Q`` to its ``k`` nearest rows of ``R`` (unit rows)."""
    out = np.empty(len(Q), dtype=np.float32)
    for start, sims, _ in neighbours(Q, R, k, exclude_self=exclude_self):
        out[start : start + len(sims)] = 1.0 - sims.mean(axis=1)
    return out


# ---------------------------------------------------------------------- unfamiliar inputs


def make_reference(
    X: np.ndarray,
    *,
    size: int = REFERENCE_SIZE,
    k: int = REFERENCE_K,
    quantile: float = UNFAMILIAR_QUANTILE,
    seed: int = 0,
    mean: Any = None,
) -> dict[str, Any]:
    """The reference a model keeps to score unfamiliar inputs: the centre subtracted (``mean``:
    zero unless given), a seeded sample of at most ``size`` unit rows (float16), ``k``, and the
    ``threshold`` (the ``quantile`` of the sample's own leave-one-out scores)."""
    X = np.asarray(X, dtype=np.float32)
    if len(X) < 2:
        return {}  # nothing to compare a row with
    mean = np.zeros(X.shape[1]) if mean is None else np.asarray(mean, dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(X), min(size, len(X)), replace=False))
    R = centred_unit(X[pick], mean).astype(np.float16)
    k = max(1, min(k, len(R) - 1))
    own = knn_distance(R.astype(np.float32), R.astype(np.float32), k, exclude_self=True)
    return {
        "mean": mean.astype(np.float32),
        "reference": R,
        "k": int(k),
        "threshold": float(np.quantile(own, quantile)),
        "quantile": float(quantile),
    }


def ood_scores(X: np.ndarray, trust: dict[str, Any]) -> np.ndarray:
    """Each row's ``ood_score`` against a model's reference (:func:`make_reference`)."""
    Q = centred_unit(X, trust["mean"])
    return knn_distance(Q, np.asarray(trust["reference"], dtype=np.float32), int(trust["k"]))


def check_trust(trust: Any, feature_dim: int | None) -> str | None:
    """Why a model's saved ``trust`` record is unusable, or None."""
    if not isinstance(trust, dict):
        return "its trust record is not a mapping"
    unknown = sorted(set(trust) - set(TRUST_KEYS))
    if unknown:
        return f"unknown trust keys {unknown}"
    if "reference" in trust:
        R, mean = trust.get("reference"), trust.get("mean")
        if not isinstance(R, np.ndarray) or R.ndim != 2 or not isinstance(mean, np.ndarray):
            return "its reference sample is not a matrix with a mean"
        if feature_dim is not None and (R.shape[1] != feature_dim or mean.shape != (feature_dim,)):
            return f"its reference sample has {R.shape[1]} features, the model {feature_dim}"
        if not isinstance(trust.get("threshold"), float) or not isinstance(trust.get("k"), int):
            return "its reference sample has no threshold or k"
    if "conformal" in trust:
        scores = trust["conformal"]
        if not isinstance(scores, np.ndarray) or scores.ndim != 1:
            return "its conformal scores are not a vector"
    return None
