"""The Trainer on 2 mirrored replicas (2 logical CPU devices) against 1 device, same global batch.

On a machine without GPUs, ``--devices 2`` splits the CPU into two logical devices to try the
distributed path; this measures what that costs: both variants train the same small CNN + head
(``bench_trainer.build``) on the digits as 32x32 RGB images for ``--epochs`` epochs of a
head-only phase. Runs alternate ``--repeats`` times; figures are medians of the steady-state
seconds per epoch (epochs after the first, which includes tracing).

    .venv/bin/python bench/bench_distribute.py [--images 2048] [--batch-size 64] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(devices: int, images: Any, labels: Any, args: Any) -> list[float]:
    from bench_trainer import build

    from transferkit.trainer import ArrayDataModule, Callback, Trainer, resolve_strategy

    times: list[float] = []

    class Timer(Callback):
        def on_epoch_start(self, trainer: Any, epoch: int) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, trainer: Any, epoch: int, logs: Any) -> None:
            times.append(time.perf_counter() - self.start)

    kind = "mirrored" if devices > 1 else "auto"
    trainer = Trainer(devices=devices, strategy=kind, seed=0, enable_progress=False,
                      callbacks=[Timer()])  # fmt: skip
    data = ArrayDataModule(images, labels, fractions=(1.0, 0.0), seed=0,
                           batch_size=args.batch_size, augment="none")  # fmt: skip
    with trainer.scope():
        model = build(0)
    strategy = resolve_strategy("head-only", epochs=args.epochs, learning_rate=1e-2)
    result = trainer.fit(model, data, strategy)
    assert result["replicas"] == devices
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bench_trainer import digits_images

    from transferkit.trainer.distribute import split_cpu

    split_cpu(2)  # before TensorFlow sets its devices up
    images, labels = digits_images(args.images)
    figures: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for devices in (1, 2):
            figures[devices].append(statistics.median(run(devices, images, labels, args)))
    one, two = (statistics.median(figures[d]) for d in (1, 2))
    print(f"{args.images} images, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.repeats} repeats (median steady-state seconds per epoch)")  # fmt: skip
    print(f"  1 device:             {one:.3f} s/epoch  ({args.images / one:.0f} images/s)")
    print(f"  2 replicas (mirrored): {two:.3f} s/epoch  ({args.images / two:.0f} images/s)")
    print(f"  ratio 2 replicas / 1 device: {two / one:.2f}")


if __name__ == "__main__":
    main()
