"""Debug runs and gradient options of the Trainer: fast_dev_run, limit_*_batches,
overfit_batches, accumulate_grad_batches, gradient_clip_val (tiny real CNN, digits as images)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from trainer_helpers import digits, tiny_backbone

from transferkit import UsageError


def _data(n: int = 96, batch_size: int = 8, train: int | None = None, **options: Any) -> Any:
    from transferkit.trainer import ArrayDataModule

    images, labels, names = digits(n, 4)
    options.setdefault("augment", "none")
    data = ArrayDataModule(images, labels, names, seed=0, batch_size=batch_size, **options)
    if train is not None:
        data.train_indices = data.train_indices[:train]
    return data


def _model(seed: int = 0) -> Any:
    from transferkit.trainer import TransferModel, seed_everything

    seed_everything(seed)
    return TransferModel(tiny_backbone(), "linear", num_classes=4,
                         head_options={"dropout": 0.0})  # fmt: skip


def _fit(data: Any, strategy: Any = None, **options: Any) -> tuple[Any, dict[str, Any]]:
    from transferkit.trainer import Trainer, resolve_strategy

    model = _model()
    strategy = strategy or resolve_strategy(
        "head-only", epochs=2, learning_rate=0.5, optimizer="sgd"
    )
    trainer = Trainer(seed=0, enable_progress=False, **options)
    return model, trainer.fit(model, data, strategy)


def _head(model: Any) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in model.head.trainable_variables]


class Batches:
    """Counts training batches (a Trainer callback) and evaluation batches (a Keras one)."""

    def __init__(self) -> None:
        import keras

        from transferkit.trainer import Callback

        self.train: list[int] = []
        self.eval: list[int] = []
        counter = self

        class Train(Callback):
            def on_epoch_start(self, trainer: Any, epoch: int) -> None:
                counter.train.append(0)

            def on_train_batch_end(self, trainer: Any, batch: int, steps: Any, logs: Any) -> None:
                counter.train[-1] += 1

        class Eval(keras.callbacks.Callback):  # type: ignore[misc]
            def on_test_begin(self, logs: Any = None) -> None:
                counter.eval.append(0)

            def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
                counter.eval[-1] += 1

        self.callbacks = [Train(), Eval()]


def test_accumulated_gradients_equal_a_k_times_larger_batch() -> None:
    """K batches of B with accumulation give the weights of batches of K x B (plain SGD, the
    base's BatchNorm frozen, no dropout); without accumulation they do not."""
    accumulated, _ = _fit(_data(batch_size=8, train=64), accumulate_grad_batches=2)
    larger, _ = _fit(_data(batch_size=16, train=64))
    plain, _ = _fit(_data(batch_size=8, train=64))
    for got, want in zip(_head(accumulated), _head(larger), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(_head(plain)[0], _head(larger)[0], atol=1e-3)


def test_gradient_clipping_bounds_each_step() -> None:
    """With the global norm clipped to c, SGD moves the weights by at most lr x c a step."""
    start = _head(_model())
    clipped, _ = _fit(_data(batch_size=16, train=64), gradient_clip_val=1e-3)
    free, _ = _fit(_data(batch_size=16, train=64))

    def moved(model: Any) -> float:
        return float(
            np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_head(model), start, strict=True)))
        )

    steps = 2 * 4  # two epochs of four batches
    assert 0 < moved(clipped) <= steps * 0.5 * 1e-3 * 1.001
    assert moved(free) > 20 * moved(clipped)


def test_fast_dev_run_trains_one_batch_per_phase_and_writes_no_checkpoint(tmp_path: Any) -> None:
    from transferkit.trainer import ModelCheckpoint, resolve_strategy

    counts = Batches()
    strategy = resolve_strategy("warmup-unfreeze", epochs=[3, 2], learning_rate=1e-2)
    _, result = _fit(
        _data(),
        strategy,
        fast_dev_run=True,
        callbacks=[ModelCheckpoint(tmp_path / "ckpt"), *counts.callbacks],
    )
    assert [r["phase"] for r in result["history"]] == ["warmup", "finetune"]
    assert counts.train == [1, 1]
    assert counts.eval == [1, 1]  # each epoch's validation: one batch
    for phase in result["phases"]:  # each phase's test: one batch of 8 images
        assert (phase["test_accuracy"] * 8) == pytest.approx(round(phase["test_accuracy"] * 8))
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(("limit", "expected"), [(2, 2), (0.5, 4), (1.0, 8)])
def test_limit_train_batches_count_or_fraction(limit: Any, expected: int) -> None:
    counts = Batches()
    data = _data(batch_size=8, train=64)
    _fit(data, limit_train_batches=limit, limit_val_batches=1, callbacks=counts.callbacks)
    assert counts.train == [expected, expected]
    assert counts.eval[:2] == [1, 1]


def test_limit_val_batches_zero_turns_validation_off() -> None:
    counts = Batches()
    _, result = _fit(_data(), limit_val_batches=0, callbacks=counts.callbacks)
    assert "val_loss" not in result["history"][0]


def test_overfit_batches_validate_on_the_training_batches() -> None:
    from transferkit.trainer import resolve_strategy

    data = _data(batch_size=8)
    counts = Batches()
    strategy = resolve_strategy("head-only", epochs=3, learning_rate=0.05, optimizer="adam")
    model, result = _fit(data, strategy, overfit_batches=2, callbacks=counts.callbacks)
    assert counts.train == [2, 2, 2]
    rows = data.train_indices[:16]
    scores = model.keras_model.evaluate(data.dataset(rows), verbose=0, return_dict=True)
    assert result["history"][-1]["val_loss"] == pytest.approx(scores["loss"], rel=1e-4)
    assert result["history"][-1]["val_loss"] < result["history"][0]["val_loss"]


def test_debug_values_are_checked() -> None:
    from transferkit.options import FinetuneOptions
    from transferkit.trainer import Trainer

    with pytest.raises(UsageError, match="limit-train-batches"):
        FinetuneOptions(limit_train_batches="many")
    with pytest.raises(UsageError, match="fraction up to 1.0"):
        FinetuneOptions(limit_val_batches=1.5)
    with pytest.raises(UsageError, match="at least 1"):
        Trainer(accumulate_grad_batches=0)
    with pytest.raises(UsageError, match="trains nothing"):
        Trainer(limit_train_batches=0)
    assert FinetuneOptions(limit_train_batches="10").limit_train_batches == 10
    assert FinetuneOptions(limit_train_batches="0.25").limit_train_batches == 0.25


def test_finetune_fast_dev_run_writes_no_model_and_says_so(tiny: str, tmp_path: Any) -> None:
    from cli_faults import invoke_cli
    from imagefiles import make_folder

    make_folder(tmp_path / "images", per_class=4)
    out = tmp_path / "run"
    flags = ["--epochs", "3", "--epochs", "2", "--batch-size", "2", "--fast-dev-run"]
    result = invoke_cli("finetune", str(tmp_path / "images"), "-b", tiny, *flags, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "no checkpoint and no model" in result.stdout
    assert "no checkpoint and no model were written" in result.stderr
    assert not (out / "model.keras").exists() and not (out / "checkpoints").exists()
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 3  # a header and one epoch per phase
