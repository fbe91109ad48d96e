"""Feature extraction: images -> backbone -> feature store, resumable and safe with bad files.

The walk: an image source (``image-folder``, optionally wrapped in a task such as ``rotation``)
is read by the tf.data pipeline (parallel decode, resize and preprocessing, prefetched), the
backbone runs batch by batch, and the rows go through a buffered store writer. Files that cannot
be decoded are recorded in the store with their reason (or stop the run with ``strict``).

Rows are written in a fixed order (the source's sorted order, or a seeded permutation with
``shuffle``), and every flush commits a prefix of that order (rows and skipped files together);
so a resumed run computes exactly the missing suffix and its finished store equals an
uninterrupted run's.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import inference, outputs, plugin_manager, registry
from ..errors import TransferkitError, UsageError
from ..images import ImageSource, open_source
from ..options import ExtractOptions
from ..pooling import pool, split
from ..recipe import RESUME_KEYS, FeatureRecipe, parse_pooling
from ..sizes import check_batch_fits
from ..store import FeatureStoreWriter, backend_for, check_output, create_store, path_text
from ..user_objects import backbone_spec
from ..version import __version__

log = logging.getLogger(__name__)

# settings that must match for a store to be resumed: the recipe's, and how the images were read
_RESUME_KEYS = (*RESUME_KEYS, "task", "seed", "shuffle")


def _order(n: int, shuffle: bool, seed: int) -> np.ndarray:
    if shuffle:
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.arange(n, dtype=np.int64)


def _remaining(
    order: np.ndarray,
    paths: Sequence[str],
    writer: FeatureStoreWriter,
    listed: Sequence[str] = (),
) -> tuple[np.ndarray, int]:
    """The indices still to compute after what ``writer`` already holds, and how many are done.

    What is stored must be a prefix of ``order`` (rows and skipped files, leaving out the
    ``listed`` files that the folder walk skipped itself); anything else means the images or
    settings changed since, and resuming would mix two different runs.
    """
    left_out = set(listed)
    stored = Counter(writer.stored_paths)
    skipped = Counter(p for p, _ in writer.skipped if p not in left_out)
    total_done = sum(stored.values()) + sum(skipped.values())
    prefix = order[:total_done]
    seen = Counter(path_text(paths[i]) for i in prefix)
    if seen != stored + skipped:
        raise UsageError(
            f"cannot resume {writer.path}: the rows it holds are not the first {total_done} "
            f"images of this run (were images added, removed or renamed?); pass --overwrite "
            f"to start again"
        )
    return order[total_done:], total_done


def _forward_fn(model: Any, size: tuple[int, int]) -> Any:
    """The Keras forward pass as a traced function (what the ``keras`` runtime runs)."""
    import tensorflow as tf

    @tf.function(
        input_signature=[tf.TensorSpec((None, size[0], size[1], 3), tf.float32)],
        jit_compile=False,
        reduce_retracing=True,
    )
    def forward(images: Any) -> Any:
        out = model(images, training=False)
        return tf.reshape(tf.cast(out, tf.float32), (tf.shape(images)[0], -1))

    return forward


def check_runtime(runtime: str) -> None:
    """An unknown runtime fails before any work."""
    if runtime and runtime != inference.AUTO:
        registry.runtime(runtime)


def open_inputs(
    images: Any, outs: Mapping[str, Any], options: ExtractOptions
) -> tuple[ImageSource, Any]:
    """What every extraction checks and does before it builds a network: opens ``images``,
    refuses outputs (``outs``: each store's path and backend) inside the inputs or in the way of
    the options' mode, an empty source and an unwritable folder, logs the source's warnings, and
    writes the images to ``write_images`` when asked. Returns the source and what was
    written."""
    write_images = options.write_images
    source: ImageSource = open_source(
        images, task=options.task, seed=options.seed, max_pixels=options.max_pixels
    )
    inputs = input_paths(source, images)
    for out in outs:
        outputs.check_outside_inputs(out, inputs, "output store")
    if write_images:
        outputs.check_outside_inputs(write_images, [*inputs, *outs], "--write-images folder")
        outputs.check_folder(write_images, "images", what="--write-images folder")
    for out, backend in outs.items():
        check_output(backend, out, options.mode)
    if len(source) == 0:
        raise UsageError(f"{images} holds no images")
    for out in outs:
        outputs.check_writable(out)  # a read-only disk fails now, before the network is built
    for warning in _source_warnings(source):
        log.warning("warning: %s", warning)
    written = None
    if write_images:
        from ..images import write_images as _write_images

        written = _write_images(source, write_images)
    return source, written


def extract(
    images: Any, *, backbone: Any, out: str | os.PathLike[str], options: ExtractOptions
) -> dict[str, Any]:
    """Extract one feature vector per image of ``images`` into the store ``out``.

    Returns a summary: ``path``, ``rows``, ``skipped`` (count), ``skipped_files`` ([path,
    reason]), ``seconds`` (the whole call), ``images_per_second`` (the streaming rate, once the
    network and the input pipeline are built), ``feature_dim``, ``backbone`` and more. The
    ``runtime`` of ``options`` runs the network at its ``precision`` (see ``docs/runtimes.md``).
    :func:`extract_many` writes several poolings' stores from one pass of the network. On a
    Dask cluster, :func:`transferkit.jobs.extract_dask.extract_on_cluster` writes the same store
    by shards (``transferkit.extract(..., scheduler=...)`` chooses it).
    """
    return extract_many(images, backbone=backbone, outs={options.pooling: out}, options=options)[
        options.pooling
    ]


def extract_many(
    images: Any,
    *,
    backbone: Any,
    outs: Mapping[str, str | os.PathLike[str]],
    options: ExtractOptions,
) -> dict[str, dict[str, Any]]:
    """One pass of the network over ``images``, one store per pooling: ``outs`` maps each
    pooling (``avg``, ``max``, ``flatten``) to its store, e.g. ``{"avg": "a.h5", "max":
    "m.h5"}``. Each store equals what :func:`extract` with that pooling alone writes. Returns
    each pooling's summary (as :func:`extract`'s); ``options.pooling`` is not used. With
    ``resume``, every store must hold the same images so far."""
    targets: dict[str, str] = {}
    for name, path in outs.items():
        pooling = parse_pooling(name)
        if pooling in targets:
            raise UsageError(f"pooling {pooling} is asked for twice")
        targets[pooling] = os.fspath(path)
    if not targets:
        raise UsageError("give at least one pooling and its output store")
    if len(set(targets.values())) != len(targets):
        raise UsageError("each pooling needs its own output store")
    first_pooling = next(iter(targets))
    spec = backbone_spec(backbone, pooling=first_pooling)  # a name, or a caller's object
    recipe = options.recipe(spec.name)
    recipes = {pooling: replace(recipe, pooling=pooling) for pooling in targets}
    check_batch_fits(recipe.input_size, options.batch_size)
    check_runtime(options.runtime)
    backends = {p: backend_for(out, options.store) for p, out in targets.items()}
    source, written = open_inputs(images, {out: backends[p] for p, out in targets.items()}, options)
    started = time.perf_counter()
    writers: dict[str, FeatureStoreWriter] = {}
    first_out = targets[first_pooling]
    try:
        built = spec.factory(weights=recipe.weights, input_size=recipe.input_size)
        net = pool(built, list(targets))  # one model for every pooling: one forward pass
        forward = inference.build_forward(
            net,
            backbone=spec.name,
            runtime=options.runtime,
            precision=recipe.precision,
            images=len(source),
            batch_size=options.batch_size,
            threads=options.threads,
        )
        widths: dict[str, int] = net.extra["widths"]
        configs: dict[str, dict[str, Any]] = {}
        for pooling, out in targets.items():
            made = recipes[pooling].replace(
                input_size=net.input_size, precision=forward.precision, runtime=forward.runtime
            )
            metadata = _metadata(made, spec, built, source, images, options)
            configs[pooling] = {
                **metadata,
                "out": out,
                "store": backends[pooling].name,
                "batch_size": options.batch_size,
                "resume": options.resume,
                "overwrite": options.overwrite,
                "strict": options.strict,
                "max_pixels": options.max_pixels,
            }
            writers[pooling] = create_store(
                out,
                feature_dim=widths[pooling],
                label_names=source.label_names,
                metadata=metadata,
                store=options.store,
                mode=options.mode,
                compression=options.compression,
                buffer_rows=options.buffer_rows or max(options.batch_size, 1024),
                must_match=_RESUME_KEYS,
            )
        summaries = _run(source, net, forward, writers, configs, options)
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()  # keep every finished row: --resume continues from here
        plugin_manager.notify_exception(exc, "extract", output=first_out, backbone=spec.name)
        if isinstance(exc, KeyboardInterrupt):
            for out, writer in zip(targets.values(), writers.values(), strict=False):
                log.warning(
                    "interrupted; %s rows are kept in %s; run again with --resume to finish",
                    writer.rows,
                    out,
                )
        if isinstance(exc, outputs.OutputError) and writers:
            writer = next(iter(writers.values()))
            raise outputs.OutputError(
                f"{exc}; {writer.committed_rows} rows are kept in {first_out}: run again with "
                f"--resume to finish",
                exc.errno,
            ) from exc
        raise
    seconds = round(time.perf_counter() - started, 3)
    for pooling, summary in summaries.items():
        summary["seconds"] = seconds
        if written is not None:
            summary["written_images"] = {k: written[k] for k in ("out", "written", "skipped")}
        plugin_manager.call_lifecycle("on_extract_end", output=targets[pooling], summary=summary)
    return summaries


def input_paths(source: ImageSource, images: Any) -> list[str]:
    """The paths an output must stay clear of: the image folder, or a list file and every image
    it names."""
    location = str(getattr(source, "location", "") or "")
    if not location and isinstance(images, str | os.PathLike):
        location = os.fspath(images)
    if location and os.path.isdir(location):
        return [location]
    return [p for p in [location, *(r.path for r in source.records)] if p]


def _source_warnings(source: ImageSource) -> list[str]:
    """What the user should know about the images before the run: one class, empty classes,
    folders that could not be listed."""
    notes = list(source.warnings)
    if source.empty_classes:
        empty = [path_text(n) for n in source.empty_classes]
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        notes.append(
            f"{len(empty)} class folder(s) hold no images and are left out: "
            f"{', '.join(empty[:10])}{more}"
        )
    if len(source.label_names) < 2 and not source.task:
        notes.append(
            f"the images form one class ({path_text(source.label_names[0])}); training a "
            f"classifier needs at least two class folders"
        )
    return notes


def _metadata(
    recipe: FeatureRecipe,
    spec: Any,
    net: Any,
    source: ImageSource,
    images: Any,
    options: ExtractOptions,
) -> dict[str, Any]:
    return {
        **recipe.to_metadata(),
        "weights_source": net.weights_source,
        "preprocessing": net.preprocessing or spec.preprocessing,
        "task": options.task or "",
        "seed": options.seed,
        "shuffle": options.shuffle,
        "images": str(getattr(source, "location", "") or images),
        "transferkit_version": __version__,
        "param_count": net.param_count,
        # a transformer's token layout: prefix tokens (class, registers) and the patch grid
        **({"tokens": net.tokens.describe()} if net.tokens is not None else {}),
        # how images were brought to the input size, where the backbone names its own resize
        **_resize_metadata(net),
    }


def _resize_metadata(net: Any) -> dict[str, Any]:
    resize = getattr(net, "resize", None)
    return {} if resize is None or resize.is_default else {"resize": resize.describe()}


def _batches(
    source: ImageSource, todo: np.ndarray, net: Any, batch_size: int
) -> Iterator[tuple[Any, Any, np.ndarray]]:
    """``(images, labels, source indices)`` batches of ``todo``, in order, from one pipeline
    (file headers are checked in a background thread a chunk ahead of it).

    The pipeline is built and started here, not at the first ``next``."""
    from ..pipeline import image_dataset

    if not len(todo):
        return iter(())
    ds = image_dataset(
        source,
        todo,
        input_size=net.input_size,
        batch_size=batch_size,
        preprocess=net.preprocess,
        with_index=True,
        probes="auto",
        resize=net.resize,
    )
    return ((images, labels, index.numpy()) for images, labels, index in iter(ds))


def progress_bar(total: int, initial: int, progress: bool, desc: str) -> Any:
    """The extraction's progress bar on stderr, in images (``progress=False``: none)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not progress,
        file=sys.stderr,
        unit="img",
        desc=desc,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def skipper(
    source: ImageSource, todo: Iterable[int], strict: bool, record: Callable[[str, str], None]
) -> Callable[[int | None], None]:
    """``skip_until(index)`` over the images ``todo`` in their order: each image before
    ``index`` that the pipeline left out is recorded (``record(path, reason)``), or with
    ``strict`` refused; ``None`` settles every image left."""
    from ..pipeline import skip_reason

    pending: deque[int] = deque(int(i) for i in todo)
    paths = source.paths

    def skip_until(index: int | None) -> None:
        while pending and pending[0] != index:
            i = pending.popleft()
            reason = skip_reason(source, i)
            if strict:
                raise TransferkitError(
                    f"{paths[i]} cannot be used ({reason}); --strict stops at the first bad "
                    f"file: remove or fix it, or run without --strict to skip and record it"
                )
            record(paths[i], reason)
        if index is not None and pending:
            pending.popleft()

    return skip_until


