"""The Trainer's per-step overhead against a plain ``model.fit`` on the same model and data.

All runs train the same small CNN + linear head (built from the same seed) on the digits of
scikit-learn as 32x32 RGB images (tiled to ``--images``) for ``--epochs`` epochs, with no
validation split. Baselines compile once and call ``model.fit``: "plain" over one epoch's dataset
(re-iterated each epoch), "same" over exactly the Trainer's input (all epochs' batches in one
dataset, ``steps_per_epoch``). The Trainer runs its phase loop (strategy, callbacks bridge, history,
hooks; no checkpoint). Runs alternate ``--repeats`` times; the figures are medians over repeats
of the steady-state time per step (epochs after the first, which includes tracing), and the
total-time ratio including compile and the first epoch.

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


def run_baseline(
    images: np.ndarray, labels: np.ndarray, epochs: int, batch: int, same_input: bool
) -> Any:
    """Plain ``model.fit``: over one epoch's dataset re-iterated each epoch (what a script
    usually does), or, with ``same_input``, over exactly the Trainer's input (one dataset of all
    epochs' batches with ``steps_per_epoch``), so that only the Trainer's own work differs."""
    import keras

    from transferkit.trainer import ArrayDataModule

    model = build(0)
    data = ArrayDataModule(images, labels, fractions=(1.0, 0.0), batch_size=batch, augment="none")
    data.setup(preprocess=model.backbone.preprocess, input_size=model.input_size)
    timer = EpochTimer()
    start = time.perf_counter()
    model.freeze_base()
    model.compile(keras.optimizers.RMSprop(1e-3))  # what head-only compiles
    if same_input:
        dataset, steps = data.train_segment(0, epochs)
    else:
        dataset, steps = data.train_dataset(0), None
    model.keras_model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
        callbacks=[timer.callback],
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
    # warm-up: imports, plugin loading and TensorFlow's first graphs are not what is measured
    run_baseline(images, labels, 2, args.batch_size, True)
    run_trainer(images, labels, 2, args.batch_size)
    steady: dict[str, list[float]] = {"plain": [], "same": [], "trainer": []}
    total: dict[str, list[float]] = {"plain": [], "same": [], "trainer": []}
    for r in range(args.repeats):
        runs = {
            "plain": lambda: run_baseline(images, labels, args.epochs, args.batch_size, False),
            "same": lambda: run_baseline(images, labels, args.epochs, args.batch_size, True),
            "trainer": lambda: run_trainer(images, labels, args.epochs, args.batch_size),
        }
        for key, fn in runs.items():
            seconds, epoch_times = fn()
            total[key].append(seconds)
            steady[key].append(statistics.median(epoch_times[1:]) / steps)
        print(
            f"repeat {r + 1}: "
            + ", ".join(
                f"{k} {total[k][-1]:.2f}s ({steady[k][-1] * 1e3:.3f} ms/step)" for k in runs
            )
        )
    med = {k: statistics.median(v) for k, v in steady.items()}
    tot = {k: statistics.median(v) for k, v in total.items()}
    print(
        f"steady-state per step: plain fit {med['plain'] * 1e3:.3f} ms, plain fit on the "
        f"Trainer's input {med['same'] * 1e3:.3f} ms, Trainer {med['trainer'] * 1e3:.3f} ms"
    )
    print(
        "ratio Trainer / plain fit on the same input (per step, steady state): "
        f"{med['trainer'] / med['same']:.3f}"
    )
    print(
        f"ratio Trainer / plain fit (per step, steady state): {med['trainer'] / med['plain']:.3f}"
    )
    print(
        "ratio Trainer / plain fit on the same input (total incl. first epoch and compile): "
        f"{tot['trainer'] / tot['same']:.3f}"
    )
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
