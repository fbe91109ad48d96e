"""Streaming benchmark: ``transferkit stream`` against the classic river recipe.

Classic path (the baseline): write the training features to a CSV file, read it back with
``river.stream.iter_csv`` and learn one sample at a time with ``learn_one`` on
``StandardScaler | OneVsRest(LogisticRegression)``; score the held-out rows with ``predict_one``.

transferkit path: ``transferkit.stream`` on the same store, same split, batch by batch
(scikit-learn ``partial_fit`` or river ``learn_many``), including the reads from the store and the
test-then-train predictions.

The machine's load drifts within a minute, so the classic path is timed in ``--rounds`` segments
and every transferkit path runs once after each segment: each round's speed-up divides rates
measured seconds apart, and the median round is reported (the accuracies are those of the whole
stream: the classic model after all segments, transferkit's of its last round).

Data: the digits as images through the offline efficientnet-lite0 (1,280-d features, as in the
demo; extracted once and cached), repeated ``--passes`` times in a fresh order each pass so the
stream is long enough to time (both paths see the same sequence length).

    .venv/bin/python bench/bench_stream.py [--passes 8] [--classifier softmax,passive-aggressive]
    .venv/bin/python bench/bench_stream.py --classifier softmax,softmax:echo=1   # with parameters
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from transferkit import api
from transferkit.jobs.demo import write_digits
from transferkit.jobs.feature_cache import cached_store, parse_backbone
from transferkit.options import CacheOptions
from transferkit.splits import split_indices
from transferkit.store import create_store, open_store

RESERVED = ("rows", "complete", "skipped", "schema_version", "feature_dim")
WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))


def digits_features() -> str:
    images = write_digits(WORK / "digits")
    path, _ = cached_store(
        images["images"],
        parse_backbone("efficientnet-lite0@64"),
        CacheOptions(cache_dir=str(WORK / "cache")),
    )
    return path


def repeated_store(source: str, passes: int, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A store whose training rows are ``passes`` shuffled copies of the source's training split,
    followed by its held-out rows; returns the path and the (train, test) row indices."""
    with open_store(source) as reader:
        train, test = split_indices(reader.labels, 0.2, seed)
        X_train, y_train = reader.read_rows(train)
        X_test, y_test = reader.read_rows(test)
        names = reader.label_names
        meta = {k: v for k, v in reader.metadata.items() if k not in RESERVED}
    path = WORK / f"stream-x{passes}.h5"
    rng = np.random.default_rng(seed)
    with create_store(
        path, feature_dim=X_train.shape[1], label_names=names, metadata=meta, mode="overwrite"
    ) as writer:
        for _ in range(passes):
            order = rng.permutation(len(y_train))
            writer.append(X_train[order], y_train[order], [""] * len(order))
        writer.append(X_test, y_test, [""] * len(y_test))
    n_train = passes * len(y_train)
    return str(path), np.arange(n_train), np.arange(n_train, n_train + len(y_test))


