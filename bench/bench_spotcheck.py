"""Spot-check benchmark: worker processes on every core against a plain serial loop, and what
each lever of the local runner gives.

Grid: the digits as images through the offline efficientnet-lite0 at 64 px with average and max
pooling (the demo's two feature sets, extracted once and cached) x the classifiers given (default:
the ``fast`` group plus a few heavier classic models). Each run is a fresh process (so each pays
its imports and, on workers, the fork server's start, as a command does), timed from the call of
``spotcheck`` to its return; the variants run interleaved, ``--repeats`` times:

* ``serial``: the pairs one after another in the process (``isolate=False``, what a hand-written
  loop does): the baseline;
* ``given-order``: workers started when the grid starts, pairs in the grid's order (the runner
  before the levers);
* ``longest-first``: the same, pairs handed out by falling cost estimate;
* ``default``: ``transferkit.spotcheck`` as shipped: workers started while the stores are read
  and split, longest pairs first.

Every variant must give the serial loop's scores (checked). Besides the times, each variant's
share of worker time spent fitting (the pairs' own seconds over workers x wall) says what the
runner loses, whatever the machine's load does to the fits themselves. The split is one ``.npy``
folder per feature set that every worker memory-maps; the bench also times reading it per
pair, the most that handing it to each worker once could save.

    .venv/bin/python bench/bench_spotcheck.py [--classifiers fast,random-forest] [--jobs N]
        [--repeats 3] [--variants serial,given-order,longest-first,default]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))
SETTINGS = ("efficientnet-lite0@64", "efficientnet-lite0@64:max")
VARIANTS = ("serial", "given-order", "longest-first", "default")


def scores(report: dict) -> list[tuple]:
    return [(r["backbone"], r["classifier"], r["status"], r["accuracy"]) for r in report["rows"]]


def child(variant: str, stores: list[str], classifiers: str, jobs: int) -> dict[str, Any]:
    """One timed spot-check in this (fresh) process."""
    import functools

    from transferkit import api
    from transferkit.jobs.spotcheck_runner import run_grid

    if variant == "components":
        return components(stores, jobs)
    common: dict[str, Any] = {"classifiers": classifiers, "progress": False, "timeout": None}
    if variant == "serial":
        common["isolate"] = False
    elif variant in ("given-order", "longest-first"):
        common["runner"] = functools.partial(run_grid, longest_first=variant == "longest-first")
    elif variant != "default":
        raise SystemExit(f"unknown variant {variant}: one of {', '.join(VARIANTS)}")
    start = time.perf_counter()
    report = api.spotcheck(stores, jobs=jobs, **common)
    seconds = time.perf_counter() - start
    pair_seconds = [(r["fit_seconds"] or 0) + (r["predict_seconds"] or 0) for r in report["rows"]]
    return {
        "seconds": seconds,
        "scores": scores(report),
        "best": report["best_model"],
        "pair_seconds": pair_seconds,
    }


def components(stores: list[str], jobs: int) -> dict[str, Any]:
    """In a fresh process: the seconds until ``jobs`` workers are forked from a fork server
    started now (its imports included), and the seconds to read the stores and write their
    splits (what starting the workers early overlaps)."""
    import shutil

    from transferkit.jobs.spotcheck import _prepare_split, resolve_sources
    from transferkit.jobs.spotcheck_runner import WorkerPool
    from transferkit.options import SpotcheckOptions

    start = time.perf_counter()
    pool = WorkerPool(jobs)
    workers = pool.take(jobs)
    workers_seconds = time.perf_counter() - start
    for worker in workers:
        worker.stop()
    scratch = Path(tempfile.mkdtemp(dir=WORK))
    start = time.perf_counter()
    options = SpotcheckOptions()
    for source in resolve_sources(stores, options):
        _prepare_split(source, scratch, options.test_size, options.seed, None)
    split_seconds = time.perf_counter() - start
    shutil.rmtree(scratch)
    return {"workers_ready": workers_seconds, "splits": split_seconds}


def makespan(seconds: list[float], order: list[int], workers: int) -> float:
    """When the last of ``workers`` ends, each taking the next pair of ``order`` when free."""
    free = [0.0] * workers
    for i in order:
        free[free.index(min(free))] += seconds[i]
    return max(free)


def schedule_figures(pair_seconds: list[float], costs: list[float], workers: int) -> str:
    """The tail lever alone, free of the machine's load: the grid's makespan from the serial
    loop's per-pair times, handed out in grid order and by falling cost estimate."""
    given = makespan(pair_seconds, list(range(len(pair_seconds))), workers)
    by_cost = sorted(range(len(costs)), key=lambda i: -costs[i])
    longest = makespan(pair_seconds, by_cost, workers)
    ideal = sum(pair_seconds) / workers
    return (
        f"fits alone, {workers} workers (from the serial run's pair times, sum "
        f"{sum(pair_seconds):.1f}s): grid order {given:.1f}s, longest first {longest:.1f}s, "
        f"perfect split {ideal:.1f}s"
    )


