"""The frozen-part cache of fine-tuning: what cannot change is computed once.

While a phase trains only the head, the base's output for an image is fixed; while it trains the
top blocks, everything below the first trainable layer is. :class:`FrozenCache` (a Trainer
callback that the Trainer asks for each stretch of epochs) runs the frozen part once over the
training and validation images (and the test images when a phase ends), keeps its output (the
*cut*: the tensors entering the first trainable layer, or the base's output, pooled where the
head pools first), and trains a model made of the part above the cut and the head, sharing
their layers and the optimizer with the full network. Where the phases ahead will cut deeper
(a built-in strategy's ``unfreeze_from``), the frozen part runs once, to the deepest of their
cuts, and a shallower cut's rows (the warm-up's pooled vectors) are made from those rows by the
frozen layers between the two cuts; the deeper phase then reuses them. An unfreeze below the
rows kept drops them, and the cache is rebuilt from the new cut. With ``keep_after_fit`` the
rows outlive the fit, for the base's output on the images (:meth:`FrozenCache.base_batches`:
``finetune``'s final scores and trust record).

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

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .callbacks import Callback
from .frozen_rows import (
    SPILL_PREFIX,
    _base_outputs,
    _dataset,
    _fill,
    _fill_above,
    _fingerprint,
    _pick_class,
    _Rows,
    _upper_fn,
)
from .model import iter_layers

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataModule
    from .model import TransferModel
    from .trainer import Trainer

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 2048
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
        self.tensors: list[Any] = []  # the symbolic tensors crossing the cut
        self.source: _Cut | None = None  # the deeper cut whose rows this one's came from
        self.fingerprint = ""  # of the weights below the cut when it was built
        self.upper_forward: Any = None  # the part above the cut as a graph, after the fit
        self.figures: dict[str, Any] = {}

    def parts(self) -> list[_Rows]:
        return [p for p in (self.train, self.val, self.test) if p is not None]

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
    index, the images run through the frozen part, the bytes in memory and spilled.
    ``keep_after_fit``: keep the rows when the fit ends, for :meth:`base_batches` (the caller
    then calls :meth:`release`; a fit that fails releases them still)."""

    def __init__(
        self,
        memory_mb: float = DEFAULT_MEMORY_MB,
        spill_dir: str | Path | None = None,
        keep_after_fit: bool = False,
    ) -> None:
        from ..errors import UsageError

        if not float(memory_mb) >= 0:
            raise UsageError(f"the frozen-part cache's memory must be 0 MiB or more: {memory_mb}")
        self.memory_mb = float(memory_mb)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.keep_after_fit = bool(keep_after_fit)
        self.builds: list[dict[str, Any]] = []
        self._cut: _Cut | None = None  # the cut of the model's trainable state
        self._deep: _Cut | None = None  # the deepest cut of the phases ahead, its rows from images
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
        if not self.keep_after_fit:
            self.release()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        """Drop the cached rows and delete the spill files."""
        for cut in (self._cut, self._deep):
            if cut is not None:
                cut.release()
        self._cut = self._deep = None
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
            if not len(data.test_indices):
                return None
            self._fill_part(trainer, cut, "test")
        if cut.test is None or not cut.test_kept.any():
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

    def base_batches(
        self, trainer: Trainer, split: str, rows: Any = None
    ) -> Iterator[tuple[Any, np.ndarray]] | None:
        """Batches ``(the base's output, labels)`` in inference mode for the images of
        ``split`` (``val``, ``test``, or ``train`` with ``rows``, sorted training rows), in the
        order the data module's batches give them (images that do not decode left out): the
        rows of the fit's last cut through the layers above it, where the head pools first the
        pooled vectors. None where the cache holds no such rows, or the weights below the cut
        are no longer those it was built with (a restored checkpoint from a deeper phase)."""
        cut, data = self._cut, trainer.data
        if cut is None or cut.training_model is None or data is None:
            return None
        if _fingerprint(trainer.model.base_layers[: cut.key[0]]) != cut.fingerprint:
            return None
        if split == "train":
            wanted = np.asarray(rows, np.int64)
            positions = np.searchsorted(cut.train_rows, wanted)
            if (positions >= len(cut.train_rows)).any() or (
                cut.train_rows[positions] != wanted
            ).any():
                return None
        else:
            if getattr(cut, split) is None:
                if not len(data.test_indices if split == "test" else data.val_indices):
                    return None
                self._fill_part(trainer, cut, split)
            positions = np.arange(len(getattr(cut, f"{split}_rows")))
        stored, kept = getattr(cut, split), getattr(cut, f"{split}_kept")
        positions = positions[kept[positions]]
        labels = data.labels[getattr(cut, f"{split}_rows")]
        if cut.upper is not None and cut.upper_forward is None:
            cut.upper_forward = _upper_fn(cut.upper)
        return _base_outputs(stored, positions, labels, cut.upper_forward, data.batch_size)

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
        not apply (said once, with the reason). Where the phases ahead will cut deeper, the
        frozen part runs once, to the deepest of their cuts, and this cut's rows come from
        those rows through the frozen layers between (:meth:`_planned_cut`)."""
        model = trainer.model
        flip, reason = self._why_not(trainer)
        if reason is not None:
            self._say(f"frozen-part cache off: {reason}; every step runs the whole network")
            return None
        layers = model.base_layers
        cut = _cut_index(layers)
        if self._deep is not None and cut < self._deep.key[0]:
            self.release()  # a layer below the deeper cut trains: its rows would go stale
        if cut == 0 or all(not layer.weights for layer in layers[:cut]):
            return None  # nothing frozen below the first trainable layer: nothing to cache
        problem = inference_problem(layers[:cut])
        if problem is not None:
            self._say(f"frozen-part cache off below layer {cut}: {problem}; the whole network runs")
            return None
        key = (cut, id(model.base), id(trainer.data), flip is not None)
        if self._cut is not None and self._cut.key == key:
            return self._cut
        if self._cut is not None and self._cut is not self._deep:
            self._cut.release()
        self._cut = None
        deep = self._deep
        if deep is None or deep.key[1:] != key[1:]:
            self.release()
            problem_text = ""
            for at in dict.fromkeys((self._planned_cut(trainer, cut), cut)):
                try:
                    deep = self._build(trainer, (at, *key[1:]), flip, None)
                    break
                except _NoGraph as exc:
                    problem_text = str(exc)
            else:
                self._say(f"frozen-part cache off below layer {cut}: {problem_text}; "
                          "the whole network runs")  # fmt: skip
                return None
            self._deep = deep
        assert deep is not None
        if deep.key == key:
            self._cut = deep
            return deep
        try:
            self._cut = self._build(trainer, key, flip, deep)
        except _NoGraph as exc:  # the layers between the two cuts make no graph of their own
            self.release()
            try:
                self._cut = self._deep = self._build(trainer, key, flip, None)
            except _NoGraph:
                self._say(f"frozen-part cache off below layer {cut}: {exc}; the whole network runs")
                return None
        return self._cut

    def _planned_cut(self, trainer: Trainer, cut: int) -> int:
        """The deepest cut of this phase and those ahead that will run (within the planned
        epochs), where a built-in :class:`~transferkit.trainer.strategy.FinetuneStrategy` sets
        the trainable state from each phase's ``unfreeze_from``; ``cut`` where none is deeper
        or the strategy decides by itself."""
        from .model import _is_batchnorm
        from .strategy import FinetuneStrategy

        strategy = getattr(trainer, "strategy", None)
        kind: Any = type(strategy)
        if (
            not isinstance(strategy, FinetuneStrategy)
            or kind.on_epoch_start is not FinetuneStrategy.on_epoch_start
            or kind.on_phase_start is not FinetuneStrategy.on_phase_start
            or strategy.finished
        ):
            return cut
        model = trainer.model
        layers = model.base_layers
        train_bn = bool(getattr(model, "train_bn", False))
        best, start, limit = cut, strategy.phase_start_epoch, trainer.planned_epochs
        for phase in strategy.phases[strategy.phase_index :]:
            if start >= limit:
                break
            if int(phase.epochs) > 0 and phase.unfreeze_from is not None:
                at = int(phase.unfreeze_from)  # the first layer unfreeze_base makes trainable
                while at < len(layers) and not (
                    layers[at].weights and (train_bn or not _is_batchnorm(layers[at]))
                ):
                    at += 1
                if 0 < at < best and any(layer.weights for layer in layers[:at]):
                    best = at
            start += int(phase.epochs)
        return best

    def _build(
        self, trainer: Trainer, key: tuple[Any, ...], flip: Any, source: _Cut | None
    ) -> _Cut:
        """The cache of cut ``key[0]``: the frozen part below it run over the images
        (``source`` None), or the frozen layers between ``source``'s cut and this one run over
        ``source``'s rows."""
        import keras

        model = trainer.model
        base, cut_at = model.base, key[0]
        whole = cut_at >= len(model.base_layers)
        start = list(base.inputs) if source is None else source.tensors
        try:
            tensors = list(base.outputs) if whole else _frontier(base, cut_at)
            if source is None and whole:
                lower = base
            else:
                ins = start[0] if len(start) == 1 else start
                name = "frozen_part" if source is None else "frozen_between_cuts"
                lower = keras.Model(ins, tensors, name=name)
            upper = None if whole else keras.Model(tensors, base.outputs, name="trained_part")
        except Exception as exc:  # not a functional graph that can be cut
            raise _NoGraph(f"the base cannot be cut at layer {cut_at} ({exc})") from exc
        shapes = [tuple(int(d) for d in t.shape[1:]) for t in tensors]
        dtypes = [np.dtype(keras.backend.standardize_dtype(t.dtype)) for t in tensors]
        cut = _Cut(key)
        cut.lower, cut.upper, cut.flip = lower, upper, flip
        cut.tensors, cut.source = tensors, source
        pooling = None
        if whole and len(shapes) == 1 and len(shapes[0]) == 3 and _pools_first(model.head):
            # the head pools the map first (the linear head): cache the pooled vectors
            pooling = model.head.layers[0]
            shapes = [shapes[0][-1:]]
            dtypes = [np.dtype(keras.backend.standardize_dtype(pooling.compute_dtype))]
        cut.pooled = pooling is not None
        cut.shapes, cut.dtypes, cut.forward = shapes, dtypes, _forward_fn(lower, pooling)
        cut.fingerprint = _fingerprint(model.base_layers[:cut_at])
        variants = 2 if flip is not None else 1
        cut.figures = figures = {
            "cut": cut_at, "whole_base": whole, "variants": variants, "images": 0,
            "from_cut": None if source is None else source.key[0], "cached_rows": 0,
            "memory_bytes": 0, "spilled_bytes": 0, "files": [], "spilled": {},
        }  # fmt: skip
        self.builds.append(figures)
        self._fill_part(trainer, cut, "val")
        self._fill_part(trainer, cut, "train")
        what = "pooled features" if cut.pooled else f"activations {shapes}"
        origin = (
            "" if source is None else f", from the cached activations below layer {source.key[0]}"
        )
        spilled = (
            f", {figures['spilled_bytes'] / 2**20:.1f} MiB spilled to {self._folder()}"
            if figures["spilled_bytes"]
            else ""
        )
        log.info(
            f"frozen-part cache: {what} below layer {cut_at} of {len(model.base_layers)}{origin}, "
            f"{len(cut.train_rows)} training image(s) x {variants}, {len(cut.val_rows)} "
            f"validation; {figures['memory_bytes'] / 2**20:.1f} MiB in memory{spilled}"
        )
        return cut

    def _fill_part(self, trainer: Trainer, cut: _Cut, part: str) -> None:
        """Fill ``part`` (``train``, ``val``, ``test``) of ``cut``: its images through the frozen
        part, or (a cut made from a deeper one) that cut's rows, filled first where they are not,
        through the layers between; in memory up to what the bound leaves, the rest spilled."""
        data = trainer.data
        wanted = {"train": data.train_indices, "val": data.val_indices, "test": data.test_indices}
        rows = np.asarray(wanted[part], np.int64)
        if part == "train":
            rows = np.unique(rows)
        setattr(cut, f"{part}_rows", rows)
        if not len(rows) and part != "train":
            return
        variants = cut.figures["variants"] if part == "train" else 1
        name = part if cut.source is None else f"{part}-cut{cut.key[0]}"
        budget = self._budget_left(cut)
        stored = _Rows(len(rows), cut.shapes, cut.dtypes, variants, budget, self._folder(), name)
        setattr(cut, part, stored)
        figures = cut.figures
        if cut.source is None:
            kept, n = _fill(stored, data, rows, cut.forward, variants == 2)
            figures["images"] += n
        else:
            source = cut.source
            if getattr(source, part) is None:
                self._fill_part(trainer, source, part)
            kept = getattr(source, f"{part}_kept")
            n = _fill_above(stored, getattr(source, part), kept, cut.forward, data.batch_size)
            figures["cached_rows"] += n
        setattr(cut, f"{part}_kept", kept)
        figures["memory_bytes"] += stored.memory_bytes
        figures["spilled_bytes"] += stored.spilled_bytes
        figures["files"] += [str(f) for f in stored.files]
        figures["spilled"][part] = stored.spilled_bytes

    def _budget_left(self, building: _Cut) -> int:
        """The bytes of the memory bound that the rows of the cuts kept (and of ``building``
        and its source) leave."""
        kept = (self._deep, self._cut, building, building.source)
        cuts = {id(c): c for c in kept if c is not None}
        used = sum(p.memory_bytes for c in cuts.values() for p in c.parts())
        return int(self.memory_mb * 2**20) - used

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
