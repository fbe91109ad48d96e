"""Feature extraction on a Dask cluster: shards of images computed by workers into one Zarr store.

``extract(..., scheduler="tcp://host:8786")`` (or ``"local"``: a local cluster of ``jobs``
single-threaded worker processes) cuts the run's image order (sorted, or the seeded shuffle)
into shards of whole Zarr chunks (:func:`transferkit.store.shard_layout`). Each worker builds
the backbone once (per worker process and recipe, not per shard), reads its shards' images
from their paths, and writes their rows, paths, labels and skipped files straight into the
store (:func:`transferkit.store.write_shard`), marking each shard complete after its rows.
The client lists the images, holds the store's lock, feeds a progress bar from the shards as
they complete, and at the end makes the store exactly what one process would have written
(:class:`transferkit.store.ShardedStoreWriter`). ``resume`` computes only the shards that are
not complete; a worker killed mid-shard loses that shard only, which Dask runs again
elsewhere (a shard written twice writes the same rows over the same rows).

The workers read the images by their paths and write the store by its path, so both must be
on storage every worker sees under the same names: the client checks it on every worker
before any work (and each shard checks its first image), naming the host and the path.

Test hook: ``TRANSFERKIT_TEST_SHARD_PAUSE="SECONDS[:FOLDER]"`` in a worker's environment makes
it pause that long after a shard's rows are written and before its completion mark, writing
its process id into ``FOLDER/<shard>.<pid>`` first, so that a test can kill a worker in the
middle of a shard. It is meant for tests only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import inference, plugin_manager, registry
from ..errors import TransferkitError, UsageError
from ..images import ImageSource
from ..options import ExtractOptions
from ..pooling import pool
from ..recipe import FeatureRecipe
from ..sizes import check_batch_fits
from ..specs import Resize, TokenLayout
from ..store import (
    ShardedStoreWriter,
    backend_for,
    path_text,
    write_shard,
)
from ..user_objects import backbone_spec
from .extract import (
    _RESUME_KEYS,
    _metadata,
    _order,
    check_runtime,
    extract_summary,
    open_inputs,
    progress_bar,
)

log = logging.getLogger(__name__)

PAUSE_ENV = "TRANSFERKIT_TEST_SHARD_PAUSE"
WAIT_FOR_WORKERS = 60.0  # seconds a scheduler without workers is given to get one


@dataclass(frozen=True)
class WorkerBuild:
    """What a worker builds: the features' build, and the runtime that runs its network."""

    features: FeatureRecipe
    runtime: str
    threads: int | None
    batch_size: int
    images: int
    plugins: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- on a worker

_lock = threading.Lock()
_nets: dict[WorkerBuild, tuple[Any, Any]] = {}
_plugins: set[str] = set()
_builds: list[WorkerBuild] = []  # every build in this worker process (tests count them)
_KEEP_NETS = 4  # recipes a worker keeps built between runs


def _worker_net(build: WorkerBuild) -> tuple[Any, Any]:
    """The backbone and forward function of ``build`` in this worker process, built once."""
    if build.runtime != inference.AUTO:  # the image count only helps ``auto`` choose
        build = replace(build, images=0)
    with _lock:
        if build in _nets:
            return _nets[build]
        while len(_nets) >= 2 * _KEEP_NETS:  # a long-lived worker keeps the last few recipes
            del _nets[next(iter(_nets))]
        missing = [p for p in build.plugins if p not in _plugins]
        if missing:
            from .spotcheck_runner import register_runtime_plugins

            register_runtime_plugins(missing)
            _plugins.update(missing)
        if build.threads and not _builds:
            import contextlib

            import tensorflow as tf

            with contextlib.suppress(RuntimeError):  # TensorFlow had started already
                tf.config.threading.set_intra_op_parallelism_threads(build.threads)
                tf.config.threading.set_inter_op_parallelism_threads(build.threads)
        spec = registry.backbone(build.features.backbone)
        made = spec.factory(weights=build.features.weights, input_size=build.features.input_size)
        net = pool(made, build.features.pooling)
        forward = inference.build_forward(
            net,
            backbone=spec.name,
            runtime=build.runtime,
            precision=build.features.precision,
            images=build.images,
            batch_size=build.batch_size,
            threads=build.threads,
        )
        _builds.append(build)
        _nets[build] = (net, forward)
        # ``auto`` resolved: the shards then ask for the runtime it chose
        _nets[replace(build, runtime=forward.runtime, images=0)] = (net, forward)
        return net, forward


