"""The ``last`` checkpoint: one ``.npz`` holding model variables, optimizer variables and the
trainer state as JSON, written to a temporary file and moved into place with ``os.replace``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TransferkitError
from ..outputs import atomic_path, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

FORMAT = 1


def save_checkpoint(path: Path, trainer: Trainer) -> None:
    keras_model = trainer.model.keras_model
    arrays: dict[str, np.ndarray] = {}
    for i, v in enumerate(keras_model.variables):
        arrays[f"m{i}"] = np.asarray(v.numpy())
    optimizer = keras_model.optimizer
    opt_vars = list(optimizer.variables) if optimizer is not None and optimizer.built else []
    for i, v in enumerate(opt_vars):
        arrays[f"o{i}"] = np.asarray(v.numpy())
    state = trainer.state_dict()
    state["format"] = FORMAT
    state["n_model"] = len(keras_model.variables)
    state["n_optimizer"] = len(opt_vars)
    text = json.dumps(state)
    arrays["state"] = np.frombuffer(text.encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    atomic_write_text(path.with_name("state.json"), json.dumps(state, indent=2))


class Checkpoint:
    """A loaded checkpoint: ``state`` (dict) and the variable arrays."""

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

    def restore_model(self, keras_model: Any) -> None:
        variables = list(keras_model.variables)
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

    def restore_optimizer(self, keras_model: Any) -> None:
        optimizer = keras_model.optimizer
        if not self.optimizer_arrays:
            return
        if not optimizer.built:
            optimizer.build(keras_model.trainable_variables)
        variables = list(optimizer.variables)
        if len(variables) != len(self.optimizer_arrays):
            raise self._mismatch(
                "optimizer",
                f"{len(self.optimizer_arrays)} variables saved, {len(variables)} now",
            )
        for v, a in zip(variables, self.optimizer_arrays, strict=True):
            if tuple(v.shape) != a.shape:
                raise self._mismatch("optimizer", f"{v.path}: {tuple(v.shape)} vs {a.shape}")
            v.assign(a)
