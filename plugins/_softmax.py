"""A multinomial (softmax) logistic regression trained by mini-batch Adam in plain NumPy.

Made for pretrained features: dense rows of a few hundred to a few thousand floats, a handful to a
few hundred classes. Each update is two matrix products on a whole mini-batch (the scores
``X @ W`` and the gradient ``X.T @ (P - Y)``), so one ``partial_fit`` call on a batch of 256
rows of 1,280 features costs well under a millisecond of Python, where river's ``learn_one`` pays
per row and per class.

* ``partial_fit(X, y, classes)`` takes one pass over ``X`` in mini-batches of ``batch_size``
  (``transferkit stream`` calls it once per batch it reads);
* ``fit(X, y)`` runs ``max_iter`` shuffled, seeded passes, the learning rate decaying as
  ``1/sqrt(epoch)``; it stops early when the training loss stops improving by ``tol``.

The estimator's state is NumPy arrays and numbers only, so it saves with skops and loads without
``--trust`` (``transferkit.models`` names this class as safe to rebuild).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression, L2-penalised, mini-batch Adam."""

    def __init__(
        self,
        learning_rate: float = 0.005,
        alpha: float = 1e-4,
        batch_size: int = 32,
        max_iter: int = 60,
        tol: float = 1e-4,
        random_state: int | None = None,
    ) -> None:
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    # ------------------------------------------------------------------ state

    def _init_state(self, n_features: int, classes: np.ndarray) -> None:
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = int(n_features)
        k = len(self.classes_)
        self.coef_ = np.zeros((n_features, k), dtype=np.float32)
        self.intercept_ = np.zeros(k, dtype=np.float32)
        self.m_coef_ = np.zeros_like(self.coef_)
        self.v_coef_ = np.zeros_like(self.coef_)
        self.m_intercept_ = np.zeros_like(self.intercept_)
        self.v_intercept_ = np.zeros_like(self.intercept_)
        self.t_ = 0
        self.n_calls_ = 0

    def _targets(self, y: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        if not np.array_equal(self.classes_[index], y):
            unknown = sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"labels {unknown} are not among the classes {self.classes_.tolist()}")
        return index

    def _step(self, X: np.ndarray, target: np.ndarray, lr: float) -> float:
        """One Adam step on the mini-batch; returns its mean cross-entropy."""
        n = len(X)
        scores = X @ self.coef_ + self.intercept_
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(-np.log(np.maximum(scores[rows, target], 1e-12)).mean())
        scores[rows, target] -= 1.0
        scores /= n
        grad_w = X.T @ scores
        grad_w += self.alpha * self.coef_
        grad_b = scores.sum(axis=0)
        self.t_ += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        correction = np.sqrt(1.0 - b2**self.t_) / (1.0 - b1**self.t_)
        for param, grad, m, v in (
            (self.coef_, grad_w, self.m_coef_, self.v_coef_),
            (self.intercept_, grad_b, self.m_intercept_, self.v_intercept_),
        ):
            m *= b1
            m += (1.0 - b1) * grad
            v *= b2
            v += (1.0 - b2) * grad * grad
            param -= (lr * correction) * m / (np.sqrt(v) + eps)
        return loss

    def _pass(self, X: np.ndarray, target: np.ndarray, lr: float, order: np.ndarray) -> float:
        size = max(1, int(self.batch_size))
        total = 0.0
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            total += self._step(X[chunk], target[chunk], lr) * len(chunk)
        return total / max(len(order), 1)

    @staticmethod
    def _as_float(X: Any) -> np.ndarray:
        return np.ascontiguousarray(X, dtype=np.float32)

    # ------------------------------------------------------------------ learning

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> SoftmaxRegression:
        """One pass over ``X`` in mini-batches; ``classes`` is required on the first call."""
        X = self._as_float(X)
        y = np.asarray(y)
        if not hasattr(self, "coef_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self._init_state(X.shape[1], np.unique(np.asarray(classes)))
        # a fresh, seeded order inside each batch: (seed, call number) decides it
        rng = np.random.default_rng((int(self.random_state or 0), self.n_calls_))
        self.n_calls_ += 1
        order = rng.permutation(len(X))
        self._pass(X, self._targets(y), float(self.learning_rate), order)
        return self

    def fit(self, X: Any, y: Any) -> SoftmaxRegression:
        """``max_iter`` shuffled passes over all of ``X`` from a fresh start."""
        X = self._as_float(X)
        y = np.asarray(y)
        self._init_state(X.shape[1], np.unique(y))
        target = self._targets(y)
        rng = np.random.default_rng(self.random_state)
        best = np.inf
        self.n_iter_ = 0
        for epoch in range(1, int(self.max_iter) + 1):
            lr = float(self.learning_rate) / np.sqrt(epoch)
            loss = self._pass(X, target, lr, rng.permutation(len(X)))
            self.n_iter_ = epoch
            if loss > best - self.tol:
                break
            best = min(best, loss)
        return self

    # ------------------------------------------------------------------ prediction

    def decision_function(self, X: Any) -> np.ndarray:
        return self._as_float(X) @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X).astype(np.float64)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
