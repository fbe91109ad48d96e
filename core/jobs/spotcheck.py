"""``transferkit spotcheck``: every (features x classifier) pair, in parallel, never crashing.

Inputs are feature stores, or one image folder plus backbones: the folder's features are then
extracted once per backbone setting into the feature cache (:mod:`transferkit.jobs.feature_cache`)
keyed by backbone, weights, input size, pooling and the image list (paths, sizes, modification
times), so a second spot-check of the same images extracts nothing.

Each feature source is split once (stratified, seeded: :mod:`transferkit.splits`); its
train/test arrays are written to a scratch folder that workers memory-map. The pairs then run on
a runner: the local worker processes of :mod:`transferkit.jobs.spotcheck_runner` (at most
``jobs`` at a time, one BLAS thread each, ``timeout`` seconds a pair, started while the sources
are read, the costliest pairs first), or a Dask cluster
(:mod:`transferkit.jobs.spotcheck_dask`). A pair that raises is a ``failed`` row with the error;
one that runs past ``timeout`` seconds is killed and becomes a ``timeout`` row. Results are
seeded, so a parallel run gives the same rows as a serial one.

``out`` receives ``report.json`` (rows plus ``best_model``, ``best_accuracy`` and
``best_features`` at the top level, as the classic recipe's ``final_report.json``), ``report.csv``,
``heatmap.png`` (features x classifiers) and ``report.html`` (a sortable table and the picture):
:mod:`transferkit.jobs.spotcheck_report`.

With ``out``, each finished row is also appended to a journal as it completes
(:mod:`transferkit.jobs.spotcheck_journal`). Ctrl-C writes the finished rows as a report marked
``complete: false`` with ``pairs_left``, and a rerun with the same settings reads the journal and
computes only the missing pairs; the journal is removed once the report is complete.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import estimators, registry
from ..errors import TransferkitError, UsageError
from ..options import SpotcheckOptions
from ..plugin_manager import call_lifecycle, notify_exception
from ..recipe import FeatureRecipe
from .feature_cache import cached_stores, parse_backbone
from .spotcheck_journal import Journal, journal_key
from .spotcheck_report import check_report_folder, write_report
from .spotcheck_runner import (
    ROW_FIELDS,
    FeatureSource,
    Task,
    WorkerPool,
    builtin_factory,
    run_grid,
    save_split,
    start_fork_server,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- feature sources


def _store_label(location: Path) -> str:
    """A store's name in the grid: its file name, or for a file of the feature cache (named
    ``<backbone>-<key>.h5``) the settings it was made with, e.g. ``efficientnet-lite0@64:max``."""
    import re

    stem = location.stem
    if not re.fullmatch(r".+-[0-9a-f]{20}", stem):
        return stem
    recipe = _stored_recipe(location)
    return recipe.label() if recipe is not None else stem


def _stored_recipe(path: str | Path) -> FeatureRecipe | None:
    try:
        from ..store import open_store

        with open_store(str(path)) as reader:
            meta = reader.metadata
        return FeatureRecipe.from_metadata(meta) if meta.get("backbone") else None
    except Exception:
        return None


def recipe_label(path: str | Path) -> str | None:
    """How a store's features were made, as ``NAME@SIZE:POOLING`` (``efficientnet-lite0@96:max``),
    from its metadata; None when it does not say."""
    recipe = _stored_recipe(path)
    return None if recipe is None else recipe.text


def resolve_sources(inputs: list[str], options: SpotcheckOptions) -> list[FeatureSource]:
    """The grid's feature sets: the stores given, or with ``options.backbones`` one image
    folder's features under each backbone setting (from the feature cache)."""
    backbones, input_size, pooling = options.backbones, options.input_size, options.pooling
    if not inputs:
        raise UsageError("give feature stores, or an image folder with --backbones a,b")
    if backbones:
        if len(inputs) != 1 or not Path(inputs[0]).is_dir() or inputs[0].endswith(".zarr"):
            raise UsageError(
                "--backbones needs exactly one image folder (one sub-folder per class); "
                "to compare stores, pass the stores without --backbones"
            )
        settings: list[FeatureRecipe] = []
        specs: list[Any] = []
        texts: list[str] = []
        for item in backbones:
            spec = None
            if isinstance(item, str):
                text = item
                setting = parse_backbone(text, input_size, pooling)
                registry.backbone(setting.backbone)  # unknown names fail before any work
            else:  # a caller's Backbone or Keras model: cached by a hash of its weights
                from ..user_objects import backbone_spec

                spec = backbone_spec(item, pooling=pooling)
                setting = FeatureRecipe(
                    spec.name,
                    input_size=input_size,
                    pooling=pooling,
                    fingerprint=spec.metadata["fingerprint"],
                )
                text = setting.label()
            settings.append(setting)
            specs.append(spec)
            texts.append(text)
        # one pass of each network for all of its poolings
        found = cached_stores(inputs[0], settings, options.cache(), specs=specs)
        sources = []
        for text, (path, extracted) in zip(texts, found, strict=True):
            note = "extracted" if extracted else "reused from cache"
            log.info(f"features {text}: {note} ({path})")
            sources.append(FeatureSource(text, path, extracted))
        return sources
    sources = []
    for item in inputs:
        location = Path(item)
        if not location.exists():
            raise UsageError(f"{item} does not exist; pass feature stores or an image folder")
        if location.is_dir() and not item.rstrip("/").endswith(".zarr"):
            raise UsageError(
                f"{item} is a folder: to spot-check images, name backbones with "
                "--backbones efficientnet-lite0,..."
            )
        sources.append(FeatureSource(_store_label(location), str(location)))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        for s in sources:
            s.name = s.path
    return sources


