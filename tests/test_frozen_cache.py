"""The frozen-part cache of fine-tuning (``core/trainer/frozen_cache.py``): the default recipe
trains to the same weights with and without it, the frozen part runs once per phase cut, the
runs it cannot make exact fall back with one line, and rows beyond its memory bound spill to a
file in the run folder that is deleted at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from transferkit import BackboneSpec, hookimpl

TOLERANCE = 1e-5


class TinyThreeBlocks:
    """A CNN of three named blocks as backbone ``tiny-three``: the default recipe unfreezes the
    top two, so its fine-tune phase has a frozen block below the cut."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        from trainer_helpers import tiny_backbone

        def factory(weights: Any = "default", input_size: Any = None) -> Any:
            import keras

            keras.utils.set_random_seed(3)  # the same initial weights in every run
            # the feature map, which the linear head pools: the warm-up caches pooled vectors
            return tiny_backbone(tuple(input_size or (16, 16)), filters=(4, 8, 8), pooling="map")

        register(BackboneSpec(name="tiny-three", description="test CNN", factory=factory,
                              input_size=(16, 16)))  # fmt: skip


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real PNG files of the scikit-learn digits 0-2, 24 per class, one folder per class, and
    one file that does not decode (the input pipeline leaves it out of its batches)."""
    from trainer_helpers import digits

    images, labels, names = digits(300, classes=3)
    root = tmp_path_factory.mktemp("frozen") / "digits"
    counts = dict.fromkeys(names, 0)
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
    (root / "digit1" / "broken.png").write_bytes(b"not a png")
    return root


def _arrays(out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from transferkit.trainer.checkpoint import Checkpoint

    checkpoint = Checkpoint(out / "checkpoints" / "last.ckpt.npz")
    return checkpoint.model_arrays, checkpoint.optimizer_arrays


def _close(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))
        for x, y in zip(a, b, strict=True)
    )


class SpillWatch:
    """A Trainer callback noting the cache's spill files in ``folder`` after each epoch."""

    def __init__(self, folder: Path) -> None:
        from transferkit.trainer import Callback

        class Watch(Callback):
            seen: list[dict[str, int]] = []

            def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
                files = sorted(folder.glob("frozen-cache-*.npy"))
                self.seen.append({f.name: f.stat().st_size for f in files})

        self.callback = Watch()


