"""Audit and trust benchmark: how many injected faults ``transferkit audit`` finds, how well the
trust fields of a saved model behave, and how the audit's time and memory grow with the rows.

**Faults** (``--sets digits,photos``: ``bench_quality``'s real image sets, written by its own
functions): with a fixed seed,

* ``--moved`` (5 %) of the training images are moved into a wrong class folder;
* ``--copied`` test images are copied into the training folder (their own class);
* at predict time, the other set's test images are the foreign kind (digits vs photos), and the
  images of ``--held-out`` classes kept out of training are the near kind.

The clean folders are extracted once with efficientnet-lite0 (``--size`` px). A moved or copied
file has the bytes, so the features, of its original: the faulty store is the clean rows with the
moved rows' labels changed and the copied test rows appended, its paths those of a real copy of
the folder with the faults made on disk (so the audit's file hashes and thumbnails see them).

Reported per set: label issues' precision and recall at k = 2 x moved (the audit's ranked list;
and, as the baseline, a plain out-of-fold logistic-regression ranking by ``1 - p(given)``); the
leakage recall of the copies and the false pairs (pairs that are not the same picture); ECE of a
logistic regression before and after ``--calibrate`` temperature, sigmoid and isotonic (test
folder), and before and after temperature on the random splits below; the AUROC of
``ood_score`` for the foreign and the near set against the test images;
the empirical coverage of ``--coverage`` prediction sets where split conformal's
exchangeability holds (the headline: the set's images pooled and split again at random,
``--repeats`` seeds, on clean labels and with ``--moved`` of them moved), and on the set's own
test folder (the photos' test crops come from tiles never seen in training: a shift, so no
coverage guarantee), trained on clean labels and on the faulty ones.

**Scale** (``--rows 10000,100000``): synthetic 1,280-d features (10 classes of non-negative
Gaussian clusters), written to an HDF5 store; ``audit --no-files`` runs in a fresh process per
size, which reports its seconds (label issues, neighbours) and its peak resident memory. Above
``--full-rows`` the parts run one by one: reading, the out-of-fold label issues on every row,
and the neighbour pass for ``--query-rows`` query rows against every row, its time scaled to
all rows (the pass is the same work for each query row; memory is that of one block). The
baseline is scikit-learn's ``NearestNeighbors(metric="cosine", algorithm="brute")`` on the same
rows for the same neighbours, in the same process.

    .venv/bin/python bench/bench_audit.py                      # both parts
    .venv/bin/python bench/bench_audit.py --sets digits --train 300 --test 150 --rows ""
    .venv/bin/python bench/bench_audit.py --sets "" --rows 10000,100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import WORK, write_digits, write_photos  # noqa: E402

# ---------------------------------------------------------------------- faults


def _rows(store: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict[str, Any]]:
    from transferkit.models import store_fields
    from transferkit.store import open_store

    with open_store(store) as reader:
        X, y = reader.read(0, len(reader.labels))
        recipe = store_fields(reader)["recipe"].to_metadata()
        return X, y, list(reader.paths), list(reader.label_names), recipe


def _write(path: Path, X: np.ndarray, y: np.ndarray, paths: list[str], names: list[str],
           meta: dict[str, Any]) -> str:  # fmt: skip
    from transferkit.store import create_store

    if path.exists():
        path.unlink()
    with create_store(path, feature_dim=X.shape[1], label_names=names, metadata=meta) as writer:
        writer.append(X.astype(np.float32), y, paths)
    return str(path)


def inject(root: Path, train: str, test: str, args: argparse.Namespace) -> dict[str, Any]:
    """The faulty training folder (a copy) and its store; what was moved and copied."""
    X, y, paths, names, meta = _rows(train)
    Xt, yt, tpaths, _, _ = _rows(test)
    rng = np.random.default_rng(args.seed)
    faulty = root / "faulty"
    if faulty.exists():
        shutil.rmtree(faulty)
    clean_root = Path(paths[0]).parents[1]
    shutil.copytree(clean_root, faulty)
    moved = rng.choice(len(y), int(round(args.moved * len(y))), replace=False)
    given = y.copy()
    given[moved] = (y[moved] + rng.integers(1, len(names), len(moved))) % len(names)
    new_paths = [str(faulty / Path(p).relative_to(clean_root)) for p in paths]
    for i in moved:
        # named with its class of origin: files of different classes share names
        target = faulty / names[given[i]] / f"moved-{names[y[i]]}-{Path(paths[i]).name}"
        shutil.move(new_paths[i], target)
        new_paths[i] = str(target)
    copied = rng.choice(len(yt), args.copied, replace=False)
    for j in copied:
        target = faulty / names[yt[j]] / f"copy-{Path(tpaths[j]).name}"
        shutil.copy(tpaths[j], target)
        new_paths.append(str(target))
    store = _write(root / "faulty.h5", np.concatenate([X, Xt[copied]]),
                   np.concatenate([given, yt[copied]]), new_paths, names, meta)  # fmt: skip
    return {
        "store": store,
        "moved": {new_paths[i] for i in moved},
        "copied": {tpaths[j] for j in copied},
        "clean_labels": y,
        "given": given,
    }


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(truth, np.r_[inside, outside]))


def coverage_of(
    model_path: str, Xt: np.ndarray, yt: np.ndarray, level: float
) -> tuple[float, float]:
    from transferkit import trust
    from transferkit.models import load_model

    saved = load_model(model_path)
    proba = saved.estimator.predict_proba(Xt)
    sets = trust.prediction_sets(proba, trust.conformal_threshold(saved.trust["conformal"], level))
    covered = np.mean([t in s for t, s in zip(yt, sets, strict=True)])
    return float(covered), float(np.mean([len(s) for s in sets]))


def random_split_coverage(
    train: str, test: str, root: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Coverage where split conformal's exchangeability holds: the set's training and test
    images pooled and split again at random (stratified, ``--repeats`` seeds, as many test
    images as the set has), a logistic regression trained on clean labels and on labels with
    ``--moved`` of them moved; the mean, lowest and highest coverage and the mean set size."""
    from sklearn.model_selection import train_test_split

    from transferkit import api

    X, y, paths, names, meta = _rows(train)
    Xt, yt, tpaths, _, _ = _rows(test)
    Xa, ya, pa = np.concatenate([X, Xt]), np.concatenate([y, yt]), paths + tpaths
    found: dict[str, list[tuple[float, float]]] = {"clean": [], "noisy": []}
    eces: list[tuple[float, float]] = []
    checks: list[str] = []  # per split: the folds' ECE, the bootstrap support, kept?
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        a, b = train_test_split(np.arange(len(ya)), test_size=len(yt), stratify=ya,
                                random_state=seed)  # fmt: skip
        held = _write(root / "random-test.h5", Xa[b], ya[b], [pa[i] for i in b], names, meta)
        rng = np.random.default_rng(seed)
        noisy = ya[a].copy()
        moved = rng.choice(len(a), int(round(args.moved * len(a))), replace=False)
        noisy[moved] = (noisy[moved] + rng.integers(1, len(names), len(moved))) % len(names)
        for kind, labels in (("clean", ya[a]), ("noisy", noisy)):
            store = _write(root / f"random-train-{kind}.h5", Xa[a], labels, [pa[i] for i in a],
                           names, meta)  # fmt: skip
            model = api.train(store, classifier="logistic-regression", test=held,
                              out=str(root / f"random-{kind}.skops"), overwrite=True)  # fmt: skip
            found[kind].append(coverage_of(model["model_path"], Xa[b], ya[b], args.coverage))
            if kind == "clean":
                calibrated = api.train(store, classifier="logistic-regression", test=held,
                                       calibrate="temperature")  # fmt: skip
                eces.append((calibrated["ece_before"], calibrated["ece"]))
                checks.append(f"{calibrated['folds_ece_before']:.4f}->"
                              f"{calibrated['folds_ece']:.4f} "
                              f"({calibrated['calibration_support']:.2f}, "
                              f"{calibrated['calibration_status']})")  # fmt: skip
    out: dict[str, Any] = {
        "random_ece_before": float(np.mean([b for b, _ in eces])),
        "random_ece_temperature": float(np.mean([a for _, a in eces])),
        "random_ece_temperature_range": f"{min(e[1] for e in eces):.4f}-"
        f"{max(e[1] for e in eces):.4f}",
        "random_ece_splits_above_before": sum(a > b for b, a in eces),
        "random_ece_checks": "; ".join(checks),
        "random_ece_test": "; ".join(f"{b:.4f}->{a:.4f}" for b, a in eces),
    }
    for kind, runs in found.items():
        covered = [c for c, _ in runs]
        out[f"random_coverage_{kind}"] = float(np.mean(covered))
        out[f"random_coverage_{kind}_range"] = f"{min(covered):.4f}-{max(covered):.4f}"
        out[f"random_set_size_{kind}"] = float(np.mean([n for _, n in runs]))
    return out


