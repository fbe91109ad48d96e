"""``transferkit finetune`` end to end on real image files, the saved ``.keras`` classifier, the
command line with the example configs, keras.applications defaults, and TF Hub backbones (on a
SavedModel the test exports) trained frozen and unfrozen inside the Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from transferkit import BackboneSpec, UsageError, hookimpl

ROOT = Path(__file__).resolve().parents[1]


class TinyBackbones:
    """Registers the test helper CNN (block-named layers) as backbone ``tiny-blocks``."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        from trainer_helpers import tiny_backbone

        def factory(weights: Any = "default", input_size: Any = None, pooling: str = "avg") -> Any:
            if pooling == "none":
                pooling = "map"
            return tiny_backbone(tuple(input_size or (16, 16)), pooling=pooling)

        register(BackboneSpec(name="tiny-blocks", description="test CNN", factory=factory,
                              input_size=(16, 16)))  # fmt: skip


@pytest.fixture
def digit_folder(tmp_path: Path) -> Path:
    """Real PNG files of the scikit-learn digits 0-2, 24 per class, one folder per class."""
    from trainer_helpers import digits

    images, labels, names = digits(300, classes=3)
    root = tmp_path / "digits"
    counts = {n: 0 for n in names}
    for image, label in zip(images, labels, strict=True):
        name = names[int(label)]
        if counts[name] >= 24:
            continue
        folder = root / f"digit{name}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).resize((16, 16)).save(
            folder / f"{counts[name]}.png"
        )
        counts[name] += 1
    return root


