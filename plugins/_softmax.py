"""A multinomial (softmax) logistic regression trained by averaged mini-batch SGD in plain NumPy.

Made for pretrained features: dense rows of a few hundred to a few thousand floats, a handful to a
few hundred classes, and a few passes over a stream. What makes a few passes reach what a batch
logistic regression reaches on the same features:

* **standardisation from running statistics.** Each ``partial_fit`` first merges the batch's
  mean and variance into running ones (Chan's parallel Welford update, float64), then learns on
  the standardised rows, so every feature moves the scores on the same scale. The scaling is
  folded into the weights for prediction (``X @ (W / sd) + b - (mean / sd) @ W``): predicting
  never materialises standardised rows;
* **a step size relative to the features' squared norm.** Standardised rows of ``d`` features
  have a mean squared norm of about ``d``, so the step is ``learning_rate * batch / d``: one row
  moves its own scores by about ``learning_rate`` (times ``p - y``) whatever the width, and the
  same default suits 64 raw pixels and 1,280 pretrained features;
* **averaged iterates.** Predictions use a polynomial-decay average of the SGD iterates
  (Shamir & Zhang, 2013: ``avg += (eta + 1) / (t + eta) * (w - avg)``, ``eta = averaging``), which
  removes most of the noise of a constant step without a schedule that must know the stream's
  length; ``averaging=0`` predicts with the last iterate;
* **data echoing.** Each ``partial_fit`` takes ``echo`` passes (4 by default) over the batch it is
  given, each in a fresh seeded order (Choi et al., 2019, "Faster neural network training with
  data echoing"): a stream is bound by reading and decompressing its rows, not by these small
  matrix products, so the learner takes four times the steps per row read for little time,
  and a few passes over a small store come closer to the batch probe than with one pass per
  batch (``bench/RESULTS.md``, "Data echoing").

Each step is two matrix products on a mini-batch of ``batch_size`` rows (the scores ``X @ W`` and
the gradient ``X.T @ (P - Y)``) in float32. ``partial_fit(X, y, classes)`` takes ``echo`` passes
over ``X``, each in a seeded order (``transferkit stream`` calls it once per batch it reads);
``fit(X, y)`` runs up to ``max_iter`` shuffled passes from a fresh start and stops when the
training loss stops improving by ``tol``.

The estimator's state is NumPy arrays and numbers only, so it saves with skops and loads without
``--trust`` (``transferkit.models`` names this class as safe to rebuild).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on running-standardised features, averaged SGD."""

    def __init__(
        self,
        learning_rate: float = 2.0,
        alpha: float = 1e-4,
        batch_size: int = 32,
        averaging: float = 3.0,
        standardize: bool = True,
        max_iter: int = 30,
        tol: float = 1e-4,
        random_state: int | None = None,
        echo: int = 4,
    ) -> None:
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.batch_size = batch_size
        self.averaging = averaging
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.echo = echo

    # ------------------------------------------------------------------ state

    def _init_state(self, n_features: int, classes: np.ndarray) -> None:
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = int(n_features)
        k = len(self.classes_)
        # standardised-space weights, the intercept as the last row; and their running average
        self.weights_ = np.zeros((n_features + 1, k), dtype=np.float32)
        self.average_ = np.zeros_like(self.weights_)
        self.count_ = 0
        self.mean_ = np.zeros(n_features, dtype=np.float64)
        self.m2_ = np.zeros(n_features, dtype=np.float64)
        self.t_ = 0
        self.n_calls_ = 0

    def _update_statistics(self, X: np.ndarray) -> None:
        """Merge the batch's mean and sum of squared deviations into the running ones."""
        n = len(X)
        batch_mean = X.mean(axis=0, dtype=np.float64)
        centred = X - batch_mean.astype(np.float32)
        batch_m2 = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
        total = self.count_ + n
        delta = batch_mean - self.mean_
        self.mean_ += delta * (n / total)
        self.m2_ += batch_m2 + delta * delta * (self.count_ * n / total)
        self.count_ = total

    def _scaling(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(shift, scale, mean squared norm)`` of the rows the weights see: the running mean
        and ``1 / sd`` (constant features keep scale 1 and contribute 0), or none."""
        d = self.n_features_in_
        var = self.m2_ / max(self.count_, 1)
        if not self.standardize:
            norm = float(np.sum(var + self.mean_ * self.mean_))
            return np.zeros(d, np.float32), np.ones(d, np.float32), norm
        sd = np.sqrt(var)
        live = sd > 1e-6 * max(1e-30, float(sd.max(initial=0.0)))
        scale = np.where(live, 1.0 / np.where(live, sd, 1.0), 1.0)
        return self.mean_.astype(np.float32), scale.astype(np.float32), float(np.sum(live))

    def _targets(self, y: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        if not np.array_equal(self.classes_[index], y):
            unknown = sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"labels {unknown} are not among the classes {self.classes_.tolist()}")
        return index

    def _step(self, X: np.ndarray, target: np.ndarray, lr: float, loss: bool) -> float:
        """One SGD step on the (standardised) mini-batch; its summed cross-entropy when ``loss``
        (``fit`` stops on it; ``partial_fit`` skips it)."""
        n = len(X)
        W = self.weights_
        scores = X @ W[:-1]
        scores += W[-1]
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        total = float(-np.log(np.maximum(scores[rows, target], 1e-12)).sum()) if loss else 0.0
        scores[rows, target] -= 1.0
        scores *= np.float32(lr / n)  # the mean gradient's step
        if self.alpha:
            W[:-1] *= np.float32(1.0 - lr * self.alpha)
        W[:-1] -= X.T @ scores
        W[-1] -= scores.sum(axis=0)
        self.t_ += 1
        if self.averaging > 0:
            eta = float(self.averaging)
            self.average_ += np.float32((eta + 1.0) / (self.t_ + eta)) * (W - self.average_)
        else:
            self.average_[...] = W
        return total

    def _pass(
        self, X: np.ndarray, target: np.ndarray, order: np.ndarray, loss: bool = False
    ) -> float:
        """One pass over ``X[order]``, standardised with the current statistics; mean loss."""
        shift, scale, norm = self._scaling()
        rows = X[order]
        rows -= shift
        rows *= scale
        target = target[order]
        size = max(1, int(self.batch_size))
        lr = float(self.learning_rate) / max(norm, 1e-12)  # per row: learning_rate / |x|^2
        total = 0.0
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            total += self._step(chunk, target[start : start + size], lr * len(chunk), loss)
        return total / max(len(rows), 1)

    @staticmethod
    def _as_float(X: Any) -> np.ndarray:
        return np.ascontiguousarray(X, dtype=np.float32)

    # ------------------------------------------------------------------ learning

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> SoftmaxRegression:
        """One pass over ``X`` in mini-batches; ``classes`` is required on the first call."""
        X = self._as_float(X)
        y = np.asarray(y)
        if not hasattr(self, "weights_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self._init_state(X.shape[1], np.unique(np.asarray(classes)))
        target = self._targets(y)
        if len(X) == 0:
            return self
        self._update_statistics(X)
        # a fresh, seeded order inside each batch: (seed, call number) decides it
        rng = np.random.default_rng((int(self.random_state or 0), self.n_calls_))
        self.n_calls_ += 1
        for _ in range(max(1, int(getattr(self, "echo", 1)))):  # models saved before echo: 1
            self._pass(X, target, rng.permutation(len(X)))
        return self

    def fit(self, X: Any, y: Any) -> SoftmaxRegression:
        """Up to ``max_iter`` shuffled passes over all of ``X`` from a fresh start."""
        X = self._as_float(X)
        y = np.asarray(y)
        self._init_state(X.shape[1], np.unique(y))
        self._update_statistics(X)
        target = self._targets(y)
        rng = np.random.default_rng(self.random_state)
        best = np.inf
        self.n_iter_ = 0
        for epoch in range(1, int(self.max_iter) + 1):
            loss = self._pass(X, target, rng.permutation(len(X)), loss=True)
            self.n_iter_ = epoch
            if loss > best - self.tol:
                break
            best = min(best, loss)
        return self

    # ------------------------------------------------------------------ prediction

    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The averaged weights and intercept in the raw features' space."""
        shift, scale, _ = self._scaling()
        coef = self.average_[:-1] * scale[:, None]
        return coef, self.average_[-1] - shift @ coef

    @property
    def coef_(self) -> np.ndarray:
        """``(n_classes, n_features)``, as scikit-learn's linear models."""
        return self._folded()[0].T

    @property
    def intercept_(self) -> np.ndarray:
        return self._folded()[1]

    def decision_function(self, X: Any) -> np.ndarray:
        coef, intercept = self._folded()
        scores = self._as_float(X) @ coef
        scores += intercept
        return scores

    def predict_proba(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X).astype(np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
