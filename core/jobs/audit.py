"""``transferkit audit``: what is wrong with a feature store's data, from its stored features.

Four kinds of finding, each list ranked worst first:

* ``label_issues``: rows whose given label their out-of-fold probabilities contradict. A
  classifier (``classifier``: by default ``softmax``, transferkit's multinomial logistic
  regression by averaged SGD, which ranks as a batch logistic regression does in a fraction of
  its time; several, comma-separated, are averaged) is fitted on ``folds`` - 1 stratified folds
  and scores the held-out one, so every row gets probabilities from a model that never saw it.
  A row is an issue when another class is the most probable and its given class's probability
  is below that class's threshold (the mean probability of the class over its own rows); issues
  are ranked by ``score = 1 - p(given class)``, and ``suggested`` is the most probable class.
  ``confident`` marks the rows the confident-learning rule picks (Northcutt et al., 2021,
  "Confident learning: estimating uncertainty in dataset labels"; implemented here, no
  cleanlab): the *confident joint* counts a row of given class ``i`` towards class ``j`` when
  its probability of ``j`` reaches class ``j``'s threshold (the largest such ``j``); the joint is
  scaled so that each given class keeps its row count, and for every off-diagonal cell ``(i, j)``
  the ``n_ij`` rows of class ``i`` with the largest margin ``p_j - p_i`` are picked ("prune by
  noise rate"): fewer rows, more of them wrong; their count estimates the number of wrong labels
  (``summary.label_issues_confident``).
* ``near_duplicates``: pairs of rows of one store (``store``: ``train``, or ``test`` for pairs
  inside the test store) whose features are nearly the same (cosine similarity of the features
  centred on the training store's mean, at least ``duplicate_similarity``), and pairs of files
  with the same bytes (``exact: true``, by SHA-256).
* ``leakage``: test rows with a near-duplicate (``leakage_similarity``) or a byte-identical file
  in the training store.
* ``outliers``: rows far from every class: the mean cosine distance to their ``k`` nearest rows
  beyond Tukey's far fence, ``Q3 + outlier_fence * (Q3 - Q1)`` of all rows' distances.

The neighbours come from one blocked brute-force pass (:func:`transferkit.trust.neighbours`):
memory is a block of rows times the store's rows, never ``N^2``. ``summary`` holds the counts and
the class balance. Image folders are audited through the feature cache (``backbone``). Every
input is checked before anything is written, and the report's files are written only when all is
computed (:mod:`transferkit.jobs.audit_report`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators, registry
from ..errors import UsageError
from ..options import AuditOptions, CacheOptions
from ..trust import centred_unit, neighbours
from .train import check_test_store, check_trainable, open_reader

log = logging.getLogger(__name__)

READ_ROWS = 8192  # rows read (and checked for NaN) at a time


# ---------------------------------------------------------------------- inputs


def _store_of(location: Any, options: AuditOptions) -> str:
    """A feature store's path: ``location`` itself, or an image folder's cached store."""
    path = Path(location)
    if not path.exists():
        raise UsageError(f"{location} does not exist; give a feature store or an image folder")
    is_zarr = path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())
    if not path.is_dir() or is_zarr:
        return str(path)
    if not options.backbone:
        raise UsageError(
            f"{location} is a folder of images; pass --backbone NAME[@SIZE][:POOLING] to extract "
            "(and cache) its features, or give a feature store"
        )
    from .feature_cache import cached_store, parse_backbone

    cache = CacheOptions(cache_dir=options.cache_dir, progress=options.progress)
    return cached_store(str(path), parse_backbone(options.backbone), cache)[0]


def _read_all(reader: Any, store: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every row of ``reader``, read in blocks; a row that is not finite is refused."""
    n = len(np.asarray(reader.labels))
    if not n:
        raise UsageError(f"store {store} has no rows; there is nothing to audit")
    X = np.empty((n, reader.feature_dim), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, READ_ROWS):
        X[start : start + READ_ROWS], y[start : start + READ_ROWS] = reader.read(
            start, min(n, start + READ_ROWS)
        )
    paths = [str(p) for p in reader.paths] if len(reader.paths) else [f"row {i}" for i in range(n)]
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise UsageError(
            f"store {store} has {int(bad.sum())} row(s) with NaN or infinite features (first: "
            f"{paths[first]}); extract those images again"
        )
    return X, y, paths


