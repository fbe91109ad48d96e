"""``transferkit stream``: incremental learning on a store that need not fit in memory.

The store is never read whole. Its label column (8 bytes a row) is read once to draw a
stratified, seeded held-out split; the training rows then arrive in batches:

* the training rows are cut into blocks of ``batch_size`` consecutive rows, the order of the
  blocks is shuffled (seeded) and a small buffer of ``shuffle_blocks`` blocks is mixed row by
  row, so a store written class after class still reaches the learner mixed, while each read
  stays a short contiguous range and memory stays bounded by ``batch_size * shuffle_blocks``
  rows (twice that: the next window is read and decompressed on a background thread while the
  current one is learnt);
* each batch is first predicted, then learnt (test-then-train: progressive validation), and the
  running accuracy is reported every ``report_every`` samples;
* ``passes`` > 1 goes over the training rows again (epochs), each pass in a fresh seeded block
  order; the progressive (test-then-train) accuracy is that of the first pass, when every batch
  is still unseen; later passes only learn;
* at the end the held-out rows are read in batches and scored (accuracy, macro F1, per-class
  report); with ``test`` (a second store, checked to share the recipe and the class names) every
  row of the first store trains and the test store's rows are scored instead.

Learners go through :class:`transferkit.estimators.Incremental`: scikit-learn ``partial_fit``,
river ``learn_many`` on DataFrames where every step has it, ``learn_one`` otherwise. The default,
``softmax`` (``transferkit.plugins._softmax``), is the one that reaches the batch probe in a few
passes and the fastest.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators
from ..errors import TransferkitError, UsageError
from ..models import (
    SavedModel,
    check_model_out,
    model_path_for,
    save_model,
    store_fields,
)
from ..options import StreamOptions
from ..plugin_manager import notify_exception
from ..splits import split_indices
from .train import check_test_store, check_trainable, evaluate, open_reader

log = logging.getLogger(__name__)


def _read_block(reader: Any, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``block`` (sorted store indices): one contiguous read of the range they span,
    then the rows picked from it (a held-out split leaves gaps of about ``test_size``)."""
    lo, hi = int(block[0]), int(block[-1]) + 1
    X, y = reader.read(lo, hi)
    if hi - lo == len(block):
        return X, y
    pick = block - lo
    return X[pick], y[pick]