def run_set(name: str, other: str, args: argparse.Namespace) -> dict[str, Any]:
    from transferkit import api, trust
    from transferkit.jobs.audit import confident_learning, out_of_fold
    from transferkit.models import load_model
    from transferkit.options import AuditOptions

    root = WORK / "audit" / f"{name}-{args.size}-{args.train}-{args.test}-{args.seed}"
    stores = {}
    for set_name in {name, other}:
        folder = WORK / "audit" / f"{set_name}-{args.size}-{args.train}-{args.test}-{args.seed}"
        writer = write_digits if set_name == "digits" else write_photos
        if not (folder / "test").exists():
            writer(folder, args.train, args.test, args.size, args.seed)
        for part in ("train", "test"):
            out = folder / f"{part}.h5"
            if not out.exists():
                t = time.perf_counter()
                api.extract(str(folder / part), backbone="efficientnet-lite0", out=str(out),
                            input_size=args.size, progress=False)  # fmt: skip
                print(f"  extracted {set_name}/{part} in {time.perf_counter() - t:.1f}s")
            stores[(set_name, part)] = str(out)
    train, test = stores[(name, "train")], stores[(name, "test")]
    faults = inject(root, train, test, args)
    found: dict[str, Any] = {"set": name, "moved": len(faults["moved"]),
                             "copied": len(faults["copied"])}  # fmt: skip

    t = time.perf_counter()
    report = api.audit(faults["store"], test=test, out=str(root / "report"))
    found["audit_seconds"] = time.perf_counter() - t
    k = 2 * len(faults["moved"])
    top = [f["path"] for f in report["label_issues"][:k]]
    hits = len(set(top) & faults["moved"])
    found["labels_recall_at_2k"] = hits / len(faults["moved"])
    found["labels_precision_at_2k"] = hits / max(1, len(top))
    confident = [f["path"] for f in report["label_issues"] if f["confident"]]
    found["confident_issues"] = len(confident)
    found["confident_precision"] = len(set(confident) & faults["moved"]) / max(1, len(confident))
    X, given, paths, _, _ = _rows(faults["store"])
    proba = out_of_fold(X, given, int(given.max()) + 1, AuditOptions())
    ranking = np.argsort(proba[np.arange(len(given)), given], kind="stable")[:k]
    found["baseline_recall_at_2k"] = len({paths[i] for i in ranking} & faults["moved"]) / len(
        faults["moved"]
    )
    assert len(confident_learning(proba, given)[0]) == len(report["label_issues"])
    exact = {f["test_path"] for f in report["leakage"] if f["exact"]}
    found["leakage_recall_exact"] = len(exact & faults["copied"]) / len(faults["copied"])
    # a test image near a copied one (an overlapping crop of the same tile) leaks through it;
    # a false pair is one whose training image is no copy and not the same picture
    near_copy = [not f["exact"] and Path(f["train_path"]).name.startswith("copy-")
                 for f in report["leakage"]]  # fmt: skip
    found["leakage_near_copies"] = sum(near_copy)
    found["leakage_false_pairs"] = sum(
        not n and Path(f["test_path"]).read_bytes() != Path(f["train_path"]).read_bytes()
        for f, n in zip(report["leakage"], near_copy, strict=True)
    )
    found["leakage_false_similarities"] = [
        round(f["similarity"], 4)
        for f, n in zip(report["leakage"], near_copy, strict=True)
        if not n and Path(f["test_path"]).read_bytes() != Path(f["train_path"]).read_bytes()
    ]
    found["leakage_pairs"] = len(report["leakage"])
    found["outliers"] = len(report["outliers"])

    Xt, yt, _, names, meta = _rows(test)
    for method in ("temperature", "sigmoid", "isotonic"):
        r = api.train(train, classifier="logistic-regression", test=test, calibrate=method)
        found["ece_before"] = r["ece_before"]
        found[f"ece_{method}"] = r["ece"]
        folds = f"{r['folds_ece_before']:.4f} -> {r['folds_ece']:.4f}"
        found[f"calibration_{method}"] = f"{r['calibration_status']} (folds {folds})"
    clean = api.train(train, classifier="logistic-regression", test=test,
                      out=str(root / "clean.skops"), overwrite=True)  # fmt: skip
    noisy = api.train(faults["store"], classifier="logistic-regression", test=test,
                      out=str(root / "noisy.skops"), overwrite=True)  # fmt: skip
    found["accuracy_clean"], found["accuracy_noisy"] = clean["accuracy"], noisy["accuracy"]
    found.update(random_split_coverage(train, test, root, args))
    # the set's own split (the photos: test crops from tiles never seen in training)
    found["coverage_clean"], found["set_size_clean"] = coverage_of(clean["model_path"], Xt, yt,
                                                                   args.coverage)  # fmt: skip
    found["coverage_noisy"], found["set_size_noisy"] = coverage_of(noisy["model_path"], Xt, yt,
                                                                   args.coverage)  # fmt: skip

    saved = load_model(clean["model_path"])
    inside = trust.ood_scores(Xt, saved.trust)
    Xf, _, _, _, _ = _rows(stores[(other, "test")])
    found["ood_auroc_foreign"] = auroc(inside, trust.ood_scores(Xf, saved.trust))
    found["unfamiliar_in_domain"] = float(np.mean(inside > saved.trust["threshold"]))
    # near: train on all but the last --held-out classes, score their test images
    X, y, paths, _, _ = _rows(train)
    kept = y < len(names) - args.held_out
    near_store = _write(root / "near-train.h5", X[kept], y[kept], [paths[i] for i in
                        np.flatnonzero(kept)], names, meta)  # fmt: skip
    near = api.train(near_store, classifier="logistic-regression",
                     out=str(root / "near.skops"), overwrite=True)  # fmt: skip
    near_saved = load_model(near["model_path"])
    held = yt >= len(names) - args.held_out
    found["ood_auroc_near"] = auroc(trust.ood_scores(Xt[~held], near_saved.trust),
                                    trust.ood_scores(Xt[held], near_saved.trust))  # fmt: skip
    return found


