"""The frozen-part cache of fine-tuning: what cannot change is computed once per phase cut.

While a phase trains only the head, the base's output for an image is fixed; while it trains the
top blocks, everything below the first trainable layer is. :class:`FrozenCache` (a Trainer
callback that the Trainer asks for each stretch of epochs) runs the frozen part once over the
training and validation images (and the test images when a phase ends), keeps its output (the
*cut*: the tensors entering the first trainable layer, or the base's output, pooled where the
head pools first), and trains a model made of the part above the cut and the head, sharing
their layers and the optimizer with the full network. A deeper unfreeze moves the cut, and the
cache is rebuilt from there.

The computation is the uncached one, so the cache is only used where that holds:

* the frozen part runs in inference mode: its BatchNorm layers are frozen and it holds no
  dropout, noise or other layer whose output depends on ``training`` (:func:`inference_problem`);
* the augmentation is none or horizontal flips only (:func:`flip_variants`): each image then has
  one or two versions, both cached, and each step picks the version the uncached run would
  have seen, by calling the same ``RandomFlip`` layer (same seed generator, same draws: its
  draw depends only on the batch size) on a two-pixel probe;
* the data module's batches are its rows in :meth:`DataModule.epoch_order` (the built-in ones).

Elsewhere the fit runs the whole network, with one log line that says why. Memory is bounded
(``memory_mb``): rows beyond it go to a memory-mapped ``.npy`` file in ``spill_dir`` (the run
folder), deleted when the fit ends. A resumed fit builds the cache again from its checkpoint.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .callbacks import Callback
from .model import iter_layers

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataModule
    from .model import TransferModel
    from .trainer import Trainer

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 2048
SPILL_PREFIX = "frozen-cache-"
# layers whose output depends on ``training`` only through a rate or a noise level
_RATES = {
    "Dropout": "rate",
    "SpatialDropout1D": "rate",
    "SpatialDropout2D": "rate",
    "SpatialDropout3D": "rate",
    "GaussianDropout": "rate",
    "AlphaDropout": "rate",
    "GaussianNoise": "stddev",
}
_VERBS = {
    "RandomZoom": "crops randomly",
    "RandomTranslation": "crops randomly",
    "RandomCrop": "crops randomly",
    "RandomRotation": "rotates randomly",
    "RandomShear": "shears randomly",
}


def _is_container(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _sublayers(layer: Any) -> list[Any]:
    """``layer`` and every layer inside it, models' and composite layers' alike."""
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=True, recursive=True)) if flatten else list(iter_layers(layer))


def inference_problem(layers: Sequence[Any]) -> str | None:
    """Why ``layers`` (the frozen part) would compute something else in training than in
    inference, or None: a BatchNorm layer left trainable, a dropout or noise layer with a
    non-zero rate, any other layer that draws random numbers (it holds a Keras seed generator:
    stochastic depth, random augmentation), or a layer from outside Keras whose ``call`` takes
    ``training`` and holds no layers to judge by (a TF Hub module)."""
    from .model import _is_batchnorm

    for top in layers:
        for layer in _sublayers(top):
            kind = type(layer).__name__
            if _is_container(layer):
                continue
            if _is_batchnorm(layer):
                if layer.trainable:
                    return f"its BatchNorm layer {layer.name} trains (--train-bn)"
                continue
            if kind in _RATES:
                if float(getattr(layer, _RATES[kind], 0.0) or 0.0) > 0:
                    return f"its layer {layer.name} ({kind}) is random in training"
                continue
            if getattr(layer, "_seed_generators", None):
                return f"its layer {layer.name} ({kind}) is random in training"
            foreign = not type(layer).__module__.startswith("keras.")
            alone = len(_sublayers(layer)) == 1
            if foreign and alone and getattr(layer, "_call_has_training_arg", False):
                return f"its layer {layer.name} ({kind}) may act differently in training"
    return None


def flip_variants(augment: Any, label: str) -> tuple[Any, str | None]:
    """``(flip layer or None, reason or None)``: no augmentation gives one version per image,
    a ``RandomFlip("horizontal")`` alone gives two; anything else is a reason not to cache,
    phrased with ``label`` (``--augment light``)."""
    if augment is None:
        return None, None
    leaves = [layer for layer in iter_layers(augment) if not _is_container(layer)]
    kinds = [type(layer).__name__ for layer in leaves]
    if kinds == ["RandomFlip"] and getattr(leaves[0], "mode", "") == "horizontal":
        return leaves[0], None
    others = [k for k in kinds if k != "RandomFlip"]
    if not others:
        return None, f"{label} flips vertically"
    verbs = sorted({_VERBS.get(k, "changes images randomly") for k in others})
    return None, f"{label} {' and '.join(verbs)} ({', '.join(others)})"


def _cut_index(base_layers: Sequence[Any]) -> int:
    """The index of the first base layer with trainable weights (``len``: none, the base is
    frozen)."""
    for i, layer in enumerate(base_layers):
        if layer.trainable_weights:
            return i
    return len(base_layers)


def _frontier(base: Any, cut: int) -> list[Any]:
    """The symbolic tensors of ``base``'s graph computed below layer ``cut`` that the rest
    of the graph takes (or that are outputs), in the graph's order. A plain operation (an
    ``ops.add`` between layers, ConvNeXt's) counts as below where all its inputs are."""
    layers = list(base.layers)
    below = {id(layer) for layer in layers[:cut]}
    is_layer = {id(layer) for layer in layers}
    sources = {id(t) for t in base.inputs}
    memo: dict[int, bool] = {}

    def frozen(tensor: Any) -> bool:
        if id(tensor) in sources:
            return True
        if id(tensor) not in memo:
            history = tensor._keras_history
            memo[id(tensor)] = runs_below(
                history.operation, history.operation._inbound_nodes[history.node_index]
            )
        return memo[id(tensor)]

    def runs_below(operation: Any, node: Any) -> bool:
        if id(operation) in is_layer:
            return id(operation) in below
        return all(frozen(t) for t in node.input_tensors)

    found: list[Any] = []

    def add(tensor: Any) -> None:
        if not any(tensor is seen for seen in found):
            found.append(tensor)

    by_depth = base._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):  # from the inputs on
        for node in by_depth[depth]:
            if node.operation is None or not node.input_tensors:
                continue
            if not runs_below(node.operation, node):
                for tensor in node.input_tensors:
                    if frozen(tensor):
                        add(tensor)
    for tensor in base.outputs:
        if frozen(tensor):
            add(tensor)
    return found


