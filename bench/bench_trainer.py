"""The Trainer's per-step overhead against a plain ``model.fit`` on the same model and data.

Both runs train the same small CNN + linear head (built from the same seed) on the same
batches (the scikit-learn digits as 32x32 RGB images, tiled to ``--images``) for ``--epochs``
epochs, with no validation split. The baseline compiles once and calls ``model.fit(dataset,
epochs=E)``; the Trainer runs its phase loop (one ``fit`` per epoch, strategy, callbacks,
checkpoint-free). Runs alternate (baseline, trainer, baseline, ...) ``--repeats`` times; the figure
is the median over repeats of the steady-state time per step (epochs after the first, which
includes tracing), and the total-time ratio including the first epoch.

    .venv/bin/python bench/bench_trainer.py [--images 2048] [--epochs 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def digits_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    reps = int(np.ceil(n / len(d.images)))
    images = np.repeat(d.images[..., None] * (255.0 / 16.0), 3, axis=-1)
    images = np.tile(images, (reps, 1, 1, 1))[:n]
    return images.astype(np.float32), np.tile(d.target, reps)[:n]


def build(seed: int) -> Any:
    import keras

    from transferkit import Backbone
    from transferkit.trainer import TransferModel, seed_everything

    seed_everything(seed)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, f in enumerate((16, 32), start=1):
        x = keras.layers.Conv2D(f, 3, padding="same", name=f"block{i}_conv")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    backbone = Backbone(
        "bench-cnn", keras.Model(inputs, x), lambda t: t / 255.0, (32, 32), "avg", 32, "none"
    )
    return TransferModel(backbone, "linear", num_classes=10, head_options={"dropout": 0.0})


class EpochTimer:
    def __init__(self) -> None:
        import keras

        timer = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                timer.start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                timer.times.append(time.perf_counter() - timer.start)

        self.callback = _CB()
        self.times: list[float] = []
        self.start = 0.0


def run_baseline(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int) -> Any:
    import keras

    from transferkit.trainer import ArrayDataModule

    model = build(0)
    data = ArrayDataModule(images, labels, fractions=(1.0, 0.0), batch_size=batch, augment="none")
    data.setup(preprocess=model.backbone.preprocess, input_size=model.input_size)
    timer = EpochTimer()
    start = time.perf_counter()
    model.freeze_base()
    model.compile(keras.optimizers.RMSprop(1e-3))  # what head-only compiles
    model.keras_model.fit(
        data.train_dataset(0), epochs=epochs, verbose=0, shuffle=False, callbacks=[timer.callback]
    )
    return time.perf_counter() - start, timer.times


def run_trainer(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int) -> Any:
    from transferkit.trainer import ArrayDataModule, Trainer, resolve_strategy

    model = build(0)
    data = ArrayDataModule(images, labels, fractions=(1.0, 0.0), batch_size=batch, augment="none")
    trainer = Trainer(seed=0, enable_progress=False)
    start = time.perf_counter()
    result = trainer.fit(model, data, resolve_strategy("head-only", epochs=epochs))
    total = time.perf_counter() - start
    return total, [row["seconds"] for row in result["history"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    images, labels = digits_images(args.images)
    steps = int(np.ceil(args.images / args.batch_size))
    load = os.getloadavg()[0]
    print(f"load average (1 min) before: {load:.2f}; {args.images} images, {steps} steps/epoch")
    base_steady, trainer_steady, base_total, trainer_total = [], [], [], []
    for r in range(args.repeats):
        bt, btimes = run_baseline(images, labels, args.epochs, args.batch_size)
        tt, ttimes = run_trainer(images, labels, args.epochs, args.batch_size)
        base_total.append(bt)
        trainer_total.append(tt)
        base_steady.append(statistics.median(btimes[1:]) / steps)
        trainer_steady.append(statistics.median(ttimes[1:]) / steps)
        print(
            f"repeat {r + 1}: plain fit {bt:.2f}s ({base_steady[-1] * 1e3:.3f} ms/step), "
            f"Trainer {tt:.2f}s ({trainer_steady[-1] * 1e3:.3f} ms/step)"
        )
    b, t = statistics.median(base_steady), statistics.median(trainer_steady)
    ratio = t / b
    total_ratio = statistics.median(trainer_total) / statistics.median(base_total)
    print(f"steady-state per-step: plain fit {b * 1e3:.3f} ms, Trainer {t * 1e3:.3f} ms")
    print(f"ratio Trainer / plain fit (per step, steady state): {ratio:.3f}")
    print(f"ratio Trainer / plain fit (total time incl. first epoch): {total_ratio:.3f}")
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