# ---------------------------------------------------------------------- the job


def _prepare_split(
    source: FeatureSource,
    scratch: Path,
    test_size: float,
    seed: int,
    store: str | None,
    test: str | None = None,
) -> tuple[Path, list[str]]:
    """The source's train/test arrays as ``.npy`` files: a stratified split of its rows, or all
    of them against every row of the ``test`` store (checked to share recipe and classes)."""
    from ..splits import split_indices
    from .train import check_trainable, open_reader, read_test_store

    reader = open_reader(source.path, store)
    try:
        labels = np.asarray(reader.labels)
        label_names = [str(n) for n in reader.label_names]
        check_trainable(labels, label_names, source.path, split=test is None)
        if test is not None:
            X_test, y_test = read_test_store(reader, source.path, test, store)
            X_train, y_train = reader.read_rows(np.arange(len(labels)))
        else:
            train_rows, test_rows = split_indices(labels, test_size, seed)
            X_train, y_train = reader.read_rows(train_rows)
            X_test, y_test = reader.read_rows(test_rows)
    finally:
        reader.close()
    folder = Path(tempfile.mkdtemp(prefix="split-", dir=scratch))
    save_split(folder, X_train, y_train, X_test, y_test, len(label_names))
    return folder, label_names


def _test_stores(sources: list[FeatureSource], options: SpotcheckOptions) -> list[str | None]:
    """The test store of each source: ``test`` itself, or with ``--backbones`` and an image
    folder as ``test``, that folder's features under each source's setting (cached)."""
    test, backbones = options.test, options.backbones
    if test is None:
        return [None] * len(sources)
    location = Path(test)
    if not location.exists():
        raise UsageError(f"test set {test} does not exist; pass a feature store")
    if location.is_dir() and not str(test).rstrip("/").endswith(".zarr"):
        if not backbones:
            raise UsageError(
                f"test set {test} is a folder: give the feature store of the test images, or "
                "spot-check an image folder with --backbones (the test folder is then "
                "extracted the same way)"
            )
        settings = [parse_backbone(text, options.input_size, options.pooling) for text in backbones]
        # poolings of one network: one pass over the test images
        made = cached_stores(str(test), settings, options.cache())
        stores: list[str | None] = [path for path, _ in made]
        return stores
    return [str(test)] * len(sources)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["accuracy"], r["macro_f1"] or 0.0, -(r["fit_seconds"] or 0)))


