"""``transferkit demo``: the whole flow on real data that ships with scikit-learn, offline.

1. The 1,797 handwritten digits of ``sklearn.datasets.load_digits`` (8x8, 10 classes) are written
   as 64x64 RGB PNG files, one folder per digit; two images of each digit are kept apart as
   "new" images for the last step.
2. Features are extracted with the offline ImageNet ``efficientnet-lite0`` in two settings and
   cached: global average pooling and global max pooling of its last feature map, both at 64 px.
   A second *pretrained* setting rather than a second architecture with random weights, because
   (a) every other backbone's pretrained weights need a download, (b) random-weight networks are
   not seeded, so the features of a saved model could not be made again at predict time, and
   (c) avg vs max pooling is a real choice every extraction makes (on these digits they differ
   by about a point, in either direction depending on the classifier).
3. The ``fast`` group of classifiers is spot-checked on both feature sets, in parallel.
4. The best pair is trained on all but the held-out split and saved with its feature recipe.
5. The saved model predicts the images kept apart in step 1.

A second run reuses the images and the cached features. Progress is logged throughout (``INFO``
records of ``transferkit.jobs.demo``; the command line shows them on stderr).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import outputs
from ..options import DemoOptions

DEFAULT_OUT = "transferkit-demo"
DEMO_KIND = "demo"  # the kind in the demo folder's marker file
IMAGE_SIZE = 64
HELD_OUT_PER_CLASS = 2

log = logging.getLogger(__name__)


def _say(step: str) -> None:
    log.info(f"\n== {step}")


def write_digits(folder: str | Path, *, size: int = IMAGE_SIZE, seed: int = 0) -> dict[str, Any]:
    """Write the digits as PNG files: ``folder/images/<digit>/NNNN.png`` for training and
    ``folder/new/<digit>-NNNN.png`` (two per digit) for prediction. Existing files are kept."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(folder)
    rng = np.random.default_rng(seed)
    held_out: set[int] = set()
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        held_out.update(int(i) for i in rng.choice(members, HELD_OUT_PER_CLASS, replace=False))
    written = 0
    new_images = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if i in held_out:
            path = root / "new" / f"{label}-{i:04d}.png"
            new_images.append(str(path))
        else:
            path = root / "images" / str(label) / f"{i:04d}.png"
        if path.exists():
            continue
        ink = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white
        picture = Image.fromarray(ink).resize((size, size), Image.Resampling.BICUBIC)
        # whole or not at all: a later run reuses every file that exists
        with outputs.atomic_path(path) as tmp:
            picture.convert("RGB").save(tmp, format="PNG")
        written += 1
    return {
        "images": str(root / "images"),
        "new": sorted(new_images),
        "count": len(digits.target) - len(held_out),
        "written": written,
    }


def demo(out: str | Path = DEFAULT_OUT, *, options: DemoOptions | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns what each step produced (see the module docstring).
    The options' ``runtime`` and ``precision`` run the backbone (extraction and prediction)."""
    from ..options import CacheOptions, PredictOptions, SpotcheckOptions, TrainOptions
    from .feature_cache import cached_stores, parse_backbone
    from .predict import predict
    from .spotcheck import spotcheck
    from .train import train

    options = options or DemoOptions()
    backbones, classifiers, seed = options.backbones, options.classifiers, options.seed
    cache = CacheOptions(
        cache_dir=str(Path(out) / "cache"),
        progress=options.progress,
        runtime=options.runtime,
        precision=options.precision,
    )
    started = time.perf_counter()
    root = Path(out)
    # a new or empty folder, or one an earlier demo made: a second run reuses what it holds
    outputs.check_folder(root, DEMO_KIND, what="demo folder")
    outputs.mark_folder(root, DEMO_KIND)
    _say(f"1/5 writing scikit-learn's handwritten digits as {IMAGE_SIZE}px PNG files in {root}")
    images = write_digits(root, seed=seed)
    log.info(
        f"{images['count']} training images in {images['images']} ({images['written']} new "
        f"files), {len(images['new'])} kept apart for prediction"
    )

    _say(f"2/5 extracting features ({', '.join(backbones)}; cached in {root / 'cache'})")
    # the poolings of one backbone and size come from one pass of the network
    found = cached_stores(images["images"], [parse_backbone(text) for text in backbones], cache)
    for text, (_, extracted) in zip(backbones, found, strict=True):
        log.info(f"{text}: {'extracted' if extracted else 'reused from cache'}")

    _say(f"3/5 spot-checking the '{classifiers}' classifiers on every feature set")
    report = spotcheck(
        [images["images"]],
        options=SpotcheckOptions(
            backbones=backbones,
            classifiers=classifiers,
            jobs=options.jobs,
            timeout=options.timeout,
            seed=seed,
            out=str(root / "report"),
            **cache.values(),
        ),
    )
    if not report["best_model"]:
        from ..errors import TransferkitError

        raise TransferkitError(
            f"no classifier succeeded in the spot-check; see {report['files']['html']}"
        )
    best_store = next(
        f["store"] for f in report["features"] if f["name"] == report["best_features"]
    )
    log.info(
        f"best: {report['best_model']} on {report['best_features']} "
        f"(accuracy {report['best_accuracy']:.4f})"
    )

    _say(f"4/5 training {report['best_model']} on {report['best_features']} features")
    trained = train(
        best_store,
        classifier=report["best_model"],
        options=TrainOptions(seed=seed, out=str(root / "model.skops"), overwrite=True),
    )
    log.info(trained["report_text"])

    _say(f"5/5 predicting the {len(images['new'])} images kept apart")
    predicted = predict(
        trained["model_path"], images["new"], options=PredictOptions(runtime=options.runtime)
    )
    correct = 0
    for row in predicted["predictions"]:
        row["true"] = Path(row["path"]).name.split("-")[0]
        correct += row.get("label") == row["true"]
    return {
        "out": str(root),
        "images": images,
        "spotcheck": {k: v for k, v in report.items() if k != "rows"},
        "rows": report["rows"],
        "train": {k: v for k, v in trained.items() if k not in ("report_text", "per_class")},
        "predictions": predicted["predictions"],
        "new_images_correct": int(correct),
        "report_html": report["files"]["html"],
        "heatmap": report["files"]["heatmap"],
        "model_path": trained["model_path"],
        "seconds": time.perf_counter() - started,
    }
