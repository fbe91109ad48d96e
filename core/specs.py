"""The small typed records a plugin registers, and the objects their factories return.

This module is the bottom floor of transferkit: it imports nothing heavy (no TensorFlow, no
NumPy at module level), so listing plugins and reading ``--help`` stay fast.

A plugin registers a spec through a ``register`` callback handed to its registration hook::

    @hookimpl
    def register_backbones(register):
        register(BackboneSpec(name="tiny-cnn", description="...", factory=build_tiny, ...))

The host fills in :attr:`plugin` (the name of the plugin that registered the spec) and refuses a
second spec with the same name, naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# the poolings of a feature map (N, h, w, C); a token sequence (N, T, C) offers these over its
# patch grid too, and the token poolings: ``cls`` (the class token), ``mean`` (the mean of the
# patch tokens, class and register tokens left out) and ``cls+mean`` (both side by side)
MAP_POOLINGS = ("avg", "max", "flatten")
TOKEN_POOLINGS = ("cls", "mean", "cls+mean")
POOLINGS = MAP_POOLINGS + TOKEN_POOLINGS
# what a backbone's model gives when the host has not pooled it: the feature map itself
NO_POOLING = "none"
# Two vocabularies under two flags named --precision (docs/finetune.md sets them side by side):
# - the features' forward pass (`extract`, `spotcheck`, `predict`): "32" (float32, the features'
#   reference) or "bf16" (bfloat16 arithmetic where the CPU has it natively; another recipe);
# - training (`finetune`, `Trainer(precision=)`): Lightning's names, each with its Keras dtype
#   policy (whose names are accepted too).
FEATURE_PRECISIONS = ("32", "bf16")
TRAINING_PRECISIONS = {"32": "float32", "16-mixed": "mixed_float16", "bf16-mixed": "mixed_bfloat16"}


@dataclass(frozen=True)
class Spec:
    """Fields every registered item has."""

    name: str
    description: str
    factory: Callable[..., Any]
    plugin: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    kind = "item"

    def validate(self) -> None:
        """Raise ``ValueError`` naming what is wrong with this spec."""
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {self.name!r}")
        if any(c.isspace() for c in self.name):
            raise ValueError(f"{self.kind} name {self.name!r} must not contain spaces")
        if not callable(self.factory):
            raise ValueError(f"{self.kind} {self.name!r}: factory must be callable")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (the factory is shown by its qualified name)."""
        data = {k: v for k, v in asdict(self).items() if k != "factory"}
        data["factory"] = _qualname(self.factory)
        data["kind"] = self.kind
        return _jsonable(data)


def pooling_widths(feature_map: Sequence[int], tokens: TokenLayout | None = None) -> dict[str, int]:
    """The feature width of each pooling of a feature map of shape ``(h, w, channels)``: the
    channels for ``avg`` and ``max``, ``h * w * channels`` for ``flatten``. With ``tokens``,
    ``feature_map`` is the patch grid of a token sequence, which offers the token poolings
    too (``cls`` where it has a class token)."""
    height, width, channels = (int(d) for d in feature_map)
    widths = {"avg": channels, "max": channels, "flatten": height * width * channels}
    if tokens is not None:
        widths["mean"] = channels
        if tokens.class_token:
            widths.update({"cls": channels, "cls+mean": 2 * channels})
    return widths


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's token sequence ``(N, prefix + h * w, C)`` is laid out: ``prefix``
    tokens first (the class token, when ``class_token``, then any register tokens), then the
    patch tokens of a ``grid`` of ``(h, w)`` patches in row-major order."""

    prefix: int
    grid: tuple[int, int]
    class_token: bool = True

    def __post_init__(self) -> None:
        if self.prefix < int(self.class_token) or len(self.grid) != 2 or min(self.grid) <= 0:
            raise ValueError(f"a token layout needs prefix >= class token and a grid, got {self}")

    @property
    def length(self) -> int:
        """Tokens in one image's sequence."""
        return self.prefix + self.grid[0] * self.grid[1]

    def describe(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "grid": list(self.grid), "class_token": self.class_token}


# the resize methods a backbone may ask for: transferkit's ``auto`` or a ``tf.image.resize`` one
RESIZE_METHODS = ("auto", "bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5")


