"""The ``last`` checkpoint format: one ``.npz`` holding the model's variables, the optimizer's
variables and the trainer state as JSON, written to a temporary file and moved into place with
``os.replace``; ``state.json`` beside it is a readable copy of the state.

The format takes plain values and gives plain values back: arrays in the order of the model's
and the optimizer's variables, and a JSON-able state (epoch, strategy phase, callback states,
history, seed). :meth:`transferkit.trainer.Trainer.save_checkpoint` gathers them, and the
Trainer puts them back on resume; this module knows nothing of the Trainer or its model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError
from ..outputs import atomic_path, atomic_write_text

FORMAT = 1
STATE_FILE = "state.json"  # the readable copy, beside the checkpoint


def write_checkpoint(
    path: Path,
    *,
    state: Mapping[str, Any],
    model_arrays: Sequence[np.ndarray],
    optimizer_arrays: Sequence[np.ndarray] = (),
) -> None:
    """Write one checkpoint at ``path`` (atomically) and the readable ``state.json`` beside it.

    ``model_arrays`` and ``optimizer_arrays`` are the variables' values in order; ``state`` is
    any JSON-able mapping (the format adds its version and the two counts)."""
    arrays: dict[str, np.ndarray] = {}
    for i, a in enumerate(model_arrays):
        arrays[f"m{i}"] = np.asarray(a)
    for i, a in enumerate(optimizer_arrays):
        arrays[f"o{i}"] = np.asarray(a)
    full = dict(state)
    full["format"] = FORMAT
    full["n_model"] = len(model_arrays)
    full["n_optimizer"] = len(optimizer_arrays)
    text = json.dumps(full)
    arrays["state"] = np.frombuffer(text.encode(), dtype=np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    atomic_write_text(path.with_name(STATE_FILE), json.dumps(full, indent=2))


class Checkpoint:
    """A loaded checkpoint: ``state`` (dict), ``model_arrays`` and ``optimizer_arrays``.

    :meth:`restore_model` and :meth:`restore_optimizer` check the arrays against variables (any
    objects with ``shape``, ``path`` and ``assign``, as Keras variables have) and assign them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with np.load(self.path) as data:
                self.arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise TransferkitError(
                f"cannot read checkpoint {self.path}: {exc}; delete it to start afresh"
            ) from exc
        self.state: dict[str, Any] = json.loads(self.arrays.pop("state").tobytes().decode())
        self.model_arrays = [self.arrays[f"m{i}"] for i in range(self.state["n_model"])]
        self.optimizer_arrays = [self.arrays[f"o{i}"] for i in range(self.state["n_optimizer"])]

    def _mismatch(self, what: str, detail: str) -> TransferkitError:
        return TransferkitError(
            f"checkpoint {self.path} does not fit this {what} ({detail}); resume with the same "
            "backbone, head and options, or delete the checkpoint folder to start afresh"
        )

    def restore_model(self, variables: Sequence[Any]) -> None:
        """Assign the model arrays to ``variables`` (the model's, in order), after checking
        that every count and shape fits (nothing is assigned otherwise)."""
        variables = list(variables)
        if len(variables) != len(self.model_arrays):
            raise self._mismatch(
                "model", f"{len(self.model_arrays)} variables saved, {len(variables)} in the model"
            )
        for v, a in zip(variables, self.model_arrays, strict=True):
            if tuple(v.shape) != a.shape:
                raise self._mismatch(
                    "model", f"{v.path} has shape {tuple(v.shape)}, saved {a.shape}"
                )
        for v, a in zip(variables, self.model_arrays, strict=True):
            v.assign(a)

    def restore_optimizer(self, variables: Sequence[Any]) -> None:
        """Assign the optimizer arrays to ``variables`` (the built optimizer's, in order)."""
        variables = list(variables)
        if len(variables) != len(self.optimizer_arrays):
            raise self._mismatch(
                "optimizer",
                f"{len(self.optimizer_arrays)} variables saved, {len(variables)} now",
            )
        for v, a in zip(variables, self.optimizer_arrays, strict=True):
            if tuple(v.shape) != a.shape:
                raise self._mismatch("optimizer", f"{v.path}: {tuple(v.shape)} vs {a.shape}")
            v.assign(a)