# ---------------------------------------------------------------------- scale


def synthetic(path: Path, rows: int, dim: int = 1280, classes: int = 10, seed: int = 0) -> str:
    from transferkit.store import create_store

    if path.exists():
        return str(path)
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(classes, dim)).astype(np.float32)
    names = [f"c{i}" for i in range(classes)]
    meta = {"backbone": "efficientnet-lite0", "weights": "default", "pooling": "avg",
            "input_size": [224, 224]}  # fmt: skip
    with create_store(path, feature_dim=dim, label_names=names, metadata=meta) as writer:
        for start in range(0, rows, 10000):
            n = min(10000, rows - start)
            y = rng.integers(0, classes, n)
            X = np.maximum(centres[y] + rng.normal(0, 1.5, (n, dim)).astype(np.float32), 0)
            writer.append(X, y, [f"img/{i}.png" for i in range(start, start + n)])
    return str(path)


def scale_child(store: str, classifier: str, baseline: bool, query_rows: int) -> None:
    """In a fresh process: one audit (and the baseline's neighbours); prints JSON. Above
    ``query_rows`` rows the neighbour pass runs for the first ``query_rows`` query rows against
    every row, and its time is scaled by rows / query_rows (each query row is the same work:
    one row of products with every row, and one partition)."""
    import resource

    from transferkit import api, trust
    from transferkit.jobs.audit import _read_all, confident_learning, out_of_fold, tukey_fence
    from transferkit.options import AuditOptions
    from transferkit.store import open_store

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out: dict[str, Any] = {}
    t = time.perf_counter()
    if query_rows <= 0:
        report = api.audit(store, files=False, classifier=classifier)
        out["seconds"] = time.perf_counter() - t
        out["parts"] = report["summary"]["seconds"]
        out["rows"] = report["summary"]["rows"]
    else:
        options = AuditOptions(classifier=classifier, files=False)
        with open_store(store) as reader:
            X, y, _ = _read_all(reader, store)
        out["rows"], read = len(y), time.perf_counter() - t
        t = time.perf_counter()
        proba = out_of_fold(X, y, int(y.max()) + 1, options)
        confident_learning(proba, y)
        labels = time.perf_counter() - t
        t = time.perf_counter()
        Z = trust.centred_unit(X, X.mean(axis=0))
        distance = np.empty(query_rows, dtype=np.float32)
        for start, sims, _ in trust.neighbours(Z[:query_rows], Z, options.k, exclude_self=True):
            distance[start : start + len(sims)] = 1.0 - sims.mean(axis=1)
        tukey_fence(distance, options.outlier_fence)
        measured = time.perf_counter() - t
        neighbours = measured * len(y) / query_rows
        out["parts"] = {"read": read, "labels": labels, "neighbours_measured": measured,
                        "query_rows": query_rows, "neighbours": neighbours}  # fmt: skip
        out["seconds"] = read + labels + neighbours
    out["peak_mib"] = peak()
    if baseline:
        from sklearn.neighbors import NearestNeighbors

        X, _, _, _, _ = _rows(store)
        Z = trust.centred_unit(X, X.mean(axis=0))
        t = time.perf_counter()
        NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute").fit(Z).kneighbors(Z)
        out["sklearn_neighbours_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in trust.neighbours(Z, Z, 10, exclude_self=True):
            pass
        out["blocked_neighbours_seconds"] = time.perf_counter() - t
    print(json.dumps(out))


def run_scale(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    store = synthetic(WORK / "audit" / f"synthetic-{rows}.h5", rows)
    query = args.query_rows if rows > args.full_rows else 0
    command = [sys.executable, __file__, "--child", store, "--classifier", args.classifier,
               "--query-rows", str(query)]  # fmt: skip
    if rows <= args.baseline_rows:
        command.append("--baseline")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def target_lines(found: dict[str, Any], coverage: float) -> list[str]:
    """Each of the issue's targets against what this set gave: met or NOT met."""

    def said(ok: bool) -> str:
        return "met" if ok else "NOT met"

    methods = [v for k, v in found.items() if k.startswith("ece_") and k != "ece_before"]
    worst, before = max(methods), found["ece_before"]
    shuffled = found.get("random_ece_temperature", float("nan"))
    above = found.get("random_ece_splits_above_before", 0)
    cover = found.get("random_coverage_clean", float("nan"))
    return [
        f"label-issue recall at 2k >= 0.8: {said(found['labels_recall_at_2k'] >= 0.8)}",
        f"exact-copy leakage recall 1.0: {said(found['leakage_recall_exact'] == 1.0)}",
        f"ECE after calibration <= 0.05 and <= before, random splits (temperature): "
        f"{said(shuffled <= 0.05 and above == 0)} (mean {shuffled:.4f}, {above} splits above)",
        f"ECE after calibration <= 0.05 and <= before, own split (every method): "
        f"{said(worst <= 0.05 and worst <= before)} (worst {worst:.4f}, before {before:.4f})",
        f"foreign OOD AUROC >= 0.98: {said(found['ood_auroc_foreign'] >= 0.98)}",
        f"coverage within 0.02 of {coverage}: {said(abs(cover - coverage) <= 0.02)} ({cover:.4f})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="digits,photos")
    parser.add_argument("--size", type=int, default=96, help="input size of the features [96]")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--moved", type=float, default=0.05)
    parser.add_argument("--copied", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=2, help="classes of the near set [2]")
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5,
                        help="random splits of the pooled images (coverage) [5]")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--classifier", default="softmax",
                        help="out-of-fold classifier of the scale part")  # fmt: skip
    parser.add_argument("--baseline-rows", type=int, default=10000,
                        help="run scikit-learn's neighbours up to this many rows")  # fmt: skip
    parser.add_argument("--full-rows", type=int, default=20000,
                        help="run the whole audit up to this many rows [20000]")  # fmt: skip
    parser.add_argument("--query-rows", type=int, default=5000,
                        help="above --full-rows: query rows timed")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.child:
        scale_child(args.child, args.classifier, args.baseline, args.query_rows)
        return
    print(f"load: {Path('/proc/loadavg').read_text().strip()}; {os.cpu_count()} cores", flush=True)
    sets = [s for s in args.sets.split(",") if s]
    for name in sets:
        other = "photos" if name == "digits" else "digits"
        print(f"\n{name} ({args.train}/{args.test} images, {args.size} px):", flush=True)
        found = run_set(name, other, args)
        for key, value in found.items():
            print(
                f"  {key:<28} {value:.4f}" if isinstance(value, float) else f"  {key:<28} {value}"
            )
        for line in target_lines(found, args.coverage):
            print(f"  target: {line}")
    for rows in [int(r) for r in args.rows.split(",") if r]:
        found = run_scale(rows, args)
        print(f"\nscale, {rows} rows x 1280: {json.dumps(found)}", flush=True)
        if "sklearn_neighbours_seconds" in found:
            ratio = found["sklearn_neighbours_seconds"] / found["blocked_neighbours_seconds"]
            print(f"  blocked neighbours vs scikit-learn brute force: {ratio:.2f}x")
    print(f"\nload: {Path('/proc/loadavg').read_text().strip()}", flush=True)


if __name__ == "__main__":
    main()
