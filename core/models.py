"""A saved classifier: the fitted estimator plus the recipe that produced its features.

``predict`` needs both: the estimator, and how to turn a new image into the same feature vector
(backbone, weights, input size, pooling) and a label index into a class name.

Two formats, one file each:

* scikit-learn estimators are written with ``skops`` (a zip of JSON and NumPy arrays). Loading
  one constructs objects from a list of types and never runs code from the file. skops trusts a
  short list of types by default and reports every other type in the file as *untrusted*; we
  accept an untrusted type only when it is a *class* of scikit-learn, NumPy or SciPy (the classes
  our built-in classifiers are made of, which skops rebuilds from their state without calling
  anything the file names). Any other name (a plugin's own class, a function such as
  ``builtins.eval`` or even ``numpy.load``) is refused unless the caller passes ``trust=True``.
* river models can only be pickled, and unpickling runs code chosen by whoever wrote the file.
  :func:`load_model` therefore refuses a pickle unless ``trust=True`` (``--trust`` on the command
  line).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TransferkitError, UsageError
from .outputs import atomic_path, check_outside_inputs, check_writable, refuse_replacing
from .recipe import FeatureRecipe
from .reuse import file_key, reuse

FORMAT = "transferkit-model"
FORMAT_VERSION = 1

# Modules whose types skops may rebuild from a file without ``trust``: the libraries our
# estimators are made of. skops rebuilds them from their ``__dict__`` state, calling no function
# that the file names, so accepting them does not let a file run code.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
# transferkit's own estimators, whose state is NumPy arrays and numbers only (rebuilt the same way).
TRUSTED_TYPES = (
    "transferkit.plugins._softmax.SoftmaxRegression",
    "transferkit.trust.TemperatureScaled",
)


@dataclass
class SavedModel:
    """A fitted estimator (scikit-learn or river), the :class:`FeatureRecipe` of the features it
    was trained on, and what else its store said: the class names, the feature width and the
    store's whole metadata."""

    estimator: Any
    recipe: FeatureRecipe
    classifier: str
    library: str
    info: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    feature_dim: int | None = None
    store_metadata: dict[str, Any] = field(default_factory=dict)
    # what predict needs to score unfamiliar inputs and make prediction sets
    # (:mod:`transferkit.trust`): NumPy arrays and numbers, saved beside the estimator
    trust: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        recipe = self.recipe.to_metadata()
        recipe["backbone"] = recipe["backbone"] or None
        recipe["weights"] = self.recipe.weights  # None for random initialisation
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "classifier": self.classifier,
            "library": self.library,
            "recipe": {
                **recipe,
                "runtime": self.recipe.runtime or "keras",
                "label_names": list(self.label_names),
                "feature_dim": self.feature_dim,
                "store_metadata": _plain(self.store_metadata),
            },
            "info": _plain(self.info),
        }


def store_fields(reader: Any) -> dict[str, Any]:
    """What a model trained on the store ``reader`` keeps of it: the ``recipe``, ``label_names``,
    ``feature_dim`` and ``store_metadata`` (keyword arguments of :class:`SavedModel`)."""
    meta = dict(reader.metadata or {})
    return {
        "recipe": FeatureRecipe.from_metadata(meta),
        "label_names": [str(n) for n in reader.label_names],
        "feature_dim": int(reader.feature_dim),
        "store_metadata": {k: _plain(v) for k, v in meta.items()},
    }


def _plain(value: Any) -> Any:
    """JSON-ready copies of metadata values (NumPy scalars and arrays included)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def default_suffix(library: str) -> str:
    return ".pkl" if library == "river" else ".skops"


def save_model(model: SavedModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (skops for scikit-learn, pickle for river); returns the path."""
    path = Path(path)
    header = json.dumps(model.header())
    data: dict[str, Any] = {"header": header, "estimator": model.estimator}
    if model.trust:
        data["trust"] = dict(model.trust)
    # written beside the target and renamed over it: a crash or a full disk never leaves half a
    # model under the real name, nor a temporary file
    with atomic_path(path) as tmp:
        if model.library == "river":
            with open(tmp, "wb") as fh:
                pickle.dump(data, fh)
        else:
            import skops.io as sio

            sio.dump(data, tmp)
    return path


def model_path_for(out: str | Path, library: str) -> Path:
    """Where ``--out`` saves a model: ``out``, with the library's suffix when it has none."""
    path = Path(out)
    return path if path.suffix else path.with_suffix(default_suffix(library))


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a model file :func:`save_model` wrote (read without loading it)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                schema = archive.read("schema.json")
            return FORMAT.encode() in schema and b'"header"' in schema
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
    return head[:1] == b"\x80" and FORMAT.encode() in head


