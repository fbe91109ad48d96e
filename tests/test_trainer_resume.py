"""Kill training mid-phase (a hard ``os._exit`` in a subprocess, nothing cleaned up) and resume
from the last checkpoint: the result equals an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).parent

RUN = """
import os, sys
from trainer_helpers import digits, tiny_backbone
from transferkit.trainer import (ArrayDataModule, Callback, EarlyStopping, ModelCheckpoint,
    Trainer, TransferModel, resolve_strategy, seed_everything)

def build(ckpt_dir, kill_after=None):
    seed_everything(0)
    images, labels, names = digits(120, 4)
    data = ArrayDataModule(images, labels, names, seed=0, batch_size=16, augment="classic")
    model = TransferModel(tiny_backbone(), "linear", num_classes=4, label_names=names,
                          head_options={"dropout": 0.3})
    strategy = resolve_strategy("warmup-unfreeze", epochs=[3, 3], learning_rate=[1e-2, 1e-2])
    callbacks = [EarlyStopping(patience=10), ModelCheckpoint(ckpt_dir)]
    if kill_after is not None:
        class Kill(Callback):
            def on_epoch_complete(self, trainer, epoch):
                if epoch == kill_after:
                    os._exit(17)
        callbacks.append(Kill())
    trainer = Trainer(seed=0, deterministic=True, callbacks=callbacks, enable_progress=False)
    return trainer, model, data, strategy

if __name__ == "__main__":
    trainer, model, data, strategy = build(sys.argv[1], int(sys.argv[2]))
    trainer.fit(model, data, strategy, ckpt_path="last")
"""


def _load_run() -> Any:
    namespace: dict[str, Any] = {"__name__": "resume_run"}
    sys.path.insert(0, str(HERE))
    exec(compile(RUN, "resume_run", "exec"), namespace)
    return namespace["build"]


def _weights(model: Any) -> list[np.ndarray]:
    return [v.numpy() for v in model.network.variables]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Any]]:
    """The run without a kill, once for every kill point: its result and its weights."""
    build = _load_run()
    trainer, model, data, strategy = build(tmp_path_factory.mktemp("reference"))
    return trainer.fit(model, data, strategy), _weights(model)


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [3, 2], ids=["mid-phase", "at-phase-change"])
def test_killed_run_resumes_to_the_same_result(
    tmp_path: Path, kill_after: int, uninterrupted: tuple[dict[str, Any], list[Any]]
) -> None:
    build = _load_run()
    ckpt = tmp_path / "ckpt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    script = tmp_path / "run.py"
    script.write_text(RUN)
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(kill_after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert (ckpt / "last.ckpt.npz").exists()

    trainer, model, data, strategy = build(ckpt)
    resumed = trainer.fit(model, data, strategy, ckpt_path="last")
    assert resumed["history"][kill_after + 1]["epoch"] == kill_after + 1

    reference, reference_weights = uninterrupted
    assert [r["phase"] for r in resumed["history"]] == [r["phase"] for r in reference["history"]]
    for got, want in zip(resumed["history"], reference["history"], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got, want)
    for got_w, want_w in zip(_weights(model), reference_weights, strict=True):
        np.testing.assert_allclose(got_w, want_w, rtol=1e-5, atol=1e-6)
    assert [p["test_accuracy"] for p in resumed["phases"]] == pytest.approx(
        [p["test_accuracy"] for p in reference["phases"]]
    )


def test_crash_and_resume_with_one_fit_call_per_epoch(tmp_path: Path) -> None:
    """Data modules that cannot promise a batch count (image folders, where files may be
    skipped) train one epoch per ``fit`` call; resume works the same there."""
    from trainer_helpers import digits, tiny_backbone

    from transferkit.trainer import (
        ArrayDataModule,
        Callback,
        ModelCheckpoint,
        Trainer,
        TransferModel,
        resolve_strategy,
        seed_everything,
    )

    class PerEpoch(ArrayDataModule):
        def train_segment(self, start: int, end: int) -> None:
            return None

    class Crash(Callback):
        def on_epoch_complete(self, trainer: Any, epoch: int) -> None:
            if epoch == 2:
                raise KeyboardInterrupt

    def run(ckpt: Path, crash: bool = False, resume: bool = False) -> tuple[Any, Any]:
        seed_everything(0)
        images, labels, names = digits(100, 4)
        data = PerEpoch(images, labels, names, seed=0, batch_size=16, augment="flip")
        model = TransferModel(tiny_backbone(), "linear", num_classes=4, label_names=names)
        callbacks: list[Any] = [ModelCheckpoint(ckpt)] + ([Crash()] if crash else [])
        trainer = Trainer(seed=0, deterministic=True, callbacks=callbacks, enable_progress=False)
        strategy = resolve_strategy("gradual", epochs=[2, 2], blocks=1, learning_rate=0.05)
        return trainer.fit(model, data, strategy, ckpt_path="last" if resume else None), model

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "a", crash=True)
    resumed, model = run(tmp_path / "a", resume=True)
    reference, ref_model = run(tmp_path / "b")
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2, 3]
    for got, want in zip(resumed["history"], reference["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for got_w, want_w in zip(_weights(model), _weights(ref_model), strict=True):
        np.testing.assert_allclose(got_w, want_w, rtol=1e-5, atol=1e-6)
