"""One way to score predictions: accuracy, macro F1 and balanced accuracy, the same everywhere.

``train``, ``stream``, every spot-check pair (local or on Dask) and the Trainer's test scores
(``finetune``'s summary) call :func:`score`, so one set of predictions has one macro F1 whichever
command reports it. NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def score(y_true: Any, y_pred: Any, labels: Iterable[int] | None = None) -> dict[str, float]:
    """``{"accuracy", "macro_f1", "balanced_accuracy"}`` of ``y_pred`` against ``y_true``.

    ``labels`` are the classes the model was trained on (class indices, e.g.
    ``range(len(label_names))``); without it, the classes of ``y_true``. A value of ``y_true``
    outside ``labels`` is a ``ValueError``.

    * ``accuracy``: the fraction of rows predicted right.
    * ``macro_f1``: the mean of the per-class F1 (``2 TP / (2 TP + FP + FN)``) over the classes of
      ``labels`` that occur in ``y_true``. A class absent from the test rows has no F1 (nothing to
      recall) and does not count; predicting it is still wrong, and lowers the F1 of the class
      that row belongs to. A class present in ``y_true`` but never predicted counts with F1 0.
    * ``balanced_accuracy``: the mean recall over the same classes (those of ``labels`` present
      in ``y_true``), as scikit-learn's ``balanced_accuracy_score``.

    So ``y_true = [0, 0, 1, 1]``, ``y_pred = [0, 0, 1, 2]`` with ``labels=range(3)``: accuracy
    0.75, macro F1 (1.0 + 0.667) / 2 = 0.833 (class 2 is not in the test rows), balanced accuracy
    (1.0 + 0.5) / 2 = 0.75.
    """
    truth = np.asarray(y_true).reshape(-1)
    predicted = np.asarray(y_pred).reshape(-1)
    if truth.shape != predicted.shape:
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    if not len(truth):
        raise ValueError("no rows to score")
    present = np.unique(truth)
    if labels is not None:
        known = np.asarray(list(labels))
        unknown = np.setdiff1d(present, known)
        if len(unknown):
            raise ValueError(f"true labels {unknown.tolist()} are not among labels")
        present = known[np.isin(known, present)]
    f1, recall = [], []
    for cls in present:
        actual = truth == cls
        hits = int(np.sum(actual & (predicted == cls)))
        support = int(np.sum(actual))
        chosen = int(np.sum(predicted == cls))
        f1.append(2.0 * hits / (support + chosen))
        recall.append(hits / support)
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(np.mean(f1)),
        "balanced_accuracy": float(np.mean(recall)),
    }