def cost_estimates(stores: list[str], classifiers: str) -> list[float]:
    """The job's cost estimate of each pair (the classifier's hint x the split's size)."""
    from transferkit import estimators, registry

    names = estimators.select(classifiers)
    hints = [float(registry.classifier(n).metadata.get("cost", 1.0)) for n in names]
    return [h for _ in stores for h in hints]  # every store has the same rows here


def split_read_seconds(stores: list[str], pairs: int) -> float:
    """Reading one feature set's split as a worker does for each pair (``load_split``, every page
    touched), times the grid's pairs: the most that handing each worker the split once saves."""
    import numpy as np

    from transferkit.jobs.spotcheck_runner import load_split, save_split
    from transferkit.store import open_store

    with open_store(stores[0]) as reader:
        X, y = reader.read_rows(np.arange(len(reader.labels)))
    folder = Path(tempfile.mkdtemp(dir=WORK))
    save_split(folder, X[::2], y[::2], X[1::2], y[1::2], int(y.max()) + 1)
    start = time.perf_counter()
    for _ in range(20):
        data = load_split(folder)
        float(np.asarray(data["X_train"]).sum() + np.asarray(data["X_test"]).sum())
    return (time.perf_counter() - start) / 20 * pairs


def run_child(variant: str, stores: list[str], args: argparse.Namespace) -> dict[str, Any]:
    out = WORK / "spotcheck-result.json"
    command = [sys.executable, __file__, "--child", variant, "--stores", ",".join(stores)]
    command += ["--classifiers", args.classifiers, "--jobs", str(args.jobs)]
    subprocess.run([*command, "--child-out", str(out)], check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--classifiers", default="fast,random-forest,extra-trees,knn-3,linear-svc-0.001"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--stores", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.stores.split(","), args.classifiers, args.jobs)
        Path(args.child_out).write_text(json.dumps(result))
        return

    from transferkit.jobs.demo import write_digits
    from transferkit.jobs.feature_cache import cached_store, parse_backbone
    from transferkit.options import CacheOptions

    WORK.mkdir(parents=True, exist_ok=True)
    images = write_digits(WORK / "digits")
    stores = [
        cached_store(
            images["images"], parse_backbone(s), CacheOptions(cache_dir=str(WORK / "cache"))
        )[0]
        for s in SETTINGS
    ]
    variants = args.variants.split(",")
    print(f"load before: {loadavg()}; {os.cpu_count()} cores")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            result = run_child(variant, stores, args)
            results[variant].append(result)
            print(f"  {variant:14} {result['seconds']:6.1f}s", flush=True)
    print(f"load after: {loadavg()}")
    first = results[variants[0]][0]
    pairs = len(first["scores"])
    print(f"grid: {pairs} pairs ({len(stores)} feature sets x classifiers), --jobs {args.jobs}")
    base = "serial" if "serial" in results else variants[0]
    for variant in variants:
        runs = results[variant]
        same = all(r["scores"] == first["scores"] for r in runs)
        # the ratio of each repeat against the baseline run next to it, then their median
        ratios = [b["seconds"] / r["seconds"] for b, r in zip(results[base], runs, strict=True)]
        seconds = [r["seconds"] for r in runs]
        # how busy the workers were: the pairs' own seconds over workers x wall (a loaded
        # machine slows the fits, not this share)
        workers = 1 if variant == "serial" else args.jobs
        busy = [sum(r["pair_seconds"]) / (workers * r["seconds"]) for r in runs]
        print(
            f"{variant:14} median {statistics.median(seconds):6.1f}s "
            f"(runs: {', '.join(f'{x:.1f}' for x in seconds)}); "
            f"speed-up over {base}: {statistics.median(ratios):.2f}x "
            f"({', '.join(f'{x:.2f}' for x in ratios)}); workers busy "
            f"{statistics.median(busy):.0%} ({', '.join(f'{x:.0%}' for x in busy)}); "
            f"identical scores: {same}"
        )
        if variant == "default":
            met = statistics.median(ratios) >= 1.8 and same
            print(f"{'':14} target: at least 1.8x with identical scores: "
                  f"{'met' if met else 'NOT met'}")  # fmt: skip
    print(f"best: {first['best']}")
    if "serial" in results:
        serial_pairs = [
            statistics.median(t)
            for t in zip(*(r["pair_seconds"] for r in results["serial"]), strict=True)
        ]
        print(schedule_figures(serial_pairs, cost_estimates(stores, args.classifiers), args.jobs))
    print(
        f"reading the split per pair, all {pairs} pairs: {split_read_seconds(stores, pairs):.3f}s"
    )
    parts = [run_child("components", stores, args) for _ in range(args.repeats)]
    print(
        "fork server and workers up: "
        + ", ".join(f"{p['workers_ready']:.2f}" for p in parts)
        + "s; stores read and split: "
        + ", ".join(f"{p['splits']:.2f}" for p in parts)
        + "s (what starting the workers early can overlap: the smaller of the two)"
    )


if __name__ == "__main__":
    main()
