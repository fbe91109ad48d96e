"""The options of ``export`` and ``serve``."""

from __future__ import annotations

from dataclasses import dataclass

from .. import trustvalues as tv
from ..errors import UsageError
from .fields import (
    Options,
    check_positive,
    option,
    runtime_option,
)

# ------------------------------------------------------------------ export and serve

EXPORT_FORMATS = ("keras", "saved_model", "onnx", "openvino", "litert")


@dataclass(frozen=True)
class ExportOptions(Options):
    """``transferkit export`` / :func:`transferkit.export` (the model is its argument)."""

    format: str = option(
        "keras",
        "What to write: keras (.keras file), saved_model (folder), onnx (.onnx file), openvino "
        "(folder with model.xml), litert (folder with model.tflite).",
        choices=EXPORT_FORMATS,
    )
    out: str | None = option(None, "Where to write the export.", short="-o", kind="path")
    overwrite: bool = option(False, "Replace an export already at --out.")
    trust: bool = option(
        False, "Load a .skops model holding types other than scikit-learn's and NumPy's."
    )

    def __post_init__(self) -> None:
        fmt = str(self.format).strip().lower().replace("-", "_")
        if fmt == "tf_saved_model":
            fmt = "saved_model"
        if fmt not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {self.format!r}; allowed: {EXPORT_FORMATS}")
        self._set("format", fmt)


@dataclass(frozen=True)
class ServeOptions(Options):
    """``transferkit serve`` / :func:`transferkit.serve` (the model is its argument)."""

    host: str = option("127.0.0.1", "Address to bind (0.0.0.0: every interface).")
    port: int = option(8000, "Port to bind (0: a free one, printed at start).")
    runtime: str = runtime_option()
    max_batch: int = option(32, "Images per forward pass at most (micro-batching).")
    max_wait_ms: float = option(
        5.0,
        "A batch closes when no image joined it for this long and none is being decoded (at "
        "most 10x this after its first image), or when it is full.",
    )
    top: int = option(5, "Classes in each answer's top list.")
    max_body: int = option(20_000_000, "Largest request body in bytes (larger: 413).")
    max_pixels: int = option(40_000_000, "Largest image in pixels, width x height (larger: 413).")
    max_images: int = option(64, "Images in one multipart request at most.")
    read_timeout: float = option(
        10.0, "Seconds a client may take to send its request body (slower: 408)."
    )
    trust: bool = option(
        False,
        "Allow loading a pickled model (river), which can run code: only for your own files.",
    )

    coverage: float | None = option(None, tv.COVERAGE_HELP)

    def __post_init__(self) -> None:
        tv.check_coverage(self.coverage)
        for name in ("max_batch", "max_body", "max_pixels", "max_images", "top"):
            check_positive(getattr(self, name), f"--{name.replace('_', '-')}")
        check_positive(self.read_timeout, "--read-timeout")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0..65535, got {self.port}")
