"""The default fine-tune on real images with the offline efficientnet-lite0: a separate test
folder (``test=``), and the default recipe (linear head started from a logistic regression on
its inputs, Adam, label smoothing, the top blocks unfrozen at a 10x lower rate, early stopping
with the best weights restored) beating the frozen base."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from transferkit import api
from transferkit.errors import UsageError

SIZE = 32
CLASSES = 3
TRAIN, TEST = 30, 20  # per class


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first digits 0-2 as dark-on-white RGB PNGs: 30 per class to train, the next 20 of
    each class in a separate test folder."""
    root = tmp_path_factory.mktemp("lite0-digits")
    digits = load_digits()
    counts = dict.fromkeys(range(CLASSES), 0)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if label >= CLASSES or counts[label] >= TRAIN + TEST:
            continue
        part = "train" if counts[label] < TRAIN else "test"
        counts[label] += 1
        path = root / part / f"digit{label}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ink = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(ink).resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB").save(
            path
        )
    return root / "train", root / "test"


@pytest.mark.slow
def test_default_finetune_beats_its_frozen_base_on_a_separate_test_set(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = folders
    common = {"backbone": "efficientnet-lite0", "input_size": SIZE, "test": str(test)}
    common.update(batch_size=16, progress=False)
    frozen = api.finetune(
        str(train), out=tmp_path / "frozen", strategy="head-only", epochs=4, **common
    )
    tuned = api.finetune(str(train), out=tmp_path / "tuned", epochs=[4, 4], **common)
    assert tuned["head"] == "linear" and tuned["strategy"] == "warmup-unfreeze"
    assert tuned["data"]["test"] == frozen["data"]["test"] == CLASSES * TEST  # the test folder
    assert tuned["data"]["train"] + tuned["data"]["val"] == CLASSES * TRAIN
    warmup, finetune = tuned["phases"]
    assert (warmup["phase"], finetune["phase"]) == ("warmup", "finetune")
    # the frozen base is head-only, 4 epochs from a random head; the default recipe starts from
    # the unstandardised probe, smooths labels and unfreezes the top blocks, its best-validation
    # epoch restored (the accuracies measured: bench/RESULTS.md)
    assert tuned["test_accuracy"] > frozen["test_accuracy"] + 0.05, (frozen, tuned)
    assert tuned["restored_best_epoch"] is not None
    # the exported model is the restored one: its accuracy on the test folder is the summary's
    loaded = api.load_finetuned(tmp_path / "tuned")
    paths = sorted(test.rglob("*.png"))
    probs, rows = loaded.predict_files([str(p) for p in paths])
    labels = np.array([loaded.label_names.index(p.parent.name) for p in paths])
    assert float(np.mean(probs.argmax(1) == labels[rows])) == pytest.approx(
        tuned["test_accuracy"], abs=1e-6
    )


def test_a_test_folder_with_other_classes_is_refused(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = folders
    other = tmp_path / "other"
    for path in list(test.rglob("*.png"))[:4]:
        target = other / f"x-{path.parent.name}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with pytest.raises(UsageError, match="same class sub-folders"):
        api.finetune(
            str(train), backbone="efficientnet-lite0", out=tmp_path / "run", test=str(other),
            input_size=SIZE, progress=False,
        )  # fmt: skip
