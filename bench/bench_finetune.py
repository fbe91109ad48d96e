"""The default fine-tune with and without the frozen-part cache, on the same sets, interleaved.

The photos of ``bench_quality.py`` (each photo a class; training crops from 12 of its 16 tiles,
test crops from the other 4) written once at ``--size`` px; then ``transferkit.finetune`` with
everything at its default (``warmup-unfreeze``, linear head from the probe, flip augmentation,
early stopping, best epoch restored), ``test=`` the test folder, in a fresh process per run:

* ``plain``: ``frozen_cache=False``, the whole network every step;
* ``cached``: the default, the frozen part's output cached per phase cut;
* ``shipped`` (with ``--shipped``): ``plain`` under TensorFlow's default CPU allocator.

``plain`` and ``cached`` run with ``TF_CPU_ALLOCATOR_USE_BFC=true`` (``--allocator shipped``:
``false`` for both), ``shipped`` with ``false``. The runs alternate (plain, cached, cached,
plain, ...) ``--repeats`` times. Each line gives wall, user and system seconds, peak RSS, the
epochs run and the test accuracy; then the median wall times, their ratio and the accuracies'
difference in images.

    .venv/bin/python bench/bench_finetune.py                       # 224 px, 600/300 images
    .venv/bin/python bench/bench_finetune.py --size 96 --train 180 --test 90 --epochs 3
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

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))


def one_run(args: argparse.Namespace) -> None:
    """The child: one fine-tune, its summary's figures as one JSON line on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from transferkit import api

    options: dict[str, Any] = {}
    if args.epochs:
        options["epochs"] = [args.epochs, args.epochs]
    started = time.perf_counter()
    summary = api.finetune(
        str(args.train_dir), backbone=args.backbone, out=str(args.out), test=str(args.test_dir),
        input_size=args.size, batch_size=args.batch_size, overwrite=True, progress=False,
        frozen_cache=args.variant == "cached", **options,
    )  # fmt: skip
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "accuracy": summary["test_accuracy"],
                "test_images": summary["data"]["test"],
                "epochs": summary["epochs"],
            }
        )
    )


def launch(variant: str, args: argparse.Namespace, train: Path, test: Path) -> dict[str, Any]:
    bfc = "false" if variant == "shipped" or args.allocator == "shipped" else "true"
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": bfc, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable, __file__, "--child", variant, "--train-dir", str(train),
        "--test-dir", str(test), "--out", str(WORK / f"finetune-{variant}"),
        "--size", str(args.size), "--backbone", args.backbone,
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs or 0),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    out = process.stdout.read() if process.stdout else ""
    if status != 0:
        raise SystemExit(f"{variant} failed (status {status})")
    figures = json.loads(out.strip().splitlines()[-1])
    return {
        "variant": variant,
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "allocator_bfc": bfc,
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--train", type=int, default=600, help="training images [600]")
    parser.add_argument("--test", type=int, default=300, help="test images [300]")
    parser.add_argument("--epochs", type=int, default=None, help="per phase [the default 10]")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of two runs each [1]")
    parser.add_argument("--allocator", choices=("bfc", "shipped"), default="bfc")
    parser.add_argument("--shipped", action="store_true", help="also plain, shipped allocator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--test-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.variant = args.child
        args.epochs = args.epochs or None
        one_run(args)
        return

    sys.path.insert(0, str(HERE))
    from bench_quality import write_photos

    root = WORK / f"finetune-photos-{args.size}-{args.train}-{args.test}-{args.seed}"
    if not (root / "test").is_dir():
        write_photos(root, args.train, args.test, args.size, args.seed)
    train, test = root / "train", root / "test"
    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().strip()}")
    order: list[str] = []
    for i in range(args.repeats):  # plain, cached, cached, plain; then the other way round
        pair = ["plain", "cached"] if i % 2 == 0 else ["cached", "plain"]
        order += pair + (["shipped"] if args.shipped else []) + pair[::-1]
    rows = []
    for variant in order:
        row = launch(variant, args, train, test)
        rows.append(row)
        print(
            f"{variant:8s} wall {row['wall']:7.1f} s  user {row['user']:7.1f}  sys "
            f"{row['sys']:6.1f}  rss {row['rss_mb']:6.0f} MB  epochs {row['epochs']:2d}  "
            f"test accuracy {row['accuracy']:.4f} of {row['test_images']}  "
            f"(BFC {row['allocator_bfc']})",
            flush=True,
        )
    with open("/proc/loadavg") as f:
        print(f"load after: {f.read().strip()}")
    walls = {v: statistics.median(r["wall"] for r in rows if r["variant"] == v) for v in set(order)}
    accs = {v: [r["accuracy"] for r in rows if r["variant"] == v] for v in set(order)}
    n_test = rows[0]["test_images"]
    worst = max(abs(a - b) for a in accs["plain"] for b in accs["cached"]) * n_test
    print(
        f"median wall: plain {walls['plain']:.1f} s, cached {walls['cached']:.1f} s: "
        f"{walls['plain'] / walls['cached']:.2f}x; test accuracy differs by at most "
        f"{worst:.1f} image(s)"
    )
    ratio = walls["plain"] / walls["cached"]
    print(
        f"target: at least 2.5x, accuracy within one image: "
        f"{'met' if ratio >= 2.5 and worst <= 1.0 else 'NOT met'} ({ratio:.2f}x, {worst:.1f})"
    )
    if "shipped" in walls:
        print(
            f"against the shipped allocator without the cache ({walls['shipped']:.1f} s): "
            f"{walls['shipped'] / walls['cached']:.2f}x"
        )


if __name__ == "__main__":
    main()
