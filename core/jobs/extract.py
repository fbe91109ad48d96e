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

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .. import inference, outputs, plugin_manager, registry
from ..errors import TransferkitError, UsageError
from ..images import ImageSource, open_source
from ..pooling import pool, split
from ..recipe import RESUME_KEYS, FeatureRecipe, parse_pooling
from ..sizes import check_batch_fits
from ..store import (
    FeatureStoreWriter,
    StoreExistsError,
    StoreLockedError,
    backend_for,
    check_replaceable_store,
    create_store,
    lock_holder,
    path_text,
)
from ..user_objects import backbone_spec
from ..version import __version__

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


def open_inputs(
    images: Any,
    outs: Mapping[str, Any],
    *,
    mode: str,
    task: str | None,
    seed: int,
    max_pixels: int | None,
    write_images: Any,
) -> tuple[ImageSource, Any]:
    """What every extraction checks and does before it builds a network: opens ``images``,
    refuses outputs (``outs``: each store's path and backend) inside the inputs or in the way of
    ``mode``, an empty source and an unwritable folder, prints the source's warnings, and writes
    the images to ``write_images`` when asked. Returns the source and what was written."""
    source: ImageSource = open_source(images, task=task, seed=seed, max_pixels=max_pixels)
    inputs = input_paths(source, images)
    for out in outs:
        outputs.check_outside_inputs(out, inputs, "output store")
    if write_images:
        outputs.check_outside_inputs(write_images, [*inputs, *outs], "--write-images folder")
        outputs.check_folder(write_images, "images", what="--write-images folder")
    for out, backend in outs.items():
        _check_output(backend, out, mode)
    if len(source) == 0:
        raise UsageError(f"{images} holds no images")
    for out in outs:
        outputs.check_writable(out)  # a read-only disk fails now, before the network is built
    for warning in _source_warnings(source):
        print(f"transferkit: warning: {warning}", file=sys.stderr)
    written = None
    if write_images:
        from ..images import write_images as _write_images

        written = _write_images(source, write_images)
    return source, written


def extract(
    images: Any,
    *,
    backbone: Any,
    out: str | os.PathLike[str],
    store: str | None = None,
    weights: Any = "default",
    pooling: str = "avg",
    input_size: Any = None,
    batch_size: int = 32,
    task: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    max_pixels: int | None = None,
    progress: bool = True,
    compression: str | None = "gzip",
    buffer_rows: int | None = None,
    write_images: str | os.PathLike[str] | None = None,
    runtime: str = "auto",
    precision: Any = "32",
    threads: int | None = None,
) -> dict[str, Any]:
    """Extract one feature vector per image of ``images`` into the store ``out``.

    Returns a summary: ``path``, ``rows``, ``skipped`` (count), ``skipped_files`` ([path,
    reason]), ``seconds`` (the whole call), ``images_per_second`` (the streaming rate, once the
    network and the input pipeline are built), ``feature_dim``, ``backbone`` and more.
    ``write_images`` also writes the images as read (e.g. rotated by the task) to that folder.
    ``runtime`` (``auto``, ``keras``, ``openvino``, ``litert``, a plugin's) runs the network at
    ``precision`` (``"32"`` or ``"bf16"``) with ``threads`` threads (None: the runtime's
    default, every core; :func:`transferkit.inference.thread_split` computes a split from the
    measured costs); see ``docs/runtimes.md``. :func:`extract_many` writes several poolings'
    stores from one pass of the network. On a Dask cluster,
    :func:`transferkit.jobs.extract_dask.extract_on_cluster` writes the same store by shards
    (``transferkit.extract(..., scheduler=...)`` chooses it).
    """
    pooling = parse_pooling(pooling)
    summaries = extract_many(
        images,
        backbone=backbone,
        outs={pooling: out},
        store=store,
        weights=weights,
        input_size=input_size,
        batch_size=batch_size,
        task=task,
        shuffle=shuffle,
        seed=seed,
        resume=resume,
        overwrite=overwrite,
        strict=strict,
        max_pixels=max_pixels,
        progress=progress,
        compression=compression,
        buffer_rows=buffer_rows,
        write_images=write_images,
        runtime=runtime,
        precision=precision,
        threads=threads,
    )
    return summaries[pooling]


