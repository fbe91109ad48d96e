"""The tf.data input pipeline shared by extraction and training, and the stratified split.

For each image the pipeline reads the file header in Python (cheap), then decodes plain 8-bit
JPEG and PNG files with TensorFlow's own decoders, which run in parallel outside the GIL; only
the unusual files (CMYK, 16-bit, EXIF-rotated, transparent, palette, BMP, GIF, WebP, TIFF, or
damaged) go through Pillow with :func:`transferkit.images.decode_image`. In an ordered pass the
header checks run in a background thread a chunk ahead of the pipeline, so that its hot path
calls no Python for the common files. Decoding, rotation and resizing run in a parallel ``map``;
batches are augmented and preprocessed in a second parallel ``map``; ``prefetch`` overlaps all
of it with the network's forward pass.

Images that cannot be decoded are dropped; with ``with_index=True`` each batch carries the source
row indices, so the caller sees which ones are missing and asks :func:`skip_reason` why.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import UsageError
from .images import ImageSource, SkipImage, decode_image, probe_image_size
from .specs import Resize

# how one image is decoded: JPEG at 1/1, 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, for
# photos at least that many times larger than the input size), PNG, Pillow, or skipped
JPEG_RATIOS = (1, 2, 4, 8)
PNG, PILLOW, SKIP = 4, 5, 6
# rows per header-check chunk when checks run ahead: small first, so the first batch comes soon
PROBE_CHUNKS = (64, 256, 1024, 2048)


def _jpeg_ratio(width: int, height: int, target: int) -> int:
    """The largest DCT scale that keeps the short side at least ``target`` pixels."""
    best = 1
    for ratio in JPEG_RATIOS:
        if min(width, height) // ratio >= target:
            best = ratio
    return best


def _probe_and_load(
    source: ImageSource, plan: dict[str, Any] | None, target: int, scaled: bool
) -> Callable[[Any], tuple[Any, np.ndarray]]:
    """A Python function ``index -> (code, pixels)``; pixels only when Pillow decoded them."""
    empty = np.zeros((0, 0, 3), np.uint8)

    if plan is None:

        def load_any(index: Any) -> tuple[Any, np.ndarray]:
            try:
                return np.int32(PILLOW), np.ascontiguousarray(source.load(int(index)), np.uint8)
            except SkipImage:
                return np.int32(SKIP), empty

        return load_any

    paths = plan["paths"]
    max_pixels = plan.get("max_pixels")

    def probe(index: Any) -> tuple[Any, np.ndarray]:
        path = paths[int(index)]
        code = _header_code(path, max_pixels, target, scaled)
        if code != PILLOW:
            return np.int32(code), empty
        try:
            return np.int32(PILLOW), decode_image(path, max_pixels=max_pixels)
        except SkipImage:
            return np.int32(SKIP), empty

    return probe


def _header_code(path: Any, max_pixels: int | None, target: int, fast_jpeg: bool) -> int:
    """How the file at ``path`` is decoded, from its header: a JPEG scale's index, ``PNG``,
    ``PILLOW`` or ``SKIP``. The one header check of every pass (ordered or shuffled, ahead or
    inline). Never raises: a header check that fails for any other reason than the file being
    unusable leaves the file to Pillow, whose decode then says what is wrong with it."""
    try:
        how, width, height = probe_image_size(path, max_pixels=max_pixels)
    except SkipImage:
        return SKIP
    except Exception:  # noqa: BLE001 - see above
        return PILLOW
    if how == "native-jpeg":
        return JPEG_RATIOS.index(_jpeg_ratio(width, height, target) if fast_jpeg else 1)
    return PNG if how == "native-png" else PILLOW


def _loader(source: ImageSource, plan: dict[str, Any] | None) -> Callable[[Any], np.ndarray]:
    """A Python function ``index -> pixels`` (Pillow rules); empty pixels for a skipped file."""
    empty = np.zeros((0, 0, 3), np.uint8)
    paths = plan["paths"] if plan is not None else None
    max_pixels = plan.get("max_pixels") if plan is not None else None

    def load(index: Any) -> np.ndarray:
        try:
            if paths is None:
                return np.ascontiguousarray(source.load(int(index)), np.uint8)
            return decode_image(paths[int(index)], max_pixels=max_pixels)
        except SkipImage:
            return empty

    return load


def probe_codes(
    source: ImageSource,
    indices: Sequence[int] | np.ndarray,
    *,
    input_size: Sequence[int],
    fast_jpeg: bool = True,
) -> np.ndarray:
    """How :func:`image_dataset` will decode each of ``indices`` (file headers only), to pass as
    its ``probes``: doing this ahead, outside the pipeline, keeps Python out of its hot path."""
    plan = source.plan()
    rows = np.asarray(indices, np.int64).reshape(-1)
    if plan is None:
        return np.full(len(rows), PILLOW, np.int32)
    paths, max_pixels = plan["paths"], plan.get("max_pixels")
    target = max(int(input_size[0]), int(input_size[1]))
    return np.array(
        [_header_code(paths[int(i)], max_pixels, target, fast_jpeg) for i in rows], np.int32
    )


def _chunks(n: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each header-check chunk of ``n`` rows (see ``PROBE_CHUNKS``)."""
    bounds, start, k = [], 0, 0
    while start < n:
        end = min(n, start + PROBE_CHUNKS[min(k, len(PROBE_CHUNKS) - 1)])
        bounds.append((start, end))
        start, k = end, k + 1
    return bounds


