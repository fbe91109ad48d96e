"""The public Python functions under the command line. Each imports its job module on use."""

from __future__ import annotations

from typing import Any


def train(store_path: Any, *, classifier: str, **options: Any) -> dict[str, Any]:
    """Fit one classifier on a feature store (stratified split); optionally save it with ``out``.

    Returns accuracy, macro F1, the per-class report, fit seconds and ``model_path``.
    """
    from .train import train as _train

    return _train(store_path, classifier=classifier, **options)