@pytest.mark.slow
def test_the_default_recipe_trains_to_the_same_weights_with_and_without_the_cache(
    digit_folder: Path, tmp_path: Path, register_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both phases of the default recipe (flip augmentation, probe start, label smoothing,
    early stopping, best weights restored) on an image folder with an undecodable file: the
    same losses, weights, optimizer slots and test accuracy; the frozen part runs once per
    cut over the training images (both versions) and the validation images, the probe start
    takes its features from the cache, and the spill files are gone at the end."""
    from transferkit import api
    from transferkit.trainer import frozen_cache

    register_plugin(TinyThreeBlocks(), "tiny-three")
    # per pass made (its model's name), the batch size of each forward call
    forwarded: list[tuple[str, list[int]]] = []
    make = frozen_cache._forward_fn

    def counted(lower: Any, pooling: Any = None) -> Any:
        forward = make(lower, pooling)
        sizes: list[int] = []
        forwarded.append((lower.name, sizes))

        def run(inputs: Any) -> Any:
            first = inputs[0] if isinstance(inputs, list | tuple) else inputs
            sizes.append(int(first.shape[0]))
            return forward(inputs)

        return run

    monkeypatch.setattr(frozen_cache, "_forward_fn", counted)
    probes: list[Any] = []
    from transferkit.jobs import finetune as finetune_job

    probe = finetune_job._probe_head

    def noted_probe(model: Any, data: Any, features: Any = None) -> bool:
        probes.append(features)
        return probe(model, data, features)

    monkeypatch.setattr(finetune_job, "_probe_head", noted_probe)
    # the passes over images after the fit (test scores and ECE, the trust record's reference
    # and conformal scores), counted in images
    from transferkit.jobs import finetune_trust
    from transferkit.trainer import Trainer

    after: list[int] = []
    features, run_score = finetune_trust.head_features, Trainer._run_score

    def noted_features(model: Any, images: Any) -> Any:
        after.append(int(images.shape[0]))
        return features(model, images)

    def noted_score(self: Any, *args: Any) -> Any:
        after.append(len(self.data.test_indices))
        return run_score(self, *args)

    monkeypatch.setattr(finetune_trust, "head_features", noted_features)
    monkeypatch.setattr(Trainer, "_run_score", noted_score)
    common: dict[str, Any] = {"backbone": "tiny-three", "epochs": [2, 2], "batch_size": 8}
    common.update(progress=False, learning_rate=[1e-2, 1e-2])
    plain = api.finetune(digit_folder, out=tmp_path / "plain", frozen_cache=False, **common)
    assert forwarded == [] and probes == [None]
    assert sum(after) > 0
    after.clear()
    watch = SpillWatch(tmp_path / "cached")
    cached = api.finetune(
        digit_folder, out=tmp_path / "cached", frozen_cache_memory=0,
        callbacks=[watch.callback], **common,
    )  # fmt: skip
    data = cached["data"]
    assert data["train"] + data["val"] + data["test"] == 73  # 72 PNGs and the broken file
    # two cuts (the whole base, then below block2), one pass of the frozen part: the layers
    # below block2 run once over the decodable training images as they are and mirrored, the
    # validation and the test images; block2 then runs once over those cached rows for the
    # warm-up's pooled vectors, and the fine-tune phase reuses the rows below block2
    n = {p: data[p] - _broken_in(digit_folder, p) for p in ("train", "val", "test")}
    batches = 2 * -(-n["train"] // 8) + -(-n["val"] // 8) + -(-n["test"] // 8)
    # the last batch of each part padded: one trace each
    assert forwarded == [("frozen_part", [8] * batches), ("frozen_between_cuts", [8] * batches)]
    assert probes[0] is None and probes[1] is not None and len(probes[1][0]) == n["train"]
    # with no memory, every row spilled to the run folder during training, and none is left
    assert watch.callback.seen and all(watch.callback.seen)
    assert not list((tmp_path / "cached").glob("frozen-cache-*"))

    for a, b in zip(plain["phases"], cached["phases"], strict=True):
        assert a["epochs"] == b["epochs"] and a["test_accuracy"] == b["test_accuracy"]
    assert cached["test_accuracy"] == plain["test_accuracy"]
    assert cached["restored_best_epoch"] == plain["restored_best_epoch"]
    # after the fit, the kept rows give the final scores and the trust record: no image pass
    assert after == []
    assert cached["test_ece"] == pytest.approx(plain["test_ece"], abs=TOLERANCE)
    assert cached["reference_rows"] == plain["reference_rows"] > 0
    assert cached["conformal_scores"] == plain["conformal_scores"] > 0
    records = [finetune_trust.read_record(tmp_path / name / "model.keras")
               for name in ("plain", "cached")]  # fmt: skip
    assert sorted(records[0]) == sorted(records[1])
    for key, value in records[0].items():
        if key == "layer":  # a layer name, numbered by Keras per process
            continue
        if np.asarray(value).dtype.kind == "f":
            np.testing.assert_allclose(records[1][key], value, atol=1e-4, err_msg=key)
        else:
            assert np.array_equal(np.asarray(records[1][key]), np.asarray(value)), key
    history = [api_history(tmp_path / name) for name in ("plain", "cached")]
    np.testing.assert_allclose(history[0], history[1], atol=TOLERANCE)
    weights = [_arrays(tmp_path / name) for name in ("plain", "cached")]
    assert _close(weights[0][0], weights[1][0]) < TOLERANCE
    assert _close(weights[0][1], weights[1][1]) < TOLERANCE
    assert plain["epochs"] == cached["epochs"] == 4  # patience 3 never stops 2 epochs


def _broken_in(root: Path, part: str) -> bool:
    """Whether the undecodable file fell into ``part`` of the seeded split."""
    from transferkit.trainer import ImageDataModule

    data = ImageDataModule(root, fractions=(0.7, 0.15, 0.15), seed=0)
    rows = {"train": data.train_indices, "val": data.val_indices, "test": data.test_indices}[part]
    return any(data.source.records[i].path.endswith("broken.png") for i in rows)


def api_history(out: Path) -> np.ndarray:
    import json

    rows = json.loads((out / "history.json").read_text())
    rows = rows["history"] if isinstance(rows, dict) else rows
    return np.array([[r["loss"], r["val_loss"], r["accuracy"], r["val_accuracy"]] for r in rows])


def _fit(
    tmp: Path, *, cache: Any = None, extra: Sequence[Any] = (), **fit: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """The digits in memory, a tiny CNN, ``warmup-unfreeze`` unfreezing its second block;
    a checkpoint in ``tmp`` after each epoch."""
    import keras
    from trainer_helpers import digits, tiny_backbone

    from transferkit.trainer import (
        ArrayDataModule,
        ModelCheckpoint,
        Trainer,
        TransferModel,
        resolve_strategy,
        seed_everything,
    )

    seed_everything(0)
    keras.utils.set_random_seed(3)
    images, labels, names = digits(90, classes=3)
    data = ArrayDataModule(images, labels, names, batch_size=8, augment="flip", input_size=(16, 16))
    model = TransferModel(tiny_backbone((16, 16), filters=(4, 8)), "linear", num_classes=3)
    callbacks: list[Any] = [ModelCheckpoint(tmp), *extra]
    if cache is not None:
        callbacks.insert(0, cache)
    max_epochs = fit.pop("max_epochs", None)
    trainer = Trainer(callbacks=callbacks, enable_progress=False, reseed=False,
                      max_epochs=max_epochs)  # fmt: skip
    strategy = fit.pop("strategy", None) or resolve_strategy(
        "warmup-unfreeze", epochs=[2, 2], unfreeze_from=5
    )
    result = trainer.fit(model, data, strategy, **fit)
    return model, trainer, result


def test_rows_beyond_the_memory_bound_spill_to_a_file_that_is_deleted(tmp_path: Path) -> None:
    """A bound of half the fine-tune cut's rows: the rest in a memory-mapped file in the spill
    folder while training, gone after; the weights are those of the uncached run."""
    from transferkit.trainer.frozen_cache import FrozenCache

    plain, _, _ = _fit(tmp_path / "plain")
    spill = tmp_path / "spill"
    watch = SpillWatch(spill)
    # the second block's input: 8x8x4 float32 per image and version, 2 versions
    row_bytes = 8 * 8 * 4 * 4 * 2
    bound_mb = 30 * row_bytes / 2**20  # the validation rows and some of the training rows
    cache = FrozenCache(memory_mb=bound_mb, spill_dir=spill)
    model, trainer, _ = _fit(tmp_path / "cached", cache=cache, extra=[watch.callback])
    # the fine-tune's cut, built first from the images; the warm-up's pooled vectors from it
    assert [(b["cut"], b["from_cut"]) for b in cache.builds] == [(5, None), (10, 5)]
    cut = cache.builds[0]
    assert cut["cut"] == 5 and cut["variants"] == 2
    assert 0 < cut["memory_bytes"] <= bound_mb * 2**20 and cut["spilled_bytes"] > 0
    data = trainer.data
    n_train, n_other = len(data.train_indices), len(data.val_indices) + len(data.test_indices)
    assert cut["memory_bytes"] + cut["spilled_bytes"] == (n_train + n_other / 2) * row_bytes
    # the validation rows first, then the training rows; the test rows (at the phase's end)
    # find the bound reached
    names = [Path(f).name for f in cut["files"]]
    assert names == ["frozen-cache-train-0.npy", "frozen-cache-test-0.npy"]
    # the fine-tune epochs saw the file, holding the rows beyond the bound; none is left
    size = watch.callback.seen[-1]["frozen-cache-train-0.npy"]
    spilled_train = cut["spilled"]["train"]
    assert spilled_train >= (n_train + len(data.val_indices) / 2) * row_bytes - bound_mb * 2**20
    assert spilled_train < size < spilled_train + 1024  # and the .npy header
    assert not list(spill.glob("*")), "the spill file outlived the fit"
    weights = [v.numpy() for v in model.network.weights]
    assert _close([v.numpy() for v in plain.network.weights], weights) < TOLERANCE


def test_rows_kept_after_the_fit_serve_the_base_until_a_weight_below_the_cut_changes(
    tmp_path: Path,
) -> None:
    """``keep_after_fit``: the validation rows through the layers above the cut are the base's
    own outputs; once a weight below the cut changes (a restored checkpoint, say) the cache
    serves nothing, and the caller runs the network over the images."""
    from transferkit.trainer.frozen_cache import FrozenCache

    cache = FrozenCache(spill_dir=tmp_path / "spill", keep_after_fit=True)
    model, trainer, _ = _fit(tmp_path / "cached", cache=cache)
    batches = cache.base_batches(trainer, "val")
    assert batches is not None
    outputs = np.concatenate([np.asarray(out) for out, _ in batches])
    images = np.concatenate([np.asarray(x) for x, _ in trainer.data.val_dataset()])
    direct = np.asarray(model.base(images, training=False))
    assert outputs.shape[0] == len(trainer.data.val_indices)
    assert _close([direct], [outputs.reshape(direct.shape)]) < TOLERANCE
    below = next(layer for layer in model.base_layers if layer.weights)
    below.weights[0].assign(below.weights[0] + 1.0)
    assert cache.base_batches(trainer, "val") is None
    cache.release()
    assert not list((tmp_path / "spill").glob("*"))


def test_a_resumed_fit_builds_the_cache_again_and_ends_where_an_uninterrupted_one_does(
    tmp_path: Path,
) -> None:
    from transferkit.trainer.frozen_cache import FrozenCache

    plain, _, _ = _fit(tmp_path / "plain")
    first = FrozenCache()
    _fit(tmp_path / "run", cache=first, max_epochs=3)  # stops in the fine-tune phase
    # block2's input from the images, for the fine-tune phase ahead; the warm-up's (the whole
    # base) from those rows
    assert [(b["cut"], b["from_cut"]) for b in first.builds] == [(5, None), (10, 5)]
    assert first.builds[1]["images"] == 0 and first.builds[0]["images"] > 0
    again = FrozenCache()
    model, trainer, result = _fit(tmp_path / "run", cache=again, ckpt_path="last")
    assert trainer.ckpt_path is not None and result["epochs"] == 4
    assert [b["cut"] for b in again.builds] == [5]  # rebuilt for the phase it resumed in
    weights = [v.numpy() for v in model.network.weights]
    assert _close([v.numpy() for v in plain.network.weights], weights) < TOLERANCE


def test_gradual_runs_the_frozen_part_once_for_its_cuts_and_drops_rows_a_deeper_phase_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gradual`` over two blocks: the head, then block2, then block1 too. The frozen part
    runs once, below block2 (the deepest cut with something frozen below it); the head's rows
    come from those; when block1 trains, nothing is frozen below it and the rows go. The
    weights are those of the uncached run."""
    from transferkit.trainer import frozen_cache, resolve_strategy
    from transferkit.trainer.frozen_cache import FrozenCache

    def gradual() -> Any:
        return resolve_strategy("gradual", epochs=[1, 1], blocks=2)

    plain, _, _ = _fit(tmp_path / "plain", strategy=gradual())
    made: list[str] = []
    make = frozen_cache._forward_fn

    def counted(lower: Any, pooling: Any = None) -> Any:
        made.append(lower.name)
        return make(lower, pooling)

    monkeypatch.setattr(frozen_cache, "_forward_fn", counted)
    from transferkit.trainer import Callback

    held: list[tuple[Any, Any]] = []  # after each epoch: the cuts whose rows the cache holds

    class Held(Callback):
        def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
            cut, deep = cache._cut, cache._deep
            held.append((cut and cut.key[0], deep and deep.key[0]))

    cache = FrozenCache()
    model, _, result = _fit(tmp_path / "cached", cache=cache, extra=[Held()], strategy=gradual())
    assert [p["phase"] for p in result["phases"]] == ["head", "unfreeze-1", "unfreeze-2"]
    assert [(b["cut"], b["from_cut"]) for b in cache.builds] == [(5, None), (10, 5)]
    assert made == ["frozen_part", "frozen_between_cuts"]
    # the head on rows from below block2; block2 on those rows; block1 trains: none kept
    assert held == [(10, 5), (5, 5), (None, None)]
    weights = [v.numpy() for v in model.network.weights]
    assert _close([v.numpy() for v in plain.network.weights], weights) < TOLERANCE


@pytest.mark.slow
def test_augment_light_falls_back_with_one_line_and_no_frozen_cache_says_nothing(
    digit_folder: Path, tmp_path: Path, register_plugin: Any
) -> None:
    """``--augment light`` crops randomly: the run trains the whole network and says why once
    (not once per phase), as a debug run does; ``--no-frozen-cache`` turns the cache off
    without a word; the default (flip) says what it cached."""
    from cli_faults import invoke_cli

    register_plugin(TinyThreeBlocks(), "tiny-three")
    common = [digit_folder, "-b", "tiny-three", "--epochs", "1", "--epochs", "1",
              "--batch-size", "16", "--no-progress"]  # fmt: skip
    light = invoke_cli("finetune", *common, "-o", tmp_path / "light", "--augment", "light")
    assert light.returncode == 0, light.stderr
    lines = [line for line in light.stderr.splitlines() if "frozen-part cache" in line]
    assert lines == [
        "frozen-part cache off: --augment light crops randomly (RandomZoom, RandomTranslation); "
        "every step runs the whole network"
    ]
    debug = invoke_cli("finetune", *common, "-o", tmp_path / "debug", "--fast-dev-run")
    assert debug.returncode == 0, debug.stderr
    lines = [line for line in debug.stderr.splitlines() if "frozen-part cache" in line]
    assert lines == [
        "frozen-part cache off: a debug run limits the batches; every step runs the whole network"
    ]
    off = invoke_cli("finetune", *common, "-o", tmp_path / "off", "--no-frozen-cache")
    assert off.returncode == 0, off.stderr
    assert "frozen-part cache" not in off.stderr
    on = invoke_cli("finetune", *common, "-o", tmp_path / "on")
    assert on.returncode == 0, on.stderr
    built = [line for line in on.stderr.splitlines() if line.startswith("frozen-part cache:")]
    # the fine-tune's cut from the images, then the warm-up's pooled vectors from its rows
    assert len(built) == 2 and "activations [(8, 8, 4)] below layer 5 of 13," in built[0], built
    assert (
        "pooled features below layer 13 of 13, from the cached activations below layer 5"
        in (built[1])
    )


def test_a_frozen_part_with_dropout_trains_the_whole_network(tmp_path: Path, caplog: Any) -> None:
    """Dropout below the cut is random in training, so the cached output would not be the
    uncached one: no cache, one line naming the layer."""
    import keras
    from trainer_helpers import digits

    from transferkit import Backbone
    from transferkit.trainer import ArrayDataModule, Trainer, TransferModel, resolve_strategy
    from transferkit.trainer.frozen_cache import FrozenCache

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inputs)
    x = keras.layers.SpatialDropout2D(0.1, name="block1_drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    base = Backbone("dropping", keras.Model(inputs, x), lambda t: t / 255.0, (16, 16), "avg",
                    4, "none")  # fmt: skip
    images, labels, names = digits(30, classes=3)
    data = ArrayDataModule(images, labels, names, batch_size=8, augment="none", input_size=(16, 16))
    cache = FrozenCache()
    caplog.set_level("INFO", logger="transferkit")
    Trainer(callbacks=[cache], enable_progress=False).fit(
        TransferModel(base, "linear", num_classes=3), data, resolve_strategy("head-only", epochs=2)
    )
    assert cache.builds == []
    said = [r.getMessage() for r in caplog.records if "frozen-part cache" in r.getMessage()]
    assert said == [
        "frozen-part cache off below layer 4: its layer block1_drop (SpatialDropout2D) is random "
        "in training; the whole network runs"
    ]