def _run(
    source: ImageSource,
    net: Any,
    forward: Any,
    writers: dict[str, FeatureStoreWriter],
    configs: dict[str, dict[str, Any]],
    options: ExtractOptions,
) -> dict[str, dict[str, Any]]:

    first = next(iter(writers))
    writer = writers[first]
    paths = source.paths
    order = _order(len(source), options.shuffle, options.seed)
    listed = [path_text(p) for p, _ in source.listing_skipped]
    todo, already = _remaining(order, paths, writer, listed) if writer.resumed else (order, 0)
    for other in writers.values():
        done = _remaining(order, paths, other, listed)[1] if other.resumed else 0
        if done != already:
            raise UsageError(
                f"cannot resume {other.path} with {writer.path}: they hold different "
                f"numbers of images; resume each pooling's store on its own"
            )
    total = len(order)
    # files the folder walk left out (second paths to one file, broken links) are recorded once
    for each in writers.values():
        recorded = each.skipped_paths
        for path, reason in source.listing_skipped:
            if path_text(path) not in recorded:
                each.record_skipped(path, reason)
    for pooling, each in writers.items():
        plugin_manager.call_lifecycle(
            "on_extract_start",
            backbone=net.name,
            total=len(todo),
            output=each.path,
            config=configs[pooling],
        )
    skipped_before = len(writer.skipped)
    new_skips: list[list[str]] = []

    def record(path: str, reason: str) -> None:
        for each in writers.values():
            each.record_skipped(path, reason)
        new_skips.append([path_text(path), reason])

    skip_until = skipper(source, todo, options.strict, record)

    bar = progress_bar(total, already, options.progress, f"extract {net.name}")
    widths = {p: w.feature_dim for p, w in writers.items()}
    batches = _batches(source, todo, net, options.batch_size)
    t0 = time.perf_counter()  # the streaming rate: network and input pipeline are ready
    skips_shown = 0
    try:
        for images, labels, idx in batches:
            features = forward(images)
            if features.shape[1] != sum(widths.values()):
                raise TransferkitError(
                    f"backbone {net.name} gave {features.shape[1]}-d features but said "
                    f"{sum(widths.values())}; the backbone plugin is wrong"
                )
            for i in idx:
                skip_until(int(i))
            names = [paths[i] for i in idx]
            label_rows = labels.numpy()
            parts = split(features, widths) if len(widths) > 1 else {first: features}
            for pooling, each in writers.items():
                each.append(parts[pooling], label_rows, names)
            bar.update(len(idx) + len(new_skips) - skips_shown)
            skips_shown = len(new_skips)
            bar.set_postfix(skipped=skipped_before + len(new_skips), refresh=False)
            plugin_manager.call_lifecycle(
                "on_extract_batch",
                rows_written=writer.rows,
                total=total,
                batch_size=len(idx),
                skipped=skipped_before + len(new_skips),
            )
        skip_until(None)
        bar.update(len(new_skips) - skips_shown)
    finally:
        bar.close()
    for each in writers.values():
        each.close()
    seconds = time.perf_counter() - t0
    computed = len(todo)
    summaries = {}
    for pooling, each in writers.items():
        summaries[pooling] = extract_summary(
            source,
            each,
            store=configs[pooling]["store"],
            computed=computed,
            new_skips=len(new_skips),
            already=already,
            seconds=seconds,
            backbone=net.name,
            net={
                "weights_source": net.weights_source,
                "input_size": list(net.input_size),
                "pooling": pooling,
            },
            task=configs[pooling]["task"],
            forward=forward.describe(),
        )
    return summaries


