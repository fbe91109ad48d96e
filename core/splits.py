"""Stratified, seeded splits of row indices: the one place every job and the Trainer split.

NumPy only (no TensorFlow, no scikit-learn), so a job that fits classifiers on stored features
never imports the input pipeline to split. :func:`stratified_split` cuts row indices into parts of
given fractions keeping each class's proportion; :func:`split_indices` is its (train, test) form
with the ``--test-size`` check; :func:`subset_indices` keeps a stratified fraction of the rows
(``train --subset``). The same labels, fractions and seed give the same parts everywhere: the
``train`` and ``spotcheck`` of one store with one seed fit and score on the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UsageError


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    fractions: float | Sequence[float] = (0.8, 0.2),
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Split row indices into parts of the given ``fractions`` (summing to 1), keeping the class
    proportions in each part. Seeded and deterministic; each part is returned sorted.

    Every class with at least as many rows as there are parts has a row in each part.
    """
    y = np.asarray(labels).reshape(-1)
    fr = [float(fractions), 1.0 - float(fractions)] if np.isscalar(fractions) else list(fractions)  # type: ignore[arg-type]
    if len(fr) < 2 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise UsageError(
            f"split fractions must be 2 or more non-negative numbers summing to 1, got {fr}"
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(len(members))]
        n = len(members)
        exact = np.array(fr) * n
        counts = np.floor(exact).astype(int)
        remainder = n - counts.sum()
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:remainder]] += 1
        if n >= len(fr):
            for k in range(len(fr)):
                if counts[k] == 0 and fr[k] > 0:
                    donor = int(np.argmax(counts))
                    counts[donor] -= 1
                    counts[k] += 1
        start = 0
        for k, c in enumerate(counts):
            parts[k].append(members[start : start + c])
            start += c
    return tuple(
        np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts
    )


def split_indices(
    labels: np.ndarray, test_size: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, test) row indices, each sorted (reads stay sequential)."""
    if not 0.0 < test_size < 1.0:
        raise UsageError(f"--test-size must be between 0 and 1 (exclusive), got {test_size}")
    train, test = stratified_split(labels, fractions=(1.0 - test_size, test_size), seed=seed)
    return train, test


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