def _located(paths: list[str], root: Any, store: Any) -> list[str]:
    """The files behind ``paths`` (relative ones under ``root``), all of which must exist."""
    found = [os.path.join(root, p) if root and not os.path.isabs(p) else p for p in paths]
    missing = [p for p in found if not os.path.isfile(p)]
    if missing:
        raise UsageError(
            f"{len(missing)} of {len(found)} images of store {store} are not where it recorded "
            f"them (first: {missing[0]}); pass --root DIR where they are now, or --no-files to "
            "audit the features alone"
        )
    return found


def file_hashes(files: list[str]) -> list[str]:
    """SHA-256 of each file's bytes."""
    out = []
    for name in files:
        digest = hashlib.sha256()
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out.append(digest.hexdigest())
    return out


# ---------------------------------------------------------------------- label issues


def out_of_fold(X: np.ndarray, y: np.ndarray, n_classes: int, options: AuditOptions) -> np.ndarray:
    """Each row's class probabilities from a classifier fitted on the other folds."""
    from .train_trust import _folds
    from .train_trust import out_of_fold as held_out

    splitter = _folds(y, options.folds, options.seed)
    if splitter is None:
        raise UsageError(
            "finding label issues needs at least 2 rows of every class (one fold to fit, one to "
            "score); add images of the smallest class or leave it out"
        )
    names = [n.strip() for n in options.classifier.split(",") if n.strip()]
    probas = [
        held_out(estimators.build(n, seed=options.seed), X, y, np.arange(n_classes), splitter)
        for n in names
    ]
    return np.mean(probas, axis=0)


