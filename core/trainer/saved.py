"""The reader of a fine-tuned classifier, beside its writer (:meth:`TransferModel.export`).

:func:`load_finetuned` reloads the ``.keras`` file (or the run folder holding ``model.keras``) as
a :class:`FinetunedModel`: its label names and metadata come from the ``transferkit.json`` that
``export`` writes into the file (older files: the ``ClassLabels`` layer), and the Keras classes of
plugins that the file names come through the ``register_keras_objects`` hook.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import registry
from ..errors import TransferkitError, UsageError
from ..reuse import file_key, reuse
from ..sizes import parse_input_size
from ..specs import Resize
from .model import METADATA_FILE

MODEL_FILE = "model.keras"  # the classifier's name in a run folder


class FinetunedModel:
    """A classifier saved by :meth:`TransferModel.export` (``finetune``'s ``model.keras``):
    ``label_names``, ``input_size``, ``metadata`` and
    :meth:`predict_proba` / :meth:`predict` on RGB 0..255 images or on image files."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        labels, metadata = _labels_and_metadata(model, path)
        self.label_names: list[str] = labels
        self.metadata: dict[str, Any] = metadata
        size = parse_input_size(self.metadata.get("input_size"))
        if size is None:
            raise TransferkitError(f"{path} records no input size")
        self.input_size = size
        # the backbone's own resize, where it named one (recorded by ``export``)
        self.resize = Resize.from_description(self.metadata.get("resize"))
        self._preprocess: Any = None
        if not self.metadata.get("preprocess_in_model", True):
            spec = registry.backbone(self.metadata["backbone"])
            built = spec.factory(weights=None, input_size=self.input_size)
            self._preprocess = built.preprocess

    @property
    def preprocess(self) -> Any:
        """The backbone's preprocessing where the network does not hold it (None where it
        does): what a batch of RGB images 0..255 goes through before :attr:`model`."""
        return self._preprocess

    def _prepare(self, images: Any) -> Any:
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        if x.shape.rank == 3:
            x = x[None]
        if not self.resize.is_default:
            from ..pipeline import resize_image

            x = resize_image(x, self.input_size, self.resize)
        elif tuple(x.shape[1:3]) != self.input_size:
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
        self,
        paths: Sequence[str],
        batch_size: int = 32,
        *,
        runtime: str = "keras",
        forward: Any = None,
        width: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, rows)`` for image files through the input pipeline; ``rows`` are the
        indices of the files that decoded (the others are skipped). ``runtime`` names an
        inference runtime (``openvino``, ``litert``, a plugin's) to run the whole classifier
        on; ``keras`` and ``auto`` call the Keras model. ``forward`` (giving ``width`` values
        per image) replaces the model's own."""
        from ..pipeline import map_files

        if forward is None and runtime not in ("keras", "auto", "", None):
            forward = self.runtime_forward(runtime, len(paths), batch_size)
        elif forward is None:
            forward = lambda images: self.model(images, training=False)  # noqa: E731
        return map_files(
            forward,
            paths,
            input_size=self.input_size,
            preprocess=self._preprocess,
            width=width or len(self.label_names),
            batch_size=batch_size,
            resize=self.resize,
        )

    def runtime_forward(self, runtime: str, images: int, batch_size: int) -> Any:
        """The classifier as the forward function of ``runtime`` (converted once and cached as a
        backbone's network is, :mod:`transferkit.inference`)."""
        from .. import inference
        from ..specs import Backbone

        def build() -> Any:
            net = Backbone(
                name=f"finetuned-{self.metadata.get('backbone', 'model')}",
                model=self.model,
                preprocess=lambda x: x,
                input_size=self.input_size,
                weights_source=str(self.path),
                pooling="avg",  # outputs vectors already: the class probabilities
            )
            return inference.build_forward(
                net, runtime=runtime, images=images, batch_size=batch_size
            )

        return reuse(("finetuned-forward", file_key(self.path), runtime), build)


def _labels_and_metadata(model: Any, path: Path) -> tuple[list[str], dict[str, Any]]:
    """The label names and metadata of a fine-tuned file: its ``transferkit.json`` (files that
    load with plain Keras) or, in older files, its ``ClassLabels`` layer."""
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
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, RecursionError) as exc:
        raise TransferkitError(
            f"{path} is not a .keras model file: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    names: set[str] = set()
    stack = [config]  # a loop, not recursion: the file may nest as deep as it likes
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("registered_name")
            if isinstance(name, str) and ">" in name:
                names.add(name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _plugin_keras_objects(path: Path) -> dict[str, Any]:
    """The plugins' Keras classes (hook ``register_keras_objects``) the file at ``path`` may
    need: those registered as classes, and those registered lazily under a name it holds."""
    import keras

    known = keras.saving.get_custom_objects()
    missing = [n for n in _registered_names(path) if n not in known]
    return registry.keras_objects(missing)


def load_finetuned(path: str | Path) -> FinetunedModel:
    """Reload a classifier saved by ``finetune`` (:meth:`TransferModel.export`): a ``.keras``
    file or the run folder holding ``model.keras``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"no fine-tuned model at {path}; run `transferkit finetune` first")
    # loaded once per file inside a `with reuse.kept():` block (a server), else on every call
    return reuse(("finetuned", file_key(path)), lambda: _load(path))


def _load(path: Path) -> FinetunedModel:
    import keras

    from . import layers  # noqa: F401  (registers transferkit's Keras classes)

    custom_objects = _plugin_keras_objects(path)
    try:
        model = keras.saving.load_model(path, compile=False, custom_objects=custom_objects)
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise TransferkitError(
            f"cannot load {path}: {type(exc).__name__}: {text}. If it holds a plugin's layer "
            "(a TF Hub backbone), make sure that plugin is installed and its model reachable"
        ) from None
    try:
        loaded = FinetunedModel(model, path)
    except TransferkitError:
        raise
    except Exception as exc:  # metadata of the wrong shape or type
        raise TransferkitError(
            f"{path} is not a usable fine-tuned model: its label names or metadata are malformed "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    width = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    names = loaded.label_names
    if (
        not names
        or not all(isinstance(n, str) for n in names)
        or (width is not None and width != len(names))
    ):
        raise TransferkitError(
            f"{path} is not a usable fine-tuned model: it outputs {width} classes but names "
            f"{len(names)}"
        )
    return loaded


def is_finetuned(path: str | Path) -> bool:
    """Whether ``path`` is a fine-tuned classifier (a ``.keras`` file or a folder holding one)."""
    p = Path(path)
    return p.suffix == ".keras" or (p.is_dir() and (p / MODEL_FILE).exists())