def extract_summary(
    source: ImageSource,
    writer: Any,
    *,
    store: str,
    computed: int,
    new_skips: int,
    already: int,
    seconds: float,
    backbone: str,
    net: Mapping[str, Any],
    task: str | None,
    forward: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary of one store's extraction (in one process or on a cluster): ``net`` holds
    ``weights_source``, ``input_size`` and ``pooling``; ``forward`` the runtime's description."""
    skipped_files = [list(s) for s in writer.skipped]
    return {
        "path": writer.path,
        "store": store,
        "rows": writer.rows,
        "new_rows": computed - new_skips,
        "computed": computed,  # images this call looked at (0: a resume with nothing left)
        "skipped": len(skipped_files),
        "skipped_files": skipped_files,
        "images": len(source),
        "files_found": len(source) + len(source.listing_skipped),
        "empty_classes": [path_text(n) for n in source.empty_classes],
        "warnings": _source_warnings(source),
        "resumed": writer.resumed,
        "resumed_from": int(already),
        "seconds": round(seconds, 3),
        "stream_seconds": round(seconds, 3),  # "seconds" becomes the whole call's wall time
        "images_per_second": round(computed / seconds, 2) if seconds > 0 else 0.0,
        "feature_dim": writer.feature_dim,
        "backbone": backbone,
        "weights_source": net["weights_source"],
        "input_size": list(net["input_size"]),
        "pooling": net["pooling"],
        "label_names": [path_text(n) for n in source.label_names],
        "task": task or None,
        **forward,
    }