def check_model_out(path: str | Path, *, overwrite: bool, inputs: Sequence[Any] = ()) -> None:
    """Refuse a model path that is or touches an input, that exists without ``overwrite``, or
    that exists and is not a model transferkit saved (nothing is touched)."""
    check_outside_inputs(path, inputs, "model file")
    if os.path.lexists(path):
        if not overwrite:
            raise UsageError(
                f"model file {path} already exists; pass --overwrite to replace it "
                "(overwrite=True in Python) or choose another --out"
            )
        if not is_saved_model(path):
            raise refuse_replacing(path, "model file", "a model saved by transferkit")
    check_writable(path)


def untrusted_types(path: str | Path) -> list[str]:
    """The types in a skops file that skops does not trust by default."""
    import skops.io as sio

    return list(sio.get_untrusted_types(file=path))


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _pickle_holds_header(path: Path) -> bool:
    """Whether a pickle holds a transferkit model header, read from its opcodes without
    unpickling (so without running anything it names)."""
    import pickletools

    marker = f'"format": "{FORMAT}"'
    try:
        with open(path, "rb") as fh:
            for opcode, arg, _pos in pickletools.genops(fh):
                if isinstance(arg, str) and marker in arg:
                    return True
                if opcode.name == "STOP":
                    return False
    except Exception:  # noqa: BLE001 - not a well-formed pickle
        return False
    return False


def identify_file(path: str | Path) -> str:
    """What ``path`` is, from its first bytes (nothing in it is run): ``"skops"``, ``"keras"``,
    ``"pickle-model"`` (a pickle holding a transferkit header), ``"pickle"``, ``"hdf5"``,
    ``"zarr"``, ``"folder"``, ``"zip"``, ``"empty"`` or ``"unknown"``."""
    path = Path(path)
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "zarr"
        return "folder"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return "unknown"
    if not head:
        return "empty"
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return "unknown"
        if "schema.json" in names:
            return "skops"
        if "config.json" in names and "metadata.json" in names:
            return "keras"
        return "zip"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "pickle-model" if _pickle_holds_header(path) else "pickle"
    return "unknown"


_NOT_A_MODEL = {
    "hdf5": "an HDF5 file (a feature store?), not a model; train one on it with "
    "`transferkit train STORE --classifier NAME --out model.skops`",
    "zarr": "a Zarr feature store, not a model; train one on it with "
    "`transferkit train STORE --classifier NAME --out model.skops`",
    "folder": "a folder, not a model file (a fine-tuned model's folder holds model.keras)",
    "zip": "a zip archive that is neither a skops model nor a Keras model",
    "pickle": "a pickle but not a transferkit model (it holds no model header), so it is not "
    "loaded (trusting the file would not change that)",
    "empty": "an empty file, not a model",
    "unknown": "not a model file that transferkit knows (neither skops, a transferkit "
    "pickle nor .keras)",
}