def confident_learning(
    proba: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(issues, confident, score)``: the rows whose out-of-fold prediction is another class
    and whose given class's probability is below that class's threshold, ranked by ``score = 1
    - p(given)`` worst first; whether the confident-learning rule picks each row (prune by
    noise rate, see the module docstring); and the score of every row."""
    n, k = proba.shape
    given = proba[np.arange(n), y]
    thresholds = np.array([proba[y == j, j].mean() if np.any(y == j) else 1.0 for j in range(k)])
    above = proba >= thresholds[None, :] - 1e-12
    masked = np.where(above, proba, -1.0)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((k, k))
    counted = confident >= 0
    np.add.at(joint, (y[counted], confident[counted]), 1)
    counts = np.bincount(y, minlength=k).astype(float)
    totals = joint.sum(axis=1, keepdims=True)
    joint = np.where(totals > 0, joint / np.maximum(totals, 1) * counts[:, None], 0.0)
    pruned = np.zeros(n, dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(y == i)
        for j in range(k):
            take = int(round(joint[i, j])) if i != j else 0
            if take <= 0 or not len(rows):
                continue
            margin = proba[rows, j] - proba[rows, i]
            pruned[rows[np.argsort(-margin, kind="stable")[:take]]] = True
    contradicted = proba.argmax(axis=1) != y
    pruned &= contradicted  # a row its own class still wins is kept (as cleanlab does)
    score = 1.0 - given
    issues = np.flatnonzero(contradicted & (given < thresholds[y]))
    return issues[np.argsort(-score[issues], kind="stable")], pruned, score


# ---------------------------------------------------------------------- neighbours


def _neighbour_pass(Z: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, list[tuple]]:
    """Each row's mean cosine distance to its ``k`` nearest other rows, and the pairs ``(i, j,
    similarity)`` (``i < j``) at least ``threshold`` similar among those neighbours."""
    distance = np.empty(len(Z), dtype=np.float32)
    pairs: dict[tuple[int, int], float] = {}
    for start, sims, idx in neighbours(Z, Z, k, exclude_self=True):
        distance[start : start + len(sims)] = 1.0 - sims.mean(axis=1)
        for r, c in zip(*np.nonzero(sims >= threshold), strict=True):
            a, b = sorted((start + int(r), int(idx[r, c])))
            pairs[(a, b)] = max(pairs.get((a, b), -1.0), float(sims[r, c]))
    return distance, [(a, b, s) for (a, b), s in pairs.items()]


def _exact_pairs(hashes: list[str]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for i, h in enumerate(hashes):
        if h in first:
            pairs.append((first[h], i))
        else:
            first[h] = i
    return pairs


def _pairs(
    near: list[tuple], exact: set[tuple[int, int]], Z: np.ndarray, shown: list[str], store: str
) -> list[dict[str, Any]]:
    """The near-duplicate pairs of one store (``store``: ``train`` or ``test``), a pair of
    byte-identical files marked ``exact``, ranked exact first, then by similarity."""
    pairs = {(a, b): {"similarity": s, "exact": False} for a, b, s in near}
    for a, b in exact:
        sim = float(Z[a] @ Z[b])
        pairs[(a, b)] = {"similarity": max(sim, pairs.get((a, b), {}).get("similarity", sim)),
                         "exact": True}  # fmt: skip
    found = [
        {
            "path": shown[a],
            "other_path": shown[b],
            "similarity": v["similarity"],
            "exact": v["exact"],
            "store": store,
        }  # fmt: skip
        for (a, b), v in pairs.items()
    ]
    return sorted(found, key=lambda p: (not p["exact"], -p["similarity"]))


def tukey_fence(values: np.ndarray, factor: float) -> float:
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return float(q3 + factor * (q3 - q1))


# ---------------------------------------------------------------------- the job


def audit(train_store: str | Path, *, options: AuditOptions) -> dict[str, Any]:
    """Audit ``train_store`` (and ``options.test``); see the module docstring. Returns the
    report (``label_issues``, ``near_duplicates``, ``leakage``, ``outliers``, ``summary``);
    ``out`` also writes ``audit.json``, ``audit.csv`` and ``audit.html`` there."""
    from . import audit_report

    for name in options.classifier.split(","):  # an unknown name fails before any reading
        registry.classifier(name.strip())
    inputs = [str(train_store)] + ([str(options.test)] if options.test else [])
    if options.out is not None:
        audit_report.check_report_folder(Path(options.out), inputs)
    started = time.perf_counter()
    store = _store_of(train_store, options)
    reader = open_reader(store, options.store)
    try:
        names = [str(n) for n in reader.label_names]
        X, y, paths = _read_all(reader, train_store)
        check_trainable(y, names, train_store, split=False)
        test = None
        if options.test is not None:
            test_store = _store_of(options.test, options)
            test_reader = open_reader(test_store, options.store)
            try:
                check_test_store(reader, test_reader, train_store, options.test)
                test = _read_all(test_reader, options.test)
            finally:
                test_reader.close()
    finally:
        reader.close()
    if options.files and paths[0] == "row 0":
        raise UsageError(
            f"store {train_store} records no image paths; pass --no-files to audit its features"
        )
    files = _located(paths, options.root, train_store) if options.files else None
    test_files = None
    if test is not None and options.files:
        test_files = _located(test[2], options.root, options.test)

    log.info(f"auditing {len(y)} rows of {len(names)} classes ({X.shape[1]} features)")
    t = time.perf_counter()
    proba = out_of_fold(X, y, len(names), options)
    issues, pruned, label_score = confident_learning(proba, y)
    labels_seconds = time.perf_counter() - t

    t = time.perf_counter()
    mean = X.mean(axis=0)
    Z = centred_unit(X, mean)
    k = max(1, min(options.k, len(Z) - 1))
    distance, near = _neighbour_pass(Z, k, options.duplicate_similarity)
    fence = tukey_fence(distance, options.outlier_fence)
    leaks: dict[int, dict[str, Any]] = {}
    test_near: list[tuple] = []
    if test is not None:
        Zt = centred_unit(test[0], mean)
        if len(Zt) >= 2:  # pairs inside the test store, in the training store's centred space
            test_near = _neighbour_pass(Zt, min(k, len(Zt) - 1), options.duplicate_similarity)[1]
        for start, sims, idx in neighbours(Zt, Z, 1):
            for r in np.flatnonzero(sims[:, 0] >= options.leakage_similarity):
                leaks[start + int(r)] = {"train": int(idx[r, 0]), "similarity": float(sims[r, 0])}
    neighbours_seconds = time.perf_counter() - t

    t = time.perf_counter()
    exact: set[tuple[int, int]] = set()
    test_exact: set[tuple[int, int]] = set()
    if files is not None:
        hashes = file_hashes(files)
        exact = set(_exact_pairs(hashes))
        if test is not None and test_files is not None:
            where = {h: i for i, h in reversed(list(enumerate(hashes)))}
            test_hashes = file_hashes(test_files)
            test_exact = set(_exact_pairs(test_hashes))
            for j, h in enumerate(test_hashes):
                if h in where:
                    entry = leaks.setdefault(j, {"train": where[h], "similarity": 1.0})
                    entry["exact"] = True
    hash_seconds = time.perf_counter() - t

    shown = files or paths

    def row_of(i: int) -> dict[str, Any]:
        return {"path": shown[i], "given": names[y[i]]}

    label_issues = [
        {
            **row_of(i),
            "suggested": names[int(np.argmax(proba[i]))],
            "score": float(label_score[i]),
            "confident": bool(pruned[i]),
        }
        for i in issues
    ]
    near_duplicates = _pairs(near, exact, Z, shown, "train")
    if test is not None:
        near_duplicates += _pairs(test_near, test_exact, Zt, test_files or test[2], "test")
    near_duplicates.sort(key=lambda p: (not p["exact"], -p["similarity"]))
    leakage = []
    if test is not None:
        test_shown = test_files or test[2]
        leakage = sorted(
            (
                {
                    "test_path": test_shown[j],
                    "train_path": shown[v["train"]],
                    "similarity": v["similarity"],
                    "exact": bool(v.get("exact")),
                }  # fmt: skip
                for j, v in leaks.items()
            ),
            key=lambda p: (not p["exact"], -p["similarity"]),
        )
    far = np.flatnonzero(distance > fence)
    outliers = [
        {**row_of(int(i)), "score": float(distance[i])}
        for i in far[np.argsort(-distance[far], kind="stable")]
    ]
    counts = np.bincount(y, minlength=len(names))
    report: dict[str, Any] = {
        "store": str(train_store),
        "test_store": None if options.test is None else str(options.test),
        "label_issues": label_issues,
        "near_duplicates": near_duplicates,
        "leakage": leakage,
        "outliers": outliers,
        "summary": {
            "rows": int(len(y)),
            "test_rows": 0 if test is None else int(len(test[1])),
            "feature_dim": int(X.shape[1]),
            "classes": {n: int(c) for n, c in zip(names, counts, strict=True)},
            "label_issues": len(label_issues),
            "label_issues_confident": int(pruned.sum()),
            "near_duplicates": len(near_duplicates),
            "near_duplicates_test": sum(p["store"] == "test" for p in near_duplicates),
            "exact_duplicates": sum(p["exact"] for p in near_duplicates),
            "leakage": len(leakage),
            "outliers": len(outliers),
            "out_of_fold_accuracy": float(np.mean(proba.argmax(axis=1) == y)),
            "classifier": options.classifier,
            "thresholds": {
                "duplicate_similarity": options.duplicate_similarity,
                "leakage_similarity": options.leakage_similarity,
                "outlier_distance": fence,
                "k": k,
            },
            "seconds": {
                "labels": labels_seconds,
                "neighbours": neighbours_seconds,
                "hashes": hash_seconds,
                "total": time.perf_counter() - started,
            },
        },
    }
    if options.out is not None:
        report["files"] = audit_report.write_report(report, Path(options.out), inputs)
    return report
