"""The distributed cases of ``tests/test_distribute.py``, each in a process of its own (the CPU
must be split into logical devices before TensorFlow sets its devices up). Prints one JSON line.

    python distribute_child.py equivalence
    python distribute_child.py resume CKPT_DIR
    python distribute_child.py worker TF_CONFIG IMAGES OUT
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(trainer: Any, callbacks: Any = ()) -> tuple[Any, Any, Any]:
    from trainer_helpers import digits, tiny_backbone

    from transferkit.trainer import (
        ArrayDataModule,
        TransferModel,
        resolve_strategy,
        seed_everything,
    )

    seed_everything(0)
    images, labels, names = digits(96, 4)
    data = ArrayDataModule(images, labels, names, seed=0, batch_size=8, augment="none")
    data.train_indices = data.train_indices[:48]  # six full batches, split 4 + 4
    with trainer.scope():
        model = TransferModel(tiny_backbone(), "linear", num_classes=4, label_names=names,
                              head_options={"dropout": 0.0})  # fmt: skip
    strategy = resolve_strategy("warmup-unfreeze", epochs=[2, 2], learning_rate=[0.05, 0.01],
                                unfreeze_from=0, finetune_optimizer="sgd")  # fmt: skip
    return model, data, strategy


def weights(model: Any) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.network.variables]


def largest_difference(a: Any, b: Any) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(weights(a), weights(b), strict=True))


def equivalence() -> dict[str, Any]:
    """Two replicas (two logical CPU devices) against one device, with the same global batch."""
    from transferkit.trainer import Trainer

    two = Trainer(devices=2, strategy="mirrored", seed=0, enable_progress=False)
    model2, data, strategy = build(two)
    result = two.fit(model2, data, strategy)
    one = Trainer(seed=0, enable_progress=False)
    model1, data1, strategy1 = build(one)
    one.fit(model1, data1, strategy1)
    start, _, _ = build(Trainer(seed=0, enable_progress=False))
    return {
        "replicas": result["replicas"],
        "phases": [p["phase"] for p in result["phases"]],
        "difference": largest_difference(model2, model1),
        "moved": largest_difference(model2, start),
    }


def resume(ckpt: str) -> dict[str, Any]:
    """Under mirrored: a run that fails after epoch k, resumed from its last checkpoint, ends
    with the weights of a run that did not fail; k before, at and after the unfreeze epoch."""
    from transferkit.trainer import Callback, ModelCheckpoint, Trainer

    class Fail(Callback):
        def __init__(self, after: int) -> None:
            self.after = after

        def on_epoch_complete(self, trainer: Any, epoch: int) -> None:
            if epoch == self.after:
                raise RuntimeError(f"failed after epoch {epoch}")

    def trainer(folder: str, *extra: Any) -> Any:
        return Trainer(devices=2, strategy="mirrored", seed=0, enable_progress=False,
                       callbacks=[ModelCheckpoint(folder), *extra])  # fmt: skip

    reference = trainer(f"{ckpt}/reference")
    ref_model, data, strategy = build(reference)
    reference.fit(ref_model, data, strategy)
    out: dict[str, Any] = {}
    for after in (0, 1, 2):  # mid-warmup, the warm-up's last epoch, mid-finetune
        folder = f"{ckpt}/failed-after-{after}"
        first = trainer(folder, Fail(after))
        model, data, strategy = build(first)
        with contextlib.suppress(RuntimeError):
            first.fit(model, data, strategy)
        again = trainer(folder)
        model, data, strategy = build(again)
        result = again.fit(model, data, strategy, ckpt_path="last")
        out[str(after)] = {
            "difference": largest_difference(model, ref_model),
            "phases": [r["phase"] for r in result["history"]],
            "replicas": result["replicas"],
        }
    return out


def worker(config: str, images: str, out: str) -> dict[str, Any]:
    import tiny_backbone

    import transferkit
    from transferkit import plugin_manager, registry

    os.environ["TF_CONFIG"] = config
    plugin_manager.get_plugin_manager().register(tiny_backbone, name="tiny-backbone")
    registry.clear_cache()
    summary = transferkit.finetune(
        images, backbone=tiny_backbone.NAME, out=out, distribute="multi-worker",
        strategy="head-only", epochs=2, batch_size=4, progress=False, split=(0.5, 0.25, 0.25),
    )  # fmt: skip
    return {k: summary.get(k) for k in ("replicas", "chief", "model_path", "epochs")}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    case, args = sys.argv[1], sys.argv[2:]
    print(json.dumps({"equivalence": equivalence, "resume": resume, "worker": worker}[case](*args)))