def classic(
    store: str, train: np.ndarray, test: np.ndarray, rounds: int, between: Callable[[int], None]
) -> dict[str, Any]:
    """The classic path over the whole stream, timed in ``rounds`` equal segments; after each
    segment ``between(round)`` runs (the transferkit paths), so each round's speed-up compares
    rates measured within seconds of each other on a machine whose load drifts."""
    from river import linear_model, multiclass, preprocessing
    from river import stream as river_stream

    with open_store(store) as reader:
        X, y = reader.read_rows(train)
        X_test, y_test = reader.read_rows(test)
    cols = [f"f{i}" for i in range(X.shape[1])]
    csv_path = WORK / "classic-train.csv"
    start = time.perf_counter()
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*cols, "label"])
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            writer.writerow([*row, label])
    csv_seconds = time.perf_counter() - start
    model = preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
        linear_model.LogisticRegression()
    )
    converters = {c: float for c in cols}
    converters["label"] = int
    bounds = [len(y) * (r + 1) // rounds for r in range(rounds)]
    rates: list[float] = []
    seen = 0
    seconds = 0.0
    rows = river_stream.iter_csv(str(csv_path), target="label", converters=converters)
    for r, bound in enumerate(bounds):
        start = time.perf_counter()
        first = seen
        for x, label in rows:
            model.learn_one(x, label)
            seen += 1
            if seen >= bound:
                break
        elapsed = time.perf_counter() - start
        seconds += elapsed
        rates.append((seen - first) / elapsed)
        between(r)
    hits = sum(
        model.predict_one(dict(zip(cols, row, strict=True))) == label
        for row, label in zip(X_test.tolist(), y_test.tolist(), strict=True)
    )
    csv_path.unlink()
    return {
        "samples": seen,
        "csv_seconds": csv_seconds,
        "seconds": seconds,
        "rates": rates,
        "samples_per_second": seen / seconds,
        "accuracy": hits / len(y_test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--classifier", default="softmax,passive-aggressive,sgd,perceptron,mlp")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="classic segments, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", file=sys.stderr)
    source = digits_features()
    store, train, test = repeated_store(source, args.passes, args.seed)
    print(f"stream of {len(train)} training rows, {len(test)} held-out rows", file=sys.stderr)

    # transferkit.stream on the training rows only, then the same held-out scoring
    train_store = WORK / "stream-train.h5"
    with open_store(store) as reader:
        meta = {k: v for k, v in reader.metadata.items() if k not in RESERVED}
        with create_store(
            train_store,
            feature_dim=reader.feature_dim,
            label_names=reader.label_names,
            metadata=meta,
            mode="overwrite",
        ) as writer:
            for X, y in reader.iter_batches(4096, stop=len(train)):
                writer.append(X, y, [""] * len(y))
    from transferkit import estimators
    from transferkit.models import load_model

    classifiers = args.classifier.split(",")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in classifiers}

    def spec(label: str) -> tuple[str, dict[str, Any]]:
        """``name`` or ``name:key=value:key=value`` (numbers as numbers)."""
        name, *pairs = label.split(":")
        params: dict[str, Any] = {}
        for pair in pairs:
            key, value = pair.split("=", 1)
            params[key] = float(value) if "." in value or "e" in value else int(value)
        return name, params

    def transferkit_runs(round_: int) -> None:
        for classifier in classifiers:
            name, params = spec(classifier)
            runs[classifier].append(
                api.stream(
                    train_store,
                    classifier=name,
                    params=params or None,
                    batch_size=args.batch_size,
                    report_every=10**9,
                    test_size=0.0,
                    shuffle_blocks=0,  # the rows are already shuffled, as the CSV is
                    progress=False,
                    out=(
                        WORK / f"stream-{classifier.replace(':', '-').replace('=', '')}"
                        if round_ == args.rounds - 1
                        else None
                    ),
                    overwrite=True,
                )
            )

    base = classic(store, train, test, args.rounds, transferkit_runs)
    with open_store(store) as reader:
        X_test, y_test = reader.read_rows(test)
    rates = ", ".join(f"{r:.0f}" for r in base["rates"])
    print(
        f"classic river learn_one from CSV: {base['samples_per_second']:.0f} samples/s "
        f"(per round: {rates}), accuracy {base['accuracy']:.4f} "
        f"(writing the CSV took {base['csv_seconds']:.1f}s more)"
    )
    for classifier in classifiers:
        result = runs[classifier][-1]
        saved = load_model(result["model_path"], trust=True)
        fitted = estimators.as_fitted(saved.estimator, np.arange(len(saved.label_names)))
        accuracy = float(np.mean(estimators.predict(fitted, X_test) == y_test))
        speed = [run["samples_per_second"] for run in runs[classifier]]
        ratios = [tk / cl for tk, cl in zip(speed, base["rates"], strict=True)]
        print(
            f"transferkit stream {classifier} (batch {args.batch_size}): "
            f"{float(np.median(speed)):.0f} samples/s (median of {len(speed)}), "
            f"accuracy {accuracy:.4f}; speed-up {float(np.median(ratios)):.1f}x "
            f"(rounds: {', '.join(f'{r:.0f}x' for r in ratios)}), "
            f"accuracy {100 * (accuracy - base['accuracy']):+.2f} points"
        )
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)", file=sys.stderr)


if __name__ == "__main__":
    main()
