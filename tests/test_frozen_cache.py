"""The frozen-part cache of fine-tuning (``core/trainer/frozen_cache.py``): the default recipe
trains to the same weights with and without it, the frozen part runs once per phase cut, the
runs it cannot make exact fall back with one line, and rows beyond its memory bound spill to a
file in the run folder that is deleted at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from transferkit import BackboneSpec, hookimpl

TOLERANCE = 1e-5


class TinyThreeBlocks:
    """A CNN of three named blocks as backbone ``tiny-three``: the default recipe unfreezes the
    top two, so its fine-tune phase has a frozen block below the cut."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        from trainer_helpers import tiny_backbone

        def factory(weights: Any = "default", input_size: Any = None) -> Any:
            import keras

            keras.utils.set_random_seed(3)  # the same initial weights in every run
            return tiny_backbone(tuple(input_size or (16, 16)), filters=(4, 8, 8))

        register(BackboneSpec(name="tiny-three", description="test CNN", factory=factory,
                              input_size=(16, 16)))  # fmt: skip


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real PNG files of the scikit-learn digits 0-2, 24 per class, one folder per class, and
    one file that does not decode (the input pipeline leaves it out of its batches)."""
    from trainer_helpers import digits

    images, labels, names = digits(300, classes=3)
    root = tmp_path_factory.mktemp("frozen") / "digits"
    counts = dict.fromkeys(names, 0)
    for image, label in zip(images, labels, strict=True):
        name = names[int(label)]
        if counts[name] >= 24:
            continue
        folder = root / f"digit{name}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).resize((16, 16)).save(
            folder / f"{counts[name]}.png"
        )
        counts[name] += 1
    (root / "digit1" / "broken.png").write_bytes(b"not a png")
    return root


def _arrays(out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from transferkit.trainer.checkpoint import Checkpoint

    checkpoint = Checkpoint(out / "checkpoints" / "last.ckpt.npz")
    return checkpoint.model_arrays, checkpoint.optimizer_arrays


def _close(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))
        for x, y in zip(a, b, strict=True)
    )


class SpillWatch:
    """A Trainer callback noting the cache's spill files in ``folder`` after each epoch."""

    def __init__(self, folder: Path) -> None:
        from transferkit.trainer import Callback

        class Watch(Callback):
            seen: list[dict[str, int]] = []

            def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
                files = sorted(folder.glob("frozen-cache-*.npy"))
                self.seen.append({f.name: f.stat().st_size for f in files})

        self.callback = Watch()


def test_the_default_recipe_trains_to_the_same_weights_with_and_without_the_cache(
    digit_folder: Path, tmp_path: Path, register_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both phases of the default recipe (flip augmentation, probe start, label smoothing,
    early stopping, best weights restored) on an image folder with an undecodable file: the
    same losses, weights, optimizer slots and test accuracy; the frozen part runs once per
    cut over the training images (both versions) and the validation images, the probe start
    takes its features from the cache, and the spill files are gone at the end."""
    from transferkit import api
    from transferkit.trainer import frozen_cache

    register_plugin(TinyThreeBlocks(), "tiny-three")
    forwarded: list[int] = []
    make = frozen_cache._forward_fn

    def counted(lower: Any, count: int) -> Any:
        forward = make(lower, count)
        forwarded.append(0)

        def run(images: Any) -> Any:
            forwarded[-1] += int(images.shape[0])
            return forward(images)

        return run

    monkeypatch.setattr(frozen_cache, "_forward_fn", counted)
    probes: list[Any] = []
    from transferkit.jobs import finetune as finetune_job

    probe = finetune_job._probe_head

    def noted_probe(model: Any, data: Any, features: Any = None) -> bool:
        probes.append(features)
        return probe(model, data, features)

    monkeypatch.setattr(finetune_job, "_probe_head", noted_probe)
    common: dict[str, Any] = {"backbone": "tiny-three", "epochs": [3, 3], "batch_size": 8}
    common.update(progress=False, learning_rate=[1e-2, 1e-2])
    plain = api.finetune(digit_folder, out=tmp_path / "plain", frozen_cache=False, **common)
    assert forwarded == [] and probes == [None]
    watch = SpillWatch(tmp_path / "cached")
    cached = api.finetune(
        digit_folder, out=tmp_path / "cached", frozen_cache_memory=0,
        callbacks=[watch.callback], **common,
    )  # fmt: skip
    data = cached["data"]
    assert data["train"] + data["val"] + data["test"] == 73  # 72 PNGs and the broken file
    # two cuts (the whole base, then below block2): each run once over the decodable
    # training images as they are and mirrored, and the validation images
    n_train = data["train"] - 1 if _broken_in(digit_folder, "train") else data["train"]
    n_val = data["val"] - 1 if _broken_in(digit_folder, "val") else data["val"]
    assert forwarded == [2 * n_train + n_val] * 2
    assert probes[0] is None and probes[1] is not None and len(probes[1][0]) == n_train
    # with no memory, every row spilled to the run folder during training, and none is left
    assert watch.callback.seen and all(watch.callback.seen)
    assert not list((tmp_path / "cached").glob("frozen-cache-*"))

    for a, b in zip(plain["phases"], cached["phases"], strict=True):
        assert a["epochs"] == b["epochs"] and a["test_accuracy"] == b["test_accuracy"]
    assert cached["test_accuracy"] == plain["test_accuracy"]
    assert cached["restored_best_epoch"] == plain["restored_best_epoch"]
    history = [api_history(tmp_path / name) for name in ("plain", "cached")]
    np.testing.assert_allclose(history[0], history[1], atol=TOLERANCE)
    weights = [_arrays(tmp_path / name) for name in ("plain", "cached")]
    assert _close(weights[0][0], weights[1][0]) < TOLERANCE
    assert _close(weights[0][1], weights[1][1]) < TOLERANCE
    assert plain["epochs"] == cached["epochs"] == 6  # patience 3 never stops 3 epochs


def _broken_in(root: Path, part: str) -> bool:
    """Whether the undecodable file fell into ``part`` of the seeded split."""
    from transferkit.trainer import ImageDataModule

    data = ImageDataModule(root, fractions=(0.7, 0.15, 0.15), seed=0)
    rows = {"train": data.train_indices, "val": data.val_indices}[part]
    return any(data.source.records[i].path.endswith("broken.png") for i in rows)


def api_history(out: Path) -> np.ndarray:
    import json

    rows = json.loads((out / "history.json").read_text())
    rows = rows["history"] if isinstance(rows, dict) else rows
    return np.array([[r["loss"], r["val_loss"], r["accuracy"], r["val_accuracy"]] for r in rows])