def test_finetune_saves_a_classifier_that_reloads_with_labels_and_preprocessing(
    digit_folder: Path, tmp_path: Path, register_plugin: Any
) -> None:
    from transferkit import api
    from transferkit.trainer import ImageDataModule

    register_plugin(TinyBackbones(), "tiny-backbones")
    out = tmp_path / "run"
    result = api.finetune(
        digit_folder,
        backbone="tiny-blocks",
        out=out,
        strategy="warmup-unfreeze",
        epochs=[2, 2],
        learning_rate=[1e-2, 1e-2],
        batch_size=16,
        progress=False,
    )
    assert [p["phase"] for p in result["phases"]] == ["warmup", "finetune"]
    assert all("test_accuracy" in p for p in result["phases"])
    assert result["head"] == "linear" and result["label_names"] == ["digit0", "digit1", "digit2"]
    for name in ("model.keras", "history.csv", "history.json", "summary.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "last.ckpt.npz").exists()

    loaded = api.load_finetuned(out)
    assert loaded.label_names == ["digit0", "digit1", "digit2"]
    assert loaded.metadata["preprocess_mode"] == "unit" and loaded.input_size == (16, 16)
    # the test split's files through the reloaded model give the accuracy finetune reported
    data = ImageDataModule(digit_folder, fractions=(0.7, 0.15, 0.15), seed=0)
    paths = [data.source.records[i].path for i in data.test_indices]
    probs, rows = loaded.predict_files(paths)
    assert list(rows) == list(range(len(paths)))
    accuracy = float(np.mean(probs.argmax(1) == data.labels[data.test_indices]))
    assert accuracy == pytest.approx(result["test_accuracy"], abs=1e-6)
    # and the summary's other scores are those train and spotcheck compute
    from transferkit.metrics import score

    expected = score(data.labels[data.test_indices], probs.argmax(1), labels=range(3))
    for key in ("macro_f1", "balanced_accuracy"):
        assert result[f"test_{key}"] == pytest.approx(expected[key], abs=1e-6), key
    raw = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    np.testing.assert_allclose(loaded.predict_proba(raw), probs, atol=1e-5)
    assert loaded.predict(raw[:2]) == [loaded.label_names[i] for i in probs[:2].argmax(1)]

    # `transferkit predict` takes the fine-tuned model; an undecodable file is skipped
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    predicted = api.predict(out / "model.keras", [paths[0], str(bad), paths[1]])
    entries = predicted["predictions"]
    assert [e["status"] for e in entries] == ["ok", "skipped", "ok"]
    assert [entries[0]["label"], entries[2]["label"]] == loaded.predict(raw[:2])
    assert entries[0]["probability"] == pytest.approx(float(probs[0].max()), abs=1e-5)

    with pytest.raises(UsageError, match="--resume"):
        api.finetune(digit_folder, backbone="tiny-blocks", out=out, progress=False)
    resumed = api.finetune(
        digit_folder, backbone="tiny-blocks", out=out, strategy="warmup-unfreeze",
        epochs=[2, 2], learning_rate=[1e-2, 1e-2], batch_size=16, resume=True, progress=False,
    )  # fmt: skip
    assert resumed["phases"] == result["phases"]


def test_finetune_seeds_once_and_sets_the_data_up_once(
    digit_folder: Path, tmp_path: Path, register_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``finetune`` (with the default recipe's probe of the head, and the final score)
    seeds before it makes the data and the model, and hands the data module the backbone's
    preprocessing once: the Trainer neither reseeds nor sets the data up again."""
    from transferkit import api, trainer
    from transferkit.trainer import DataModule
    from transferkit.trainer import trainer as trainer_module

    register_plugin(TinyBackbones(), "tiny-backbones")
    calls: dict[str, int] = {"seed": 0, "setup": 0}
    seed, setup = trainer.seed_everything, DataModule.setup

    def counted_seed(*args: Any, **kwargs: Any) -> int:
        calls["seed"] += 1
        return seed(*args, **kwargs)

    def counted_setup(self: Any, **kwargs: Any) -> None:
        calls["setup"] += 1
        setup(self, **kwargs)

    monkeypatch.setattr(trainer, "seed_everything", counted_seed)
    monkeypatch.setattr(trainer_module, "seed_everything", counted_seed)
    monkeypatch.setattr(DataModule, "setup", counted_setup)
    result = api.finetune(
        digit_folder, backbone="tiny-blocks", out=tmp_path / "once", epochs=[1, 1],
        batch_size=16, input_size="16", weights="none", progress=False,
    )  # fmt: skip
    assert calls == {"seed": 1, "setup": 1}
    assert result["test_accuracy"] is not None and result["input_size"] == [16, 16]


def test_finetune_command_with_a_config_file(
    digit_folder: Path, tmp_path: Path, register_plugin: Any
) -> None:
    from transferkit.cli import build_cli

    cli = build_cli()

    register_plugin(TinyBackbones(), "tiny-backbones")
    config = tmp_path / "run.yaml"
    config.write_text(
        "backbone: tiny-blocks\nstrategy: gradual\nepochs: [1, 1]\nlearning-rate: [0.01]\n"
        "augment: classic\nbatch-size: 16\n"
    )
    out = tmp_path / "cli-run"
    runner = CliRunner()
    res = runner.invoke(
        cli, ["finetune", str(digit_folder), "-o", str(out), "--config", str(config), "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["strategy"] == "gradual" and summary["head"] == "linear"
    assert [p["phase"] for p in summary["phases"]] == ["head", "unfreeze-1", "unfreeze-2"]
    assert "test accuracy" in res.stderr and "epoch 3/3" in res.stderr

    args = ["finetune", str(digit_folder), "-o", str(tmp_path / "x"), "-b", "tiny-blocks"]
    bad = runner.invoke(cli, [*args, "-s", "head-only", "--unfreeze-from", "3"])
    assert bad.exit_code == 2 and "--unfreeze-from applies to" in bad.output
    missing = runner.invoke(cli, ["finetune", str(digit_folder), "-o", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "--backbone" in missing.output


@pytest.mark.parametrize(
    "example", ["finetune-vgg16-classic.yaml", "finetune-tfhub-feature-vector.yaml"]
)
def test_example_configs_are_valid(example: str, tmp_path: Path) -> None:
    from transferkit.cli import build_cli

    cli = build_cli()

    res = CliRunner().invoke(
        cli,
        ["finetune", str(tmp_path), "-o", str(tmp_path / "o"), "--config",
         str(ROOT / "examples" / example), "--print-config"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    import yaml

    effective = yaml.safe_load(res.stdout)
    if "vgg16" in example:
        assert effective["backbone"] == "vgg16" and effective["epochs"] == [20, 50]
        assert effective["head"] == "classic" and effective["unfreeze-from"] == 15
    else:
        assert effective["backbone"].startswith("tfhub:") and effective["epochs"] == [20]
        assert effective["head"] == "dense" and effective["strategy"] == "head-only"
    assert effective["learning-rate"][0] == 0.001


def test_vgg16_default_unfreeze_point_is_block5() -> None:
    from transferkit import registry
    from transferkit.plugins.strategies import WarmupUnfreeze, default_unfreeze_from
    from transferkit.trainer import TransferModel

    backbone = registry.backbone("vgg16").factory(weights=None, input_size=(32, 32))
    model = TransferModel(backbone, "classic", num_classes=2)
    assert default_unfreeze_from(model) == 15
    assert model.base.layers[15].name == "block5_conv1"
    strategy = WarmupUnfreeze(epochs=[1, 1])
    strategy.setup(model)
    strategy.on_phase_start(model, strategy.phases[1])
    trainable = [layer.name for layer in model.base.layers if layer.trainable and layer.weights]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]


# --------------------------------------------------------------------------- TF Hub

FEATURES = 6


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image -> feature vector SavedModel (conv, relu, average pooling, projection)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = tf.random.Generator.from_seed(1)
            self.kernel = tf.Variable(rng.normal((3, 3, 3, 8)) * 0.3, name="conv/kernel")
            self.dense = tf.Variable(rng.normal((8, FEATURES)) * 0.5, name="dense/kernel")

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, strides=1, padding="SAME"))
            return tf.matmul(tf.reduce_mean(x, axis=(1, 2)), self.dense)

    folder = tmp_path_factory.mktemp("hub") / "feature_vector"
    tf.saved_model.save(Tiny(), str(folder))
    return folder


@pytest.mark.process
def test_tfhub_backbone_trains_frozen_and_unfrozen_and_reloads(
    hub_folder: Path, digit_folder: Path, tmp_path: Path
) -> None:
    from transferkit import api, registry
    from transferkit.trainer import ImageDataModule, Trainer, TransferModel, resolve_strategy

    name = f"tfhub:{hub_folder}"
    backbone = registry.backbone(name).factory()
    assert backbone.feature_dim == FEATURES and backbone.input_size == (16, 16)
    hub_values = [v.numpy().copy() for v in backbone.model.weights]

    data = ImageDataModule(digit_folder, seed=0, batch_size=16, augment="none")
    model = TransferModel(backbone, "dense", num_classes=3, label_names=data.label_names)
    frozen = Trainer(enable_progress=False).fit(
        model, data, resolve_strategy("head-only", epochs=2, learning_rate=1e-2)
    )
    for before, after in zip(hub_values, backbone.model.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    unfrozen = Trainer(enable_progress=False).fit(
        model, data, resolve_strategy("full", epochs=2, learning_rate=1e-2)
    )
    changed = [
        not np.allclose(b, a.numpy())
        for b, a in zip(hub_values, backbone.model.weights, strict=True)
    ]
    assert any(changed)
    assert frozen["phases"][0]["test_accuracy"] >= 0 and unfrozen["epochs"] == 2

    # the one-line classic TF Hub recipe, with a shorter schedule, and a reload in a new process
    out = tmp_path / "hub-run"
    result = api.finetune(
        digit_folder, backbone=name, out=out, strategy="head-only", head="dense",
        epochs=[2], learning_rate=[1e-3], augment="none", batch_size=16, progress=False,
    )  # fmt: skip
    loaded = api.load_finetuned(out)
    images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    here = loaded.predict_proba(images)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import json, sys, numpy as np; from transferkit import api; "
        f"m = api.load_finetuned({str(out)!r}); "
        f"p = m.predict_proba(np.load({str(tmp_path / 'images.npy')!r})); "
        "print(json.dumps({'labels': m.label_names, 'p': p.tolist()}))"
    )
    env = {**os.environ, "TRANSFERKIT_LOAD_PLUGINS": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there["labels"] == result["label_names"]
    np.testing.assert_allclose(np.array(there["p"]), here, atol=1e-6)


def test_rotation_task_is_not_augmented_by_default(caplog: pytest.LogCaptureFixture) -> None:
    from transferkit.jobs.finetune import _augmentation_for

    assert _augmentation_for(None, None) == "classic"
    assert _augmentation_for(None, "rotation") == "none"
    with caplog.at_level("WARNING", logger="transferkit"):
        assert _augmentation_for("classic", "rotation") == "classic"
    assert "--augment none" in caplog.text


def test_mixed_precision_finetune_restores_the_policy(
    digit_folder: Path, tmp_path: Path, register_plugin: Any
) -> None:
    import keras

    from transferkit import api

    register_plugin(TinyBackbones(), "tiny-backbones")
    result = api.finetune(
        digit_folder, backbone="tiny-blocks", out=tmp_path / "mp", strategy="head-only",
        head="linear", epochs=[1], batch_size=16, precision="16-mixed", progress=False,
    )  # fmt: skip
    assert keras.mixed_precision.global_policy().name == "float32"
    loaded = api.load_finetuned(result["model_path"])
    probs = loaded.predict_proba(np.full((2, 16, 16, 3), 128.0, np.float32))
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_probe_init_makes_the_head_predict_what_a_logistic_regression_on_its_inputs_predicts() -> (
    None
):
    """The default recipe's start: the head is a logistic regression (C=1) fitted on the pooled
    features as the network computes them, unstandardised (a standardised fit, folded into the
    layer, predicts other probabilities: this test fails with it)."""
    from sklearn.linear_model import LogisticRegression
    from trainer_helpers import digits, tiny_backbone

    from transferkit.jobs.finetune import _probe_head
    from transferkit.trainer import ArrayDataModule, TransferModel, seed_everything

    seed_everything(0)
    images, labels, names = digits(150, classes=3)
    data = ArrayDataModule(images, labels, names, seed=0, augment="none")
    model = TransferModel(tiny_backbone(), "linear", num_classes=3, label_names=names)
    data.setup(preprocess=model.backbone.preprocess, input_size=model.input_size)
    assert _probe_head(model, data)
    train = np.sort(data.train_indices)
    x = np.concatenate([b[0] for b in data.dataset(train)])
    features = np.asarray(model.base(x, training=False), np.float64)
    probe = LogisticRegression(C=1.0, max_iter=1000).fit(features, data.labels[train])
    test = np.concatenate([b[0] for b in data.test_dataset()])
    expected = probe.predict_proba(np.asarray(model.base(test, training=False), np.float64))
    got = np.asarray(model.network(test, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
