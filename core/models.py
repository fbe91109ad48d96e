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
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import TransferkitError, UsageError

FORMAT = "transferkit-model"
FORMAT_VERSION = 1

# Modules whose types skops may rebuild from a file without ``trust``: the libraries our
# estimators are made of. skops rebuilds them from their ``__dict__`` state, calling no function
# that the file names, so accepting them does not let a file run code.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
# transferkit's own estimators, whose state is NumPy arrays and numbers only (rebuilt the same way).
TRUSTED_TYPES = ("transferkit.plugins._softmax.SoftmaxRegression",)


@dataclass
class FeatureRecipe:
    """How the features a model was trained on were made, taken from the store's metadata."""

    backbone: str | None = None
    weights: str | None = "default"
    input_size: list[int] | None = None
    pooling: str = "avg"
    label_names: list[str] = field(default_factory=list)
    feature_dim: int | None = None
    store_metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_store(cls, reader: Any) -> FeatureRecipe:
        meta = dict(reader.metadata or {})
        size = meta.get("input_size")
        if isinstance(size, str):
            try:
                size = json.loads(size)
            except ValueError:
                size = None
        weights = meta.get("weights", "default")
        return cls(
            backbone=meta.get("backbone"),
            weights=None if weights in (None, "none", "None") else str(weights),
            input_size=[int(v) for v in size] if size else None,
            pooling=str(meta.get("pooling") or "avg"),
            label_names=[str(n) for n in reader.label_names],
            feature_dim=int(reader.feature_dim),
            store_metadata={k: _plain(v) for k, v in meta.items()},
        )


@dataclass
class SavedModel:
    """A fitted estimator (scikit-learn or river) and its :class:`FeatureRecipe`."""

    estimator: Any
    recipe: FeatureRecipe
    classifier: str
    library: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label_names(self) -> list[str]:
        return self.recipe.label_names

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "classifier": self.classifier,
            "library": self.library,
            "recipe": asdict(self.recipe),
            "info": _plain(self.info),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(model.header())
    tmp = path.with_name(path.name + ".tmp")
    if model.library == "river":
        with open(tmp, "wb") as fh:
            pickle.dump({"header": header, "estimator": model.estimator}, fh)
    else:
        import skops.io as sio

        sio.dump({"header": header, "estimator": model.estimator}, tmp)
    tmp.replace(path)  # a crash never leaves half a model under the real name
    return path


def untrusted_types(path: str | Path) -> list[str]:
    """The types in a skops file that skops does not trust by default."""
    import skops.io as sio

    return list(sio.get_untrusted_types(file=path))


def load_model(path: str | Path, *, trust: bool = False) -> SavedModel:
    """Read a model written by :func:`save_model`.

    A skops file loads when every type it holds is skops-trusted or from scikit-learn/NumPy/SciPy;
    a pickle (river) or a skops file with other types loads only with ``trust=True``.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"model file {path} does not exist; save one with `transferkit train --out`"
        )
    if zipfile.is_zipfile(path):
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
            raise TransferkitError(f"cannot read model {path}: {exc}") from exc
    if not isinstance(data, dict) or "header" not in data:
        raise TransferkitError(f"{path} is not a transferkit model (no header)")
    header = json.loads(data["header"])
    if header.get("format") != FORMAT:
        raise TransferkitError(f"{path} is not a transferkit model (format {header.get('format')})")
    return SavedModel(
        estimator=data["estimator"],
        recipe=FeatureRecipe(**header["recipe"]),
        classifier=header["classifier"],
        library=header["library"],
        info=header.get("info", {}),
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
        raise TransferkitError(f"cannot read model {path}: {exc}") from exc
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
        raise TransferkitError(f"cannot read model {path}: {exc}") from exc
