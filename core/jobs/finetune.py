"""``transferkit finetune``: fine-tune a backbone with a head on a folder of images.

The walk: image source -> stratified seeded train/validation/test split -> tf.data pipeline ->
backbone + head inside the :class:`~transferkit.trainer.Trainer`, a strategy plugin deciding what is
frozen in each phase. Everything lands in ``out``:

* ``model.keras`` -- the classifier, taking RGB 0..255 images, with its label names and
  preprocessing inside (:func:`load_finetuned` reloads it; ``transferkit predict`` uses it);
* ``checkpoints/`` -- ``last.ckpt.npz`` (resume with ``resume=True``), ``best.weights.h5``,
  ``state.json``;
* ``history.csv``, ``history.json``, ``summary.json`` and ``curves.png`` (loss and accuracy per
  epoch, phase boundaries marked).
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import plugin_manager, registry
from ..errors import TransferkitError, UsageError
from ..user_objects import backbone_spec

MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints"


def parse_input_size(value: Any) -> tuple[int, int] | None:
    """``224``, ``"224"``, ``"224x160"``, ``"224,160"`` or ``(224, 160)`` -> ``(height, width)``."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple):
        parts = [int(v) for v in value]
    else:
        text = str(value).lower().replace(",", "x").replace(" ", "")
        try:
            parts = [int(p) for p in text.split("x") if p]
        except ValueError:
            parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise UsageError(f"input size {value!r} must be like 224 or 224x160 (at least 8 pixels)")
    return (parts[0], parts[1])


