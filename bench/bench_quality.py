"""Quality benchmark: what each of transferkit's recipes reaches on real images, on one split.

Two data sets made from images that ship in packages, each written as a training folder and a
separate test folder (one sub-folder per class; the same images for every method):

* ``digits``: scikit-learn's 8x8 handwritten digits, upscaled to RGB PNG files (10 classes);
* ``photos``: real photographs (scikit-image's ``astronaut``, ``chelsea``, ``coffee``, ``rocket``,
  ``immunohistochemistry``, ``hubble_deep_field``, ``retina`` and scikit-learn's ``china`` and
  ``flower``): each photo is a class; it is cut into a 4x4 grid of tiles, and its images are
  random square crops (up to a tile's size, half of them mirrored) inside one tile: those of
  training from 12 tiles, those of the test set from the other 4, so no test pixel was ever seen
  in training.

For ``--backbone`` (default ``efficientnet-lite0``, whose weights ship offline; e.g.
``keras-hub:dinov2_small`` with ``--pooling cls+mean``, or a local keras-hub preset folder), on the
training folder and scored on the test folder:

1. raw pixels (the images at 32x32, flattened) into a standardised logistic regression;
2. random-init features (``weights=none``) into the same logistic regression;
3. the frozen probe: pretrained features, standardised logistic regression (``train --test``);
4. the best of the ``recommended`` spot-check (``spotcheck --test``);
5. ``stream --test`` with its default learner (``softmax``) after 1 and after ``--passes`` passes;
6. the default fine-tune (``finetune --test``: warmup-unfreeze, linear head, early stopping).

Every line gives the test accuracy and the seconds it took (extraction is timed apart).

    .venv/bin/python bench/bench_quality.py            # 224 px, 600/300 images per set
    .venv/bin/python bench/bench_quality.py --quick    # 96 px, 300/150 images, short fine-tune
    .venv/bin/python bench/bench_quality.py --quick --skip pixels,random,spotcheck,finetune
    .venv/bin/python bench/bench_quality.py --reuse --skip pixels,random,spotcheck  # same stores
    .venv/bin/python bench/bench_quality.py --backbone keras-hub:dinov2_small --pooling cls+mean
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))
BACKBONE = "efficientnet-lite0"
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)


# ---------------------------------------------------------------------- data sets


def _save(image: np.ndarray, path: Path, size: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(path)


def write_digits(root: Path, n_train: int, n_test: int, size: int, seed: int) -> tuple[Path, Path]:
    """The digits as dark-on-white RGB PNGs, a stratified train/test draw of the 1,797."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(
        index,
        train_size=min(n_train, len(index) - n_test),
        test_size=n_test,
        stratify=digits.target,
        random_state=seed,
    )
    for part, rows in (("train", train), ("test", test)):
        for i in rows:
            ink = (255 - digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
            _save(ink, root / part / str(digits.target[i]) / f"{i:04d}.png", size)
    return root / "train", root / "test"


def photos() -> dict[str, np.ndarray]:
    """The real photographs that ship with scikit-image and scikit-learn (RGB uint8)."""
    from sklearn.datasets import load_sample_images

    found: dict[str, np.ndarray] = {}
    try:
        import skimage.data as data

        for name in SKIMAGE_PHOTOS:
            try:
                image = np.asarray(getattr(data, name)())
            except Exception:  # a photo this version does not ship offline
                continue
            if image.ndim == 3 and image.shape[2] == 3:
                found[name] = image.astype(np.uint8)
    except ImportError:
        print("scikit-image is not installed: photos from scikit-learn only", file=sys.stderr)
    sample = load_sample_images()
    for name, image in zip(("china", "flower"), sample.images, strict=True):
        found[name] = np.asarray(image, dtype=np.uint8)
    return found


def write_photos(root: Path, n_train: int, n_test: int, size: int, seed: int) -> tuple[Path, Path]:
    """Random crops of each photo; training crops from 12 of its 16 tiles, test crops from 4."""
    rng = np.random.default_rng(seed)
    images = photos()
    per_train = max(1, n_train // len(images))
    per_test = max(1, n_test // len(images))
    for name, image in images.items():
        h, w = image.shape[:2]
        tiles = [(r, c) for r in range(4) for c in range(4)]
        order = rng.permutation(len(tiles))
        held = {tiles[i] for i in order[:4]}
        for part, count in (("train", per_train), ("test", per_test)):
            pool = [t for t in tiles if (t in held) == (part == "test")]
            for k in range(count):
                r, c = pool[rng.integers(len(pool))]
                top, bottom = r * h // 4, (r + 1) * h // 4
                left, right = c * w // 4, (c + 1) * w // 4
                side = int(min(h, w) * rng.uniform(0.25, 0.6))
                # a crop centred in the tile, clipped to it: only that tile's pixels
                side = min(side, bottom - top, right - left)
                y0 = int(rng.integers(top, bottom - side + 1))
                x0 = int(rng.integers(left, right - side + 1))
                crop = image[y0 : y0 + side, x0 : x0 + side]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                _save(np.ascontiguousarray(crop), root / part / name / f"{k:04d}.png", size)
    return root / "train", root / "test"


# ---------------------------------------------------------------------- methods


def _pixels(folder: Path, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    X, y = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            image = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
            X.append(np.asarray(image, dtype=np.float32).reshape(-1) / 255.0)
            y.append(label)
    return np.stack(X), np.asarray(y)


def raw_pixels(train: Path, test: Path) -> float:
    from transferkit import estimators

    X, y = _pixels(train)
    X_test, y_test = _pixels(test)
    model = estimators.fit(estimators.build("logistic-regression"), X, y)
    return float(np.mean(estimators.predict(model, X_test) == y_test))


def extract(
    folder: Path, out: Path, args: argparse.Namespace, weights: Any, reuse: bool = False
) -> str:
    from transferkit import api

    if reuse and out.exists():
        return str(out)

    api.extract(
        str(folder),
        backbone=args.backbone,
        out=str(out),
        weights=weights,
        pooling=args.pooling,
        input_size=(args.size, args.size),
        overwrite=True,
        progress=False,
    )
    return str(out)


def timed(label: str, fn: Callable[[], Any], rows: list[dict[str, Any]], **extra: Any) -> Any:
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    accuracy = value if isinstance(value, float) else value["accuracy"]
    rows.append({"method": label, "accuracy": accuracy, "seconds": seconds, **extra})
    print(f"  {label:<44} accuracy {accuracy:.4f}  {seconds:8.1f}s", flush=True)
    return value


def run_set(name: str, train: Path, test: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from transferkit import api

    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in args.backbone)
    work = WORK / "quality" / f"{train.parent.name}-{label}-{args.pooling}-stores"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    n_train = sum(1 for _ in train.rglob("*.png"))
    n_test = sum(1 for _ in test.rglob("*.png"))
    print(
        f"\n{name}: {n_train} training / {n_test} test images, {args.size} px, "
        f"{args.backbone}:{args.pooling}",
        flush=True,
    )

    skip = set(args.skip.split(",")) if args.skip else set()
    if "pixels" not in skip:
        timed("raw pixels 32x32 + standardised logreg", lambda: raw_pixels(train, test), rows)

    start = time.perf_counter()
    if "random" not in skip:
        rand_train = extract(train, work / "random-train.h5", args, None, args.reuse)
        rand_test = extract(test, work / "random-test.h5", args, None, args.reuse)
    feat_train = extract(train, work / "train.h5", args, "default", args.reuse)
    feat_test = extract(test, work / "test.h5", args, "default", args.reuse)
    print(f"  (extraction of both folders: {time.perf_counter() - start:.1f}s)")

    def probe(store: str, test_store: str) -> dict[str, Any]:
        return api.train(store, classifier="logistic-regression", test=test_store)

    if "random" not in skip:
        timed(
            "random-init features + standardised logreg", lambda: probe(rand_train, rand_test), rows
        )
    frozen = timed("frozen probe (standardised logreg)", lambda: probe(feat_train, feat_test), rows)

    def spot() -> dict[str, Any]:
        report = api.spotcheck(
            [feat_train], classifiers="recommended", test=feat_test, progress=False
        )
        return {"accuracy": report["best_accuracy"], "best": report["best_model"]}

    best: dict[str, Any] = {"accuracy": float("nan")}
    if "spotcheck" not in skip:
        best = timed("best of the recommended spot-check", spot, rows)
        rows[-1]["method"] += f" ({best['best']})"
        print(f"    best pair: {best['best']}")

    for passes in (1, args.passes):
        timed(
            f"stream softmax, {passes} pass{'es' if passes > 1 else ''}",
            lambda passes=passes: api.stream(
                feat_train, classifier="softmax", test=feat_test, passes=passes, progress=False
            ),
            rows,
        )

    def tune() -> dict[str, Any]:
        options: dict[str, Any] = {}
        if args.quick:
            options["epochs"] = [args.quick_epochs, args.quick_epochs]
        summary = api.finetune(
            str(train),
            backbone=args.backbone,
            out=str(work / "finetune"),
            test=str(test),
            input_size=args.size,
            batch_size=32,
            overwrite=True,
            progress=False,
            **options,
        )
        return {"accuracy": summary["test_accuracy"], "epochs": summary["epochs"]}

    stream_n = rows[-1]["accuracy"]
    tuned: dict[str, Any] = {"accuracy": float("nan")}
    if "finetune" not in skip:
        tuned = timed("default fine-tune (warmup-unfreeze, linear head)", tune, rows)
    probe_accuracy = frozen["accuracy"]
    print(
        f"  targets: spot-check best {best['accuracy']:.4f} >= probe {probe_accuracy:.4f}: "
        f"{best['accuracy'] >= probe_accuracy}; fine-tune {tuned['accuracy']:.4f} > probe: "
        f"{tuned['accuracy'] > probe_accuracy + 1e-6}; stream after {args.passes} passes "
        f"within a point: {abs(stream_n - probe_accuracy) <= 0.01 or stream_n > probe_accuracy}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="96 px, half the images, 3+3 epochs")
    parser.add_argument(
        "--backbone", default=BACKBONE, help=f"backbone name or keras-hub:PRESET [{BACKBONE}]"
    )
    parser.add_argument(
        "--pooling", default="avg", help="pooling of the features, e.g. cls+mean for a ViT [avg]"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="input size [224; quick: 96]; a multiple of a ViT's patch size (14: 98, 224)",
    )
    parser.add_argument("--train", type=int, default=None, help="training images per set")
    parser.add_argument("--test", type=int, default=None, help="test images per set")
    parser.add_argument("--passes", type=int, default=5, help="stream passes [5]")
    parser.add_argument("--quick-epochs", type=int, default=3)
    parser.add_argument("--sets", default="digits,photos")
    parser.add_argument(
        "--skip", default="", help="methods to leave out: pixels,random,spotcheck,finetune"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the feature stores of an earlier run"
    )
    args = parser.parse_args()
    args.size = args.size or (96 if args.quick else 224)
    n_train = args.train or (300 if args.quick else 600)
    n_test = args.test or (150 if args.quick else 300)
    warnings.simplefilter("ignore")
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    for name in args.sets.split(","):
        root = WORK / "quality" / f"{name}-{args.size}-{n_train}-{n_test}-{args.seed}"
        writer = write_digits if name == "digits" else write_photos
        if not (root / "test").exists():
            writer(root, n_train, n_test, args.size, args.seed)
        run_set(name, root / "train", root / "test", args)
    print(
        f"\ntotal {time.perf_counter() - started:.0f}s; load: {os.getloadavg()[0]:.2f} (1 min)",
        flush=True,
    )


if __name__ == "__main__":
    main()
