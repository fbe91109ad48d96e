"""The built-in inference runtimes: ``keras``, ``openvino`` and ``litert``.

* ``keras``: the backbone's Keras model in a traced ``tf.function`` (XLA off), TensorFlow's own
  forward pass; the reference the others are measured against, and the one for GPUs.
* ``openvino``: the SavedModel converted by ``openvino.convert_model`` and saved as IR without
  fp16 compression, compiled for the CPU with the precision set explicitly
  (``INFERENCE_PRECISION_HINT`` ``f32`` or ``bf16``: OpenVINO's own default on a CPU with bf16
  is bf16, which would change the features silently). bf16 needs native bf16 (``avx512_bf16``
  or ``amx_bf16``); elsewhere it is refused, not emulated slowly.
* ``litert``: the SavedModel converted by ``tf.lite.TFLiteConverter`` (float32, no
  quantisation), run by ``ai_edge_litert``'s interpreter with its XNNPACK delegate.

Both converting runtimes run a batch in **slices** of :data:`SLICE_ROWS` rows on a network
compiled for exactly that many (a last, shorter slice: OpenVINO runs it on a network compiled
for its own rows, once, LiteRT pads it with zeros and drops the padding's outputs): a
slice's activations stay in the CPU's caches, where a whole batch of 32 at 224 px (50 MB for
one of efficientnet-lite0's early tensors) does not. What that gains against whole batches, per
runtime, is in ``bench/RESULTS.md`` (extraction per inference runtime, run 3); Keras gains
nothing from it and runs whole batches. ``TRANSFERKIT_SLICE_ROWS`` overrides the
slice (0: whole batches, as given).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

from transferkit import RuntimeSpec, UsageError, hookimpl
from transferkit.plugin import native_bf16

# rows per call of a converting runtime's network; see the module docstring
SLICE_ROWS = 4
SLICE_ENV = "TRANSFERKIT_SLICE_ROWS"


def slice_rows() -> int:
    """:data:`SLICE_ROWS`, or ``$TRANSFERKIT_SLICE_ROWS`` (0: whole batches)."""
    value = os.environ.get(SLICE_ENV, "").strip()
    if not value:
        return SLICE_ROWS
    try:
        rows = int(value)
    except ValueError:
        raise UsageError(f"{SLICE_ENV} must be a whole number of rows, got {value!r}") from None
    if rows < 0:
        raise UsageError(f"{SLICE_ENV} must be 0 or more, got {rows}")
    return rows


def in_slices(run: Any, rows: int, pad: bool = True) -> Any:
    """``run`` (a fixed batch of ``rows`` images -> their outputs) as a function of any batch:
    the batch in slices of ``rows``, the last one padded with zeros and its padding dropped
    (without ``pad``, ``run`` takes the last, shorter slice as it is)."""
    import numpy as np

    def forward(images: Any) -> Any:
        batch = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        n = len(batch)
        outs = []
        for start in range(0, n, rows):
            part = batch[start : start + rows]
            if len(part) < rows and pad:
                padded = np.zeros((rows, *batch.shape[1:]), np.float32)
                padded[: len(part)] = part
                part = padded
            out = np.asarray(run(part), dtype=np.float32).reshape(len(part), -1)
            outs.append(out[: min(rows, n - start)].copy())
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    return forward


def _missing(module: str, package: str) -> str:
    if importlib.util.find_spec(module) is None:
        return f"the package {package} is not installed (pip install {package})"
    return ""


def _version(*packages: str) -> str:
    parts = []
    for package in packages:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} missing")
    return "; ".join(parts)


# --------------------------------------------------------------------------- keras


def keras_forward(
    model: Any,
    *,
    input_size: tuple[int, int],
    precision: str = "32",
    threads: int | None = None,
    converted: str | None = None,
) -> Any:
    import tensorflow as tf

    h, w = input_size

    @tf.function(
        input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32)],
        jit_compile=False,
        reduce_retracing=True,
    )
    def forward(images: Any) -> Any:
        out = model(images, training=False)
        return tf.reshape(tf.cast(out, tf.float32), (tf.shape(images)[0], -1))

    return lambda images: forward(images).numpy()


def _keras_check(precision: str) -> str:
    return _missing("tensorflow", "tensorflow")


# --------------------------------------------------------------------------- openvino

_OV_PRECISION = {"32": "f32", "bf16": "bf16"}


def openvino_convert(saved_model: str, folder: str, *, precision: str = "32") -> None:
    import openvino as ov

    model = ov.convert_model(saved_model)
    # IR keeps float32 weights: save_model's default fp16 compression would change the features
    ov.save_model(model, os.path.join(folder, "model.xml"), compress_to_fp16=False)


def openvino_forward(
    model: Any,
    *,
    input_size: tuple[int, int],
    precision: str = "32",
    threads: int | None = None,
    converted: str | None = None,
) -> Any:
    import numpy as np
    import openvino as ov

    if converted is None:
        raise ValueError("the openvino runtime needs its converted model")
    core = ov.Core()
    network = core.read_model(os.path.join(converted, "model.xml"))
    h, w = input_size
    rows = slice_rows()
    if rows:  # compiled for one static slice shape (see the module docstring)
        network.reshape([rows, h, w, 3])
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],  # always explicit, see above
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
        # a network on fewer threads than cores runs beside others (a server's lanes): pinned,
        # each copy's threads would take the same first cores
        config["ENABLE_CPU_PINNING"] = False
    # OpenVINO's own cache of compiled kernels, beside the converted model: a second run loads
    # them instead of compiling again
    core.set_property({"CACHE_DIR": os.path.join(converted, "compiled")})
    compiled = core.compile_model(network, "CPU", config)
    requests = {rows: compiled.create_infer_request()}

    def request_for(n: int) -> Any:
        """The infer request of a slice of ``n`` rows: a last, shorter slice gets a network
        compiled for its own rows (once), rather than compute spent on zero padding."""
        if n not in requests:
            shorter = core.read_model(os.path.join(converted, "model.xml"))
            shorter.reshape([n, h, w, 3])
            requests[n] = core.compile_model(shorter, "CPU", config).create_infer_request()
        return requests[n]

    def run(batch: Any) -> Any:
        request = request_for(len(batch)) if rows else requests[rows]
        request.infer({0: batch})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    if rows:
        return in_slices(run, rows, pad=False)
    return lambda images: run(np.ascontiguousarray(np.asarray(images, dtype=np.float32)))


def _openvino_check(precision: str) -> str:
    missing = _missing("openvino", "openvino")
    if missing or precision == "32":
        return missing
    return native_bf16()


# --------------------------------------------------------------------------- litert


def litert_convert(saved_model: str, folder: str, *, precision: str = "32") -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    flatbuffer = converter.convert()
    with open(os.path.join(folder, "model.tflite"), "wb") as fh:
        fh.write(flatbuffer)


def litert_forward(
    model: Any,
    *,
    input_size: tuple[int, int],
    precision: str = "32",
    threads: int | None = None,
    converted: str | None = None,
) -> Any:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    if converted is None:
        raise ValueError("the litert runtime needs its converted model")
    with open(os.path.join(converted, "model.tflite"), "rb") as fh:
        content = fh.read()
    interpreter = Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
    entry = interpreter.get_input_details()[0]["index"]
    exit_ = interpreter.get_output_details()[0]["index"]
    shape: list[tuple[int, ...]] = [()]

    def run(batch: Any) -> Any:
        if batch.shape != shape[0]:  # a new batch size (whole batches: the last, partial one)
            interpreter.resize_tensor_input(entry, list(batch.shape), strict=False)
            interpreter.allocate_tensors()
            shape[0] = batch.shape
        interpreter.set_tensor(entry, batch)
        interpreter.invoke()
        return interpreter.get_tensor(exit_).copy()

    rows = slice_rows()
    if rows:
        return in_slices(run, rows)
    return lambda images: run(np.ascontiguousarray(np.asarray(images, dtype=np.float32)))


def _litert_check(precision: str) -> str:
    return _missing("ai_edge_litert", "ai-edge-litert") or _missing("tensorflow", "tensorflow")


# --------------------------------------------------------------------------- registration


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimeSpec(
            name="keras",
            description="Keras/TensorFlow: the backbone's model in a traced tf.function",
            factory=keras_forward,
            precisions=("32",),
            check=_keras_check,
            version=lambda: _version("tensorflow", "keras"),
            auto_order=100,
        )
    )
    register(
        RuntimeSpec(
            name="openvino",
            description="OpenVINO on the CPU (SavedModel converted to IR; f32 or native bf16)",
            factory=openvino_forward,
            precisions=("32", "bf16"),
            check=_openvino_check,
            convert=openvino_convert,
            version=lambda: _version("openvino"),
            auto_order=10,
            convert_per_precision=False,  # the IR is float32; the precision is a compile hint
        )
    )
    register(
        RuntimeSpec(
            name="litert",
            description="LiteRT (TFLite) with XNNPACK (SavedModel converted to a flatbuffer)",
            factory=litert_forward,
            precisions=("32",),
            check=_litert_check,
            convert=litert_convert,
            version=lambda: _version("tensorflow", "ai-edge-litert"),
            auto_order=20,
        )
    )
