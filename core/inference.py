"""The one place where a backbone's feature model becomes the forward function a job runs.

:func:`build_forward` takes a built :class:`~transferkit.specs.Backbone` (its ``model`` already
pooled) and a runtime name (``keras``, ``openvino``, ``litert``, a plugin's, or ``auto``) and
returns a :class:`Forward`: a callable from a batch of preprocessed images to float32 feature
rows, which records the runtime and precision that made them.

Runtimes with a ``convert`` step get the backbone as the SavedModel ``keras.Model.export(...,
format="tf_saved_model")`` writes, and their converted model is cached under
``<cache root>/runtimes/<runtime>-<key>`` (the key: backbone, input size, pooling, a digest of
the weights, the runtime and its version, the precision, TensorFlow's version), written into a
temporary folder and renamed into place, so that a second run converts nothing. A conversion
that fails leaves a ``.failed`` note beside it, so that ``auto`` does not retry it every run.

``auto`` (see ``docs/runtimes.md``):

1. on a machine where TensorFlow sees a GPU, ``keras`` (TensorFlow's GPU path is the right one);
2. otherwise, among the available runtimes that offer the precision, by ``auto_order``
   (built-ins: ``openvino``, then ``litert``): the first whose conversion is cached already;
   else the first one, when Keras would take longer than :data:`AUTO_CONVERT_SECONDS` over the
   images to compute (measured on one warm-up batch), so that a small extraction never pays a
   conversion that costs more than it saves;
3. otherwise ``keras``. A runtime that cannot convert the backbone is skipped with a logged
   warning (one line on the command line's stderr), and ``keras`` runs.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .errors import TransferkitError, UsageError
from .recipe import parse_precision
from .specs import RuntimeSpec

AUTO = "auto"
DEFAULT_RUNTIME = AUTO
DEFAULT_PRECISION = "32"
CACHE_ENV = "TRANSFERKIT_CACHE"
# ``auto`` converts only when Keras would take longer than this over the images to compute.
AUTO_CONVERT_SECONDS = 20.0

log = logging.getLogger(__name__)


class ConversionError(TransferkitError):
    """A runtime could not convert a backbone (an op it lacks, most often)."""


def cache_root() -> Path:
    """``$TRANSFERKIT_CACHE``, else ``$XDG_CACHE_HOME/transferkit`` (``~/.cache/transferkit``)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "transferkit"
    )
    return Path(root)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16() -> str:
    """Why this CPU cannot do bfloat16 arithmetic natively ("" when it can: ``avx512_bf16`` or
    ``amx_bf16``)."""
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return ""
    if not flags:
        return "cannot read the CPU's flags (/proc/cpuinfo) to check for native bf16"
    return "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16)"


def gpu_present() -> bool:
    """Whether TensorFlow sees a GPU (False without importing TensorFlow when it is not loaded)."""
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def weights_digest(model: Any) -> str:
    """A SHA-256 of the model's weights (shapes and values), in their order."""
    import numpy as np

    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.ascontiguousarray(np.asarray(variable))
        # shapes and values only: Keras numbers layer names per process (conv2d_3/kernel)
        digest.update(f"{value.shape}:".encode())
        digest.update(value.dtype.str.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclass
class Forward:
    """A batch of preprocessed images ``(N, H, W, 3)`` -> float32 feature rows ``(N, D)``."""

    fn: Callable[[Any], Any]
    runtime: str
    precision: str
    note: str = ""
    conversion: str = ""  # "", "cached" (found in the cache) or "converted" (made now)
    threads: int | None = None
    seconds_estimate: float = 0.0  # auto's estimate of Keras's time over the job's images

    def __call__(self, images: Any) -> Any:
        import numpy as np

        out = np.asarray(self.fn(images), dtype=np.float32)
        return out.reshape(len(out), -1)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "runtime_note": self.note,
            "conversion": self.conversion,
            "runtime_threads": self.threads,
        }


def thread_split(cores: int, decode_ms: float, forward_ms: float | None) -> int:
    """Threads for the runtime so that the network and decoding share ``cores`` by their cost.

    ``decode_ms`` and ``forward_ms`` are core-milliseconds per image of the input pipeline and
    of the network. The network gets the cores its share of the work calls for, rounded, at
    least one; the input pipeline's parallel map keeps one call per core, so that it can use
    whatever the network leaves idle. On 2 cores a network that costs at least three times what
    decoding costs gets both, a cheaper one gets one (the costs measured per runtime are in
    ``bench/RESULTS.md``).
    """
    if cores <= 1 or not forward_ms or forward_ms <= 0 or decode_ms <= 0:
        return max(1, cores)
    share = forward_ms / (forward_ms + decode_ms)
    return max(1, min(cores, round(cores * share)))