def _where() -> str:
    return f"{socket.gethostname()} (process {os.getpid()})"


def _unreadable(path: str) -> str | None:
    """Why this process cannot read ``path``, or None."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_worker(first_image: str, out: str) -> dict[str, Any]:
    """Runs on every worker before any work: can it read the first image and see the store's
    folder? Returns ``host`` and ``problems`` (empty when it can)."""
    problems = []
    reason = _unreadable(first_image)
    if reason:
        problems.append(f"cannot read {path_text(first_image)} ({reason})")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        problems.append(f"cannot see the output folder {path_text(folder)}")
    return {"host": _where(), "problems": problems}


def describe_on_worker(build: WorkerBuild) -> dict[str, Any]:
    """Builds the backbone on a worker (kept there for its shards) and returns what the store's
    metadata needs."""
    net, forward = _worker_net(build)
    return {
        "feature_dim": int(net.feature_dim),
        "weights_source": net.weights_source,
        "input_size": list(net.input_size),
        "pooling": net.pooling,
        "preprocessing": net.preprocessing,
        "param_count": net.param_count,
        "name": net.name,
        "tokens": net.tokens.describe() if net.tokens is not None else None,
        "resize": net.resize.describe(),
        "forward": forward.describe(),
        "host": _where(),
    }


def _pause(shard: int) -> None:
    """The test hook (see the module docstring)."""
    value = os.environ.get(PAUSE_ENV, "")
    if not value:
        return
    seconds, _, folder = value.partition(":")
    if folder:
        with open(os.path.join(folder, f"{shard}.{os.getpid()}"), "w") as fh:
            fh.write(str(os.getpid()))
    time.sleep(float(seconds))


def shard_on_worker(
    build: WorkerBuild,
    shard: int,
    source: ImageSource,
    out: str,
    store: str | None,
    strict: bool,
) -> dict[str, Any]:
    """Runs on a worker: computes one shard (the images of ``source``, in order) and writes
    it into the store ``out``."""
    from .extract import _batches, skipper

    started = time.perf_counter()
    paths = source.paths
    if paths and _unreadable(paths[0]) and not os.path.isdir(os.path.dirname(paths[0]) or "."):
        raise TransferkitError(
            f"worker {_where()} cannot read {path_text(paths[0])} (shard {shard}): every "
            f"worker must see the images under the same paths (shared storage)"
        )
    net, forward = _worker_net(build)
    skipped: list[list[str]] = []
    skip_until = skipper(
        source, range(len(source)), strict, lambda path, why: skipped.append([path_text(path), why])
    )

    rows_x: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    rows_p: list[str] = []
    ready = time.perf_counter()  # the backbone is built (once per worker)
    first_batch = None
    for images, labels, idx in _batches(source, np.arange(len(source)), net, int(build.batch_size)):
        if first_batch is None:
            first_batch = time.perf_counter() - ready
        features = forward(images)
        if features.shape[1] != net.feature_dim:
            raise TransferkitError(
                f"backbone {net.name} gave {features.shape[1]}-d features but said "
                f"{net.feature_dim}; the backbone plugin is wrong"
            )
        for i in idx:
            skip_until(int(i))
        rows_x.append(features)
        rows_y.append(labels.numpy())
        rows_p.extend(paths[i] for i in idx)
    skip_until(None)
    x = np.concatenate(rows_x) if rows_x else np.zeros((0, net.feature_dim), np.float32)
    y = np.concatenate(rows_y) if rows_y else np.zeros(0, np.int64)
    computed = time.perf_counter() - started
    rows = write_shard(
        out, shard, x, y, rows_p, skipped, store=store, before_mark=lambda: _pause(shard)
    )
    written = time.perf_counter() - started - computed
    return {
        "shard": shard,
        "rows": rows,
        "skipped": len(skipped),
        "host": _where(),
        "builds": len(_builds),
        "compute_seconds": round(computed, 4),
        # the pipeline's start up to its first batch (the backbone built already), and the write
        "first_batch_seconds": round(first_batch or 0.0, 4),
        "write_seconds": round(written, 4),
        "seconds": round(time.perf_counter() - started, 4),
        "runtime": forward.runtime,
    }


# ---------------------------------------------------------------------------- on the client


def _check_workers(client: Any, source: ImageSource, out: str) -> None:
    """Every worker must read the images and see the output folder (shared storage)."""
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
    except TimeoutError:
        raise UsageError(
            f"the Dask scheduler has no workers (waited {WAIT_FOR_WORKERS:g} s); start some "
            f"with `dask worker ADDRESS` on machines that see the images and the output"
        ) from None
    first = source.paths[0]
    if _unreadable(first):  # a bad file here too: the shard skips and records it
        return
    answers = client.run(check_worker, first, out)
    bad = [a for a in answers.values() if a["problems"]]
    if bad:
        lines = "; ".join(f"worker {a['host']}: {', '.join(a['problems'])}" for a in bad[:5])
        raise UsageError(
            f"{len(bad)} of {len(answers)} Dask workers cannot reach the images or the output: "
            f"{lines}. Every worker must see the images and the output under the same paths "
            f"(shared storage; absolute paths)"
        )


def _check_done(
    writer: ShardedStoreWriter, done: dict[int, int], order: np.ndarray, paths: Any
) -> None:
    """A resumed shard must hold exactly the images this run puts in it."""
    from collections import Counter

    for shard in sorted(done):
        start, stop = writer.shard_bounds(shard)
        want = Counter(path_text(paths[i]) for i in order[start:stop])
        stored, skips = writer.shard_written(shard, done[shard])
        if Counter(stored) + Counter(p for p, _ in skips) != want:
            raise UsageError(
                f"cannot resume {writer.path}: shard {shard} holds other images than this run "
                f"puts there (were images added, removed or renamed?); pass --overwrite to "
                f"start again"
            )


def extract_on_cluster(
    images: Any, *, backbone: Any, out: str | os.PathLike[str], options: ExtractOptions
) -> dict[str, Any]:
    """:func:`transferkit.jobs.extract.extract` on the Dask cluster ``options.scheduler``; the
    same store and summary (plus ``scheduler``, ``workers``, ``shards``, ``shards_before``,
    ``dashboard``)."""
    out = os.fspath(out)
    scheduler = str(options.scheduler)
    check_runtime(options.runtime)
    backend = backend_for(out, options.store)
    if not backend.concurrent_writers:
        raise UsageError(
            f"a {backend.name} store cannot take the writes of several workers at once; "
            f"extract on a cluster into a .zarr store (e.g. --out "
            f"{os.path.splitext(out)[0]}.zarr), or drop --scheduler"
        )
    spec = backbone_spec(backbone, pooling=options.pooling)
    features = options.recipe(spec.name)
    check_batch_fits(features.input_size, options.batch_size)
    if not isinstance(backbone, str):
        raise UsageError(
            "a cluster extraction needs the backbone by name (a registered backbone), so "
            "that every worker can build it"
        )
    source, written = open_inputs(images, {out: backend}, options)

    from .. import cluster

    started = time.perf_counter()
    local = scheduler == "local"
    workers_wanted = options.jobs or os.cpu_count() or 1
    threads = options.threads
    if local and threads is None:  # the local workers share this machine's cores
        threads = max(1, (os.cpu_count() or 1) // workers_wanted)
    from .spotcheck_runner import runtime_plugins

    build = WorkerBuild(
        features=features,
        runtime=options.runtime or inference.AUTO,
        threads=threads,
        batch_size=options.batch_size,
        images=len(source),
        plugins=tuple(runtime_plugins()),
    )
    client = cluster.connect(scheduler, workers_wanted)
    writer: ShardedStoreWriter | None = None
    try:
        dashboard = cluster.dashboard_link(client)
        log.warning(f"Dask dashboard: {dashboard}" if dashboard else cluster.NO_DASHBOARD)
        _check_workers(client, source, out)
        try:
            info = client.submit(describe_on_worker, build, pure=False).result()
        except Exception as exc:  # e.g. a backbone or runtime a worker does not have
            raise _shard_error(exc) from exc
        build = replace(build, runtime=info["forward"]["runtime"])
        tokens = info.get("tokens")
        net = SimpleNamespace(
            **{k: info[k] for k in info if k not in ("forward", "tokens", "resize")},
            resize=Resize.from_description(info.get("resize")),
            tokens=None
            if not tokens
            else TokenLayout(
                prefix=int(tokens["prefix"]),
                grid=(int(tokens["grid"][0]), int(tokens["grid"][1])),
                class_token=bool(tokens["class_token"]),
            ),
        )
        made = features.replace(
            input_size=tuple(info["input_size"]),
            precision=info["forward"]["precision"],
            runtime=info["forward"]["runtime"],
        )
        metadata = _metadata(made, spec, net, source, images, options)
        writer = ShardedStoreWriter(
            backend,
            out,
            feature_dim=int(info["feature_dim"]),
            label_names=source.label_names,
            metadata=metadata,
            mode=options.mode,
            compression=options.compression,
            images=len(source),
            shard_rows=options.shard_rows,
            must_match=_RESUME_KEYS,
        )
        summary = _run(client, writer, source, build, info, metadata, options)
    except BaseException as exc:
        if writer is not None:
            try:
                done = len(writer.done_shards())
            except Exception:
                done = 0
            writer.close(complete=False)
            if isinstance(exc, KeyboardInterrupt):
                log.warning(
                    "interrupted; %s of %s shards are kept in %s; run again with --resume to "
                    "finish",
                    done,
                    writer.shards,
                    out,
                )
        plugin_manager.notify_exception(exc, "extract", output=out, backbone=spec.name)
        raise
    finally:
        cluster.close(client, scheduler)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["scheduler"] = scheduler
    summary["dashboard"] = dashboard
    if written is not None:
        summary["written_images"] = {k: written[k] for k in ("out", "written", "skipped")}
    plugin_manager.call_lifecycle("on_extract_end", output=out, summary=summary)
    return summary


def _run(
    client: Any,
    writer: ShardedStoreWriter,
    source: ImageSource,
    build: WorkerBuild,
    info: dict[str, Any],
    metadata: dict[str, Any],
    options: ExtractOptions,
) -> dict[str, Any]:
    from distributed import as_completed

    strict, store = options.strict, options.store
    paths = source.paths
    order = _order(len(source), options.shuffle, options.seed)
    done = writer.done_shards()
    if done and not writer.finishing:  # once rows move, shards are no longer where they were
        _check_done(writer, done, order, paths)
    todo = [] if writer.complete_before else [s for s in range(writer.shards) if s not in done]
    bounds = [writer.shard_bounds(s) for s in done]
    already = len(source) if writer.complete_before else sum(b - a for a, b in bounds)
    config = {
        **metadata,
        "out": writer.path,
        "store": writer.backend.name,
        "batch_size": build.batch_size,
        "strict": strict,
        "scheduler": True,
    }
    plugin_manager.call_lifecycle(
        "on_extract_start",
        backbone=build.features.backbone,
        total=len(source) - already,
        output=writer.path,
        config=config,
    )
    desc = f"extract {build.features.backbone} ({len(todo)} shards)"
    bar = progress_bar(len(source), int(already), options.progress, desc)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    futures = []
    try:
        for s in todo:
            start, stop = writer.shard_bounds(s)
            sub = source.subset(order[start:stop].tolist())
            futures.append(
                client.submit(
                    shard_on_worker, build, s, sub, writer.path, store, strict, pure=False
                )
            )
        rows_done = 0
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:
                raise _shard_error(exc) from exc
            results.append(result)
            bar.update(result["rows"] + result["skipped"])
            rows_done += result["rows"]
            bar.set_postfix(skipped=sum(r["skipped"] for r in results), refresh=False)
            plugin_manager.call_lifecycle(
                "on_extract_batch",
                rows_written=rows_done,
                total=len(source),
                batch_size=result["rows"],
                skipped=sum(r["skipped"] for r in results),
            )
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    recorded = writer.skipped_paths
    listed = [[p, r] for p, r in source.listing_skipped if path_text(p) not in recorded]
    writer.finish(listed)
    computed = len(source) - int(already)
    return {
        **extract_summary(
            source,
            writer,
            store=writer.backend.name,
            computed=computed,
            new_skips=sum(r["skipped"] for r in results),
            already=int(already),
            seconds=seconds,
            backbone=build.features.backbone,
            net=info,
            task=metadata["task"],
            forward=info["forward"],
        ),
        "workers": len(client.nthreads()),
        "shards": writer.shards,
        "shard_rows": writer.shard_rows,
        "shards_before": len(done),
        "shard_results": sorted(results, key=lambda r: r["shard"]),
    }


def _shard_error(exc: BaseException) -> BaseException:
    """A shard's failure as the client reports it."""
    if isinstance(exc, TransferkitError):
        return exc
    name = type(exc).__name__
    if name == "KilledWorker":
        return TransferkitError(
            f"a shard killed every worker that ran it ({exc}); the complete shards are kept: "
            f"fix the cause and run again with --resume"
        )
    return TransferkitError(f"a shard failed on a worker: {name}: {exc}")