def _probed_rows(
    source: ImageSource, rows: np.ndarray, input_size: Sequence[int], fast_jpeg: bool
) -> Any:
    """A ``tf.data.Dataset`` of ``(row, code)``: the header checks of each chunk of ``rows`` run
    in a background thread while the pipeline decodes the chunk before it."""
    from concurrent.futures import Future, ThreadPoolExecutor

    import tensorflow as tf

    def generate() -> Any:
        bounds = _chunks(len(rows))
        with ThreadPoolExecutor(1, thread_name_prefix="transferkit-probe") as pool:

            def probe(k: int) -> Future[np.ndarray]:
                a, b = bounds[k]
                return pool.submit(
                    probe_codes, source, rows[a:b], input_size=input_size, fast_jpeg=fast_jpeg
                )

            if not bounds:
                return
            future = probe(0)
            for k, (a, b) in enumerate(bounds):
                codes = future.result()
                if k + 1 < len(bounds):
                    future = probe(k + 1)
                yield rows[a:b], codes

    spec = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(generate, output_signature=spec).unbatch()


def image_dataset(
    source: ImageSource,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    input_size: Sequence[int],
    batch_size: int,
    preprocess: Callable[[Any], Any] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    augment: Callable[..., Any] | None = None,
    repeat: bool = False,
    with_index: bool = False,
    resize: str | Resize = "auto",
    fast_jpeg: bool = True,
    probes: np.ndarray | str = "auto",
    num_parallel_calls: int | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of ``(images float32 (B,H,W,3), labels int32 (B,))`` batches
    (plus the int64 source row indices when ``with_index``), preprocessed with ``preprocess``.

    ``indices`` picks rows of ``source`` (default: all, in order). ``shuffle`` reshuffles them
    each epoch (seeded); ``repeat`` repeats forever; ``augment`` (a Keras layer or callable) is
    applied to 0..255 float batches before ``preprocess``. ``resize`` is a ``tf.image.resize``
    method, ``"auto"``, or a backbone's :class:`~transferkit.specs.Resize` (see
    :func:`resize_image`). ``fast_jpeg`` lets libjpeg decode large JPEGs at 1/2, 1/4 or 1/8
    scale (never below the input size) before an ``"auto"`` resize; another resize gets the
    full-size decode.
    ``probes`` says where file headers are checked: ``"ahead"`` in a background thread, a
    chunk ahead of the pipeline, so that only files that need Pillow call into Python;
    ``"inline"`` inside the pipeline, per image; ``"auto"`` (default) ahead unless ``shuffle``;
    or an array from :func:`probe_codes`, one code per row of ``indices``, checked beforehand.
    """
    import tensorflow as tf

    if batch_size <= 0:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    height, width = (int(input_size[0]), int(input_size[1]))
    if height <= 0 or width <= 0:
        raise UsageError(f"input size must be positive, got {input_size}")
    resize = _as_resize(resize)
    fast_jpeg = fast_jpeg and resize.scaled_jpeg
    rows = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices)
    rows = rows.astype(np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(source)):
        raise UsageError(f"image indices out of range for a source of {len(source)} images")
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    plan = source.plan()
    labels_np = (
        np.asarray(plan["labels"], np.int32) if plan is not None else source.labels.astype(np.int32)
    )
    rotations = plan.get("rotations") if plan is not None else None
    # file names as their bytes, so that names that are not valid UTF-8 are read too
    paths_t = tf.constant(
        [os.fsencode(p) for p in plan["paths"]] if plan is not None else [b""] * len(source),
        tf.string,
    )
    labels_t = tf.constant(labels_np, tf.int32)
    rot_t = tf.constant(np.asarray(rotations, np.int32)) if rotations is not None else None
    prepare = _probe_and_load(source, plan, max(height, width), fast_jpeg)
    load = _loader(source, plan)
    if isinstance(probes, str):
        if probes not in ("auto", "ahead", "inline"):
            raise UsageError(f"probes must be 'auto', 'ahead', 'inline' or codes, got {probes!r}")
        mode = ("inline" if shuffle else "ahead") if probes == "auto" else probes
        ahead = mode == "ahead" and plan is not None
        if mode == "ahead" and shuffle:
            raise UsageError("probes='ahead' reads the rows in order: it cannot shuffle")
        codes = None
    else:
        codes = np.asarray(probes, np.int32).reshape(-1)
        if len(codes) != len(rows):
            raise ValueError(f"{len(codes)} probes for {len(rows)} images")
        ahead = False

    def decode(index: Any, known: Any = None) -> tuple[Any, Any, Any, Any]:
        if known is None:
            code, pixels = tf.numpy_function(
                prepare, [index], (tf.int32, tf.uint8), stateful=False, name="probe_or_decode"
            )
            code.set_shape([])
            pixels.set_shape([None, None, 3])
            pillow = lambda: pixels  # noqa: E731
        else:
            code = known

            def pillow() -> Any:
                img = tf.numpy_function(load, [index], tf.uint8, stateful=False, name="pillow")
                img.set_shape([None, None, 3])
                return img

        def jpeg(ratio: int) -> Callable[[], Any]:
            def decode_jpeg() -> Any:
                data = tf.io.read_file(tf.gather(paths_t, index))
                return decode_native(data, JPEG_RATIOS.index(ratio))

            return decode_jpeg

        def png() -> Any:
            return decode_native(tf.io.read_file(tf.gather(paths_t, index)), PNG)

        def nothing() -> Any:
            return tf.zeros((0, 0, 3), tf.uint8)

        branches = [jpeg(r) for r in JPEG_RATIOS] + [png, pillow, nothing]
        img = tf.switch_case(code, branches, name="decode")
        ok = tf.logical_and(
            tf.not_equal(code, SKIP),
            tf.logical_and(tf.shape(img)[0] > 0, tf.shape(img)[1] > 0),
        )
        if rot_t is not None:
            img = tf.image.rot90(img, tf.gather(rot_t, index))
        img = tf.cond(
            ok,
            lambda: resize_image(img, (height, width), method=resize),
            lambda: tf.zeros((height, width, 3), tf.float32),
        )
        img = tf.ensure_shape(tf.cast(img, tf.float32), (height, width, 3))
        return img, tf.gather(labels_t, index), index, ok

    if ahead:
        ds = _probed_rows(source, rows, (height, width), fast_jpeg)
    else:
        ds = tf.data.Dataset.from_tensor_slices(rows if codes is None else (rows, codes))
    if shuffle:
        ds = ds.shuffle(max(1, len(rows)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(decode, num_parallel_calls=parallel, deterministic=True)
    # a file that passed the header check yet fails in TensorFlow's decoder is dropped too
    ds = ds.ignore_errors(log_warning=False)
    ds = ds.filter(lambda img, label, index, ok: ok)
    ds = ds.map(lambda img, label, index, ok: (img, label, index))
    ds = ds.batch(batch_size)

    if augment is not None or preprocess is not None:

        def transform(images: Any, labels: Any, index: Any) -> tuple[Any, Any, Any]:
            if augment is not None:
                try:
                    images = augment(images, training=True)
                except TypeError:
                    images = augment(images)
            if preprocess is not None:
                images = preprocess(images)
            return tf.cast(images, tf.float32), labels, index

        ds = ds.map(transform, num_parallel_calls=parallel, deterministic=True)
    if not with_index:
        ds = ds.map(lambda images, labels, index: (images, labels))
    return ds.with_options(dataset_options()).prefetch(tf.data.AUTOTUNE)


def decode_native(data: Any, code: int) -> Any:
    """The bytes of a JPEG (``code``: the index of its scale in :data:`JPEG_RATIOS`) or a PNG
    (``PNG``) decoded by TensorFlow, uint8 ``(h, w, 3)``: the input pipeline's decoders."""
    import tensorflow as tf

    if code == PNG:
        img = tf.io.decode_png(data, channels=3, dtype=tf.uint8)
    else:  # the accurate integer DCT is what Pillow (libjpeg's default) uses
        img = tf.io.decode_jpeg(
            data, channels=3, ratio=JPEG_RATIOS[code], dct_method="INTEGER_ACCURATE"
        )
    img.set_shape([None, None, 3])
    return img