def _select_classifiers(classifiers: Any) -> tuple[list[str], dict[str, Any]]:
    """Names of the grid's classifiers (registered names and groups, in order), and the caller's
    own estimators among them by the name they get in the report (their one-line repr)."""
    from ..user_objects import estimator_label, is_estimator

    items = [classifiers] if is_estimator(classifiers) else classifiers
    if isinstance(items, str) or not any(is_estimator(c) for c in items):
        return estimators.select(items), {}
    names: list[str] = []
    own: dict[str, Any] = {}
    for item in items:
        if is_estimator(item):
            label = estimator_label(item)
            while label in own or label in names:
                label += "'"
            own[label] = item
            names.append(label)
        else:
            names.extend(n for n in estimators.select(item) if n not in names)
    return names, own


def spotcheck(inputs: list[str] | str, *, options: SpotcheckOptions) -> dict[str, Any]:
    """Score every (features x classifier) pair; see the module docstring. Returns the report.

    ``test`` replaces the split: a feature store of separate test images (same recipe and class
    names as every source; all of each source's rows then train), or with ``backbones`` an image
    folder, extracted (and cached) with each backbone setting.

    ``runner`` replaces the local worker processes: called like :func:`run_grid` (without
    ``isolate``), e.g. the Dask runner of ``transferkit.jobs.spotcheck_dask``. ``runtime`` and
    ``precision`` are how images are extracted (see ``docs/runtimes.md``); bf16 features are
    cached apart from 32-bit ones.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]  # paths as text from here on
    if options.runner is None and options.isolate:
        # the local workers' fork server imports scikit-learn while the grid is chosen
        start_fork_server()
    test_size, seed, timeout, out, store = (
        options.test_size,
        options.seed,
        options.timeout,
        options.out,
        options.store,
    )
    names, own = _select_classifiers(options.classifiers)
    jobs = options.jobs or os.cpu_count() or 1
    if out is not None:  # refused before any work: an input, or a folder that is not ours
        check_report_folder(Path(out), [str(i) for i in inputs])
    started = time.perf_counter()
    # the local workers start now, while the sources are read and split
    pool = _early_pool(inputs, names, jobs, options)
    try:
        sources = resolve_sources(list(inputs), options)
        tests = _test_stores(sources, options)
        with tempfile.TemporaryDirectory(prefix="transferkit-spotcheck-") as scratch:
            tasks: list[Task] = []
            label_names: list[str] = []
            factories = {n: None if n in own else builtin_factory(n) for n in names}
            for source, test_store in zip(sources, tests, strict=True):
                folder, label_names = _prepare_split(
                    source, Path(scratch), test_size, seed, store, test_store
                )
                rows_x_features = _split_size(folder)
                for name in names:
                    task = Task(len(tasks), source.name, name, str(folder), seed, 1, own.get(name))
                    task.cost = _cost_hint(name, own) * rows_x_features
                    task.factory = factories[name]
                    tasks.append(task)
            journal = (
                Journal(Path(out), journal_key(sources, test_size, seed, store, tests))
                if out is not None
                else None
            )
            earlier = journal.load(timeout) if journal is not None else {}
            finished: dict[int, dict[str, Any]] = {}
            for task in tasks:
                if (task.source, task.classifier) in earlier:
                    finished[task.index] = earlier[(task.source, task.classifier)]
            todo = [t for t in tasks if t.index not in finished]
            if journal is not None:
                journal.open([finished[i] for i in sorted(finished)], timeout)
            log.info(
                f"spot-checking {len(names)} classifiers x {len(sources)} feature sets = "
                f"{len(tasks)} fits on {min(jobs, len(todo))} worker(s)"
                + (f"; {len(finished)} done in an earlier run" if finished else "")
            )
            for index in sorted(finished):
                _on_row(finished[index])

            by_pair = {(t.source, t.classifier): t.index for t in todo}

            def on_row(row: dict[str, Any]) -> None:
                index = by_pair.get((row["backbone"], row["classifier"]))
                if index is not None:
                    finished[index] = row
                if journal is not None:
                    journal.append(row)
                _on_row(row)

            grid: dict[str, Any] = {
                "jobs": jobs,
                "timeout": timeout,
                "progress": options.progress,
                "on_row": on_row,
            }
            interrupted = False
            try:
                if todo:
                    run = options.runner or functools.partial(
                        run_grid, isolate=options.isolate, pool=pool
                    )
                    # the runner's rows are the result; on_row only keeps them on Ctrl-C
                    for task, row in zip(todo, run(todo, **grid), strict=True):
                        finished[task.index] = row
            except KeyboardInterrupt:
                interrupted = True
            except BaseException:
                if journal is not None:
                    journal.close()
                raise
            rows = [finished[t.index] for t in tasks if t.index in finished]
    except TransferkitError:
        raise
    except Exception as exc:
        notify_exception(exc, "spotcheck", inputs=list(inputs), classifiers=names)
        raise
    finally:
        if pool is not None:  # workers the grid did not take (closed by run_grid otherwise)
            pool.close()
    best = best_row(rows)
    report: dict[str, Any] = {
        "best_model": best["classifier"] if best else None,
        "best_accuracy": best["accuracy"] if best else None,
        "best_features": best["backbone"] if best else None,
        "best_macro_f1": best["macro_f1"] if best else None,
        "classifiers": names,
        "features": [
            {
                "name": s.name,
                "store": s.path,
                "extracted": s.extracted,
                "recipe": recipe_label(s.path),
            }
            for s in sources
        ],
        "best_confusion": best.get("confusion") if best else None,
        "label_names": label_names,
        "test_size": None if options.test is not None else test_size,
        "test": None if options.test is None else str(options.test),
        "seed": seed,
        "jobs": jobs,
        "timeout": timeout,
        "seconds": time.perf_counter() - started,
        "counts": {
            status: sum(r["status"] == status for r in rows)
            for status in ("ok", "failed", "timeout")
        },
        "rows": [{k: r.get(k) for k in ROW_FIELDS} for r in rows],
        "complete": not interrupted,
        "pairs_left": len(tasks) - len(rows),
    }
    if out is not None:
        try:
            report["files"] = write_report(report, Path(out))
        finally:  # the journal goes once the report is complete; the lock goes in any case
            if journal is not None:
                journal.close(remove=not interrupted and "files" in report)
    if interrupted:
        where = f"written to {out} (marked incomplete)" if out is not None else "not saved"
        again = (
            "run the same command again to compute only those"
            if out is not None
            else "pass --out to keep finished pairs across runs"
        )
        log.warning(
            f"interrupted; {len(rows)} of {len(tasks)} pairs finished, "
            f"{report['pairs_left']} left; the finished rows are {where}; {again}"
        )
        raise KeyboardInterrupt
    return report


def _early_pool(
    inputs: list[str], names: list[str], jobs: int, options: SpotcheckOptions
) -> WorkerPool | None:
    """The local runner's workers, started before the sources are read (None for another
    runner or the in-process loop)."""
    if options.runner is not None or not options.isolate:
        return None
    sources = len(options.backbones) if options.backbones else len(inputs)
    return WorkerPool(min(jobs, len(names) * max(sources, 1)))


def _cost_hint(name: str, own: dict[str, Any]) -> float:
    """A classifier's relative fit time (its spec's ``cost`` metadata; 1 when it does not say)."""
    if name in own:
        return 1.0
    try:
        return float(registry.classifier(name).metadata.get("cost", 1.0))
    except (TransferkitError, TypeError, ValueError):
        return 1.0


def _split_size(folder: Path) -> int:
    """Training rows x features of a split written by ``save_split``."""
    return int(np.load(folder / "X_train.npy", mmap_mode="r").size)


def _on_row(row: dict[str, Any]) -> None:
    call_lifecycle("on_spotcheck_result", row={k: row.get(k) for k in ROW_FIELDS})
