"""Spot-check benchmark: worker processes on every core against a plain serial loop.

Grid: the digits as images through the offline efficientnet-lite0 at 64 px with average and max
pooling (the demo's two feature sets, extracted once and cached) x the classifiers given (default:
the ``fast`` group plus a few heavier classic models). Baseline: the same pairs fitted one after
another in this process (``isolate=False``, what a hand-written loop does). Both runs give the
same scores (checked).

    .venv/bin/python bench/bench_spotcheck.py [--classifiers fast,random-forest] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from transferkit import api
from transferkit.jobs.demo import write_digits
from transferkit.jobs.feature_cache import cached_store, parse_backbone
from transferkit.options import CacheOptions

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))
SETTINGS = ("efficientnet-lite0@64", "efficientnet-lite0@64:max")


def scores(report: dict) -> list[tuple]:
    return [(r["backbone"], r["classifier"], r["status"], r["accuracy"]) for r in report["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--classifiers", default="fast,random-forest,extra-trees,knn-3,linear-svc-0.001"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    images = write_digits(WORK / "digits")
    stores = [
        cached_store(
            images["images"], parse_backbone(s), CacheOptions(cache_dir=str(WORK / "cache"))
        )[0]
        for s in SETTINGS
    ]
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", file=sys.stderr)
    common = {"classifiers": args.classifiers, "progress": False, "timeout": None}

    start = time.perf_counter()
    serial = api.spotcheck(stores, isolate=False, **common)
    serial_seconds = time.perf_counter() - start

    start = time.perf_counter()
    parallel = api.spotcheck(stores, jobs=args.jobs, **common)
    parallel_seconds = time.perf_counter() - start

    same = scores(serial) == scores(parallel)
    print(f"grid: {len(serial['rows'])} pairs ({len(stores)} feature sets x classifiers)")
    print(f"serial loop in one process: {serial_seconds:.1f}s")
    print(f"worker processes, --jobs {args.jobs}: {parallel_seconds:.1f}s")
    print(f"speed-up: {serial_seconds / parallel_seconds:.2f}x; identical scores: {same}")
    print(
        f"best: {parallel['best_model']} on {parallel['best_features']}, "
        f"accuracy {parallel['best_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