def _strategy_options(
    strategy: str, epochs: Any, learning_rate: Any, unfreeze_from: int | None
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if epochs:
        options["epochs"] = list(epochs) if isinstance(epochs, list | tuple) else [epochs]
    if learning_rate:
        lrs = learning_rate if isinstance(learning_rate, list | tuple) else [learning_rate]
        options["learning_rate"] = [float(x) for x in lrs]
    if unfreeze_from is not None:
        if strategy not in ("warmup-unfreeze", "gradual") and not strategy.startswith("custom"):
            raise UsageError(
                f"--unfreeze-from applies to the warmup-unfreeze and gradual strategies, "
                f"not {strategy!r}"
            )
        options["unfreeze_from"] = int(unfreeze_from)
    return options


def _augmentation_for(augment: str | None, task: str | None) -> str:
    """``classic`` by default; ``none`` for the rotation task, whose labels a horizontal flip or
    a rotation would corrupt (a flipped 90-degree rotation is a 270-degree one)."""
    if augment is None:
        return "none" if task == "rotation" else "classic"
    if task == "rotation" and augment != "none":
        import sys

        print(
            f"transferkit: warning: --augment {augment} flips/rotates images, which changes the "
            "labels of the rotation task; use --augment none",
            file=sys.stderr,
        )
    return augment


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    ckpt = out / CHECKPOINT_DIR / "last.ckpt.npz"
    if ckpt.exists() and not resume and not overwrite:
        raise UsageError(
            f"{out} holds a training checkpoint; pass --resume to continue it or --overwrite "
            "to start afresh"
        )
    if overwrite and not resume and out.exists():
        for name in (CHECKPOINT_DIR,):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MODEL_FILE, "history.csv", "history.json", "summary.json", "curves.png"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def finetune(
    images: Any,
    *,
    backbone: Any,
    out: str | Path,
    strategy: str = "warmup-unfreeze",
    head: str | None = None,
    epochs: int | Sequence[int] | None = None,
    learning_rate: float | Sequence[float] | None = None,
    unfreeze_from: int | None = None,
    augment: str | None = None,
    batch_size: int = 32,
    input_size: Any = None,
    weights: Any = "default",
    pooling: str | None = None,
    task: str | None = None,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    train_bn: bool = False,
    patience: int | None = None,
    max_epochs: int | None = None,
    precision: str = "32",
    deterministic: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    tensorboard: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` with ``head`` on ``images`` and save the classifier in ``out``.

    ``backbone`` is a registered name, a ``transferkit.Backbone`` or a Keras model (taking RGB
    0..255 images). ``callbacks`` are added to transferkit's own: Trainer callbacks or Keras ones
    (``keras.callbacks.TensorBoard``, ``EarlyStopping``, ``CSVLogger``...); ``tensorboard`` is a
    log folder for a ``TensorBoard`` callback.

    ``images`` is a folder (one sub-folder per class), a CSV/JSON list, or an ``ImageSource``.
    ``augment`` defaults to ``classic`` (``none`` with ``task="rotation"``). ``head`` defaults to
    ``classic`` for ``warmup-unfreeze`` (the classic recipe, on the unpooled
    feature map) and ``linear`` otherwise. ``epochs`` and ``learning_rate`` are one value or one
    per phase of the strategy. Returns a summary: ``model_path``, ``label_names``, ``phases``
    (with the test accuracy after each), ``test_accuracy``, ``epochs``, ``seconds``...
    """
    from ..trainer import (
        EarlyStopping,
        HistoryLogger,
        ImageDataModule,
        LearningRateMonitor,
        ModelCheckpoint,
        Trainer,
        TransferModel,
        precision_scope,
        resolve_strategy,
        seed_everything,
    )

    start = time.perf_counter()
    out = Path(out)
    augment = _augmentation_for(augment, task)
    head = head or ("classic" if strategy == "warmup-unfreeze" else "linear")
    pooling = pooling or ("none" if head == "classic" else "avg")
    size = parse_input_size(input_size)
    spec = backbone_spec(backbone)
    registry.head(head)  # an unknown head fails here, before any work
    strategy_obj = resolve_strategy(
        strategy, **_strategy_options(strategy, epochs, learning_rate, unfreeze_from)
    )
    _prepare_out(out, resume, overwrite)

    with precision_scope(precision):
        seed_everything(seed, deterministic=deterministic)
        data = ImageDataModule(
            images, task=task, fractions=split, seed=seed, batch_size=batch_size, augment=augment
        )
        built = spec.factory(weights=weights, input_size=size, pooling=pooling)
        model = TransferModel(
            built,
            head,
            num_classes=data.num_classes,
            label_names=data.label_names,
            train_bn=train_bn,
        )
        own: list[Any] = [
            LearningRateMonitor(),
            ModelCheckpoint(out / CHECKPOINT_DIR, save_best=bool(len(data.val_indices))),
            HistoryLogger(out / "history.csv", out / "history.json"),
        ]
        if patience:
            own.insert(0, EarlyStopping(patience=patience))
        if tensorboard is not None:
            import importlib.util

            import keras

            if importlib.util.find_spec("tensorboard") is None:
                raise UsageError(
                    "--tensorboard needs the tensorboard package: pip install tensorboard "
                    "(or transferkit[tensorboard])"
                )

            own.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard)))
        trainer = Trainer(
            max_epochs=max_epochs,
            callbacks=[*own, *callbacks],
            seed=seed,
            precision=precision,
            deterministic=deterministic,
            enable_progress=progress,
        )
        result = trainer.fit(model, data, strategy_obj, ckpt_path="last" if resume else None)
        tested = [p for p in result["phases"] if "test_accuracy" in p]
        summary: dict[str, Any] = {
            "model_path": str(out / MODEL_FILE),
            "backbone": built.name,
            "head": head,
            "strategy": strategy_obj.name,
            "label_names": data.label_names,
            "data": data.describe(),
            "epochs": result["epochs"],
            "phases": result["phases"],
            "test_accuracy": tested[-1]["test_accuracy"] if tested else None,
            "input_size": list(built.input_size),
            "preprocessing": built.preprocessing,
            "checkpoint": str(out / CHECKPOINT_DIR / ModelCheckpoint.LAST),
            "history": str(out / "history.csv"),
        }
        model.export(
            out / MODEL_FILE,
            extra={
                "strategy": strategy_obj.name,
                "test_accuracy": summary["test_accuracy"],
                "backbone_spec": spec.name,
                "pooling": built.pooling,
            },
        )
        from ..trainer.curves import plot_curves

        curves = plot_curves(trainer.history, out / "curves.png")
        if curves is not None:
            summary["curves"] = str(curves)
        summary["seconds"] = round(time.perf_counter() - start, 3)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary


# --------------------------------------------------------------------------- loading


class FinetunedModel:
    """A classifier saved by :func:`finetune`: ``label_names``, ``input_size``, ``metadata`` and
    :meth:`predict_proba` / :meth:`predict` on RGB 0..255 images or on image files."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        labels, metadata = _labels_and_metadata(model, path)
        self.label_names: list[str] = labels
        self.metadata: dict[str, Any] = metadata
        self.input_size = tuple(int(v) for v in self.metadata["input_size"])
        self._preprocess: Any = None
        if not self.metadata.get("preprocess_in_model", True):
            spec = registry.backbone(self.metadata["backbone"])
            built = spec.factory(weights=None, input_size=self.input_size)
            self._preprocess = built.preprocess

    def _prepare(self, images: Any) -> Any:
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        if x.shape.rank == 3:
            x = x[None]
        if tuple(x.shape[1:3]) != self.input_size:
            x = tf.image.resize(x, self.input_size)
        return self._preprocess(x) if self._preprocess is not None else x

    def predict_proba(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``(N, classes)`` for RGB images with values 0..255."""
        probs = self.model.predict(self._prepare(images), batch_size=batch_size, verbose=0)
        return np.asarray(probs, dtype=np.float32)

    def predict(self, images: Any, batch_size: int = 32) -> list[str]:
        """The label name of the most probable class of each image."""
        return [self.label_names[i] for i in self.predict_proba(images, batch_size).argmax(1)]

    def predict_files(
        self, paths: Sequence[str], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, rows)`` for image files through the input pipeline; ``rows`` are the
        indices of the files that decoded (the others are skipped)."""
        from ..pipeline import map_files

        return map_files(
            lambda images: self.model(images, training=False),
            paths,
            input_size=self.input_size,
            preprocess=self._preprocess,
            width=len(self.label_names),
            batch_size=batch_size,
        )


def _labels_and_metadata(model: Any, path: Path) -> tuple[list[str], dict[str, Any]]:
    """The label names and metadata of a fine-tuned file: its ``transferkit.json`` (files that
    load with plain Keras) or, in older files, its ``ClassLabels`` layer."""
    from ..trainer.model import METADATA_FILE

    try:
        with zipfile.ZipFile(path) as archive:
            sidecar = json.loads(archive.read(METADATA_FILE))
        return [str(n) for n in sidecar["label_names"]], dict(sidecar["metadata"])
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, TypeError):
        pass
    try:
        labels = model.get_layer("labels")
        return list(labels.label_names), dict(labels.metadata)
    except (ValueError, AttributeError) as exc:
        raise UsageError(
            f"{path} is a Keras model but not one saved by `transferkit finetune` (it has no "
            "label names)"
        ) from exc


def _registered_names(path: Path) -> set[str]:
    """Every ``registered_name`` in a ``.keras`` file's config (without building anything)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise TransferkitError(f"{path} is not a .keras model file: {exc}") from exc
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = node.get("registered_name")
            if isinstance(name, str) and ">" in name:
                names.add(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return names


def _make_plugin_classes_available(path: Path) -> None:
    """Let plugins define the Keras classes the file needs: a class registered as
    ``transferkit>Name`` is looked up as the attribute ``Name`` of each loaded plugin (plugins
    that build their Keras classes lazily, such as the TF Hub one, define them on that access)."""
    import keras

    known = keras.saving.get_custom_objects()
    missing = [n for n in _registered_names(path) if n not in known]
    if not missing:
        return
    pm = plugin_manager.get_plugin_manager()
    for full in missing:
        attr = full.split(">", 1)[1]
        for _name, plugin in pm.list_name_plugin():
            if plugin is None:
                continue
            try:
                getattr(plugin, attr, None)
            except Exception:
                continue
            if full in keras.saving.get_custom_objects():
                break


def load_finetuned(path: str | Path) -> FinetunedModel:
    """Reload a classifier saved by :func:`finetune` (a ``.keras`` file or the ``out`` folder)."""
    import keras

    from ..trainer import layers  # noqa: F401  (registers transferkit's Keras classes)

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"no fine-tuned model at {path}; run `transferkit finetune` first")
    _make_plugin_classes_available(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise TransferkitError(
            f"cannot load {path}: {exc}. If it holds a plugin's layer (a TF Hub backbone), "
            "make sure that plugin is installed and its model reachable"
        ) from exc
    return FinetunedModel(model, path)


def is_finetuned(path: str | Path) -> bool:
    """Whether ``path`` is a fine-tuned classifier (a ``.keras`` file or a folder holding one)."""
    p = Path(path)
    return p.suffix == ".keras" or (p.is_dir() and (p / MODEL_FILE).exists())


def predict_finetuned(
    model_path: str | Path, paths: Sequence[str], *, batch_size: int = 32, top: int = 1
) -> dict[str, Any]:
    """``transferkit predict`` for a fine-tuned classifier: the same output as for a classifier
    on features (one entry per image: label, probability, or the reason it was skipped)."""
    import sys

    from ..images import ImageRecord, ImageSource
    from ..pipeline import skip_reason

    loaded = load_finetuned(model_path)
    names = loaded.label_names
    print(
        f"predicting {len(paths)} image(s) with the fine-tuned {loaded.metadata.get('backbone')}",
        file=sys.stderr,
    )
    probs, rows = loaded.predict_files(list(paths), batch_size=batch_size)
    by_row: dict[int, dict[str, Any]] = {}
    for p, row in zip(probs, rows.tolist(), strict=True):
        label = int(np.argmax(p))
        entry: dict[str, Any] = {
            "path": paths[row],
            "status": "ok",
            "label": names[label],
            "index": label,
            "probability": float(p[label]),
        }
        if top > 1:
            entry["top"] = [
                {"label": names[k], "probability": float(p[k])} for k in np.argsort(-p)[:top]
            ]
        by_row[row] = entry
    source = ImageSource([ImageRecord(str(p), 0) for p in paths], names)
    results = [
        by_row.get(i) or {"path": path, "status": "skipped", "reason": skip_reason(source, i)}
        for i, path in enumerate(paths)
    ]
    return {
        "model": str(model_path),
        "classifier": f"finetuned {loaded.metadata.get('head', '')} head".strip(),
        "backbone": loaded.metadata.get("backbone"),
        "label_names": list(names),
        "predictions": results,
    }
