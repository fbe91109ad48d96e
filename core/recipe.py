"""How a feature vector was made, in one frozen value: :class:`FeatureRecipe`.

A recipe is the backbone, its weights, the input size, the pooling and the precision of the
forward pass, plus the inference runtime that ran it. It is parsed once at the edge (the command
line, a config file, a Python call), carried through the jobs, written into every feature store
and saved model, and compared on resume, in the feature cache and in ``predict``.

* ``NAME[@SIZE][:POOLING]`` (``efficientnet-lite0@128x96:max``) is :meth:`FeatureRecipe.parse`;
  the input size is :func:`transferkit.sizes.parse_input_size`, the only parser of sizes.
* Weights are ``"default"`` (the backbone's own pretrained weights), ``None`` (random
  initialisation) or a path: :func:`normalise_weights` is the one place that reads ``"none"``,
  ``"imagenet"`` or ``"~/w.h5"``.
* Identity: two recipes are equal when their features are the same. The runtime is recorded but
  not compared: every runtime's 32-bit features match Keras's to 1e-4, so a store made by
  ``openvino`` resumes with ``keras``. The precision is compared: bf16 features are a different
  recipe (another cache entry, a refused resume, a refused ``predict``).

No TensorFlow, no NumPy: this module is on the bottom floor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError, WeightsUnavailableError
from .sizes import parse_input_size
from .specs import FEATURE_PRECISIONS, POOLINGS

DEFAULT_WEIGHTS = "default"
_DEFAULT_NAMES = ("default", "imagenet")
_RANDOM_NAMES = ("none", "random")
_PRECISION_ALIASES = {
    "32": "32",
    "fp32": "32",
    "f32": "32",
    "float32": "32",
    "bf16": "bf16",
    "bfloat16": "bf16",
}

# metadata keys a store must match to be resumed: the recipe (weights through what the backbone
# said it loaded, ``weights_source``; the runtime is recorded, never compared)
RESUME_KEYS = ("backbone", "weights_source", "input_size", "pooling", "precision")


def normalise_weights(value: Any, *, check: bool = True) -> str | None:
    """``"default"``/``"imagenet"`` -> ``"default"``; ``None``/``"none"``/``"random"`` -> None;
    anything else is a path (``~`` expanded), which must exist when ``check``."""
    if value is None:
        return None
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if text.strip().lower() in _RANDOM_NAMES:
        return None
    if text.strip().lower() in _DEFAULT_NAMES or not text.strip():
        return DEFAULT_WEIGHTS
    path = os.path.expanduser(text)
    if check and not os.path.exists(path):
        raise WeightsUnavailableError(
            f"weights file {text!r} does not exist; give an existing file, or "
            f"--weights none for random initialisation"
        )
    return path


def weights_text(weights: str | None) -> str:
    """Weights as written in metadata and labels: ``default``, ``none`` or the path."""
    return "none" if weights is None else weights


def parse_precision(value: Any) -> str:
    """``32``, ``"fp32"``, ``"float32"`` -> ``"32"``; ``"bf16"``/``"bfloat16"`` -> ``"bf16"``;
    None or ``""`` -> ``"32"``."""
    if value is None or value == "":
        return "32"
    found = _PRECISION_ALIASES.get(str(value).strip().lower())
    if found is None:
        raise UsageError(f"unknown precision {value!r}; allowed: {', '.join(FEATURE_PRECISIONS)}")
    return found


def parse_pooling(value: Any) -> str:
    pooling = str(value or "avg").strip().lower()
    if pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {value!r}; allowed: {', '.join(POOLINGS)}")
    return pooling


def size_text(size: tuple[int, int] | None) -> str:
    """``(96, 96)`` -> ``"96"``, ``(96, 64)`` -> ``"96x64"``, None -> ``""``."""
    if not size:
        return ""
    return f"{size[0]}" if size[0] == size[1] else f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class FeatureRecipe:
    """How a feature vector was made; see the module docstring.

    ``input_size`` is ``(height, width)`` or None (the backbone's own size, unknown until it is
    built); ``fingerprint`` identifies a network passed in as an object rather than a name (a hash
    of its architecture and weights). ``runtime`` is recorded only (not compared).
    """

    backbone: str
    weights: str | None = DEFAULT_WEIGHTS
    input_size: tuple[int, int] | None = None
    pooling: str = "avg"
    precision: str = "32"
    runtime: str = field(default="", compare=False)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "backbone", str(self.backbone or ""))
        set_(self, "weights", normalise_weights(self.weights, check=False))
        set_(self, "input_size", parse_input_size(self.input_size, minimum=1))
        set_(self, "pooling", parse_pooling(self.pooling))
        set_(self, "precision", parse_precision(self.precision))
        set_(self, "runtime", str(self.runtime or ""))

    # ------------------------------------------------------------------ parsing

    @classmethod
    def create(
        cls,
        backbone: str,
        *,
        weights: Any = DEFAULT_WEIGHTS,
        input_size: Any = None,
        pooling: Any = "avg",
        precision: Any = "32",
        runtime: str = "",
        fingerprint: str = "",
    ) -> FeatureRecipe:
        """A recipe from a caller's values, each checked (a weights file must exist, the input
        size must be ``N`` or ``HxW`` within the limits)."""
        return cls(
            backbone=backbone,
            weights=normalise_weights(weights),
            input_size=parse_input_size(input_size),
            pooling=parse_pooling(pooling),
            precision=parse_precision(precision),
            runtime=runtime,
            fingerprint=fingerprint,
        )

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        input_size: Any = None,
        pooling: Any = "avg",
        weights: Any = DEFAULT_WEIGHTS,
        precision: Any = "32",
        runtime: str = "",
    ) -> FeatureRecipe:
        """``NAME[@SIZE][:POOLING]`` (``efficientnet-lite0@128:max``, ``resnet50@224x160``); the
        keyword values fill in what the text leaves out. A name that holds ``:`` itself
        (``tfhub:/models/x``) keeps it: only a known pooling after the last ``:`` is one."""
        name = str(text).strip()
        head, sep, tail = name.rpartition(":")
        if sep and tail.strip().lower() in POOLINGS:
            name, pooling = head.strip(), tail.strip().lower()
        head, sep, size = name.rpartition("@")
        if sep and "/" not in size:
            name = head.strip()
            try:
                input_size = parse_input_size(size.strip() or "?")
            except UsageError as exc:
                raise UsageError(f"{exc} (in {text!r}; write NAME@160 or NAME@160x128)") from None
        if not name:
            raise UsageError(f"empty backbone name in {text!r}; write NAME[@SIZE][:POOLING]")
        return cls.create(
            name,
            weights=weights,
            input_size=input_size,
            pooling=pooling,
            precision=precision,
            runtime=runtime,
        )

    def replace(self, **changes: Any) -> FeatureRecipe:
        """A copy with ``changes`` (checked like :meth:`create`'s values)."""
        if "weights" in changes:
            changes["weights"] = normalise_weights(changes["weights"])
        if "input_size" in changes:
            changes["input_size"] = parse_input_size(changes["input_size"])
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ views

    @property
    def text(self) -> str:
        """``NAME[@SIZE]:POOLING`` (the size only when known)."""
        size = size_text(self.input_size)
        return f"{self.backbone}{'@' + size if size else ''}:{self.pooling}"

    def label(self, default_size: Any = None, default_pooling: str = "avg") -> str:
        """A short name for reports: the backbone, plus ``@SIZE`` and ``:POOLING`` where they
        differ from the defaults (``efficientnet-lite0@128:max``), plus ``+bf16``."""
        label = self.backbone
        default = parse_input_size(default_size, minimum=1)
        if self.input_size and self.input_size != default:
            label += f"@{size_text(self.input_size)}"
        if self.pooling != default_pooling:
            label += f":{self.pooling}"
        if self.precision != "32":
            label += f"+{self.precision}"
        return label

    def cache_key(self, images_digest: str) -> str:
        """The key of this recipe's features of an image list (``images_digest``) in the feature
        cache; 32-bit keys ignore the runtime (any runtime's 32-bit features match)."""
        key: dict[str, Any] = {
            "backbone": self.backbone,
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
            "weights": weights_text(self.weights),
            "input_size": list(self.input_size) if self.input_size else None,
            "pooling": self.pooling,
            "images": images_digest,
        }
        if self.precision != "32":
            key["precision"] = self.precision
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def same_network(self, other: FeatureRecipe) -> bool:
        """Whether ``other`` runs the same network over the same images (all but the pooling
        equal): one forward pass can then serve both."""
        return dataclasses.replace(other, pooling=self.pooling) == self

    # ------------------------------------------------------------------ metadata

    def to_metadata(self) -> dict[str, Any]:
        """The recipe's keys of a store's (or a model's) metadata."""
        meta: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": weights_text(self.weights),
            "input_size": list(self.input_size) if self.input_size else None,
            "pooling": self.pooling,
            "precision": self.precision,
            "runtime": self.runtime,
        }
        if self.fingerprint:
            meta["fingerprint"] = self.fingerprint
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None) -> FeatureRecipe:
        """The recipe a store's metadata records, tolerant of what older versions wrote (weights
        ``"None"``, the input size as JSON text, no precision or runtime: 32-bit on Keras)."""
        meta = dict(meta or {})
        size = meta.get("input_size")
        if isinstance(size, str):
            try:
                size = json.loads(size)
            except ValueError:
                size = None
        try:
            parsed = parse_input_size(list(size) if size else None, minimum=1)
        except (UsageError, TypeError):
            parsed = None
        weights = meta.get("weights", DEFAULT_WEIGHTS)
        pooling = str(meta.get("pooling") or "avg").lower()
        return cls(
            backbone=str(meta.get("backbone") or ""),
            weights=None if weights in (None, "None", "none") else str(weights),
            input_size=parsed,
            pooling=pooling if pooling in POOLINGS else "avg",
            precision=str(meta.get("precision") or "32"),
            runtime=str(meta.get("runtime") or "keras"),
            fingerprint=str(meta.get("fingerprint") or ""),
        )
