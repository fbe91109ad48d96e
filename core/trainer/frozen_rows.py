"""The rows of the frozen-part cache and the passes that fill them (the storage of
:mod:`~transferkit.trainer.frozen_cache`): :class:`_Rows`, one part's cached tensors, in memory up
to a budget and memory-mapped beyond it; :func:`_fill`, the frozen part run over a data module's
images; :func:`_fill_above`, the layers between two cuts run over the rows of the deeper one; the
batches a training model reads (:func:`_dataset`), and the layer that picks the flipped version
of each image."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataModule

SPILL_PREFIX = "frozen-cache-"


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
        # the spill files go with these rows even where nobody releases them (an error after
        # a fit that kept its rows): when they are collected, or when the process ends
        self._unlink = weakref.finalize(self, _unlink_all, list(self.files))

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
        self._unlink()
        self.files = []


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


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


def _batches_with_rows(data: DataModule, rows: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """The preprocessed images of ``rows`` as the data module batches them, each batch with the
    rows it holds (an image folder leaves out the images it cannot decode)."""
    from .data import ImageDataModule

    if isinstance(data, ImageDataModule):
        for images, _labels, index in data.dataset(rows, with_index=True):
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


def _fill_above(rows: _Rows, source: _Rows, kept: np.ndarray, forward: Any, batch_size: int) -> int:
    """Run the frozen layers between two cuts (``forward``) over the rows of the deeper cut
    (``source``; its rows that ``kept`` marks, every version), in batches of ``batch_size``
    (the last one padded: one trace), into ``rows``; returns how many rows it ran."""
    import tensorflow as tf

    positions = np.flatnonzero(kept)
    done = 0
    for b in range(0, len(positions), batch_size):
        chosen = positions[b : b + batch_size]
        arrays = source.gather(chosen)
        n = len(chosen)
        for variant in range(rows.variants):
            inputs = []
            for a in arrays:
                x = a[:, variant]
                if n < batch_size:
                    x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
                inputs.append(tf.convert_to_tensor(x))
            outputs = forward(inputs[0] if len(inputs) == 1 else inputs)
            rows.write(chosen, variant, [np.asarray(t)[:n] for t in outputs])
            done += n
    return done


def _fingerprint(layers: Sequence[Any]) -> str:
    """A digest of the weights of ``layers`` (whether a cut's rows still hold)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for layer in layers:
        for weight in layer.weights:
            digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


def _upper_fn(upper: Any) -> Any:
    """``upper`` (the layers above a cut) in inference mode as a graph."""
    import tensorflow as tf

    @tf.function
    def forward(inputs: Any) -> Any:
        return upper(inputs, training=False)

    return forward


def _base_outputs(
    rows: _Rows, positions: np.ndarray, labels: np.ndarray, forward: Any, batch_size: int
) -> Iterator[tuple[Any, np.ndarray]]:
    """Batches ``(the base's output, labels)`` of the rows at ``positions`` (their first
    version), through ``forward`` (:func:`_upper_fn` of the layers above the cut; None: the
    rows are the base's output already), the last batch padded: one trace per cut."""
    import tensorflow as tf

    for b in range(0, len(positions), batch_size):
        chosen = positions[b : b + batch_size]
        arrays = [a[:, 0] for a in rows.gather(chosen)]
        n = len(chosen)
        if forward is None:
            yield tf.convert_to_tensor(arrays[0]), labels[chosen]
            continue
        if n < batch_size:
            arrays = [np.concatenate([a, np.zeros((batch_size - n, *a.shape[1:]), a.dtype)])
                      for a in arrays]  # fmt: skip
        out = forward(arrays[0] if len(arrays) == 1 else arrays)
        yield (out[0] if isinstance(out, list | tuple) else out)[:n], labels[chosen]