def _windows(
    reader: Any, rows: np.ndarray, batch_size: int, shuffle_blocks: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(X, y, mix)`` for each window of ``shuffle_blocks`` blocks of ``batch_size`` rows, in a
    seeded block order; ``mix`` is the seeded row order within the window (None: store order)."""
    rng = np.random.default_rng(seed)
    blocks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    order = rng.permutation(len(blocks)) if shuffle_blocks > 0 else np.arange(len(blocks))
    window = max(1, shuffle_blocks)
    for w in range(0, len(order), window):
        chosen = [blocks[b] for b in order[w : w + window]]
        n = sum(len(b) for b in chosen)
        X = np.empty((n, reader.feature_dim), dtype=np.float32)
        y = np.empty(n, dtype=np.int64)
        at = 0
        for block in chosen:
            X[at : at + len(block)], y[at : at + len(block)] = _read_block(reader, block)
            at += len(block)
        yield X, y, (rng.permutation(n) if shuffle_blocks > 0 else None)


def _read_ahead(windows: Iterator[Any]) -> Iterator[Any]:
    """``windows``, each next one read on a background thread while the current one is learnt:
    the store's reads and decompression (h5py and zarr release the GIL) overlap the learning.
    At most two windows are in memory: the one being learnt and the one being read."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="transferkit-stream-read") as pool:
        pending = pool.submit(next, windows, None)
        try:
            while (current := pending.result()) is not None:
                pending = pool.submit(next, windows, None)
                yield current
                current = None
        finally:
            pending.cancel()


def shuffled_batches(
    reader: Any,
    rows: np.ndarray,
    batch_size: int,
    shuffle_blocks: int,
    seed: int,
    read_ahead: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of ``rows`` (sorted store indices) in a seeded block-shuffled order."""
    windows = _windows(reader, rows, batch_size, shuffle_blocks, seed)
    for X, y, mix in _read_ahead(windows) if read_ahead else windows:
        for i in range(0, len(y), batch_size):
            if mix is None:
                yield X[i : i + batch_size], y[i : i + batch_size]
            else:
                take = mix[i : i + batch_size]
                yield X[take], y[take]
        del X, y, mix  # the window is not kept while the next one is read


def _epochs(
    reader: Any, rows: np.ndarray, batch_size: int, shuffle_blocks: int, seed: int, passes: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """``(X, y, pass)`` for ``passes`` passes over ``rows``; pass ``p`` is shuffled with the seed
    ``seed + p`` (pass 0 is exactly the single-pass order); the next window is read ahead."""
    for epoch in range(passes):
        for X, y in shuffled_batches(
            reader, rows, batch_size, shuffle_blocks, seed + epoch, read_ahead=True
        ):
            yield X, y, epoch


def stream(
    store_path: str | Path, *, classifier: Any = "softmax", options: StreamOptions
) -> dict[str, Any]:
    """Learn ``classifier`` (default ``softmax``) batch by batch from the store; see the module
    docstring.

    ``classifier`` is a registered name or an incremental estimator of the caller's (with
    ``partial_fit``, or a river model), cloned first; ``params`` as for :func:`train`.
    """
    from .train import _estimator_for

    model, classifier, library = _estimator_for(classifier, options.seed, options.params)
    if options.out is not None:  # refused before any work: an input, or a file that is not ours
        check_model_out(
            model_path_for(options.out, library), overwrite=options.overwrite, inputs=[store_path]
        )
    if not estimators.is_incremental(model):
        incremental = sorted(estimators.select("incremental"))
        raise UsageError(
            f"classifier {classifier!r} cannot learn incrementally; use one of: "
            f"{', '.join(incremental)}"
        )
    learner = estimators.Incremental(model)
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    reader = open_reader(store_path, options.store)
    # one BLAS thread: a batch's products (rows x features x classes) are too skinny to gain from
    # more, and on a busy machine BLAS threads waiting for a core made them several times slower
    # (bench/RESULTS.md, streaming)
    blas = threadpool_limits(limits=1, user_api="blas")
    try:
        label_names = [str(n) for n in reader.label_names]
        classes = np.arange(len(label_names))
        labels = np.asarray(reader.labels)
        test_reader = None
        check_trainable(
            labels, label_names, store_path, split=options.test is None and options.test_size > 0
        )
        if options.test is not None:
            test_reader = open_reader(options.test, options.store)
            check_test_store(reader, test_reader, store_path, options.test)
            train_rows = np.arange(len(labels))
            test_rows = np.arange(len(np.asarray(test_reader.labels)))
        elif options.test_size > 0:
            train_rows, test_rows = split_indices(labels, options.test_size, options.seed)
        else:
            train_rows, test_rows = np.arange(len(labels)), np.arange(0)
        del labels
        kept = store_fields(reader)

        checkpoints: list[dict[str, Any]] = []
        seen = correct = window_seen = window_correct = 0
        learn_seconds = 0.0
        bar = tqdm(
            total=len(train_rows) * options.passes,
            desc=f"stream {classifier}",
            unit="row",
            file=sys.stderr,
            disable=not options.progress,
        )
        start = time.perf_counter()
        try:
            for X, y, epoch in _epochs(
                reader,
                train_rows,
                options.batch_size,
                options.shuffle_blocks,
                options.seed,
                options.passes,
            ):
                if epoch > 0:  # later passes only learn; their batches are not unseen
                    t = time.perf_counter()
                    learner.learn_batch(X, y, classes)
                    learn_seconds += time.perf_counter() - t
                    bar.update(len(y))
                    continue
                hits = int(np.sum(learner.predict_batch(X) == y))
                t = time.perf_counter()
                learner.learn_batch(X, y, classes)
                learn_seconds += time.perf_counter() - t
                seen += len(y)
                correct += hits
                window_seen += len(y)
                window_correct += hits
                bar.update(len(y))
                if window_seen >= options.report_every:
                    checkpoints.append(
                        {
                            "samples": seen,
                            "accuracy": correct / seen,
                            "recent_accuracy": window_correct / window_seen,
                        }
                    )
                    with bar.external_write_mode(file=sys.stderr):  # above the bar
                        log.info(
                            f"{seen} samples: progressive accuracy {correct / seen:.4f} "
                            f"(last {window_seen}: {window_correct / window_seen:.4f})"
                        )
                    window_seen = window_correct = 0
        except Exception as exc:
            notify_exception(exc, "stream", classifier=classifier, store=str(store_path))
            raise TransferkitError(
                f"{classifier} failed while learning at sample {seen}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            bar.close()
        train_seconds = time.perf_counter() - start
        if window_seen:
            checkpoints.append(
                {
                    "samples": seen,
                    "accuracy": correct / max(seen, 1),
                    "recent_accuracy": window_correct / window_seen,
                }
            )

        trust = _reference(reader, train_rows, options) if options.out is not None else {}
        y_true: list[np.ndarray] = []
        y_pred: list[np.ndarray] = []
        scored = test_reader if test_reader is not None else reader
        for X, y in scored.iter_batches(options.batch_size, indices=test_rows):
            y_true.append(y)
            y_pred.append(learner.predict_batch(X))
    finally:
        blas.restore_original_limits()
        reader.close()
        if test_reader is not None:
            test_reader.close()

    result: dict[str, Any] = {
        "store": str(store_path),
        "classifier": classifier,
        "library": library,
        "batched": learner.batched,
        "batch_size": options.batch_size,
        "passes": options.passes,
        "test_store": None if options.test is None else str(options.test),
        "n_train": int(len(train_rows)),
        "n_test": int(len(test_rows)),
        "label_names": label_names,
        "seed": options.seed,
        "progressive": checkpoints,
        "progressive_accuracy": correct / max(seen, 1),
        "train_seconds": train_seconds,
        "learn_seconds": learn_seconds,
        "samples_per_second": (
            len(train_rows) * options.passes / train_seconds if train_seconds > 0 else None
        ),
    }
    if len(test_rows):
        result.update(evaluate(np.concatenate(y_true), np.concatenate(y_pred), label_names))
    else:
        result.update(accuracy=None, macro_f1=None, report_text="(no held-out rows)")
    if options.out is not None:
        library = estimators.library_of(learner.model)
        path = model_path_for(options.out, library)
        check_model_out(path, overwrite=options.overwrite, inputs=[store_path])
        saved = SavedModel(
            estimator=learner.model,
            **kept,
            classifier=classifier,
            library=library,
            info={
                "accuracy": result["accuracy"],
                "progressive_accuracy": result["progressive_accuracy"],
                "n_train": result["n_train"],
                "seed": options.seed,
                "store": str(store_path),
                "trained_by": "stream",
            },
            trust=trust,
        )
        result["model_path"] = str(save_model(saved, path))
    return result


def _reference(reader: Any, rows: np.ndarray, options: StreamOptions) -> dict[str, Any]:
    """The model's reference sample of unfamiliar inputs (:func:`transferkit.trust.make_reference`):
    a seeded sample of at most ``reference_size`` training rows, read by index (never the store)."""
    from ..trust import make_reference

    if options.reference_size <= 0 or len(rows) < 2:
        return {}
    rng = np.random.default_rng(options.seed)
    pick = np.sort(rng.choice(rows, min(options.reference_size, len(rows)), replace=False))
    X, _ = reader.read_rows(pick)
    return make_reference(
        X, size=len(pick), quantile=options.unfamiliar_quantile, seed=options.seed
    )
