"""``FinetuneStrategy``: what is frozen, in which phase, with which optimizer.

A strategy has two override points, as Lightning's ``BaseFinetuning`` has:

* :meth:`FinetuneStrategy.freeze_before_training` -- what to freeze before the first epoch;
* :meth:`FinetuneStrategy.on_epoch_start` -- what to change at the start of an epoch (the default
  calls :meth:`FinetuneStrategy.on_phase_start` when a new phase begins);

and a state (:meth:`state_dict` / :meth:`load_state_dict`: the current phase and the epoch it
started at), saved with each checkpoint so that a resumed run knows where it is. The work is split
into :class:`Phase` records (epochs, optimizer, learning rate); the Trainer re-compiles the model
whenever the phase or the trainable state changes and evaluates the test set when a phase ends.

This module imports no TensorFlow: strategies only set ``trainable`` flags through the
:class:`~transferkit.trainer.model.TransferModel` methods.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError

OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")


@dataclass
class Phase:
    """One phase of a strategy.

    ``unfreeze_from`` is ``None`` for a frozen base, else the index of the first trainable layer
    of the base (0: the whole base). ``base_lr_multiplier`` scales the base's gradients (its
    learning rate, under SGD). ``evaluate_test``: evaluate the test split when the phase ends.
    """

    name: str
    epochs: int
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    unfreeze_from: int | None = None
    base_lr_multiplier: float = 1.0
    evaluate_test: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, strategy: str) -> None:
        where = f"strategy {strategy!r}, phase {self.name!r}"
        if int(self.epochs) < 0:
            raise UsageError(f"{where}: epochs must be 0 or more, got {self.epochs}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise UsageError(
                f"{where}: unknown optimizer {self.optimizer!r}; use one of {list(OPTIMIZERS)}"
            )
        if not float(self.learning_rate) > 0:
            raise UsageError(f"{where}: learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= float(self.momentum) < 1:
            raise UsageError(f"{where}: momentum must be in [0, 1), got {self.momentum}")
        if not float(self.base_lr_multiplier) >= 0:
            raise UsageError(f"{where}: base_lr_multiplier must be >= 0")

    def make_optimizer(self) -> Any:
        from .model import make_optimizer

        return make_optimizer(self.optimizer, self.learning_rate, self.momentum)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class FinetuneStrategy:
    """Base class of fine-tune strategies. Subclasses implement :meth:`build_phases` (and may
    override the two override points)."""

    name = "custom"

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self.phase_index = 0
        self.phase_start_epoch = 0
        self._applied: int | None = None

    # ------------------------------------------------------------------ configuration

    def build_phases(self, model: Any) -> list[Phase]:  # pragma: no cover - abstract
        """The phases for ``model``; raise :class:`UsageError` naming what to fix."""
        raise NotImplementedError

    def setup(self, model: Any) -> None:
        """Build and check the phases (called by the Trainer before anything is trained)."""
        phases = list(self.build_phases(model))
        if not phases:
            raise UsageError(f"strategy {self.name!r} has no phases")
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise UsageError(f"strategy {self.name!r}: phase names must be unique, got {names}")
        n_layers = len(model.base_layers)
        for p in phases:
            p.check(self.name)
            if p.unfreeze_from is not None and not 0 <= p.unfreeze_from < n_layers:
                raise UsageError(
                    f"strategy {self.name!r}, phase {p.name!r}: unfreeze_from={p.unfreeze_from} "
                    f"is outside the base {model.backbone.name!r}, which has {n_layers} layers "
                    f"(valid: 0..{n_layers - 1}); pass --unfreeze-from with a valid index"
                )
        self.phases = phases

    @property
    def total_epochs(self) -> int:
        return sum(int(p.epochs) for p in self.phases)

    # ------------------------------------------------------------------ the two override points

    def freeze_before_training(self, model: Any) -> None:
        """Freeze what must be frozen before the first epoch (default: the whole base)."""
        model.freeze_base()

    def on_epoch_start(self, model: Any, epoch: int) -> bool:
        """Change the model at the start of ``epoch``; return True when the trainable state changed.

        The default applies :meth:`on_phase_start` once per phase (also after a resume).
        """
        if self._applied != self.phase_index:
            self.on_phase_start(model, self.phase)
            self._applied = self.phase_index
            return True
        return False

    def on_phase_start(self, model: Any, phase: Phase) -> None:
        """Set the trainable state of ``phase`` from ``phase.unfreeze_from``."""
        if phase.unfreeze_from is None:
            model.freeze_base()
        else:
            model.unfreeze_base(phase.unfreeze_from)

    # ------------------------------------------------------------------ phase bookkeeping

    @property
    def finished(self) -> bool:
        return self.phase_index >= len(self.phases)

    @property
    def phase(self) -> Phase:
        if self.finished:
            raise IndexError(f"strategy {self.name!r} has finished all its phases")
        return self.phases[self.phase_index]

    def skip_empty_phases(self, epoch: int) -> None:
        while not self.finished and self.phase.epochs <= 0:
            self.next_phase(epoch)

    def phase_complete(self, epoch: int) -> bool:
        """True when the current phase has run all its epochs once ``epoch`` epochs are done."""
        return not self.finished and epoch - self.phase_start_epoch >= self.phase.epochs

    def next_phase(self, epoch: int) -> None:
        """End the current phase; the next one starts at ``epoch``."""
        self.phase_index += 1
        self.phase_start_epoch = int(epoch)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase_index": self.phase_index,
            "phase_start_epoch": self.phase_start_epoch,
            "phases": [p.name for p in self.phases],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise UsageError(
                f"the checkpoint was written by strategy {state.get('name')!r}, not "
                f"{self.name!r}; resume with the same strategy or start afresh"
            )
        phases = [p.name for p in self.phases]
        if self.phases and state.get("phases") and state["phases"] != phases:
            raise UsageError(
                f"the checkpoint's phases {state['phases']} differ from this configuration's "
                f"{phases}; resume with the same options or start afresh"
            )
        self.phase_index = int(state["phase_index"])
        self.phase_start_epoch = int(state["phase_start_epoch"])
        self._applied = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "phases": [p.describe() for p in self.phases]}


def _block_key(name: str) -> str | None:
    tokens = name.lower().split("_")
    for i, token in enumerate(tokens):
        if re.fullmatch(r"(block|stage|stack|mixed)\d+[a-z]?|conv\d+", token):
            return token
        # block_16, stage_2, and a transformer's layers_3 (keras-hub's DINOv2 names its blocks so)
        named = token in ("block", "stage", "layers")
        if named and i + 1 < len(tokens) and tokens[i + 1].isdigit():
            return f"{token}_{tokens[i + 1]}"
    return None


def layer_blocks(layers: Sequence[Any]) -> list[tuple[str, int, int]]:
    """Group a base's layers into blocks by their names (``block5_conv1`` -> ``block5``,
    ``conv5_block3_out`` -> ``conv5``, ``block_16_project`` -> ``block_16``, ``mixed9``,
    keras-hub's ``stack1_block0_1_conv`` -> ``stack1``, ``transformer_block_3`` -> ``block_3``,
    ``layers_3`` -> ``layers_3``).

    Returns ``(block name, first index, end index)`` triples in order; a layer without a block
    name belongs to the block before it (``stem`` at the start).
    """
    blocks: list[tuple[str, int, int]] = []
    current, start = "stem", 0
    for i, layer in enumerate(layers):
        key = _block_key(getattr(layer, "name", ""))
        if key is not None and key != current:
            if i > start:
                blocks.append((current, start, i))
            current, start = key, i
    if len(layers) > start:
        blocks.append((current, start, len(layers)))
    return blocks


def trainable_blocks(layers: Sequence[Any]) -> list[tuple[str, int, int]]:
    """:func:`layer_blocks` keeping only blocks that hold weights."""
    return [b for b in layer_blocks(layers) if any(layers[i].weights for i in range(b[1], b[2]))]