@pytest.mark.slow
def test_efficientnet_lite0_trains_to_the_same_weights_with_and_without_the_cache(
    tmp_path: Path,
) -> None:
    """The offline efficientnet-lite0 and the default recipe at 32 px (the top two blocks
    unfrozen): the same weights within a float tolerance and the same test accuracy."""
    from sklearn.datasets import load_digits

    from transferkit import api

    root = tmp_path / "digits"
    digits = load_digits()
    counts = dict.fromkeys(range(3), 0)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if label >= 3 or counts[label] >= 30:
            continue
        counts[label] += 1
        path = root / f"digit{label}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ink = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
        Image.fromarray(ink).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB").save(path)
    common: dict[str, Any] = {"backbone": "efficientnet-lite0", "input_size": 32}
    common.update(epochs=[2, 2], batch_size=16, progress=False)
    plain = api.finetune(root, out=tmp_path / "plain", frozen_cache=False, **common)
    cached = api.finetune(root, out=tmp_path / "cached", **common)
    assert cached["test_accuracy"] == plain["test_accuracy"]
    for a, b in zip(plain["phases"], cached["phases"], strict=True):
        assert a["test_accuracy"] == b["test_accuracy"], (plain["phases"], cached["phases"])
    history = [api_history(tmp_path / name) for name in ("plain", "cached")]
    np.testing.assert_allclose(history[0], history[1], atol=1e-4)
    weights = [_arrays(tmp_path / name) for name in ("plain", "cached")]
    assert _close(weights[0][0], weights[1][0]) < 1e-4
