"""Files that load where users load them: a fine-tuned ``model.keras`` with plain Keras in safe
mode (in a Python where transferkit cannot be imported), the snippets of ``docs/portable.md``, and
every ``transferkit.X`` name the docs cite."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from transferkit import BackboneSpec, hookimpl

ROOT = Path(__file__).resolve().parents[1]

# Run first in a child process: makes `import transferkit` (and its plugins) fail.
BLOCK_TRANSFERKIT = """
import importlib.abc, sys
class _NoTransferkit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transferkit" or name.startswith("transferkit."):
            raise ImportError("transferkit is not installed here")
        return None
sys.meta_path.insert(0, _NoTransferkit())
"""


def run_without_transferkit(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TRANSFERKIT + code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


class TinyBackbones:
    @hookimpl
    def register_backbones(self, register: Any) -> None:
        from trainer_helpers import tiny_backbone

        def factory(weights: Any = "default", input_size: Any = None, pooling: str = "avg") -> Any:
            return tiny_backbone(tuple(input_size or (16, 16)), pooling="map")

        register(BackboneSpec(name="tiny-map", description="test CNN", factory=factory,
                              input_size=(16, 16)))  # fmt: skip


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 120, (16, 16, 3)) + 120 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


# In the child: load the model with Keras' own loader, then run each snippet of the docs.
CHILD = """
import contextlib, io, json, zipfile, keras, numpy as np
model = keras.saving.load_model("run/model.keras", safe_mode=True)
info = json.loads(zipfile.ZipFile("run/model.keras").read("transferkit.json"))
result = {
    "labels": info["label_names"],
    "p": model.predict(np.load("images.npy"), verbose=0).tolist(),
    "modules": sorted({type(layer).__module__ for layer in model._flatten_layers()}),
    "snippets": [],
}
for block in json.load(open("blocks.json")):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(block, "<snippet>", "exec"), {"__name__": "__main__"})
    result["snippets"].append(out.getvalue())
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.process
def test_finetuned_model_and_docs_snippets_work_without_transferkit(
    tmp_path: Path, register_plugin: Any
) -> None:
    import keras
    from test_train import write_digits

    import transferkit

    register_plugin(TinyBackbones(), "tiny-backbones")
    transferkit.finetune(
        image_folder(tmp_path / "images"), backbone="tiny-map", out=tmp_path / "run",
        strategy="head-only", head="linear", epochs=[1], batch_size=8, progress=False,
    )  # fmt: skip
    loaded = transferkit.load_finetuned(tmp_path / "run")
    images = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    expected = loaded.predict_proba(images)
    np.save(tmp_path / "images.npy", images)
    write_digits(tmp_path / "features.h5")
    write_digits(tmp_path / "features.zarr")
    transferkit.train(tmp_path / "features.h5", classifier="ridge-1", out=tmp_path / "model.skops")
    blocks = python_blocks(ROOT / "docs" / "portable.md")
    assert len(blocks) == 3
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))

    proc = run_without_transferkit(CHILD, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    # the model: same labels, same probabilities, nothing but Keras' own layers
    assert there["labels"] == ["cat", "dog"] == loaded.label_names
    np.testing.assert_allclose(np.array(there["p"]), expected, atol=1e-6)
    assert all(m.startswith("keras.") for m in there["modules"]), there["modules"]
    # the snippets: model.keras, model.skops, the HDF5 and Zarr stores
    keras_out, skops_out, store_out = there["snippets"]
    assert re.fullmatch(r"\['(cat|dog)', '(cat|dog)'\]\n", keras_out)
    assert skops_out.startswith("ridge-1 digit-")
    assert "(1797, 64) digit-0 efficientnet-lite0 [64, 64]" in store_out
    assert "(1797, 64) img/0.png [64, 64]" in store_out
    # and here, after `import transferkit`, with Keras' own loader in safe mode
    again = keras.saving.load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_allclose(again.predict(images, verbose=0), expected, atol=1e-6)


def test_exported_preprocessing_layers_are_standard_and_exact() -> None:
    import keras

    from transferkit.trainer.layers import ImagePreprocessing, standard_preprocessing

    images = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "caffe": ({"mode": "caffe"}, "Dense"),
        "tf": ({"mode": "tf"}, "Rescaling"),
        "torch": ({"mode": "torch"}, "Dense"),
        "unit": ({"mode": "unit"}, "Rescaling"),
        "lite0": ({"mode": "affine", "scale": [1 / 128] * 3, "offset": [-127 / 128] * 3},
                  "Rescaling"),
        "per-channel": ({"mode": "affine", "scale": [0.5, 1, 2], "offset": [1, 2, 3]}, "Dense"),
    }  # fmt: skip
    for name, (args, layer_type) in cases.items():
        inputs = keras.Input((8, 8, 3))
        model = keras.Model(inputs, standard_preprocessing(args, inputs))
        assert type(model.layers[-1]).__name__ == layer_type, name
        np.testing.assert_allclose(
            model.predict(images, verbose=0), ImagePreprocessing(**args)(images), rtol=1e-5,
            atol=1e-4, err_msg=name,
        )  # fmt: skip
    inputs = keras.Input((8, 8, 3))
    assert standard_preprocessing({"mode": "none"}, inputs) is inputs


# --------------------------------------------------------------------------- the docs


def cited_names() -> set[str]:
    found: set[str] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"\btransferkit\.[A-Za-z_][A-Za-z0-9_.]*", doc.read_text()):
            name = name.rstrip(".")
            if name.rsplit(".", 1)[-1] not in ("json", "yaml", "toml", "keras", "h5", "zarr"):
                found.add(name)  # a name, not a file such as transferkit.json
    return found


def resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_name_the_docs_cite_exists() -> None:
    names = cited_names()
    assert "transferkit.load_finetuned" in names and "transferkit.extract" in names
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing


@pytest.mark.parametrize("name", ["load_finetuned", "finetune", "predict"])
def test_public_api_is_exported(name: str) -> None:
    import transferkit

    assert name in transferkit.__all__ and callable(getattr(transferkit, name))