class _Rows:
    """``n`` rows of one part (train or validation) of the cache: one array per cut tensor,
    each ``(n, variants, *shape)``; the first rows in memory up to ``budget`` bytes, the rest in
    a memory-mapped ``.npy`` file under ``folder``."""

    def __init__(
        self, n: int, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any], variants: int,
        budget: int, folder: Path, name: str,
    ) -> None:  # fmt: skip
        self.n, self.variants = n, variants
        self.row_bytes = sum(
            variants * int(np.prod(s)) * np.dtype(d).itemsize
            for s, d in zip(shapes, dtypes, strict=True)
        )
        self.in_memory = n if self.row_bytes == 0 else min(n, max(0, budget) // self.row_bytes)
        self.memory: list[np.ndarray] = []
        self.spilled: list[np.ndarray] = []
        self.files: list[Path] = []
        for j, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            self.memory.append(np.empty((self.in_memory, variants, *shape), dtype))
            if self.in_memory < n:
                path = folder / f"{SPILL_PREFIX}{name}-{j}.npy"
                self.files.append(path)
                self.spilled.append(
                    np.lib.format.open_memmap(
                        path, mode="w+", dtype=dtype, shape=(n - self.in_memory, variants, *shape)
                    )
                )

    @property
    def memory_bytes(self) -> int:
        return self.in_memory * self.row_bytes

    @property
    def spilled_bytes(self) -> int:
        return (self.n - self.in_memory) * self.row_bytes

    def write(self, positions: np.ndarray, variant: int, values: Sequence[np.ndarray]) -> None:
        ram = positions < self.in_memory
        for j, value in enumerate(values):
            self.memory[j][positions[ram], variant] = value[ram]
            if not ram.all():
                self.spilled[j][positions[~ram] - self.in_memory, variant] = value[~ram]

    def gather(self, positions: np.ndarray) -> list[np.ndarray]:
        """One array ``(len(positions), variants, *shape)`` per cut tensor."""
        ram = positions < self.in_memory
        if ram.all():
            return [m[positions] for m in self.memory]
        out = []
        for memory, spilled in zip(self.memory, self.spilled, strict=True):
            part = np.empty((len(positions), *memory.shape[1:]), memory.dtype)
            part[ram] = memory[positions[ram]]
            part[~ram] = spilled[positions[~ram] - self.in_memory]
            out.append(part)
        return out

    def release(self) -> None:
        self.memory, self.spilled = [], []
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []


class _Cut:
    """The cache of one cut: the rows of the training and validation images (positions in
    their sorted row numbers), the model trained on them, and the build's figures."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.train: _Rows | None = None
        self.val: _Rows | None = None
        self.test: _Rows | None = None
        self.test_rows = np.zeros(0, np.int64)
        self.test_kept = np.zeros(0, bool)
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[Any] = []
        self.forward: Any = None
        self.train_rows = np.zeros(0, np.int64)
        self.train_kept = np.zeros(0, bool)
        self.val_rows = np.zeros(0, np.int64)
        self.val_kept = np.zeros(0, bool)
        self.lower: Any = None  # the frozen part: images -> the cut's tensors
        self.upper: Any = None  # the trained part: the cut's tensors -> the base's output
        self.flip: Any = None
        self.pooled = False  # the base's map pooled by the head's first layer
        self.training_model: Any = None
        self.compiled_for: Any = None

    def release(self) -> None:
        for rows in (self.train, self.val, self.test):
            if rows is not None:
                rows.release()
        self.train = self.val = self.test = None
        self.training_model = None


class FrozenCache(Callback):
    """The frozen-part cache (see the module's documentation). Give it to the Trainer among its
    callbacks; ``Trainer.fit`` then trains each stretch of epochs on it where it applies.
    ``memory_mb``: the MiB of activations kept in memory, beyond which rows spill to a file in
    ``spill_dir`` (default: a temporary folder). ``builds`` lists each cut built: its layer
    index, the images run through the frozen part, the bytes in memory and spilled."""

    def __init__(
        self, memory_mb: float = DEFAULT_MEMORY_MB, spill_dir: str | Path | None = None
    ) -> None:
        from ..errors import UsageError

        if not float(memory_mb) >= 0:
            raise UsageError(f"the frozen-part cache's memory must be 0 MiB or more: {memory_mb}")
        self.memory_mb = float(memory_mb)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.builds: list[dict[str, Any]] = []
        self._cut: _Cut | None = None
        self._said: set[str] = set()
        self._temp: Path | None = None

    # ------------------------------------------------------------------ callback moments

    def setup(self, trainer: Trainer) -> None:
        self.release()
        self.builds = []
        self._said = set()
        if self.spill_dir is not None and self.spill_dir.is_dir():
            for stale in self.spill_dir.glob(f"{SPILL_PREFIX}*.npy"):  # a killed run's
                stale.unlink(missing_ok=True)

    def on_fit_end(self, trainer: Trainer, result: dict[str, Any]) -> None:
        self.release()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        """Drop the cached rows and delete the spill files."""
        if self._cut is not None:
            self._cut.release()
            self._cut = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    # ------------------------------------------------------------------ what the Trainer asks

    def segment(self, trainer: Trainer, start: int, end: int) -> tuple[Any, CachedBatches] | None:
        """``(training model, its batches)`` on the cache for the model's trainable state,
        building it when the cut moved; None where the cache does not apply (the Trainer then
        runs the whole network). The batches answer ``train_segment``, ``train_dataset`` and
        ``val_dataset`` as the data module does, with the cached tensors for its images."""
        cut = self._current(trainer)
        if cut is None:
            return None
        model, data = trainer.model, trainer.data
        if cut.training_model is None:
            cut.training_model = self._training_model(model, cut)
        optimizer = model.keras_model.optimizer
        if cut.compiled_for is not optimizer:
            if not optimizer.built:  # its slots in the full network's order, as a checkpoint has
                optimizer.build(model.keras_model.trainable_variables)
            from .model import METRICS

            cut.training_model.compile(
                optimizer=optimizer, loss=model.loss(), metrics=list(METRICS),
                jit_compile=trainer.jit_compile,
            )  # fmt: skip
            cut.compiled_for = optimizer
        return cut.training_model, CachedBatches(cut, data)

    def test_scores(self, trainer: Trainer) -> dict[str, float] | None:
        """The test split's loss and accuracy (as ``keras.Model.evaluate`` gives them) by the
        cache's training model in inference mode, the test images run through the frozen part
        once per cut; None where the cache does not apply or its model was not trained yet."""
        cut = self._current(trainer)
        if cut is None or cut.training_model is None or cut.compiled_for is None:
            return None
        data = trainer.data
        if cut.test is None:
            cut.test_rows = np.asarray(data.test_indices, np.int64)
            if not len(cut.test_rows):
                return None
            used = sum(p.memory_bytes for p in (cut.train, cut.val) if p is not None)
            budget = int(self.memory_mb * 2**20) - used
            cut.test = _Rows(len(cut.test_rows), cut.shapes, cut.dtypes, 1, budget,
                             self._folder(), "test")  # fmt: skip
            cut.test_kept, n = _fill(cut.test, data, cut.test_rows, cut.forward, False)
            figures = self.builds[-1]
            figures["images"] += n
            figures["memory_bytes"] += cut.test.memory_bytes
            figures["spilled_bytes"] += cut.test.spilled_bytes
            figures["files"] += [str(f) for f in cut.test.files]
            figures["spilled"]["test"] = cut.test.spilled_bytes
        if not cut.test_kept.any():
            return None
        kept = np.flatnonzero(cut.test_kept)
        batches = _dataset(cut.test, [kept], data.labels[cut.test_rows], data.batch_size)
        from .bridge import quiet_end_of_data

        with quiet_end_of_data():
            scores = cut.training_model.evaluate(batches, verbose=0, return_dict=True)
        return {k: float(v) for k, v in scores.items()}

    def base_features(self, trainer: Trainer) -> tuple[np.ndarray, np.ndarray] | None:
        """The frozen base's output on the training images (sorted by row, no augmentation,
        pooled when it is a map) and their labels, from the cache when the whole base is frozen
        and the cache applies; else None."""
        cut = self._current(trainer)
        if cut is None or cut.key[0] != len(trainer.model.base_layers) or cut.train is None:
            return None
        if len(cut.shapes) != 1:
            return None
        kept = np.flatnonzero(cut.train_kept)
        x = cut.train.gather(kept)[0][:, 0].astype(np.float64)
        if x.ndim == 4:
            x = x.mean(axis=(1, 2))
        return x, trainer.data.labels[cut.train_rows[kept]]

    # ------------------------------------------------------------------ deciding and building

    def _say(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            log.info(text)

    def _why_not(self, trainer: Trainer) -> tuple[Any, str | None]:
        """``(flip layer or None, reason not to cache or None)`` for this fit."""
        from .data import ArrayDataModule, DataModule, ImageDataModule

        data, model = trainer.data, trainer.model
        kind: Any = type(data)
        own: Any = {ArrayDataModule: ArrayDataModule, ImageDataModule: ImageDataModule}.get(kind)
        if (
            own is None
            or kind.dataset is not own.dataset
            or kind.train_dataset is not DataModule.train_dataset
            or kind.epoch_order is not DataModule.epoch_order
        ):
            return None, f"the data module {kind.__name__} makes batches of its own"
        limits = getattr(trainer, "limits", None)
        if limits is not None and limits.active:
            return None, "a debug run limits the batches"
        replicas = int(getattr(trainer, "num_replicas", 1) or 1)
        if replicas > 1:
            return None, f"training on {replicas} replicas"
        if trainer.keras_callbacks:
            names = ", ".join(type(c).__name__ for c in trainer.keras_callbacks)
            return None, f"Keras callbacks ({names}) would see the cache's training model"
        label = f"--augment {data.augment}" if isinstance(data.augment, str) else "augmentation"
        return flip_variants(model.augment, label)

    def _current(self, trainer: Trainer) -> _Cut | None:
        """The cache for the model's trainable state, built when needed; None where it does
        not apply (said once, with the reason)."""
        model = trainer.model
        flip, reason = self._why_not(trainer)
        if reason is not None:
            self._say(f"frozen-part cache off: {reason}; every step runs the whole network")
            return None
        layers = model.base_layers
        cut = _cut_index(layers)
        if cut == 0 or all(not layer.weights for layer in layers[:cut]):
            return None  # nothing frozen below the first trainable layer: nothing to cache
        problem = inference_problem(layers[:cut])
        if problem is not None:
            self._say(f"frozen-part cache off below layer {cut}: {problem}; the whole network runs")
            return None
        key = (cut, id(model.base), id(trainer.data), flip is not None)
        if self._cut is not None and self._cut.key == key:
            return self._cut
        self.release()
        try:
            self._cut = self._build(trainer, key, flip)
        except _NoGraph as exc:
            self._say(f"frozen-part cache off below layer {cut}: {exc}; the whole network runs")
            return None
        return self._cut

    def _build(self, trainer: Trainer, key: tuple[Any, ...], flip: Any) -> _Cut:
        import keras

        model, data = trainer.model, trainer.data
        base, cut_at = model.base, key[0]
        whole = cut_at >= len(model.base_layers)
        if whole:
            lower, tensors, upper = base, list(base.outputs), None
        else:
            try:
                tensors = _frontier(base, cut_at)
                lower = keras.Model(base.inputs, tensors, name="frozen_part")
                upper = keras.Model(tensors, base.outputs, name="trained_part")
            except Exception as exc:  # not a functional graph that can be cut
                raise _NoGraph(f"the base cannot be cut at layer {cut_at} ({exc})") from exc
        shapes = [tuple(int(d) for d in t.shape[1:]) for t in tensors]
        dtypes = [np.dtype(keras.backend.standardize_dtype(t.dtype)) for t in tensors]
        cut = _Cut(key)
        cut.lower, cut.upper, cut.flip = lower, upper, flip
        pooling = None
        if whole and len(shapes) == 1 and len(shapes[0]) == 3 and _pools_first(model.head):
            # the head pools the map first (the linear head): cache the pooled vectors
            pooling = model.head.layers[0]
            shapes = [shapes[0][-1:]]
            dtypes = [np.dtype(keras.backend.standardize_dtype(pooling.compute_dtype))]
        cut.pooled = pooling is not None
        variants = 2 if flip is not None else 1
        folder = self._folder()
        budget = int(self.memory_mb * 2**20)
        forward = _forward_fn(lower, pooling)
        cut.shapes, cut.dtypes, cut.forward = shapes, dtypes, forward
        figures = {"cut": cut_at, "whole_base": whole, "variants": variants, "images": 0}
        cut.val_rows = np.asarray(data.val_indices, np.int64)
        if len(cut.val_rows):
            cut.val = _Rows(len(cut.val_rows), shapes, dtypes, 1, budget, folder, "val")
            budget -= cut.val.memory_bytes
            cut.val_kept, n = _fill(cut.val, data, cut.val_rows, forward, False)
            figures["images"] += n
        cut.train_rows = np.unique(np.asarray(data.train_indices, np.int64))
        cut.train = _Rows(len(cut.train_rows), shapes, dtypes, variants, budget, folder, "train")
        cut.train_kept, n = _fill(cut.train, data, cut.train_rows, forward, flip is not None)
        figures["images"] += n
        parts = [p for p in (cut.train, cut.val) if p is not None]
        figures["memory_bytes"] = sum(p.memory_bytes for p in parts)
        figures["spilled_bytes"] = sum(p.spilled_bytes for p in parts)
        figures["files"] = [str(f) for p in parts for f in p.files]
        figures["spilled"] = {"train": cut.train.spilled_bytes, "val": 0}
        if cut.val is not None:
            figures["spilled"]["val"] = cut.val.spilled_bytes
        self.builds.append(figures)
        what = "pooled features" if cut.pooled else f"activations {shapes}"
        spilled = (
            f", {figures['spilled_bytes'] / 2**20:.1f} MiB spilled to {folder}"
            if figures["spilled_bytes"]
            else ""
        )
        log.info(
            f"frozen-part cache: {what} below layer {cut_at} of {len(model.base_layers)}, "
            f"{len(cut.train_rows)} training image(s) x {variants}, {len(cut.val_rows)} "
            f"validation; {figures['memory_bytes'] / 2**20:.1f} MiB in memory{spilled}"
        )
        return cut

    def _folder(self) -> Path:
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            return self.spill_dir
        if self._temp is None:
            self._temp = Path(tempfile.mkdtemp(prefix="transferkit-frozen-"))
        return self._temp

    def _training_model(self, model: TransferModel, cut: _Cut) -> Any:
        """The part above the cut and the head, on the cached tensors: the same layer objects
        as the full network (so the same variables), the version chosen by the flip layer."""
        import keras

        inputs = [
            keras.Input(shape, dtype=str(dtype), name=f"frozen_{v}_{j}")
            for v in range(2)
            for j, (shape, dtype) in enumerate(zip(cut.shapes, cut.dtypes, strict=True))
        ]
        picked = _pick_class()(cut.flip, len(cut.shapes), name="frozen_cache_version")(inputs)
        x = picked if cut.upper is None else cut.upper(picked[0] if len(picked) == 1 else picked)
        if isinstance(x, list | tuple):
            x = x[0] if len(x) == 1 else x
        if not cut.pooled:
            outputs = model.head(model.gradient_scale(x))
        else:  # the head after its pooling (the gradient scale is the identity forward)
            outputs = model.gradient_scale(x)
            for layer in model.head.layers[1:]:
                outputs = layer(outputs)
        return keras.Model(inputs, outputs, name="frozen_cache_training")


class CachedBatches:
    """The batches of a data module with the cached tensors of its images in place of the
    images: the same epochs, orders, batch sizes and images left out, ``train_segment`` giving
    None where the data module's does (one ``fit`` call per epoch, as without the cache)."""

    def __init__(self, cut: _Cut, data: DataModule) -> None:
        self.cut, self.data = cut, data

    def train_segment(self, start: int, end: int) -> tuple[Any, int] | None:
        from .data import DataModule

        if type(self.data).train_segment is DataModule.train_segment:  # it gives None
            return None
        epochs = [self._positions(e) for e in range(start, end)]
        steps = -(-len(epochs[0]) // self.data.batch_size) if epochs else 0
        return self._batches(epochs), steps

    def train_dataset(self, epoch: int = 0) -> Any:
        return self._batches([self._positions(epoch)])

    def val_dataset(self) -> Any:
        cut = self.cut
        if cut.val is None or not cut.val_kept.any():
            return None
        kept = np.flatnonzero(cut.val_kept)
        return _dataset(cut.val, [kept], self.data.labels[cut.val_rows], self.data.batch_size)

    def _positions(self, epoch: int) -> np.ndarray:
        """The cache positions of an epoch's rows, in its order, undecodable ones left out (as
        the input pipeline leaves them out before it batches)."""
        cut = self.cut
        positions = np.searchsorted(cut.train_rows, np.asarray(self.data.epoch_order(epoch)))
        return positions[cut.train_kept[positions]]

    def _batches(self, epochs: Sequence[np.ndarray]) -> Any:
        cut = self.cut
        assert cut.train is not None
        labels = self.data.labels[cut.train_rows]
        return _dataset(cut.train, epochs, labels, self.data.batch_size)


def _dataset(rows: _Rows, epochs: Sequence[np.ndarray], labels: np.ndarray, batch_size: int) -> Any:
    """Batches ``((version 0 tensors..., version 1 tensors...), labels)`` of the positions of
    each epoch in turn (the training model's inputs; validation: version 0 twice), of unknown
    length as the input pipeline's are."""
    import tensorflow as tf

    from ..pipeline import dataset_options

    specs = [tf.TensorSpec((None, *m.shape[2:]), tf.as_dtype(m.dtype)) for m in rows.memory]

    def batches() -> Iterator[Any]:
        for positions in epochs:
            for b in range(0, len(positions), batch_size):
                chosen = positions[b : b + batch_size]
                arrays = rows.gather(chosen)
                first = [a[:, 0] for a in arrays]
                second = [a[:, -1] for a in arrays]
                yield tuple(first + second), labels[chosen].astype(np.int32)

    signature = (tuple(specs * 2), tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return ds.with_options(dataset_options()).prefetch(2)


class _NoGraph(Exception):
    """The base is no functional graph that can be cut there."""


def _pools_first(head: Any) -> bool:
    """Whether ``head`` is a ``Sequential`` whose first layer is transferkit's ``PoolIfMap``."""
    import keras

    from .layers import PoolIfMap

    return (
        isinstance(head, keras.Sequential)
        and bool(head.layers)
        and (isinstance(head.layers[0], PoolIfMap))
    )


def _forward_fn(lower: Any, pooling: Any = None) -> Any:
    """The frozen part's forward pass in inference mode (then ``pooling``, the head's first
    layer, where given), as a graph: :func:`_fill` gives it batches of one size, so it is traced
    once per cut (a graph's fused kernels ran efficientnet-lite0 1.6x faster than eager)."""
    import tensorflow as tf

    @tf.function
    def forward(images: Any) -> list[Any]:
        out = lower(images, training=False)
        outs = list(out) if isinstance(out, list | tuple) else [out]
        return [pooling(outs[0])] if pooling is not None else outs

    return forward


def _batches_with_rows(data: DataModule, rows: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """The preprocessed images of ``rows`` as the data module batches them, each batch with the
    rows it holds (an image folder leaves out the images it cannot decode)."""
    from .data import ImageDataModule

    if isinstance(data, ImageDataModule):
        from ..pipeline import image_dataset

        assert data.input_size is not None
        ds = image_dataset(
            data.source,
            rows,
            input_size=tuple(data.input_size),
            batch_size=data.batch_size,
            preprocess=data.preprocess,
            shuffle=False,
            resize=data.resize or "auto",
            with_index=True,
        )  # fmt: skip  (ImageDataModule.dataset, with the rows)
        for images, _labels, index in ds:
            yield images, np.asarray(index, np.int64)
        return
    done = 0
    for images, _labels in data.dataset(rows):
        n = int(images.shape[0])
        yield images, rows[done : done + n]
        done += n


def _fill(
    rows: _Rows, data: DataModule, wanted: np.ndarray, forward: Any, flip: bool
) -> tuple[np.ndarray, int]:
    """Run the frozen part over the images of ``wanted`` (sorted or in order; positions are
    their places in ``wanted``), and with ``flip`` over their mirror images too; returns which
    rows the data gave and how many images went through the frozen part."""
    import tensorflow as tf

    from .bridge import quiet_end_of_data

    place = {int(r): i for i, r in enumerate(wanted)}
    kept = np.zeros(len(wanted), bool)
    images_run = 0

    def run(images: Any) -> list[np.ndarray]:
        n = int(images.shape[0])
        if n < data.batch_size:  # one batch size, one trace
            pad = tf.zeros((data.batch_size - n, *images.shape[1:]), images.dtype)
            images = tf.concat([images, pad], axis=0)
        return [np.asarray(t)[:n] for t in forward(images)]

    with quiet_end_of_data():
        for images, got in _batches_with_rows(data, wanted):
            positions = np.array([place[int(r)] for r in got], np.int64)
            kept[positions] = True
            rows.write(positions, 0, run(images))
            images_run += len(positions)
            if flip:
                rows.write(positions, 1, run(tf.reverse(images, axis=[2])))
                images_run += len(positions)
    return kept, images_run


@functools.cache
def _pick_class() -> Any:
    import keras
    from keras import ops

    class PickVersion(keras.layers.Layer):  # type: ignore[misc]
        """Takes the cached tensors of both versions of each image (as is, mirrored) and, in
        training, returns those of the version ``flip`` chose, by calling ``flip`` on a probe
        ``[0, 1]`` one pixel high per image: its draw depends on the batch size only, so it
        consumes the random state as on the images and flips the same images. Outside
        training (validation), the images as they are."""

        def __init__(self, flip: Any, count: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.flip = flip
            self.count = count

        def call(self, inputs: Any, training: Any = None) -> Any:
            first, second = list(inputs[: self.count]), list(inputs[self.count :])
            if not training or self.flip is None:
                return first
            batch = ops.shape(first[0])[0]
            probe = ops.tile(ops.reshape(ops.arange(2, dtype="float32"), (1, 1, 2, 1)),
                             (batch, 1, 1, 1))  # fmt: skip
            turned = ops.reshape(self.flip(probe, training=True)[:, 0, 0, 0], (-1,))
            chosen = ops.greater(ops.cast(turned, "float32"), 0.5)
            return [
                ops.where(ops.reshape(chosen, (-1,) + (1,) * (len(a.shape) - 1)), b, a)
                for a, b in zip(first, second, strict=True)
            ]

        def compute_output_shape(self, input_shape: Any) -> Any:
            return list(input_shape[: self.count])

    return PickVersion