def load_model(path: str | Path, *, trust: bool = False) -> SavedModel:
    """Read a model written by :func:`save_model`.

    A skops file loads when every type it holds is skops-trusted or from scikit-learn/NumPy/SciPy;
    a pickle (river) or a skops file with other types loads only with ``trust=True``. Whatever is
    read is checked (:func:`check_saved_model`) before it is returned; a file that is not a model
    says what it is.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"model file {path} does not exist; save one with `transferkit train --out`"
        )
    # read once per file inside a `with reuse.kept():` block (a server), else on every call
    return reuse(("saved-model", file_key(path), trust), lambda: _read_model(path, trust))


def _read_model(path: Path, trust: bool) -> SavedModel:
    kind = identify_file(path)
    if kind in _NOT_A_MODEL or kind == "keras":
        what = _NOT_A_MODEL.get(kind, "a Keras model that `transferkit finetune` did not save")
        raise UsageError(f"{path} is {what}")
    if kind == "skops":
        data = _load_skops(path, trust)
    else:
        if not trust:
            raise TransferkitError(
                f"{path} is a pickle (river models can only be saved that way), and loading a "
                "pickle runs whatever code it holds. Load it only if you made it or trust its "
                "source: pass --trust (trust=True in Python)."
            )
        try:
            with open(path, "rb") as fh:
                data = pickle.load(fh)  # noqa: S301 - only with trust=True, see above
        except Exception as exc:
            raise TransferkitError(f"cannot read model {path}: {_one_line(exc)}") from None
    return check_saved_model(path, data)


_RECIPE_TYPES: dict[str, tuple[type, ...]] = {
    "backbone": (str, type(None)),
    "weights": (str, type(None)),
    "input_size": (list, type(None)),
    "pooling": (str,),
    "label_names": (list,),
    "feature_dim": (int, type(None)),
    "store_metadata": (dict,),
    "precision": (str,),
    "runtime": (str,),
    "fingerprint": (str,),
}


def check_saved_model(path: str | Path, data: Any) -> SavedModel:
    """The :class:`SavedModel` in ``data`` (what a model file held), checked: the header's
    format, version and types, the recipe's fields, and the classes the estimator can predict
    against the label names. Raises :class:`TransferkitError` with one line naming the fault."""
    from .sizes import parse_input_size

    def bad(why: str) -> TransferkitError:
        return TransferkitError(f"{path} is not a usable transferkit model: {why}")

    if not isinstance(data, dict) or "header" not in data or "estimator" not in data:
        raise bad("it holds no header and estimator")
    try:
        header = json.loads(data["header"]) if isinstance(data["header"], str) else None
    except (ValueError, RecursionError) as exc:
        raise bad(f"its header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    if header.get("format") != FORMAT:
        raise bad(f"format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise bad(
            f"format version {version!r}; this transferkit reads version {FORMAT_VERSION} "
            "(a newer transferkit may have written it)"
        )
    for key in ("classifier", "library"):
        if not isinstance(header.get(key), str):
            raise bad(f"{key!r} must be text, not {header.get(key)!r}")
    info = header.get("info", {})
    if not isinstance(info, dict):
        raise bad("'info' must be a mapping")
    recipe = header.get("recipe")
    if not isinstance(recipe, dict):
        raise bad("'recipe' must be a mapping")
    unknown = sorted(set(recipe) - set(_RECIPE_TYPES))
    if unknown:
        raise bad(f"unknown recipe keys {unknown}; known: {sorted(_RECIPE_TYPES)}")
    for key, types in _RECIPE_TYPES.items():
        if key in recipe and (not isinstance(recipe[key], types) or isinstance(recipe[key], bool)):
            raise bad(f"recipe {key!r} has the wrong type ({type(recipe[key]).__name__})")
    names = recipe.get("label_names", [])
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise bad("its label names must be a non-empty list of distinct names")
    try:
        if recipe.get("input_size") is not None:
            parse_input_size(recipe["input_size"])
    except UsageError as exc:
        raise bad(f"recipe input size: {exc}") from None
    dim = recipe.get("feature_dim")
    if dim is not None and dim <= 0:
        raise bad(f"feature width {dim} is not positive")
    estimator = data["estimator"]
    classes = getattr(estimator, "classes_", None)
    if classes is not None:
        import numpy as np

        values = np.asarray(classes).reshape(-1)
        if values.dtype.kind not in "iu" or (
            len(values) and (values.min() < 0 or values.max() >= len(names))
        ):
            raise bad(
                f"its estimator predicts classes {values.tolist()[:10]} but the model names "
                f"{len(names)} classes (0 to {len(names) - 1})"
            )
    width = getattr(estimator, "n_features_in_", None)
    if isinstance(width, int) and dim is not None and width != dim:
        raise bad(f"its estimator takes {width} features but the recipe says {dim}")
    trust = data.get("trust", {})
    if trust:
        from .trust import check_trust

        why = check_trust(trust, dim)
        if why is not None:
            raise bad(why)
    return SavedModel(
        estimator=estimator,
        recipe=FeatureRecipe.from_metadata(recipe),
        classifier=header["classifier"],
        library=header["library"],
        info=info,
        label_names=list(names),
        feature_dim=dim,
        store_metadata=dict(recipe.get("store_metadata") or {}),
        trust=dict(trust or {}),
    )


def _is_library_class(name: str) -> bool:
    """Whether ``name`` is a class defined by scikit-learn, NumPy or SciPy.

    Functions are refused even from those libraries (a function reference stored in, say, a
    ``FunctionTransformer`` would be called on the user's data later). Resolving the name imports
    only modules of those three libraries.
    """
    import importlib
    import inspect

    if name in TRUSTED_TYPES:
        return True
    if not name.startswith(TRUSTED_MODULE_PREFIXES):
        return False
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return inspect.isclass(obj) and (obj.__module__ or "").startswith(TRUSTED_MODULE_PREFIXES)


def _load_skops(path: Path, trust: bool) -> Any:
    import skops.io as sio

    try:
        found = untrusted_types(path)
    except Exception as exc:
        raise TransferkitError(f"cannot read model {path}: {_one_line(exc)}") from None
    foreign = [t for t in found if not _is_library_class(t)]
    if foreign and not trust:
        raise TransferkitError(
            f"{path} holds types that are neither scikit-learn's nor NumPy's: "
            f"{', '.join(sorted(foreign))}. Loading them may run their code; pass --trust "
            "(trust=True) only if you trust the file's source."
        )
    try:
        return sio.load(path, trusted=found)
    except Exception as exc:
        raise TransferkitError(f"cannot read model {path}: {_one_line(exc)}") from None
