"""One way to build, fit and query every classifier plugin, batch or incremental.

Classifier plugins hand back scikit-learn estimators (``fit``/``partial_fit``) or river models
(``learn_many``/``learn_one``). The jobs (train, spot-check, stream, predict) never ask which:

* :func:`build` makes a seeded estimator from a registered name;
* :class:`Incremental` wraps an incremental estimator with ``learn_batch(X, y, classes)`` and
  ``predict_batch(X)``/``predict_proba_batch(X)``; a scikit-learn ``Pipeline`` whose steps all
  have ``partial_fit`` (a scaler then a linear model) learns step by step; a river model learns
  with ``learn_many`` on a pandas DataFrame when every step supports it, else row by row with
  ``learn_one`` (one Python call per row, so much slower);
* :func:`fit`, :func:`predict` and :func:`predict_proba` work on any estimator, so a river model
  can sit in a spot-check grid beside scikit-learn ones.

NumPy is imported at module level; scikit-learn and pandas only where used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import registry

RIVER_BATCH = 256


def library_of(model: Any) -> str:
    """``"river"`` for a river model, ``"scikit-learn"`` otherwise (by the model's module)."""
    module = type(model).__module__ or ""
    return "river" if module.split(".")[0] == "river" else "scikit-learn"


def build(name: str, seed: int = 0, **params: Any) -> Any:
    """A fresh estimator for the registered classifier ``name``, seeded for repeatable results.

    Every ``random_state`` parameter (also inside pipelines and ensembles) is set to ``seed``;
    river models with a ``seed`` attribute get it too.
    """
    spec = registry.classifier(name)
    model = spec.factory(**params)
    seed_estimator(model, seed)
    return model


def seed_estimator(model: Any, seed: int) -> Any:
    if hasattr(model, "get_params") and hasattr(model, "set_params"):
        keys = {k: seed for k in model.get_params(deep=True) if k.endswith("random_state")}
        if keys:
            model.set_params(**keys)
    elif library_of(model) == "river":
        for step in _river_steps(model):
            if hasattr(step, "seed"):
                with contextlib.suppress(AttributeError):
                    step.seed = seed
    return model


def is_incremental(model: Any) -> bool:
    """Whether ``model`` can learn batch by batch."""
    if library_of(model) == "river":
        return hasattr(model, "learn_one")
    steps = _sklearn_steps(model)
    return all(hasattr(step, "partial_fit") for step in steps)


def _sklearn_steps(model: Any) -> list[Any]:
    steps = getattr(model, "steps", None)
    if steps is not None and hasattr(model, "named_steps"):
        return [step for _, step in steps if step not in (None, "passthrough")]
    return [model]


def _river_steps(model: Any) -> list[Any]:
    steps = getattr(model, "steps", None)
    if isinstance(steps, dict):
        return list(steps.values())
    return [model]


def _columns(dim: int) -> list[str]:
    # river's DataFrame path needs string column names; learn_one dicts use the same keys.
    return [f"f{i}" for i in range(dim)]


class Incremental:
    """The same small interface over scikit-learn ``partial_fit`` and river ``learn_*`` models."""

    def __init__(self, model: Any):
        if not is_incremental(model):
            raise TypeError(
                f"{type(model).__name__} cannot learn incrementally (no partial_fit/learn_one); "
                "pick a classifier listed with incremental=True by `transferkit classifiers`"
            )
        self.model = model
        self.library = library_of(model)
        self.fitted = False
        self.classes: np.ndarray | None = None
        if self.library == "river":
            self.batched = all(hasattr(type(s), "learn_many") for s in _river_steps(model))
            self.batched_predict = all(
                hasattr(type(s), "predict_proba_many") or hasattr(type(s), "transform_many")
                for s in _river_steps(model)
            )
        else:
            self.batched = self.batched_predict = True

    # ------------------------------------------------------------------ learning

    def learn_batch(
        self, X: np.ndarray, y: np.ndarray, classes: Sequence[int] | np.ndarray
    ) -> None:
        """Learn from one batch; ``classes`` lists every label the stream may hold."""
        if len(X) == 0:
            return
        self.classes = np.asarray(classes)
        if self.library == "river":
            self._river_learn(X, y)
        else:
            self._sklearn_learn(X, y)
        self.fitted = True

    def _sklearn_learn(self, X: np.ndarray, y: np.ndarray) -> None:
        steps = _sklearn_steps(self.model)
        data = X
        for step in steps[:-1]:
            step.partial_fit(data)
            data = step.transform(data)
        steps[-1].partial_fit(data, y, classes=self.classes)

    def _river_learn(self, X: np.ndarray, y: np.ndarray) -> None:
        cols = _columns(X.shape[1])
        if self.batched:
            import pandas as pd

            self.model.learn_many(pd.DataFrame(X, columns=cols), pd.Series(y))
            return
        for row, label in zip(X, y, strict=True):
            self.model.learn_one(dict(zip(cols, row.tolist(), strict=True)), int(label))

    # ------------------------------------------------------------------ prediction

    def predict_proba_batch(self, X: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, len(classes))``; uniform before the first batch was learnt."""
        assert self.classes is not None or not self.fitted
        k = len(self.classes) if self.classes is not None else 1
        if not self.fitted:
            return np.full((len(X), k), 1.0 / k)
        if self.library != "river":
            assert self.classes is not None
            return predict_proba(self.model, X, self.classes)
        cols = _columns(X.shape[1])
        assert self.classes is not None
        out = np.zeros((len(X), len(self.classes)))
        index = {int(c): i for i, c in enumerate(self.classes)}
        if self.batched_predict:
            import pandas as pd

            frame = self.model.predict_proba_many(pd.DataFrame(X, columns=cols))
            for label in frame.columns:
                if int(label) in index:
                    out[:, index[int(label)]] = frame[label].to_numpy(dtype=float)
        else:
            for r, row in enumerate(X):
                proba = self.model.predict_proba_one(dict(zip(cols, row.tolist(), strict=True)))
                for label, p in proba.items():
                    if int(label) in index:
                        out[r, index[int(label)]] = p
        empty = out.sum(axis=1) == 0
        out[empty] = 1.0 / len(self.classes)
        return out

    def predict_batch(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels; ``-1`` for every row before anything was learnt."""
        if not self.fitted or self.classes is None:
            return np.full(len(X), -1, dtype=np.int64)
        if self.library != "river":
            with np.errstate(divide="ignore"):  # naive Bayes before it saw every class
                return np.asarray(self.model.predict(X), dtype=np.int64)
        proba = self.predict_proba_batch(X)
        return np.asarray(self.classes[np.argmax(proba, axis=1)], dtype=np.int64)


def _aligned(proba: np.ndarray, have: np.ndarray, want: np.ndarray | None) -> np.ndarray:
    """Columns of ``proba`` (ordered as ``have``) placed in the order of ``want``."""
    if want is None or np.array_equal(have, want):
        return proba
    out = np.zeros((proba.shape[0], len(want)))
    position = {int(c): i for i, c in enumerate(want)}
    for j, label in enumerate(have):
        if int(label) in position:
            out[:, position[int(label)]] = proba[:, j]
    return out


# ---------------------------------------------------------------------- any estimator


def fit(
    model: Any, X: np.ndarray, y: np.ndarray, classes: Sequence[int] | np.ndarray | None = None
) -> Any:
    """Fit ``model`` on all of ``X``; river models learn in batches of :data:`RIVER_BATCH`."""
    if library_of(model) == "river":
        learner = Incremental(model)
        labels = np.unique(y) if classes is None else np.asarray(classes)
        for start in range(0, len(X), RIVER_BATCH):
            learner.learn_batch(
                X[start : start + RIVER_BATCH], y[start : start + RIVER_BATCH], labels
            )
        return learner
    model.fit(X, y)
    return model


def predict(fitted: Any, X: np.ndarray) -> np.ndarray:
    if isinstance(fitted, Incremental):
        return fitted.predict_batch(X)
    return np.asarray(fitted.predict(X))


def predict_proba(fitted: Any, X: np.ndarray, classes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class probabilities ``(n, len(classes))``. Models without ``predict_proba`` (LinearSVC,
    Ridge) get a softmax of their decision function, or a one-hot of their prediction."""
    wanted = np.asarray(classes)
    if isinstance(fitted, Incremental):
        fitted.classes = wanted if fitted.classes is None else fitted.classes
        return _aligned(fitted.predict_proba_batch(X), fitted.classes, wanted)
    have = np.asarray(getattr(fitted, "classes_", wanted))
    if hasattr(fitted, "predict_proba"):
        try:
            return _aligned(np.asarray(fitted.predict_proba(X)), have, wanted)
        except (AttributeError, NotImplementedError):
            pass
    if hasattr(fitted, "decision_function"):
        scores = np.asarray(fitted.decision_function(X), dtype=float)
        if scores.ndim == 1:  # binary: score of the positive class
            scores = np.stack([-scores, scores], axis=1)
        scores -= scores.max(axis=1, keepdims=True)
        expo = np.exp(scores)
        return _aligned(expo / expo.sum(axis=1, keepdims=True), have, wanted)
    labels = predict(fitted, X)
    return (labels[:, None] == wanted[None, :]).astype(float)


def select(names: str | Sequence[str]) -> list[str]:
    """Classifier names from a comma-separated list of names and group names, in order, once.

    A group (``recommended``, ``classic``, ``fast``, ``linear``, ``incremental``, ``river``,
    ``all``, or any group a plugin declares) expands to its members in registration order.
    """
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    specs = registry.all_specs("classifier")
    chosen: list[str] = []
    for item in filter(None, items):
        if item in specs:
            members = [item]
        else:
            members = [n for n, s in specs.items() if item in getattr(s, "groups", ())]
            if not members:
                registry.classifier(item)  # raises a UsageError with suggestions
        chosen.extend(m for m in members if m not in chosen)
    if not chosen:
        raise registry.UsageError("no classifier selected; name classifiers or a group like fast")
    return chosen


def as_fitted(model: Any, classes: Sequence[int] | np.ndarray) -> Any:
    """A loaded, already fitted model ready for :func:`predict`/:func:`predict_proba` (a river
    model is wrapped in :class:`Incremental`)."""
    if library_of(model) != "river":
        return model
    learner = Incremental(model)
    learner.fitted = True
    learner.classes = np.asarray(classes)
    return learner
