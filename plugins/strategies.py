"""Built-in fine-tune strategies: ``warmup-unfreeze`` (today's practice by default, the classic
recipe with ``schedule="classic"``), ``head-only``, ``full`` and ``gradual``.

Every strategy takes ``epochs`` and ``learning_rate`` either as one number or as one value per
phase, so the command line's ``--epochs``/``--learning-rate`` work for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transferkit import StrategySpec, UsageError, hookimpl
from transferkit.plugin import FinetuneStrategy, Phase, trainable_blocks


def _per_phase(value: Any, names: Sequence[str], what: str, strategy: str) -> list[Any] | None:
    """``value`` as one entry per phase (a single value applies to all phases)."""
    if value is None:
        return None
    values = list(value) if isinstance(value, list | tuple) else [value]
    if len(values) == 1:
        return values * len(names)
    if len(values) != len(names):
        raise UsageError(
            f"strategy {strategy!r} has {len(names)} phases ({', '.join(names)}); give one "
            f"{what} or one per phase, not {len(values)}"
        )
    return values


def default_unfreeze_from(model: Any, top_blocks: int = 1) -> int:
    """Where phase 2 of ``warmup-unfreeze`` starts for ``model``'s backbone: its spec's
    ``metadata["unfreeze_from"]``, else the first layer of the base's last ``top_blocks`` blocks."""
    name = model.backbone.name
    try:
        from transferkit.plugin import get_spec

        meta = get_spec("backbone", name).metadata
        if "unfreeze_from" in meta:
            return int(meta["unfreeze_from"])
    except Exception:
        pass
    blocks = trainable_blocks(model.base_layers)
    if not blocks:
        return 0
    return blocks[-min(max(1, top_blocks), len(blocks))][1]


# The two schedules of warmup-unfreeze: (epochs, learning rates, optimizers, top blocks unfrozen).
SCHEDULES: dict[str, tuple[tuple[int, int], tuple[float, float], tuple[str, str], int]] = {
    # the Keras transfer-learning guide and Lightning's BackboneFinetuning: Adam for the head,
    # then the top blocks with a learning rate 10x lower (early stopping decides the length);
    # from the linear-probe start, 1e-4 did better than the guide's 1e-5 on the 224 px
    # benchmark (bench/RESULTS.md)
    "modern": ((10, 10), (1e-3, 1e-4), ("adam", "adam"), 2),
    # the classic recipe: RMSprop for the head, then SGD with momentum on the last block
    "classic": ((20, 50), (1e-3, 1e-3), ("rmsprop", "sgd"), 1),
}