def decode_resized(
    data: bytes,
    input_size: Sequence[int],
    *,
    resize: str | Resize = "auto",
    max_pixels: int | None = None,
) -> np.ndarray:
    """One image's bytes as :func:`image_dataset` makes a file of them (its header check, its
    decoders, :func:`resize_image`): float32 ``(H, W, 3)``, 0..255, before ``preprocess``.
    Raises :class:`~transferkit.images.SkipImage` with the reason where the pipeline would
    skip the image. Runs on its own, outside tf.data, so a server can decode each request as
    it arrives (the resize as a traced function)."""
    import tensorflow as tf

    height, width = int(input_size[0]), int(input_size[1])
    method = _as_resize(resize)
    code = _header_code(data, max_pixels, max(height, width), method.scaled_jpeg)
    if code == SKIP:  # the header check's own reason
        probe_image_size(data, max_pixels=max_pixels)
        raise SkipImage("not an image")
    if code == PILLOW:
        img = tf.constant(decode_image(data, max_pixels=max_pixels))
    else:
        try:
            img = decode_native(tf.constant(data), code)
        except tf.errors.OpError:  # dropped by the pipeline; Pillow says why, as skip_reason
            decode_image(data, max_pixels=max_pixels)
            raise SkipImage("corrupt image (TensorFlow could not decode it)") from None
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise SkipImage("empty image")
    resized = _resizer(height, width, method)(img)
    return np.asarray(resized, np.float32).reshape(height, width, 3)