@dataclass(frozen=True)
class Resize:
    """How the input pipeline brings a decoded image to a backbone's input size.

    The default is transferkit's own: the whole image, ``"auto"`` (bilinear, area averaging
    when shrinking more than 2x), large JPEGs decoded at 1/2, 1/4 or 1/8 scale first. A backbone
    that names another ``method`` (a ``tf.image.resize`` method, with ``antialias``) gets the
    full-size decode, and with ``crop_to_aspect_ratio`` the centre of the image at the input's
    aspect ratio is cut first (as Keras' ``Resizing`` layer does): what a keras-hub preset's
    image converter does."""

    method: str = "auto"
    crop_to_aspect_ratio: bool = False
    antialias: bool = False

    def __post_init__(self) -> None:
        if self.method not in RESIZE_METHODS:
            raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {self.method!r}")
        if self.method == "auto" and (self.crop_to_aspect_ratio or self.antialias):
            raise ValueError("the 'auto' resize takes no crop and no antialias; name a method")

    @property
    def is_default(self) -> bool:
        return self == Resize()

    @property
    def scaled_jpeg(self) -> bool:
        """Whether large JPEGs may be decoded at a reduced scale (only for ``auto``)."""
        return self.method == "auto"

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
            "antialias": self.antialias,
        }

    @classmethod
    def from_description(cls, value: Any) -> Resize:
        """The inverse of :meth:`describe` (None or a method name: that method alone)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(value)
        return cls(
            str(value.get("method", "auto")),
            bool(value.get("crop_to_aspect_ratio", False)),
            bool(value.get("antialias", False)),
        )


@dataclass(frozen=True)
class BackboneSpec(Spec):
    """A pretrained network that turns images into feature maps.

    ``factory(weights="default", input_size=None)`` returns a :class:`Backbone`: the network up
    to its last feature map, with its preprocessing. ``weights`` is ``"default"`` (the spec's
    own pretrained weights), ``None`` (random initialisation) or a path to a local weights file
    (see :func:`transferkit.recipe.normalise_weights`); ``input_size`` is ``(height, width)`` or
    None (the spec's own). The host pools the map (``avg``, ``max``, ``flatten``, or not at all
    for fine-tuning); a factory never sees the pooling.

    ``feature_map`` is the map's ``(h, w, channels)`` at the default input size, known without
    building the network; ``feature_dims`` (the width of each pooling, for listings) is derived
    from it. A backbone whose network already returns pooled vectors gives ``feature_dims`` with
    its one pooling instead (e.g. ``{"avg": 1280}``).
    """

    input_size: tuple[int, int] = (224, 224)
    preprocessing: str = ""
    feature_dims: Mapping[str, int] = field(default_factory=dict)
    weights: str = ""
    feature_map: tuple[int, int, int] | None = None
    kind = "backbone"

    def __post_init__(self) -> None:
        if self.feature_map is not None and not self.feature_dims:
            object.__setattr__(self, "feature_dims", pooling_widths(self.feature_map))

    def validate(self) -> None:
        super().validate()
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ValueError(f"backbone {self.name!r}: input_size must be (height, width)")
        if self.feature_map is not None and (
            len(self.feature_map) != 3 or min(self.feature_map) <= 0
        ):
            raise ValueError(f"backbone {self.name!r}: feature_map must be (h, w, channels)")
        unknown = set(self.feature_dims) - set(POOLINGS)
        if unknown:
            raise ValueError(
                f"backbone {self.name!r}: unknown pooling {sorted(unknown)}; allowed: {POOLINGS}"
            )


@dataclass(frozen=True)
class StoreSpec(Spec):
    """A feature store format. ``factory`` is the store class (a ``FeatureStore`` subclass), or
    a function returning it (to define it lazily)."""

    suffixes: tuple[str, ...] = ()
    kind = "store"

    def validate(self) -> None:
        super().validate()
        if not self.suffixes or not all(s.startswith(".") for s in self.suffixes):
            raise ValueError(f"store {self.name!r}: suffixes must be like ('.h5',)")


@dataclass(frozen=True)
class ClassifierSpec(Spec):
    """A classifier on feature vectors. ``factory(**params)`` returns an unfitted estimator.

    ``incremental`` says that the estimator learns batch by batch (``partial_fit`` or river's
    ``learn_many``/``learn_one``); ``groups`` names the spot-check groups it belongs to.
    """

    incremental: bool = False
    library: str = "scikit-learn"
    groups: tuple[str, ...] = ()
    kind = "classifier"


@dataclass(frozen=True)
class StrategySpec(Spec):
    """A fine-tune strategy. ``factory(**options)`` returns a ``FinetuneStrategy``."""

    kind = "strategy"


@dataclass(frozen=True)
class DatasetSpec(Spec):
    """An image source or a task transform over one.

    For a source (``transform=False``) ``factory(location, **options)`` returns an image source;
    for a transform (``transform=True``, e.g. the rotation task) ``factory(source, **options)``
    wraps another source.
    """

    transform: bool = False
    kind = "dataset"


@dataclass(frozen=True)
class HeadSpec(Spec):
    """A classification head for fine-tuning. ``factory(num_classes, **options)`` returns a Keras
    layer or model mapping backbone outputs to class probabilities."""

    kind = "head"


@dataclass(frozen=True)
class LoggerSpec(Spec):
    """A logger of fine-tune runs. ``factory(out, location)`` returns a Trainer callback (a
    ``transferkit.plugin.Logger`` to receive the run's configuration and recipe) or a Keras
    callback: ``out`` is the run folder, ``location`` what ``--logger-dir`` says (a folder or a
    tracking URI; None: the logger's default inside ``out``)."""

    kind = "logger"


@dataclass(frozen=True)
class RuntimeSpec(Spec):
    """An inference runtime: what runs a backbone's feature model (with its pooling).

    ``factory(model, *, input_size, precision, threads, converted)`` returns a callable from a
    float32 batch ``(N, H, W, 3)`` of preprocessed images, any ``N`` >= 1, to a float32 array
    ``(N, D)`` of feature rows. ``model`` is the Keras feature model; ``converted`` is the folder
    that ``convert`` filled (None for a runtime without ``convert``), ``threads`` the number of
    threads it may use (None: its own default).

    ``convert(saved_model, folder, *, precision)``, when given, turns the TensorFlow SavedModel
    that ``keras.Model.export(..., format="tf_saved_model")`` wrote into the runtime's own form,
    written into ``folder``; the host caches that folder (see ``docs/runtimes.md``).
    ``check(precision)`` says why the runtime cannot run here at that precision (package
    missing, no native bf16 on this CPU, no GPU), or returns ``""`` when it can; it must not
    import heavy packages. ``version()`` names the version of what converts and runs (part of
    the conversion cache key). ``convert_per_precision=False`` says that one conversion serves
    every precision (the precision is then chosen when ``factory`` compiles it).
    ``auto_order``: the runtime's place in the order ``auto`` tries
    (lowest first; None: never chosen by ``auto``); only runtimes whose 32-bit features match
    Keras to 1e-4 relative error should have one.
    """

    precisions: tuple[str, ...] = ("32",)
    check: Callable[[str], str] | None = None
    convert: Callable[..., None] | None = None
    version: Callable[[], str] | None = None
    auto_order: int | None = None
    convert_per_precision: bool = True
    kind = "runtime"

    def validate(self) -> None:
        super().validate()
        unknown = set(self.precisions) - set(FEATURE_PRECISIONS)
        if not self.precisions or unknown:
            raise ValueError(
                f"runtime {self.name!r}: precisions must be a non-empty subset of "
                f"{FEATURE_PRECISIONS}"
            )
        for name in ("check", "convert", "version"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"runtime {self.name!r}: {name} must be callable")

    def unavailable(self, precision: str = "32") -> str:
        """Why this runtime cannot run here at ``precision`` ("" when it can)."""
        if precision not in self.precisions:
            return f"offers {'/'.join(self.precisions)}-bit only, not {precision}"
        if self.check is None:
            return ""
        try:
            return str(self.check(precision) or "")
        except Exception as exc:  # a broken check says so instead of breaking the listing
            return f"availability check failed: {type(exc).__name__}: {exc}"

    def describe(self) -> dict[str, Any]:
        data = super().describe()
        reason = self.unavailable("32")
        data["available"] = not reason
        data["reason"] = reason
        data["precisions"] = list(self.precisions)
        data["bf16"] = (
            "" if "bf16" not in self.precisions else (self.unavailable("bf16") or "available")
        )
        data["auto_order"] = self.auto_order  # None: auto never picks it
        return data


@dataclass
class Backbone:
    """What a backbone factory returns: the network up to its last feature map, and the
    preprocessing it expects.

    ``model`` maps a batch of *preprocessed* images ``(N, H, W, 3)`` to a feature map
    ``(N, h, w, C)``. The host pools it (:func:`transferkit.pooling.pool`): a pooled backbone is
    again a ``Backbone``, whose ``pooling`` says how its ``model``'s output was pooled. A network
    that can only return pooled vectors ``(N, D)`` (a TF Hub feature-vector model) sets
    ``pooling`` to the pooling they already had: that is then the only one it offers.
    ``preprocess`` maps a float32 RGB batch with values in 0..255 to the model's input; it must
    be a TensorFlow-traceable function so that the input pipeline can run it in parallel.

    A transformer's ``model`` gives a token sequence ``(N, T, C)`` instead; ``tokens`` (a
    :class:`TokenLayout`) then says how many prefix tokens (class, registers) come before the
    patch grid, and the host pools the tokens (``cls``, ``mean``, ``cls+mean``) or the patch
    grid (``avg``, ``max``, ``flatten``).
    """

    name: str
    model: Any
    preprocess: Callable[[Any], Any]
    input_size: tuple[int, int]
    weights_source: str
    preprocessing: str = ""
    pooling: str = NO_POOLING
    extra: dict[str, Any] = field(default_factory=dict)
    tokens: TokenLayout | None = None
    resize: Resize = field(default_factory=Resize)

    @property
    def param_count(self) -> int:
        return int(self.model.count_params())

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one image's output of ``model`` (``(h, w, C)`` for a feature map)."""
        return tuple(int(d) for d in self.model.outputs[0].shape[1:])

    @property
    def feature_dim(self) -> int:
        """The width of one image's output of ``model``, as a row of features."""
        width = 1
        for dim in self.output_shape:
            width *= dim
        return width

    @property
    def poolings(self) -> tuple[str, ...]:
        """The poolings this backbone offers: those of a feature map or of a token sequence,
        else its own."""
        if self.pooling != NO_POOLING:
            return (self.pooling,)
        if self.tokens is None:
            return MAP_POOLINGS
        return tuple(p for p in POOLINGS if self.tokens.class_token or "cls" not in p)

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature width for each pooling this backbone offers, at its input size."""
        if self.pooling != NO_POOLING:
            return {self.pooling: self.feature_dim}
        shape = self.output_shape
        if self.tokens is not None:
            if len(shape) != 2 or shape[0] != self.tokens.length:
                raise ValueError(
                    f"backbone {self.name}: its model gives outputs of shape (N, "
                    f"{', '.join(map(str, shape))}), not the {self.tokens.length} tokens of its "
                    f"layout ({self.tokens.prefix} + {self.tokens.grid[0]}x{self.tokens.grid[1]})"
                )
            return pooling_widths((*self.tokens.grid, shape[1]), self.tokens)
        if len(shape) != 3:
            raise ValueError(
                f"backbone {self.name}: its model gives outputs of shape (N, "
                f"{', '.join(map(str, shape))}), not a feature map (N, h, w, C); a backbone "
                f"that returns feature vectors sets Backbone.pooling to the pooling they had"
            )
        return pooling_widths(shape)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "pooling": self.pooling,
            "feature_dim": self.feature_dim,
            "feature_dims": self.feature_dims,
            "param_count": self.param_count,
            "weights_source": self.weights_source,
            "preprocessing": self.preprocessing,
            **({"tokens": self.tokens.describe()} if self.tokens is not None else {}),
            **({"resize": self.resize.describe()} if not self.resize.is_default else {}),
        }


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}.{name}" if module else name


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if callable(value):
        return _qualname(value)
    return str(value)
