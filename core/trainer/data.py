"""Data modules: where the Trainer's batches come from.

A data module owns the stratified, seeded train/validation/test split, the batch size, the input
size and the augmentation setting. The training order of epoch ``e`` is a permutation drawn from
``(seed, e)`` alone, so a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run
sees. Augmentation is not applied here: the Trainer puts the augmentation layers in front of the
training model (see :mod:`transferkit.trainer.augment`), so they act on training batches only and
their random state is part of each checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import UsageError
from ..specs import Resize

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def _split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    from ..splits import stratified_split

    return tuple(np.asarray(p, dtype=np.int64) for p in stratified_split(labels, fractions, seed))


class DataModule:
    """Base class: subclasses implement :meth:`dataset` for a list of row indices."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        label_names: Sequence[str],
        *,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        seed: int = 0,
        batch_size: int = 32,
        input_size: tuple[int, int] | None = None,
        augment: Any = "classic",
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = [str(n) for n in label_names]
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) not in (2, 3) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise UsageError(
                f"split fractions {fractions} must be 2 or 3 non-negative numbers summing to 1, "
                "e.g. (0.7, 0.15, 0.15) for train/validation/test"
            )
        if len(self.labels) == 0:
            raise UsageError("the data set is empty: no images to train on")
        present = np.unique(self.labels)
        if len(present) < 2:
            raise UsageError(
                f"fine-tuning needs at least 2 classes; found only {len(present)} "
                f"({[self.label_names[i] for i in present]})"
            )
        self.fractions = fractions
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.input_size = tuple(input_size) if input_size else None
        self.augment = augment
        self.preprocess: Callable[[Any], Any] | None = None
        self.resize: Resize | None = None
        parts = _split(self.labels, fractions, self.seed)
        self.train_indices = parts[0]
        self.val_indices = parts[1] if len(parts) > 1 else np.zeros(0, np.int64)
        self.test_indices = parts[2] if len(parts) > 2 else np.zeros(0, np.int64)
        if len(self.train_indices) == 0:
            raise UsageError("the training split is empty; use more images or a larger fraction")
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ set-up

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def setup(
        self,
        *,
        preprocess: Callable[[Any], Any] | None,
        input_size: tuple[int, int],
        resize: Resize | None = None,
    ) -> None:
        """Called by the Trainer with the backbone's preprocessing, input size and resize (None:
        transferkit's own)."""
        if self.input_size is not None and tuple(self.input_size) != tuple(input_size):
            raise UsageError(
                f"the data module resizes to {self.input_size} but the backbone expects "
                f"{tuple(input_size)}; build the backbone with input_size={self.input_size}"
            )
        if (self.preprocess, self.input_size, self.resize) != (
            preprocess,
            tuple(input_size),
            resize,
        ):
            self._cache.clear()
        self.preprocess = preprocess
        self.input_size = tuple(input_size)
        self.resize = resize

    def augmentation_layer(self, seed: int | None = None) -> Any:
        """The Keras augmentation layers for the training model (None when off)."""
        if self.augment is None or isinstance(self.augment, str):
            from .augment import augmentation

            return augmentation(self.augment, seed=seed)
        return self.augment

    def _require_setup(self) -> None:
        if self.input_size is None:
            raise UsageError("call data.setup(preprocess=..., input_size=...) first (fit does it)")

    # ------------------------------------------------------------------ datasets

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The training indices in the order of ``epoch``: a function of (seed, epoch) only."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        return self.train_indices[rng.permutation(len(self.train_indices))]

    def train_dataset(self, epoch: int = 0) -> Any:
        self._require_setup()
        return self.dataset(self.epoch_order(epoch))

    def train_segment(self, start: int, end: int) -> tuple[Any, int] | None:
        """The training batches of epochs ``start`` .. ``end - 1`` as ONE dataset, and the
        number of batches per epoch; None when the data module cannot promise that count (the
        Trainer then runs one ``fit`` call per epoch)."""
        return None

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_indices) // self.batch_size)

    def val_dataset(self) -> Any:
        return self._cached("val", self.val_indices)

    def test_dataset(self) -> Any:
        return self._cached("test", self.test_indices)

    def _cached(self, key: str, indices: np.ndarray) -> Any:
        self._require_setup()
        if len(indices) == 0:
            return None
        if key not in self._cache:
            self._cache[key] = self.dataset(indices)
        return self._cache[key]

    def dataset(self, indices: np.ndarray) -> Any:  # pragma: no cover - abstract
        """The batches ``(images, labels)`` of the rows ``indices``, in that order, preprocessed
        and resized as :meth:`setup` says, without augmentation (a ``tf.data`` dataset)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "classes": self.num_classes,
            "label_names": self.label_names,
            "train": len(self.train_indices),
            "val": len(self.val_indices),
            "test": len(self.test_indices),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "augment": self.augment if isinstance(self.augment, str | None) else "custom",
        }


class ArrayDataModule(DataModule):
    """Images held in memory: ``images`` (N, H, W, 3) RGB with values 0..255, ``labels`` (N,)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        label_names: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UsageError(f"images must be (N, H, W, 3) RGB, got shape {images.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(images) != len(labels):
            raise UsageError(f"{len(images)} images but {len(labels)} labels")
        names = (
            [str(i) for i in range(int(labels.max()) + 1)] if label_names is None else label_names
        )
        self.images = images.astype(np.float32)
        self._tensors: Any = None
        super().__init__(labels, names, **options)

    def dataset(self, indices: np.ndarray) -> Any:
        import tensorflow as tf

        from ..pipeline import dataset_options

        self._require_setup()
        gather = self._gather_fn()
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
        ds = ds.batch(self.batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.with_options(dataset_options()).prefetch(tf.data.AUTOTUNE)

    def _gather_fn(self) -> Any:
        import tensorflow as tf

        if self._tensors is None:
            self._tensors = (tf.constant(self.images), tf.constant(self.labels.astype(np.int32)))
        images, labels = self._tensors
        assert self.input_size is not None
        size = tuple(int(s) for s in self.input_size)
        from ..pipeline import resize_image

        preprocess, resize = self.preprocess, self.resize

        def gather(idx: Any) -> Any:
            x = tf.gather(images, idx)
            if resize is not None and not resize.is_default:
                x = resize_image(x, size, resize)
            elif tuple(x.shape[1:3]) != size:
                x = tf.image.resize(x, size)
            if preprocess is not None:
                x = preprocess(x)
            return tf.cast(x, tf.float32), tf.gather(labels, idx)

        return gather

    def train_segment(self, start: int, end: int) -> tuple[Any, int]:
        import tensorflow as tf

        from ..pipeline import dataset_options

        self._require_setup()
        orders = np.stack([self.epoch_order(e) for e in range(start, end)]).astype(np.int64)
        batch = self.batch_size
        ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
            lambda row: tf.data.Dataset.from_tensor_slices(row).batch(batch)
        )
        ds = ds.map(self._gather_fn(), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.with_options(dataset_options()).prefetch(tf.data.AUTOTUNE), self.steps_per_epoch


class ImageDataModule(DataModule):
    """Images from an image source (``transferkit.images``): a folder, a CSV/JSON list, or an
    ``ImageSource`` object, optionally through a task transform (``task="rotation"``)."""

    def __init__(
        self,
        source: Any,
        *,
        task: str | None = None,
        **options: Any,
    ) -> None:
        if not hasattr(source, "records"):
            from ..images import open_source

            source = open_source(source, task=task, seed=options.get("seed", 0))
        self.source = source
        labels = [r.label for r in source.records]
        super().__init__(labels, list(source.label_names), **options)

    def dataset(self, indices: np.ndarray, *, with_index: bool = False) -> Any:
        """The preprocessed images of ``indices`` in order, batched; ``with_index`` adds each
        batch's row numbers (the folder leaves out images it cannot decode)."""
        from ..pipeline import image_dataset

        self._require_setup()
        assert self.input_size is not None
        return image_dataset(
            self.source,
            indices,
            input_size=tuple(self.input_size),
            batch_size=self.batch_size,
            preprocess=self.preprocess,
            shuffle=False,
            resize=self.resize or "auto",
            with_index=with_index,
        )
