"""The Trainer on real data (scikit-learn digits as images) with a tiny real CNN backbone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from trainer_helpers import digits, tiny_backbone

from transferkit import HeadSpec, UsageError, hookimpl


def _data(n: int = 200, classes: int = 4, **options: Any) -> Any:
    from transferkit.trainer import ArrayDataModule

    images, labels, names = digits(n, classes)
    options.setdefault("augment", "none")
    options.setdefault("batch_size", 32)
    return ArrayDataModule(images, labels, names, seed=0, **options)


def _model(classes: int = 4, seed: int = 0, **options: Any) -> Any:
    from transferkit.trainer import TransferModel, seed_everything

    seed_everything(seed)
    options.setdefault("head_options", {"dropout": 0.0})
    return TransferModel(tiny_backbone(), options.pop("head", "linear"), num_classes=classes,
                         label_names=[str(i) for i in range(classes)], **options)  # fmt: skip


def _trainer(**options: Any) -> Any:
    from transferkit.trainer import Trainer

    options.setdefault("enable_progress", False)
    return Trainer(**options)


def test_finetuning_beats_the_frozen_base() -> None:
    from transferkit.trainer import resolve_strategy

    frozen = _trainer(seed=0).fit(
        _model(), _data(400), resolve_strategy("head-only", epochs=12, learning_rate=1e-2)
    )
    tuned = _trainer(seed=0).fit(
        _model(),
        _data(400),
        resolve_strategy(
            "warmup-unfreeze",
            epochs=[4, 8],
            learning_rate=1e-2,
            unfreeze_from=0,
            finetune_optimizer="adam",
        ),
    )
    frozen_acc = frozen["phases"][-1]["test_accuracy"]
    assert [p["phase"] for p in tuned["phases"]] == ["warmup", "finetune"]
    warm_acc, tuned_acc = (p["test_accuracy"] for p in tuned["phases"])
    assert tuned_acc > frozen_acc + 0.1, (frozen_acc, tuned_acc)
    assert tuned_acc > warm_acc
    assert len(tuned["history"]) == 12 and tuned["history"][-1]["phase"] == "finetune"


def test_same_seed_same_history_with_augmentation_and_dropout() -> None:
    from transferkit.trainer import resolve_strategy

    def run(seed: int) -> list[dict[str, Any]]:
        model = _model(seed=seed, head_options={"dropout": 0.5})
        data = _data(120, augment="classic")
        trainer = _trainer(seed=seed, deterministic=True)
        return trainer.fit(model, data, resolve_strategy("head-only", epochs=3))["history"]

    def numbers(history: list[dict[str, Any]]) -> np.ndarray:
        return np.array([[r[k] for k in ("loss", "accuracy", "val_loss")] for r in history])

    first, second, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(numbers(first), numbers(second))
    assert not np.array_equal(numbers(first), numbers(other))


def test_classic_augmentation_preset_and_training_batches_only() -> None:
    import keras

    from transferkit.trainer import augmentation

    aug = augmentation("classic", seed=1)
    kinds = {type(layer).__name__: layer for layer in aug.layers}
    assert kinds["RandomRotation"].factor == (-30 / 360, 30 / 360)
    assert kinds["RandomFlip"].mode == "horizontal"
    assert kinds["RandomTranslation"].height_factor == 0.1
    assert kinds["RandomTranslation"].width_factor == 0.1
    assert kinds["RandomShear"].x_factor == (0.0, 0.2) or kinds["RandomShear"].x_factor
    assert kinds["RandomZoom"].height_factor == 0.2
    assert all(getattr(l, "fill_mode", "nearest") == "nearest" for l in aug.layers)  # noqa: E741
    assert augmentation("none") is None
    with pytest.raises(UsageError, match="classic"):
        augmentation("wild")

    data = _data(80, augment="classic")
    model = _model()
    data.setup(preprocess=model.backbone.preprocess, input_size=model.input_size)
    model.set_augmentation(data.augmentation_layer(seed=0))
    x, _ = next(iter(data.train_dataset(0)))
    assert not np.allclose(model.augment(x, training=True), x)
    np.testing.assert_array_equal(model.augment(x, training=False), x)
    # validation batches: identical on every pass, equal to the preprocessed images
    val1 = np.concatenate([b[0] for b in data.val_dataset()])
    val2 = np.concatenate([b[0] for b in data.val_dataset()])
    np.testing.assert_array_equal(val1, val2)
    raw = keras.ops.image.resize(data.images[data.val_indices], (16, 16)).numpy() / 255.0
    np.testing.assert_allclose(val1, raw, atol=1e-5)
    # the training model evaluated on validation data is the network, augmentation off
    np.testing.assert_allclose(
        model.keras_model.predict(val1, verbose=0), model.network.predict(val1, verbose=0)
    )


def test_strategies_freeze_what_they_say_and_batchnorm_stays_in_inference_mode() -> None:
    from transferkit.trainer import resolve_strategy

    model = _model()
    base = model.base
    conv1 = base.get_layer("block1_conv").kernel.numpy().copy()
    conv2 = base.get_layer("block2_conv").kernel.numpy().copy()
    bn = base.get_layer("block2_bn")
    mean = bn.moving_mean.numpy().copy()
    strategy = resolve_strategy("warmup-unfreeze", epochs=[1, 0], learning_rate=1e-2)
    _trainer().fit(model, _data(), strategy)
    np.testing.assert_array_equal(base.get_layer("block2_conv").kernel.numpy(), conv2)
    # default unfreeze point: the start of the top two blocks (block1 of two); the classic
    # schedule's: the start of the last block (block2)
    names = [layer.name for layer in base.layers]
    assert strategy.phases[1].unfreeze_from == names.index("block1_conv")
    assert [p.optimizer for p in strategy.phases] == ["adam", "adam"]
    classic = resolve_strategy("warmup-unfreeze", schedule="classic")
    assert [p.unfreeze_from for p in classic.build_phases(model)] == [
        None,
        names.index("block2_conv"),
    ]
    assert [p.optimizer for p in classic.build_phases(model)] == ["rmsprop", "sgd"]

    model = _model()
    strategy = resolve_strategy("warmup-unfreeze", epochs=[1, 2], learning_rate=1e-2, top_blocks=1)
    _trainer().fit(model, _data(), strategy)
    base = model.base
    np.testing.assert_array_equal(base.get_layer("block1_conv").kernel.numpy(), conv1)
    assert not np.allclose(base.get_layer("block2_conv").kernel.numpy(), conv2)
    np.testing.assert_array_equal(base.get_layer("block2_bn").moving_mean.numpy(), mean)
    assert not base.get_layer("block2_bn").trainable

    model = _model(train_bn=True)
    _trainer().fit(model, _data(), resolve_strategy("full", epochs=1, learning_rate=1e-2))
    assert not np.allclose(model.base.get_layer("block2_bn").moving_mean.numpy(), mean)


def test_gradual_unfreezes_block_by_block_with_a_lower_base_learning_rate() -> None:
    from transferkit.trainer import LearningRateMonitor, resolve_strategy

    model = _model()
    strategy = resolve_strategy("gradual", epochs=[1, 1], blocks=2, learning_rate=1e-2)
    trainer = _trainer(callbacks=[LearningRateMonitor()])
    result = trainer.fit(model, _data(), strategy)
    assert [p.name for p in strategy.phases] == ["head", "unfreeze-1", "unfreeze-2"]
    assert [p.options["block"] for p in strategy.phases[1:]] == ["block2", "block1"]
    rows = result["history"]
    assert [r["phase"] for r in rows] == ["head", "unfreeze-1", "unfreeze-2"]
    assert rows[0]["base_lr"] == pytest.approx(rows[0]["lr"])
    assert rows[1]["base_lr"] == pytest.approx(0.1 * rows[1]["lr"])


def test_gradient_scale_scales_only_the_gradient() -> None:
    import tensorflow as tf

    from transferkit.trainer.layers import GradientScale

    layer = GradientScale(0.25)
    x = tf.Variable([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * 2.0)
    np.testing.assert_allclose(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[0.5, 0.5, 0.5]])


def test_configuration_errors_say_what_to_fix() -> None:
    from transferkit.trainer import EarlyStopping, resolve_strategy

    with pytest.raises(UsageError, match=r"valid: 0\.\.\d+.*--unfreeze-from"):
        _trainer().fit(_model(), _data(), resolve_strategy("warmup-unfreeze", unfreeze_from=99))
    with pytest.raises(UsageError, match="only with the sgd optimizer"):
        resolve_strategy("gradual", optimizer="adam")
    with pytest.raises(UsageError, match="one per phase"):
        resolve_strategy("warmup-unfreeze", epochs=[1, 2, 3])
    with pytest.raises(UsageError, match="Did you mean 'gradual'"):
        resolve_strategy("gradul")
    no_val = _data(fractions=(0.8, 0.0, 0.2))
    with pytest.raises(UsageError, match="no validation split"):
        _trainer(callbacks=[EarlyStopping()]).fit(_model(), no_val, "head-only")
    with pytest.raises(UsageError, match="2 or 3 non-negative"):
        _data(fractions=(0.5, 0.6))
    with pytest.raises(UsageError, match=r"set_precision\('16-mixed'\)"):
        _trainer(precision="16-mixed").fit(_model(), _data(), "head-only")
    with pytest.raises(UsageError, match="unknown precision"):
        _trainer(precision="8")
    with pytest.raises(UsageError, match="unknown optimizer 'lion'"):
        _trainer().fit(_model(), _data(), resolve_strategy("head-only", optimizer="lion"))
    with pytest.raises(UsageError, match="num_classes=4"):
        _trainer().fit(_model(classes=3), _data(), "head-only")


def test_early_stopping_ends_the_phase_and_the_next_one_starts() -> None:
    from transferkit.trainer import EarlyStopping, resolve_strategy

    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    strategy = resolve_strategy("warmup-unfreeze", epochs=[6, 2], learning_rate=1e-2)
    result = _trainer(callbacks=[stopper]).fit(_model(), _data(), strategy)
    phases = result["phases"]
    assert phases[0]["early_stopped"] and phases[0]["epochs"] == 2
    assert phases[1]["phase"] == "finetune" and phases[1]["epochs"] == 2
    assert result["epochs"] == 4


def test_every_failure_goes_through_one_handler(register_plugin: Any) -> None:
    from transferkit.trainer import Callback

    seen: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:
        @hookimpl
        def on_exception(self, exception: BaseException, where: str, context: Any) -> None:
            seen.append((type(exception).__name__, where, dict(context)))

    class Boom(Callback):
        def __init__(self) -> None:
            self.told: BaseException | None = None

        def on_epoch_end(self, trainer: Any, epoch: int, logs: Any) -> None:
            if epoch == 1:
                raise RuntimeError("disk full")

        def on_exception(self, trainer: Any, exception: BaseException) -> None:
            self.told = exception

    register_plugin(Recorder(), "recorder")
    boom = Boom()
    trainer = _trainer(callbacks=[boom])
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.fit(_model(), _data(), "head-only")
    assert seen == [("RuntimeError", "fit", {"epoch": 1, "phase": "head", "model": "tiny"})]
    assert isinstance(boom.told, RuntimeError)
    with pytest.raises(UsageError):
        trainer.test(_model(), _data(fractions=(0.8, 0.2)))
    assert seen[-1][:2] == ("UsageError", "test")


def test_lifecycle_hooks_reach_plugin_callbacks(register_plugin: Any) -> None:
    from transferkit.trainer import resolve_strategy

    calls: list[tuple[Any, ...]] = []

    class Watcher:
        @hookimpl
        def on_fit_start(self, trainer: Any, model: Any, phase: str) -> None:
            calls.append(("start", phase))

        @hookimpl
        def on_epoch_end(self, epoch: int, logs: Any, phase: str) -> None:
            calls.append(("epoch", epoch, phase, "loss" in logs))

        @hookimpl
        def on_fit_end(self, history: Any) -> None:
            calls.append(("end", len(history["history"])))

        @hookimpl
        def on_phase_start(self, phase: str) -> None:
            calls.append(("phase", phase))

    register_plugin(Watcher(), "watcher")
    strategy = resolve_strategy("warmup-unfreeze", epochs=[1, 1], learning_rate=1e-2)
    _trainer().fit(_model(), _data(), strategy)
    assert calls == [
        ("start", "warmup"),
        ("phase", "warmup"),
        ("epoch", 0, "warmup", True),
        ("phase", "finetune"),
        ("epoch", 1, "finetune", True),
        ("end", 2),
    ]


def test_plugin_hooks_and_callbacks_fire_at_the_same_moments_also_on_a_resume(
    register_plugin: Any, tmp_path: Any
) -> None:
    """A plugin hook and the Callback method of the same name fire together: ``on_fit_start``
    once per fit (a resume too), ``on_phase_start`` when a phase begins (not for the phase a
    resume continues), ``on_epoch_end`` per epoch, ``on_fit_end`` once."""
    from transferkit.trainer import Callback, ModelCheckpoint, resolve_strategy

    heard: dict[str, list[tuple[Any, ...]]] = {"plugin": [], "callback": []}

    class Plugin:
        @hookimpl
        def on_fit_start(self, phase: str) -> None:
            heard["plugin"].append(("fit_start", phase))

        @hookimpl
        def on_phase_start(self, phase: str) -> None:
            heard["plugin"].append(("phase_start", phase))

        @hookimpl
        def on_epoch_end(self, epoch: int, phase: str) -> None:
            heard["plugin"].append(("epoch_end", epoch, phase))

        @hookimpl
        def on_fit_end(self, history: Any) -> None:
            heard["plugin"].append(("fit_end", history["epochs"]))

    class Listener(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            heard["callback"].append(("fit_start", trainer.phase_name))

        def on_phase_start(self, trainer: Any, phase: Any) -> None:
            heard["callback"].append(("phase_start", phase.name))

        def on_epoch_end(self, trainer: Any, epoch: int, logs: Any) -> None:
            heard["callback"].append(("epoch_end", epoch, trainer.phase_name))

        def on_fit_end(self, trainer: Any, result: Any) -> None:
            heard["callback"].append(("fit_end", result["epochs"]))

    class Crash(Callback):
        def on_epoch_complete(self, trainer: Any, epoch: int) -> None:
            if epoch == 0:  # the first of warmup's two epochs, after its checkpoint
                raise KeyboardInterrupt

    register_plugin(Plugin(), "moments")

    def fit(crash: bool) -> None:
        callbacks = [Listener(), ModelCheckpoint(tmp_path / "ckpt"), *([Crash()] if crash else [])]
        strategy = resolve_strategy("warmup-unfreeze", epochs=[2, 1], learning_rate=1e-2)
        _trainer(callbacks=callbacks).fit(_model(), _data(64), strategy, ckpt_path="last")

    with pytest.raises(KeyboardInterrupt):
        fit(crash=True)
    first = [
        ("fit_start", "warmup"),
        ("phase_start", "warmup"),
        ("epoch_end", 0, "warmup"),
    ]
    assert heard["plugin"] == heard["callback"] == first
    fit(crash=False)  # resumes in the middle of warmup
    assert (
        heard["plugin"]
        == heard["callback"]
        == [
            *first,
            ("fit_start", "warmup"),
            ("epoch_end", 1, "warmup"),
            ("phase_start", "finetune"),
            ("epoch_end", 2, "finetune"),
            ("fit_end", 3),
        ]
    )


def test_validate_test_predict_and_history_files(tmp_path: Any) -> None:
    import json

    from transferkit.trainer import HistoryLogger, ModelCheckpoint, resolve_strategy

    data, model = _data(), _model()
    ckpt = ModelCheckpoint(tmp_path / "ckpt")
    logger = HistoryLogger(tmp_path / "h.csv", tmp_path / "h.json")
    trainer = _trainer(callbacks=[ckpt, logger])
    trainer.fit(model, data, resolve_strategy("head-only", epochs=3, learning_rate=1e-2))
    assert (tmp_path / "ckpt" / "last.ckpt.npz").exists()
    assert (tmp_path / "ckpt" / "best.weights.h5").exists()
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 3 and state["strategy"]["phase_index"] == 1
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,phase") and len(lines) == 4
    assert len(json.loads((tmp_path / "h.json").read_text())["history"]) == 3

    val, test = trainer.validate(), trainer.test()
    assert set(val) >= {"loss", "accuracy"} and 0 <= test["accuracy"] <= 1
    probs = trainer.predict()
    assert probs.shape == (len(data.test_indices), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    accuracy = float(np.mean(probs.argmax(1) == data.labels[data.test_indices]))
    assert accuracy == pytest.approx(test["accuracy"], abs=1e-6)


def test_plugin_registered_heads_work_through_the_registry(register_plugin: Any) -> None:
    def two_layer(num_classes: int, units: int = 7) -> Any:
        import keras

        return keras.Sequential(
            [keras.layers.Dense(units, activation="relu", name="hidden"),
             keras.layers.Dense(num_classes, activation="softmax")], name="two_layer"
        )  # fmt: skip

    class Heads:
        @hookimpl
        def register_heads(self, register: Any) -> None:
            register(HeadSpec(name="two-layer", description="MLP", factory=two_layer))

    register_plugin(Heads(), "heads-plugin")
    model = _model(head="two-layer", head_options={"units": 5})
    assert model.head.get_layer("hidden").units == 5
    result = _trainer(max_epochs=2).fit(model, _data(), "head-only")
    assert result["epochs"] == 2 and result["phases"][0]["epochs"] == 2
    assert result["phases"][0]["test_accuracy"] >= 0
    classic = _model(head="classic", head_options={})
    assert [type(layer).__name__ for layer in classic.head.layers] == [
        "Flatten", "Dense", "Activation", "BatchNormalization", "Dropout", "Dense", "Activation"
    ]  # fmt: skip


def test_plugin_strategy_that_unfreezes_mid_phase_is_recompiled(register_plugin: Any) -> None:
    from transferkit import StrategySpec
    from transferkit.trainer import FinetuneStrategy, Phase

    class UnfreezeAt(FinetuneStrategy):
        """One phase; the base unfreezes at the start of epoch ``at`` (a Lightning-style
        ``finetune_function``)."""

        name = "unfreeze-at"

        def __init__(self, at: int = 2, epochs: int = 4) -> None:
            super().__init__()
            self.at, self.epochs = at, epochs

        def build_phases(self, model: Any) -> list[Phase]:
            return [Phase("only", self.epochs, "sgd", 0.05)]

        def on_epoch_start(self, model: Any, epoch: int) -> bool:
            super().on_epoch_start(model, epoch)
            if epoch == self.at:
                model.unfreeze_base(0)
                return True
            return False

    class Strategies:
        @hookimpl
        def register_finetune_strategies(self, register: Any) -> None:
            register(StrategySpec(name="unfreeze-at", description="test", factory=UnfreezeAt))

    register_plugin(Strategies(), "strategies-plugin")
    from transferkit.trainer import Callback

    seen: dict[int, np.ndarray] = {}

    class Snapshot(Callback):
        def on_epoch_end(self, trainer: Any, epoch: int, logs: Any) -> None:
            seen[epoch] = trainer.model.base.get_layer("block1_conv").kernel.numpy().copy()

    model = _model()
    before = model.base.get_layer("block1_conv").kernel.numpy().copy()
    result = _trainer(callbacks=[Snapshot()]).fit(model, _data(), "unfreeze-at")
    assert result["epochs"] == 4
    np.testing.assert_array_equal(seen[0], before)
    np.testing.assert_array_equal(seen[1], before)
    assert not np.allclose(seen[2], before) and not np.allclose(seen[3], seen[2])


def test_exported_preprocessing_equals_the_backbones() -> None:
    import dataclasses

    import keras

    from transferkit.trainer import TransferModel
    from transferkit.trainer.layers import ImagePreprocessing

    apps = keras.applications
    cases = {
        "caffe": apps.vgg16.preprocess_input,
        "tf": apps.mobilenet_v2.preprocess_input,
        "torch": apps.densenet.preprocess_input,
        "affine": lambda x: (x - 127.0) / 128.0,
        "none": lambda x: x,
    }
    images = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    for mode, fn in cases.items():
        backbone = dataclasses.replace(tiny_backbone(), preprocess=fn, preprocessing="")
        args = TransferModel(backbone, "linear", num_classes=2)._checked_preprocess_mode()
        assert args is not None and args["mode"] == mode
        np.testing.assert_allclose(
            ImagePreprocessing(**args)(images), fn(images.copy()), rtol=1e-5, atol=1e-4
        )
    odd = dataclasses.replace(tiny_backbone(), preprocess=lambda x: x**0.5)
    assert TransferModel(odd, "linear", num_classes=2)._checked_preprocess_mode() is None


def test_light_augmentation_and_label_smoothing() -> None:
    import keras

    from transferkit.trainer import augmentation

    aug = augmentation("light", seed=1)
    kinds = {type(layer).__name__: layer for layer in aug.layers}
    assert kinds["RandomFlip"].mode == "horizontal"
    assert kinds["RandomZoom"].height_factor == (-0.2, 0.0)  # zooming in only: random crops
    x = np.asarray(digits(8)[0], np.float32)
    x = keras.ops.image.resize(x, (32, 32)).numpy()
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)
    np.testing.assert_array_equal(aug(x, training=False), x)

    # smoothing 0.1 over 4 classes: the target is 0.925 for the true class, 0.025 elsewhere
    y_true = np.array([0, 2], np.int32)
    y_pred = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1]], np.float32)
    target = np.full((2, 4), 0.025)
    target[[0, 1], y_true] = 0.925
    expected = -(target * np.log(y_pred)).sum(1)
    smoothed = _model(label_smoothing=0.1).loss()
    np.testing.assert_allclose(smoothed(y_true, y_pred), expected, rtol=1e-5)
    assert _model().loss() == "sparse_categorical_crossentropy"
    with pytest.raises(UsageError, match="label smoothing"):
        _model(label_smoothing=1.0)


def test_the_checkpoint_format_takes_and_gives_plain_values(tmp_path: Any) -> None:
    """``write_checkpoint`` takes arrays and a JSON-able state (no Trainer, no model); a loaded
    ``Checkpoint`` gives them back and assigns them only to variables of the same shapes."""
    import json

    from transferkit.errors import TransferkitError
    from transferkit.trainer.checkpoint import Checkpoint, write_checkpoint

    path = tmp_path / "last.ckpt.npz"
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    write_checkpoint(
        path, state={"epoch": 3, "seed": 7}, model_arrays=weights, optimizer_arrays=[np.zeros(2)]
    )
    loaded = Checkpoint(path)
    assert loaded.state["epoch"] == 3 and loaded.state["seed"] == 7
    assert (loaded.state["n_model"], loaded.state["n_optimizer"]) == (2, 1)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 3
    for got, want in zip(loaded.model_arrays, weights, strict=True):
        np.testing.assert_array_equal(got, want)

    class Variable:
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape, self.path, self.value = shape, f"v{shape}", None

        def assign(self, value: Any) -> None:
            self.value = value

    fits = [Variable((2, 3)), Variable((4,))]
    loaded.restore_model(fits)
    np.testing.assert_array_equal(fits[1].value, weights[1])
    wrong = [Variable((2, 3)), Variable((5,))]
    with pytest.raises(TransferkitError, match="has shape"):
        loaded.restore_model(wrong)
    assert wrong[0].value is None  # nothing assigned when one shape differs


def test_a_callback_saves_through_trainer_save_checkpoint_and_fit_resumes_from_it(
    tmp_path: Any,
) -> None:
    """``Trainer.save_checkpoint(path)`` is what ``ModelCheckpoint`` calls; any callback may call
    it, and ``fit(ckpt_path=path)`` continues from that file (``trainer.ckpt_path``)."""
    from transferkit.trainer import Callback, resolve_strategy

    saved = tmp_path / "mine.ckpt.npz"

    class Save(Callback):
        def on_epoch_complete(self, trainer: Any, epoch: int) -> None:
            trainer.save_checkpoint(saved)

    def strategy() -> Any:
        return resolve_strategy("head-only", epochs=3, learning_rate=1e-2)

    first = _trainer(max_epochs=2, callbacks=[Save()])
    stopped = first.fit(_model(), _data(64), strategy())
    assert stopped["epochs"] == 2 and saved.exists() and first.ckpt_path is None
    trainer = _trainer()
    resumed = trainer.fit(_model(), _data(64), strategy(), ckpt_path=saved)
    assert trainer.ckpt_path == saved
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][:2] == stopped["history"]