class WarmupUnfreeze(FinetuneStrategy):
    """Phase ``warmup``: only the new head trains on the frozen base. Phase ``finetune``: the
    base's layers from ``unfreeze_from`` on train too, BatchNorm staying in inference mode. The
    test set is evaluated after each phase.

    ``schedule="modern"`` (the default): Adam 1e-3 for 10 epochs, then the top two blocks with
    Adam 1e-4 for 10 (``transferkit finetune`` adds early stopping on the validation loss and
    restores the best weights). ``schedule="classic"`` (what ``--head classic`` picks): RMSprop
    1e-3 for 20 epochs, then the last block with SGD 1e-3, momentum 0.9, for 50."""

    name = "warmup-unfreeze"

    def __init__(
        self,
        epochs: Any = None,
        learning_rate: Any = None,
        unfreeze_from: int | None = None,
        momentum: float = 0.9,
        warmup_optimizer: str | None = None,
        finetune_optimizer: str | None = None,
        schedule: str = "modern",
        top_blocks: int | None = None,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise UsageError(
                f"warmup-unfreeze: unknown schedule {schedule!r}; use one of {sorted(SCHEDULES)}"
            )
        default_epochs, default_lrs, optimizers, blocks = SCHEDULES[schedule]
        names = ["warmup", "finetune"]
        self.schedule = schedule
        self.epochs = _per_phase(
            default_epochs if epochs is None else epochs, names, "epoch count", self.name
        )
        self.lrs = _per_phase(
            default_lrs if learning_rate is None else learning_rate,
            names,
            "learning rate",
            self.name,
        )
        self.unfreeze_from = unfreeze_from
        self.momentum = momentum
        self.optimizers = (warmup_optimizer or optimizers[0], finetune_optimizer or optimizers[1])
        self.top_blocks = blocks if top_blocks is None else int(top_blocks)

    def build_phases(self, model: Any) -> list[Phase]:
        start = (
            self.unfreeze_from
            if self.unfreeze_from is not None
            else default_unfreeze_from(model, self.top_blocks)
        )
        assert self.epochs is not None and self.lrs is not None
        return [
            Phase("warmup", int(self.epochs[0]), self.optimizers[0], float(self.lrs[0])),
            Phase(
                "finetune",
                int(self.epochs[1]),
                self.optimizers[1],
                float(self.lrs[1]),
                momentum=self.momentum if self.optimizers[1] == "sgd" else 0.0,
                unfreeze_from=int(start),
            ),
        ]


class HeadOnly(FinetuneStrategy):
    """Only the head trains; the base stays frozen (feature-extraction training)."""

    name = "head-only"

    def __init__(
        self, epochs: Any = 20, learning_rate: Any = 1e-3, optimizer: str = "rmsprop"
    ) -> None:
        super().__init__()
        self.epochs = _per_phase(epochs, ["head"], "epoch count", self.name)
        self.lrs = _per_phase(learning_rate, ["head"], "learning rate", self.name)
        self.optimizer = optimizer

    def build_phases(self, model: Any) -> list[Phase]:
        assert self.epochs is not None and self.lrs is not None
        return [Phase("head", int(self.epochs[0]), self.optimizer, float(self.lrs[0]))]


class Full(FinetuneStrategy):
    """Everything trains from the first epoch, with a low learning rate (Adam 1e-5)."""

    name = "full"

    def __init__(
        self, epochs: Any = 10, learning_rate: Any = 1e-5, optimizer: str = "adam"
    ) -> None:
        super().__init__()
        self.epochs = _per_phase(epochs, ["full"], "epoch count", self.name)
        self.lrs = _per_phase(learning_rate, ["full"], "learning rate", self.name)
        self.optimizer = optimizer

    def freeze_before_training(self, model: Any) -> None:
        model.unfreeze_base(0)

    def build_phases(self, model: Any) -> list[Phase]:
        assert self.epochs is not None and self.lrs is not None
        return [
            Phase("full", int(self.epochs[0]), self.optimizer, float(self.lrs[0]), unfreeze_from=0)
        ]


class Gradual(FinetuneStrategy):
    """Phase ``head`` trains the head on the frozen base; then each phase ``unfreeze-k`` unfreezes
    one more block of the base, from the top, training it with ``base_lr_multiplier`` times the
    head's learning rate (SGD with momentum, where the multiplier is exactly a learning-rate
    multiplier). ``blocks`` limits how many blocks are unfrozen (default: 3)."""

    name = "gradual"

    def __init__(
        self,
        epochs: Any = (5, 5),
        learning_rate: Any = 1e-3,
        blocks: int = 3,
        base_lr_multiplier: float = 0.1,
        momentum: float = 0.9,
        optimizer: str = "sgd",
        unfreeze_from: int | None = None,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise UsageError(f"gradual: blocks must be at least 1, got {blocks}")
        values = list(epochs) if isinstance(epochs, list | tuple) else [epochs]
        if len(values) not in (1, 2):
            raise UsageError(
                "gradual takes epochs as one number or two: [head epochs, epochs per block]"
            )
        self.head_epochs, self.block_epochs = (values * 2)[:2]
        self.learning_rate = float(learning_rate[0] if isinstance(learning_rate, list | tuple)
                                   else learning_rate)  # fmt: skip
        if optimizer.lower() != "sgd" and float(base_lr_multiplier) != 1.0:
            raise UsageError(
                f"gradual: base_lr_multiplier={base_lr_multiplier} scales the base's learning rate "
                f"only with the sgd optimizer ({optimizer!r} adapts its steps to the gradient "
                "scale); use optimizer='sgd' or base_lr_multiplier=1"
            )
        self.blocks = int(blocks)
        self.base_lr_multiplier = float(base_lr_multiplier)
        self.momentum = momentum
        self.optimizer = optimizer
        self.floor = unfreeze_from

    def build_phases(self, model: Any) -> list[Phase]:
        blocks = trainable_blocks(model.base_layers)
        if self.floor is not None:
            blocks = [b for b in blocks if b[1] >= self.floor]
        if not blocks:
            raise UsageError(
                f"gradual: found no blocks with weights in the base {model.backbone.name!r}"
                + (f" above layer {self.floor}" if self.floor is not None else "")
                + "; use the warmup-unfreeze strategy with --unfreeze-from instead"
            )
        momentum = self.momentum if self.optimizer == "sgd" else 0.0
        phases = [
            Phase("head", int(self.head_epochs), self.optimizer, self.learning_rate, momentum)
        ]
        for k, (block, start, _end) in enumerate(reversed(blocks[-self.blocks :]), start=1):
            phases.append(
                Phase(
                    f"unfreeze-{k}",
                    int(self.block_epochs),
                    self.optimizer,
                    self.learning_rate,
                    momentum,
                    unfreeze_from=start,
                    base_lr_multiplier=self.base_lr_multiplier,
                    evaluate_test=False,
                    options={"block": block},
                )
            )
        phases[-1].evaluate_test = True
        phases[0].evaluate_test = True
        return phases


@hookimpl
def register_finetune_strategies(register: Any) -> None:
    register(
        StrategySpec(
            name="warmup-unfreeze",
            description="head on a frozen base (Adam), then the top blocks too at a 10x lower "
            "rate, BatchNorm frozen; schedule=classic: RMSprop, then SGD (the classic recipe)",
            factory=WarmupUnfreeze,
            metadata={
                "takes_unfreeze_from": True,
                "schedules": tuple(SCHEDULES),
                # today's practice: the Keras guide's light augmentation, the head started
                # from a linear probe of its inputs, label smoothing (the probe's head is
                # saturated on its training images: without it the cross-entropy has almost
                # no gradient left), early stopping and the best epoch's weights restored
                "finetune_defaults": {
                    "augment": "flip",
                    "probe_init": True,
                    "restore_best": True,
                    "patience": 3,
                    "label_smoothing": 0.1,
                },
            },
        )
    )
    register(
        StrategySpec(
            name="head-only",
            description="train only the head on the frozen base",
            factory=HeadOnly,
        )
    )
    register(
        StrategySpec(
            name="full",
            description="everything trainable from the start, low learning rate",
            factory=Full,
        )
    )
    register(
        StrategySpec(
            name="gradual",
            description="head first, then unfreeze block by block from the top, lower LR "
            "for the base",
            factory=Gradual,
            metadata={"takes_unfreeze_from": True},
        )
    )