@functools.lru_cache(maxsize=16)
def _resizer(height: int, width: int, method: Resize) -> Any:
    """:func:`resize_image` to ``(height, width)`` with ``method`` as one traced function of a
    uint8 ``(h, w, 3)`` image, float32 out: the same ops as the input pipeline's map, without
    a Python dispatch per op (about 0.4 ms of CPU less per image than running them eagerly)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)])
    def resize(image: Any) -> Any:
        return tf.cast(resize_image(image, (height, width), method=method), tf.float32)

    return resize


def dataset_options() -> Any:
    """The ``tf.data.Options`` of every transferkit input pipeline: deterministic order, and
    tf.data's autotuning model turned off.

    The autotuning model runs in a background thread that the iterator joins when it is
    destroyed; that join can pause the end of a pass for seconds with the cores idle
    (``bench/bench_pipeline_teardown.py``; figures in ``bench/RESULTS.md``), a pause per
    extraction and per validation pass during training. Without it a ``map`` given
    ``AUTOTUNE`` runs as many calls at once as there are schedulable cores (at most 16), which
    is what a decode-bound pipeline wants, and ``prefetch(AUTOTUNE)`` still grows its buffer on
    demand.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    return options


def map_files(
    fn: Callable[[Any], Any],
    paths: Sequence[str],
    *,
    input_size: Sequence[int],
    preprocess: Callable[[Any], Any] | None,
    width: int,
    batch_size: int = 32,
    resize: str | Resize = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn`` (preprocessed image batch -> ``(B, ...)`` outputs) over image files, resized
    as ``resize`` says (a backbone's :class:`~transferkit.specs.Resize`).

    Returns ``(outputs, rows)``: the outputs as float32 ``(n, width)`` and the indices into
    ``paths`` of the ``n`` files that decoded (``skip_reason`` tells why the others did not).
    """
    from .images import ImageRecord
    from .reuse import reuse

    def build() -> Any:
        source = ImageSource([ImageRecord(str(p), 0) for p in paths], ["?"], location="files")
        return image_dataset(
            source,
            input_size=input_size,
            batch_size=batch_size,
            preprocess=preprocess,
            with_index=True,
            resize=resize,
        )

    # the files are read when the dataset is iterated, so inside a `with reuse.kept():` block a
    # caller that writes new images under the same names reuses the pipeline
    # instead of tracing it again; ``preprocess`` is then a kept backbone's (its id is stable)
    key = ("map-files", tuple(map(str, paths)), tuple(input_size), id(preprocess), batch_size,
           str(resize))  # fmt: skip
    dataset = reuse(key, build)
    outputs, rows = [], []
    for images, _labels, index in dataset:
        outputs.append(np.asarray(fn(images), dtype=np.float32).reshape(len(index), -1))
        rows.append(np.asarray(index, dtype=np.int64))
    if not outputs:
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    return np.concatenate(outputs), np.concatenate(rows)


def _as_resize(resize: str | Resize) -> Resize:
    if isinstance(resize, Resize):
        return resize
    try:
        return Resize(str(resize))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def resize_image(image: Any, size: Sequence[int], method: str | Resize = "auto") -> Any:
    """Resize one image ``(h, w, 3)`` (or a batch ``(n, h, w, 3)``) to ``size`` as float32.

    ``"auto"``: bilinear (as Keras' own image datasets do) when shrinking by at most 2x or
    enlarging, and area averaging when shrinking more, so that large images do not alias; both
    are fast, unlike ``antialias=True``. Any other name is a ``tf.image.resize`` method. A
    :class:`~transferkit.specs.Resize` adds its ``antialias`` and ``crop_to_aspect_ratio`` (the
    centre cut at the aspect ratio of ``size`` first, computed as Keras' ``Resizing`` does).
    """
    import tensorflow as tf

    height, width = int(size[0]), int(size[1])
    resize = _as_resize(method)
    if resize.method != "auto":
        if resize.crop_to_aspect_ratio:
            image = _crop_to_aspect_ratio(image, height, width)
        return tf.image.resize(
            image, (height, width), method=resize.method, antialias=resize.antialias
        )
    shape = tf.shape(image)
    factor = tf.maximum(
        tf.cast(shape[-3], tf.float32) / height, tf.cast(shape[-2], tf.float32) / width
    )
    return tf.cond(
        factor > 2.0,
        lambda: tf.image.resize(image, (height, width), method="area"),
        lambda: tf.image.resize(image, (height, width), method="bilinear"),
    )


def _crop_to_aspect_ratio(image: Any, height: int, width: int) -> Any:
    """The centre of ``image`` at the aspect ratio ``height:width``, with the arithmetic of
    Keras' ``Resizing(crop_to_aspect_ratio=True)`` (TensorFlow backend), so the pixels match."""
    import tensorflow as tf

    shape = tf.shape(image)
    h, w = shape[-3], shape[-2]
    crop_h = tf.cast(tf.cast(w * height, tf.float32) / width, tf.int32)
    crop_h = tf.maximum(tf.minimum(h, crop_h), 1)
    crop_w = tf.cast(tf.cast(h * width, tf.float32) / height, tf.int32)
    crop_w = tf.maximum(tf.minimum(w, crop_w), 1)
    top = tf.cast(tf.cast(h - crop_h, tf.float32) / 2, tf.int32)
    left = tf.cast(tf.cast(w - crop_w, tf.float32) / 2, tf.int32)
    return image[..., top : top + crop_h, left : left + crop_w, :]


def skip_reason(source: ImageSource, index: int) -> str:
    """Why the image at ``index`` was dropped by the pipeline (decoded again with Pillow)."""
    try:
        source.load(int(index))
    except SkipImage as exc:
        return exc.reason
    return "corrupt image (TensorFlow could not decode it)"