def runtime_version(spec: RuntimeSpec) -> str:
    if spec.version is None:
        return ""
    try:
        return str(spec.version())
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def conversion_key(net: Any, spec: RuntimeSpec, precision: str, backbone: str) -> str:
    import tensorflow as tf

    key = {
        "backbone": backbone,
        "input_size": list(net.input_size),
        "pooling": net.pooling,
        "weights": weights_digest(net.model),
        "runtime": spec.name,
        "runtime_version": runtime_version(spec),
        "precision": precision if spec.convert_per_precision else "any",
        "tensorflow": tf.__version__,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _folder_name(spec: RuntimeSpec, backbone: str, key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone)[:60]
    return f"{spec.name}-{safe}-{key}"


def _op_of(message: str) -> str:
    """The op named in a converter's error, if it names one."""
    patterns = (
        r"[Nn]o (?:conversion rule|translator) found for (?:operations?:?\s*)?['\"]?([\w.:/]+)",
        r"ops? (?:are|is) not supported[^:]*:\s*([\w.]+)",
        r"'(tf\.[A-Za-z0-9_]+)'",
        r"\b(tf\.[A-Za-z0-9_]+)\b",
        r"[Oo]p(?:eration)? type:?\s*['\"]?([A-Za-z0-9_]+)",
    )
    for pattern in patterns:
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return ""


def conversion_error(spec: RuntimeSpec, backbone: str, exc: BaseException) -> ConversionError:
    message = str(exc)
    op = _op_of(message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    what = f"the op {op}" if op else f"{type(exc).__name__}: {first[:300]}"
    return ConversionError(
        f"runtime {spec.name} cannot convert backbone {backbone}: {what} is not supported; "
        f"use --runtime keras (or auto, which falls back to keras)"
    )


def converted_model(
    net: Any, spec: RuntimeSpec, precision: str, backbone: str, cache_dir: Path | None = None
) -> tuple[Path, bool]:
    """The cached converted model of ``net`` for ``spec`` (converting it now if needed).

    Returns ``(folder, converted_now)``. Raises :class:`ConversionError` naming the runtime, the
    backbone and the op when the runtime cannot convert it (also when an earlier run failed)."""
    assert spec.convert is not None
    root = Path(cache_dir) if cache_dir else cache_root() / "runtimes"
    key = conversion_key(net, spec, precision, backbone)
    final = root / _folder_name(spec, backbone, key)
    failed = final.with_name(final.name + ".failed")
    if final.is_dir():
        return final, False
    if failed.is_file():
        raise ConversionError(failed.read_text().strip())
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        saved = work / "saved_model"
        try:
            with _quiet():
                net.model.export(str(saved), format="tf_saved_model", verbose=False)
            out = work / "converted"
            out.mkdir()
            with _quiet():
                spec.convert(str(saved), str(out), precision=precision)
        except Exception as exc:
            error = conversion_error(spec, backbone, exc)
            with contextlib.suppress(OSError):
                tmp = failed.with_name(failed.name + f".{os.getpid()}.tmp")
                tmp.write_text(str(error) + "\n")
                os.replace(tmp, failed)
            raise error from exc
        try:
            os.rename(out, final)  # atomic: a reader sees the whole folder or none
        except OSError:
            if not final.is_dir():  # another process won the race: use its copy
                raise
        return final, True
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence Python warnings of the exporters and converters (they print pages), and leave the
    root logger as it was: OpenVINO's converter sets it to ``ERROR`` with a handler of its own
    and puts it back only when it succeeds, which would hide every later warning of a program."""
    import warnings

    root = logging.getLogger()
    level, filters, handlers = root.level, root.filters[:], root.handlers[:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        root.filters[:] = filters
        root.handlers[:] = handlers


def _make(
    spec: RuntimeSpec,
    net: Any,
    precision: str,
    threads: int | None,
    converted: Path | None,
    backbone: str,
) -> Callable[[Any], Any]:
    try:
        return spec.factory(
            net.model,
            input_size=tuple(net.input_size),
            precision=precision,
            threads=threads,
            converted=None if converted is None else str(converted),
        )
    except TransferkitError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"runtime {spec.name} cannot run backbone {backbone}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def _build(
    spec: RuntimeSpec,
    net: Any,
    precision: str,
    backbone: str,
    threads: int | None,
    cache_dir: Path | None,
) -> Forward:
    converted, conversion = None, ""
    if spec.convert is not None:
        converted, now = converted_model(net, spec, precision, backbone, cache_dir)
        conversion = "converted" if now else "cached"
    fn = _make(spec, net, precision, threads, converted, backbone)
    return Forward(fn, spec.name, precision, conversion=conversion, threads=threads)


def _is_cached(net: Any, spec: RuntimeSpec, precision: str, backbone: str, cache_dir: Any) -> bool:
    root = Path(cache_dir) if cache_dir else cache_root() / "runtimes"
    key = conversion_key(net, spec, precision, backbone)
    return (root / _folder_name(spec, backbone, key)).is_dir()


def auto_candidates(precision: str) -> list[RuntimeSpec]:
    """Runtimes ``auto`` may choose at ``precision``, in order, that can run here."""
    specs = [s for s in registry.all_specs("runtime").values() if isinstance(s, RuntimeSpec)]
    ordered = sorted(
        (s for s in specs if s.auto_order is not None), key=lambda s: (s.auto_order, s.name)
    )
    return [s for s in ordered if not s.unavailable(precision)]


def say(message: str) -> None:
    """A warning a user of ``auto`` should see (the command line shows it as
    ``transferkit: <message>``)."""
    log.warning(message)


def build_forward(
    net: Any,
    *,
    backbone: str | None = None,
    runtime: str = DEFAULT_RUNTIME,
    precision: Any = DEFAULT_PRECISION,
    images: int = 0,
    batch_size: int = 32,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Forward:
    """The forward function of ``net`` (a built ``Backbone``) on ``runtime``; see the module
    docstring for ``auto``. ``images`` is how many images the job will compute (``auto`` uses it
    to tell whether a conversion pays), ``threads`` the runtime's thread count (None: its own
    default), ``cache_dir`` the folder of converted models (default ``<cache root>/runtimes``).
    The function is warmed up on one batch of zeros before it is returned."""
    import numpy as np

    name = backbone or net.name
    precision = parse_precision(precision)
    runtime = (runtime or AUTO).strip().lower() if runtime else AUTO
    cache = Path(cache_dir) if cache_dir else None
    h, w = (int(v) for v in net.input_size)
    warm = np.zeros((max(1, min(int(images) or batch_size, batch_size)), h, w, 3), np.float32)

    if runtime != AUTO:
        spec = registry.runtime(runtime)
        reason = spec.unavailable(precision)
        if reason:
            raise UsageError(
                f"runtime {spec.name} cannot run here at precision {precision}: {reason}"
                + ("; use --precision 32" if precision != "32" else "; use --runtime auto")
            )
        forward = _build(spec, net, precision, name, threads, cache)
        forward(warm)
        return forward

    keras_spec = registry.runtime("keras")
    candidates = [] if gpu_present() else auto_candidates(precision)
    if precision != "32":
        offered = [s for s in candidates if precision in s.precisions]
        if not offered:
            reasons = "; ".join(
                f"{s.name}: {s.unavailable(precision)}"
                for s in registry.all_specs("runtime").values()
                if isinstance(s, RuntimeSpec)
            )
            raise UsageError(
                f"no runtime can run precision {precision} here ({reasons}); use --precision 32"
            )
    keras_forward: Forward | None = None
    ahead = []  # the candidates before keras in the order
    for spec in candidates:
        if spec.name == keras_spec.name:
            break
        ahead.append(spec)
    for spec in ahead:  # a conversion in the cache costs nothing: the first one found wins
        if spec.convert is not None and _is_cached(net, spec, precision, name, cache):
            try:
                forward = _build(spec, net, precision, name, threads, cache)
                forward(warm)
            except ConversionError as exc:
                say(f"{exc}; auto tries the next runtime")
                continue
            forward.note = f"auto: {spec.name} (its converted model is in the cache)"
            return forward
    for spec in ahead:
        needs_conversion = spec.convert is not None and not _is_cached(
            net, spec, precision, name, cache
        )
        if needs_conversion and precision == "32":
            # convert only when it pays: time Keras on a warm-up batch first
            keras_forward = keras_forward or _timed_keras(keras_spec, net, name, warm, images)
            if keras_forward.seconds_estimate <= AUTO_CONVERT_SECONDS:
                return keras_forward
        try:
            forward = _build(spec, net, precision, name, threads, cache)
            forward(warm)
        except ConversionError as exc:
            if precision != "32":
                raise
            say(f"{exc}; auto falls back to keras")
            fallback = keras_forward or _build(keras_spec, net, "32", name, threads, cache)
            fallback(warm)
            fallback.note = f"auto: keras ({spec.name} cannot convert {name})"
            return fallback
        forward.note = f"auto: {spec.name} (the first available in the auto order)"
        return forward
    if precision != "32":
        raise UsageError(f"no runtime could run backbone {name} at precision {precision}")
    if keras_forward is None:
        keras_forward = _build(keras_spec, net, "32", name, threads, cache)
        keras_forward(warm)
        keras_forward.note = "auto: keras" + (" (a GPU is present)" if gpu_present() else "")
    return keras_forward


def _timed_keras(spec: RuntimeSpec, net: Any, name: str, warm: Any, images: int) -> Forward:
    """The keras forward, traced, with an estimate of its time over ``images`` images."""
    forward = _build(spec, net, "32", name, None, None)
    forward(warm)  # traces
    started = time.perf_counter()
    forward(warm)
    per_image = (time.perf_counter() - started) / len(warm)
    forward.seconds_estimate = per_image * max(int(images), 0)
    forward.note = (
        f"auto: keras, since it needs about {forward.seconds_estimate:.1f} s for {images} images "
        f"(a conversion pays above {AUTO_CONVERT_SECONDS:.0f} s)"
    )
    return forward