def extract_many(
    images: Any,
    *,
    backbone: Any,
    outs: Mapping[str, str | os.PathLike[str]],
    store: str | None = None,
    weights: Any = "default",
    input_size: Any = None,
    batch_size: int = 32,
    task: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    max_pixels: int | None = None,
    progress: bool = True,
    compression: str | None = "gzip",
    buffer_rows: int | None = None,
    write_images: str | os.PathLike[str] | None = None,
    runtime: str = "auto",
    precision: Any = "32",
    threads: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One pass of the network over ``images``, one store per pooling: ``outs`` maps each
    pooling (``avg``, ``max``, ``flatten``) to its store, e.g. ``{"avg": "a.h5", "max":
    "m.h5"}``. Each store equals what :func:`extract` with that pooling alone writes. Returns
    each pooling's summary (as :func:`extract`'s); the other options are :func:`extract`'s.
    With ``resume``, every store must hold the same images so far."""
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
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other; pick one")
    if batch_size <= 0:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    first_pooling = next(iter(targets))
    spec = backbone_spec(backbone, pooling=first_pooling)  # a name, or a caller's object
    recipes = {
        pooling: FeatureRecipe.create(
            spec.name, weights=weights, input_size=input_size, pooling=pooling, precision=precision
        )
        for pooling in targets
    }
    recipe = recipes[first_pooling]
    check_batch_fits(recipe.input_size, batch_size)
    if runtime and runtime != inference.AUTO:
        registry.runtime(runtime)  # an unknown runtime fails before any work
    backends = {p: backend_for(out, store) for p, out in targets.items()}  # unknown formats fail
    mode = "resume" if resume else "overwrite" if overwrite else "create"
    source, written = open_inputs(
        images,
        {out: backends[p] for p, out in targets.items()},
        mode=mode,
        task=task,
        seed=seed,
        max_pixels=max_pixels,
        write_images=write_images,
    )
    started = time.perf_counter()
    writers: dict[str, FeatureStoreWriter] = {}
    first_out = targets[first_pooling]
    try:
        built = spec.factory(weights=recipe.weights, input_size=recipe.input_size)
        net = pool(built, list(targets))  # one model for every pooling: one forward pass
        forward = inference.build_forward(
            net,
            backbone=spec.name,
            runtime=runtime,
            precision=recipe.precision,
            images=len(source),
            batch_size=batch_size,
            threads=threads,
        )
        widths: dict[str, int] = net.extra["widths"]
        configs: dict[str, dict[str, Any]] = {}
        for pooling, out in targets.items():
            made = recipes[pooling].replace(
                input_size=net.input_size, precision=forward.precision, runtime=forward.runtime
            )
            metadata = _metadata(made, spec, built, source, images, task, seed, shuffle)
            configs[pooling] = {
                **metadata,
                "out": out,
                "store": backends[pooling].name,
                "batch_size": batch_size,
                "resume": resume,
                "overwrite": overwrite,
                "strict": strict,
                "max_pixels": max_pixels,
            }
            writers[pooling] = create_store(
                out,
                feature_dim=widths[pooling],
                label_names=source.label_names,
                metadata=metadata,
                store=store,
                mode=mode,
                compression=compression,
                buffer_rows=buffer_rows or max(batch_size, 1024),
                must_match=_RESUME_KEYS,
            )
        summaries = _run(source, net, forward, writers, configs, strict=strict, progress=progress)
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()  # keep every finished row: --resume continues from here
        plugin_manager.notify_exception(exc, "extract", output=first_out, backbone=spec.name)
        if isinstance(exc, KeyboardInterrupt):
            for out, writer in zip(targets.values(), writers.values(), strict=False):
                print(
                    f"transferkit: interrupted; {writer.rows} rows are kept in {out}; "
                    f"run again with --resume to finish",
                    file=sys.stderr,
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


def _check_output(backend: Any, out: str, mode: str) -> None:
    """Refuse an output store that exists (without resume or overwrite), that another process
    writes, or that is not a store to replace."""
    if mode == "create" and backend.exists(out):
        raise StoreExistsError(
            f"{out} already exists; pass --overwrite to replace it or --resume to continue "
            f"an interrupted extraction into it"
        )
    holder = lock_holder(out)
    if holder is not None:
        raise StoreLockedError(
            f"{out} is being written by process {holder}; wait for it to finish or stop it "
            f"(if no process writes it, delete {out.rstrip('/')}.lock)"
        )
    if mode == "overwrite" and backend.exists(out):
        check_replaceable_store(backend, out)


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
    task: str | None,
    seed: int,
    shuffle: bool,
) -> dict[str, Any]:
    return {
        **recipe.to_metadata(),
        "weights_source": net.weights_source,
        "preprocessing": net.preprocessing or spec.preprocessing,
        "task": task or "",
        "seed": int(seed),
        "shuffle": bool(shuffle),
        "images": str(getattr(source, "location", "") or images),
        "transferkit_version": __version__,
        "param_count": net.param_count,
    }


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
    )
    return ((images, labels, index.numpy()) for images, labels, index in iter(ds))


def _run(
    source: ImageSource,
    net: Any,
    forward: Any,
    writers: dict[str, FeatureStoreWriter],
    configs: dict[str, dict[str, Any]],
    *,
    strict: bool,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    from ..pipeline import skip_reason

    first = next(iter(writers))
    writer, config = writers[first], configs[first]
    paths = source.paths
    order = _order(len(source), bool(config["shuffle"]), int(config["seed"]))
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
    pending: deque[int] = deque(int(i) for i in todo)

    def skip_until(index: int | None) -> None:
        while pending and pending[0] != index:
            i = pending.popleft()
            reason = skip_reason(source, i)
            if strict:
                raise TransferkitError(
                    f"{paths[i]} cannot be used ({reason}); --strict stops at the first bad "
                    f"file: remove or fix it, or run without --strict to skip and record it"
                )
            for each in writers.values():
                each.record_skipped(paths[i], reason)
            new_skips.append([path_text(paths[i]), reason])
        if index is not None and pending:
            pending.popleft()

    bar = tqdm(
        total=total,
        initial=already,
        disable=not progress,
        file=sys.stderr,
        unit="img",
        desc=f"extract {net.name}",
        dynamic_ncols=True,
        smoothing=0.1,
    )
    widths = {p: w.feature_dim for p, w in writers.items()}
    batches = _batches(source, todo, net, int(config["batch_size"]))
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
        skipped_files = [list(s) for s in each.skipped]
        summaries[pooling] = {
            "path": each.path,
            "store": configs[pooling]["store"],
            "rows": each.rows,
            "new_rows": computed - len(new_skips),
            "computed": computed,  # images this call looked at (0: a resume with nothing left)
            "skipped": len(skipped_files),
            "skipped_files": skipped_files,
            "images": total,
            "files_found": total + len(source.listing_skipped),
            "empty_classes": [path_text(n) for n in source.empty_classes],
            "warnings": _source_warnings(source),
            "resumed": each.resumed,
            "resumed_from": already,
            "seconds": round(seconds, 3),
            "stream_seconds": round(seconds, 3),  # "seconds" becomes the whole call's wall time
            "images_per_second": round(computed / seconds, 2) if seconds > 0 else 0.0,
            "feature_dim": each.feature_dim,
            "backbone": net.name,
            "weights_source": net.weights_source,
            "input_size": list(net.input_size),
            "pooling": pooling,
            "label_names": [path_text(n) for n in source.label_names],
            "task": configs[pooling]["task"] or None,
            **forward.describe(),
        }
    return summaries
