"""``transferkit spotcheck``: every (features x classifier) pair, in parallel, never crashing.

Inputs are feature stores, or one image folder plus backbones: the folder's features are then
extracted once per backbone setting into a cache (:func:`cached_store`) keyed by backbone,
weights, input size, pooling and the image list (paths, sizes, modification times), so a second
spot-check of the same images extracts nothing.

Each feature source is split once (stratified, seeded); its train/test arrays are written to a
scratch folder as ``.npy`` files that workers memory-map. Every pair then runs in its own worker
process (forkserver: a clean process, not a fork of a parent that may hold TensorFlow threads),
at most ``jobs`` at a time, each limited to one BLAS/OpenMP thread so that results do not depend
on the degree of parallelism. A pair that raises is a ``failed`` row with the error; one that
runs past ``timeout`` seconds is killed and becomes a ``timeout`` row. Results are seeded, so a
parallel run gives the same rows as a serial one.

Workers are started with multiprocessing's forkserver method. A script with an
``if __name__ == "__main__":`` guard is imported by the workers as usual (so classes it defines
unpickle there); a plain script without one is not (:func:`_unguarded_main_hidden`): importing
it would run the spot-check again inside the worker. The ``transferkit`` command, notebooks and
pytest need nothing.

``out`` receives ``report.json`` (rows plus ``best_model``, ``best_accuracy`` and
``best_features`` at the top level, as the classic recipe's ``final_report.json``), ``report.csv``,
``heatmap.png`` (features x classifiers) and ``report.html`` (a sortable table and the picture).

With ``out``, each finished row is also appended to ``out/spotcheck-journal.jsonl`` as it
completes, under a key of the settings (the stores' identities, the split's seed and size, the
transferkit version). Ctrl-C writes the finished rows as a report marked ``complete: false``
with ``pairs_left``, and a rerun with the same settings reads the journal and computes only the
missing pairs; the journal is removed once the report is complete.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import html
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import estimators, outputs, registry
from ..errors import TransferkitError, UsageError
from ..plugin_manager import call_lifecycle, notify_exception
from ..recipe import FeatureRecipe, parse_precision

ROW_FIELDS = (
    "backbone",
    "classifier",
    "status",
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "fit_seconds",
    "predict_seconds",
    "error",
)
CACHE_ENV = "TRANSFERKIT_CACHE"
# Imported once by the fork server, so that each worker starts with them loaded (TensorFlow is
# never among them: workers only fit classifiers).
PRELOAD = [
    "numpy",
    "pandas",
    "sklearn.base",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "sklearn.svm",
    "sklearn.neighbors",
    "sklearn.tree",
    "sklearn.ensemble",
    "sklearn.naive_bayes",
    "sklearn.neural_network",
    "sklearn.metrics",
    "sklearn.model_selection",
    "threadpoolctl",
    "transferkit.estimators",
    "transferkit.plugin_manager",
    "transferkit.registry",
]


# ---------------------------------------------------------------------- feature sources


@dataclass
class FeatureSource:
    """One column of the grid: a store and the name its rows carry."""

    name: str
    path: str
    extracted: bool = False


def default_cache_dir() -> Path:
    from ..inference import cache_root

    return cache_root() / "features"


def parse_backbone(text: str, input_size: Any = None, pooling: str = "avg") -> FeatureRecipe:
    """``NAME[@SIZE][:POOLING]`` (e.g. ``efficientnet-lite0@128:max``) as a :class:`FeatureRecipe`
    (see :meth:`FeatureRecipe.parse`)."""
    return FeatureRecipe.parse(text, input_size=input_size, pooling=pooling)


def image_list_digest(records: list[Any]) -> str:
    """A hash of the images (path, label, size, mtime): any change makes a new cache entry."""
    digest = hashlib.sha256()
    for record in records:
        try:
            st = os.stat(record.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        line = f"{os.path.abspath(record.path)}\0{record.label}\0{stamp}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # names that are not UTF-8
    return digest.hexdigest()


def cache_key(
    setting: FeatureRecipe | dict[str, Any], weights: Any, images_digest: str, precision: Any = "32"
) -> str:
    """The feature cache's key of ``setting`` (a recipe, or a mapping of its fields) with these
    weights and precision over an image list; see :meth:`FeatureRecipe.cache_key`."""
    if not isinstance(setting, FeatureRecipe):
        setting = FeatureRecipe(
            backbone=setting["backbone"],
            input_size=setting.get("input_size"),
            pooling=setting.get("pooling") or "avg",
            fingerprint=setting.get("fingerprint") or "",
        )
    recipe = setting.replace(weights=weights, precision=parse_precision(precision))
    return recipe.cache_key(images_digest)


def cached_store(
    images: str | Path,
    setting: FeatureRecipe,
    *,
    weights: Any = "default",
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    runtime: str = "auto",
    precision: Any = "32",
    spec: Any = None,
) -> tuple[str, bool]:
    """The store of ``images`` under the recipe ``setting`` (with these ``weights`` and
    ``precision``): from the cache, or extracted into it. ``spec`` is the backbone when it is
    not a registered name (a caller's ``Backbone`` or Keras model).

    Returns ``(path, extracted_now)``. Extraction writes to a temporary name and renames it when
    complete, so an interrupted run never leaves a half store that a later run would reuse.
    """
    return cached_stores(
        images,
        [setting],
        weights=weights,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        runtime=runtime,
        precision=precision,
        specs=[spec],
    )[0]


def cached_stores(
    images: str | Path,
    settings: list[FeatureRecipe],
    *,
    weights: Any = "default",
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    runtime: str = "auto",
    precision: Any = "32",
    specs: list[Any] | None = None,
) -> list[tuple[str, bool]]:
    """:func:`cached_store` of each recipe of ``settings``, in order. Recipes that differ only in
    their pooling and are not cached yet are extracted together: one pass of the network writes
    each pooling's store (:func:`transferkit.jobs.extract.extract_many`)."""
    from ..images import open_source
    from .extract import extract_many

    recipes = [s.replace(weights=weights, precision=parse_precision(precision)) for s in settings]
    objects = list(specs or [None] * len(recipes))
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    outputs.check_outside_inputs(cache, [images], "feature cache")
    outputs.ensure_folder(cache)
    digest = image_list_digest(list(open_source(str(images)).records))
    finals = [cache / f"{r.backbone}-{r.cache_key(digest)}.h5" for r in recipes]
    cached = [final.exists() for final in finals]
    groups: list[list[int]] = []  # missing stores, grouped by network
    for i, recipe in enumerate(recipes):
        if cached[i] or any(finals[g[0]] == finals[i] for g in groups):
            continue
        group = next((g for g in groups if recipes[g[0]].same_network(recipe)), None)
        if group is None:
            groups.append([i])
        elif all(recipes[j].pooling != recipe.pooling for j in group):
            group.append(i)
        else:
            groups.append([i])
    for group in groups:
        first = recipes[group[0]]
        partials = {
            recipes[i].pooling: finals[i].with_name(finals[i].stem + ".partial.h5") for i in group
        }
        extract_many(
            str(images),
            backbone=objects[group[0]] or first.backbone,
            outs={p: str(path) for p, path in partials.items()},
            weights=first.weights,
            input_size=first.input_size,
            batch_size=batch_size,
            overwrite=True,
            progress=progress,
            runtime=runtime,
            precision=first.precision,
        )
        for i in group:
            with outputs.writing(finals[i]):
                os.replace(partials[recipes[i].pooling], finals[i])
    return [(str(final), not was) for final, was in zip(finals, cached, strict=True)]


def setting_label(setting: FeatureRecipe, default_size: Any, default_pooling: str) -> str:
    """The name of a recipe's features in the grid; see :meth:`FeatureRecipe.label`."""
    return setting.label(default_size, default_pooling)


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


def resolve_sources(
    inputs: list[str],
    backbones: list[str] | None,
    *,
    weights: Any,
    input_size: Any,
    pooling: str,
    cache_dir: str | Path | None,
    batch_size: int,
    progress: bool,
    runtime: str = "auto",
    precision: Any = "32",
) -> list[FeatureSource]:
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
                setting = FeatureRecipe.create(
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
        found = cached_stores(
            inputs[0],
            settings,
            weights=weights,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
            runtime=runtime,
            precision=precision,
            specs=specs,
        )
        sources = []
        for text, (path, extracted) in zip(texts, found, strict=True):
            note = "extracted" if extracted else "reused from cache"
            print(f"features {text}: {note} ({path})", file=sys.stderr)
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


# ---------------------------------------------------------------------- workers


@dataclass
class Task:
    index: int
    source: str
    classifier: str
    data: str  # folder of the source's memory-mapped split
    seed: int
    threads: int = 1
    estimator: Any = None  # a caller's own estimator (cloned in the worker), else built by name


def _set_thread_env(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def load_split(folder: str | Path) -> dict[str, np.ndarray]:
    """The train/test split a task fits on, as written by ``_prepare_split`` (memory-mapped)."""
    data = Path(folder)
    return {
        "X_train": np.load(data / "X_train.npy", mmap_mode="r"),
        "y_train": np.load(data / "y_train.npy"),
        "X_test": np.load(data / "X_test.npy", mmap_mode="r"),
        "y_test": np.load(data / "y_test.npy"),
        "classes": np.load(data / "classes.npy"),
    }


def run_pair(task: Task, split: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Fit and score one pair (in whatever process calls it); never raises.

    ``split`` is the data when the caller has it in memory (Dask workers); otherwise it is read
    from ``task.data``.
    """
    import warnings

    row: dict[str, Any] = {"backbone": task.source, "classifier": task.classifier}
    try:
        from threadpoolctl import threadpool_limits

        # convergence and degenerate-feature warnings would interleave with the progress bar;
        # the row's scores say what matters
        warnings.simplefilter("ignore")

        data = split if split is not None else load_split(task.data)
        with threadpool_limits(limits=task.threads):
            if task.estimator is not None:
                from ..user_objects import fresh_estimator

                model = fresh_estimator(task.estimator)
            else:
                model = estimators.build(task.classifier, seed=task.seed)
            start = time.perf_counter()
            fitted = estimators.fit(
                model, np.asarray(data["X_train"]), data["y_train"], classes=data["classes"]
            )
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            predicted = estimators.predict(fitted, np.asarray(data["X_test"]))
            predict_seconds = time.perf_counter() - start
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        y_test = data["y_test"]
        row.update(
            status="ok",
            accuracy=float(accuracy_score(y_test, predicted)),
            macro_f1=float(f1_score(y_test, predicted, average="macro", zero_division=0)),
            balanced_accuracy=float(balanced_accuracy_score(y_test, predicted)),
            fit_seconds=fit_seconds,
            predict_seconds=predict_seconds,
            error=None,
        )
        from sklearn.metrics import confusion_matrix

        # for the report's picture of the best pair (not a row field)
        row["confusion"] = confusion_matrix(y_test, predicted, labels=data["classes"]).tolist()
    except Exception as exc:
        row.update(_empty_metrics(), status="failed", error=f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=8)
    return row


def _empty_metrics() -> dict[str, Any]:
    return {
        "accuracy": None,
        "macro_f1": None,
        "balanced_accuracy": None,
        "fit_seconds": None,
        "predict_seconds": None,
    }


def runtime_plugins() -> list[str]:
    """References (``module`` or ``module:Class``) of plugins registered in this process at run
    time (not built-in, not entry points), so that worker processes register them too."""
    from .. import plugin_manager

    pm = plugin_manager.get_plugin_manager()
    entry_points = {ep.name for ep in plugin_manager.selected_entry_points()}
    refs = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or plugin_manager.is_builtin(name) or name in entry_points:
            continue
        if isinstance(plugin, type(os)):
            refs.append(f"{plugin.__name__}")
        else:
            cls = type(plugin)
            refs.append(f"{cls.__module__}:{cls.__qualname__}")
    return refs


def _register_runtime_plugins(refs: list[str]) -> None:
    import importlib

    from .. import plugin_manager

    pm = plugin_manager.get_plugin_manager()
    for ref in refs:
        module_name, _, qualname = ref.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, qualname.split(".")):
            obj = getattr(obj, part)
        plugin = obj() if qualname else obj
        pm.register(plugin, name=f"runtime:{ref}")
    registry.clear_cache()


def _kill(proc: Any) -> None:
    """Kill a worker and whatever it started (its process group: e.g. the processes of an
    ``n_jobs=-1`` estimator), so that a timed-out fit leaves nothing running."""
    import signal

    with contextlib.suppress(OSError, AttributeError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.join(5)


def _failed_row(task: Task, status: str, error: str) -> dict[str, Any]:
    row = {"backbone": task.source, "classifier": task.classifier, **_empty_metrics()}
    row.update(status=status, error=error)
    return row


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when its parent dies: the fork server, which
    ends when the spot-check's process does, however it ends (a SIGKILL included). Without it a
    worker in a process group of its own outlives a killed spot-check until its fit is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was gone already
            os._exit(1)


def _worker(conn: Connection, env: dict[str, str], plugins: list[str], threads: int) -> None:
    """A long-lived worker: fits the tasks it receives until it gets ``None``."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)  # a group of its own: a time-out kills the worker's children too
    _die_with_parent()
    os.environ.update(env)
    _set_thread_env(threads)
    plugin_error: str | None = None
    try:
        _register_runtime_plugins(plugins)
    except Exception as exc:
        plugin_error = f"cannot load plugin in worker: {exc}"
    try:
        while (task := conn.recv()) is not None:
            if plugin_error is not None:
                conn.send(_failed_row(task, "failed", plugin_error))
            else:
                conn.send(run_pair(task))
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class _Worker:
    """A worker process and the end of its pipe; ``task`` is what it is fitting, if anything."""

    def __init__(self, ctx: Any, env: dict[str, str], plugins: list[str], threads: int) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker, args=(child, env, plugins, threads), daemon=True)
        with _unguarded_main_hidden():
            self.proc.start()
        child.close()
        self.task: Task | None = None
        self.started = 0.0

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            _kill(self.proc)
        self.conn.close()

    def kill(self) -> None:
        _kill(self.proc)
        self.conn.close()


def _is_unguarded_script(path: str) -> bool:
    """Whether the script at ``path`` has no top-level ``if __name__ == "__main__":`` test."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return False
    return True


@contextlib.contextmanager
def _unguarded_main_hidden() -> Iterator[None]:
    """While a worker starts: hide the main module's file from multiprocessing when it is a plain
    script without a ``__main__`` guard, so that the worker (and the forkserver) does not import
    it and run the caller's spot-check again."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if (
        main is None
        or not path
        or getattr(main, "__spec__", None) is not None  # `python -m module`: imported by name
        or not _is_unguarded_script(path)
    ):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _mp_context() -> Any:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Import the heavy, safe libraries once in the server; every worker forks from it.
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_grid(
    tasks: list[Task],
    *,
    jobs: int,
    timeout: float | None,
    isolate: bool = True,
    on_row: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every task; rows come back in task order whatever order they finish in.

    ``isolate=False`` runs the tasks one after another in this process (no time-out): the
    plain serial loop the benchmark compares against.
    """
    from tqdm import tqdm

    rows: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks), desc="spot-check", unit="fit", file=sys.stderr, disable=not progress
    )

    def done(task: Task, row: dict[str, Any]) -> None:
        rows[task.index] = row
        bar.update(1)
        bar.set_postfix_str(f"{task.source} x {task.classifier}: {row['status']}", refresh=False)
        if on_row is not None:
            on_row(row)

    if not isolate:
        for task in tasks:
            done(task, run_pair(task))
        bar.close()
        return [rows[t.index] for t in tasks]

    ctx = _mp_context()
    env = {k: v for k, v in os.environ.items() if k.startswith("TRANSFERKIT_")}
    plugins = runtime_plugins()
    threads = tasks[0].threads if tasks else 1
    pending = deque(tasks)
    # Workers live for the whole grid (a process start per pair would cost more than most
    # fits); one that times out or dies is replaced by a fresh one.
    workers = [_Worker(ctx, env, plugins, threads) for _ in range(min(jobs, len(tasks)))]
    try:
        while pending or any(w.task is not None for w in workers):
            for i, worker in enumerate(workers):
                if worker.task is None and pending:
                    try:
                        worker.give(pending[0])
                        pending.popleft()
                    except (OSError, BrokenPipeError):
                        worker.kill()
                        workers[i] = _Worker(ctx, env, plugins, threads)
            busy = {w.conn: w for w in workers if w.task is not None}
            for item in wait(list(busy), timeout=0.2):
                worker = busy[cast(Connection, item)]
                task = cast(Task, worker.task)
                try:
                    row: dict[str, Any] = worker.conn.recv()
                except (EOFError, OSError):
                    worker.proc.join(5)
                    code = worker.proc.exitcode
                    row = _failed_row(task, "failed", f"worker process died (exit code {code})")
                    worker.kill()
                    workers[workers.index(worker)] = _Worker(ctx, env, plugins, threads)
                worker.task = None
                done(task, row)
            now = time.monotonic()
            for i, worker in enumerate(workers):
                late = worker.task
                if late is not None and timeout is not None and now - worker.started > timeout:
                    worker.kill()
                    workers[i] = _Worker(ctx, env, plugins, threads)
                    done(
                        late, _failed_row(late, "timeout", f"killed after {timeout:g}s (--timeout)")
                    )
    finally:
        for worker in workers:
            if worker.task is None:
                worker.stop()
            else:
                worker.kill()
        bar.close()
    return [rows[t.index] for t in tasks]


# ---------------------------------------------------------------------- the journal

JOURNAL_NAME = "spotcheck-journal.jsonl"


def _identity(path: str) -> list[Any]:
    """A store's identity for the journal key: its path, and the size and modification time of
    its file (or of every file of a store folder)."""
    location = Path(path)
    files = [location] if location.is_file() else sorted(location.rglob("*"))
    stamps = []
    for item in files:
        with contextlib.suppress(OSError):
            st = item.stat()
            if item.is_file():
                stamps.append([str(item.relative_to(location.parent)), st.st_size, st.st_mtime_ns])
    return [os.path.abspath(path), stamps]


def journal_key(
    sources: list[FeatureSource],
    test_size: float,
    seed: int,
    store: Any,
    tests: list[str | None] | None = None,
) -> str:
    """What a journal's rows depend on, besides the pair itself: the same key, the same rows."""
    from .. import __version__

    key = {
        "version": __version__,
        "test_size": test_size,
        "tests": [None if t is None else _identity(t) for t in (tests or [])],
        "seed": seed,
        "store": store,
        "sources": [[s.name, _identity(s.path)] for s in sources],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class Journal:
    """Finished rows of one spot-check, one JSON line each, appended as they complete.

    The first line holds the settings key; a journal made with other settings is replaced. A
    line cut short by a kill is ignored (that pair is computed again)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / JOURNAL_NAME
        self.key = key
        self._fh: Any = None
        self._locked: Path | None = None

    def load(self, timeout: float | None) -> dict[tuple[str, str], dict[str, Any]]:
        """The rows of an earlier run with the same key, by (features, classifier). A
        ``timeout`` row counts only under the same ``--timeout``."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return rows
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            return rows
        if not isinstance(header, dict) or header.get("key") != self.key:
            return rows
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                row = {k: entry["row"][k] for k in ROW_FIELDS}
            except (ValueError, KeyError, TypeError):
                continue
            if row["status"] == "timeout" and entry.get("timeout") != timeout:
                continue
            rows[(str(row["backbone"]), str(row["classifier"]))] = row
        return rows

    def _lock(self) -> None:
        """One spot-check at a time per output folder; a lock left by a killed run is taken."""
        from ..store import StoreLockedError, lock_holder

        lock = Path(str(self.path) + ".lock")
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = lock_holder(self.path)
                if holder is not None:
                    raise StoreLockedError(
                        f"{self.path.parent} is being written by another spot-check (process "
                        f"{holder}); wait for it to finish or pass another --out"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._locked = lock
            return
        raise StoreLockedError(f"cannot lock {self.path}; delete {lock} if no spot-check runs")

    def open(self, kept: list[dict[str, Any]], timeout: float | None) -> None:
        """Start the journal afresh with the rows kept from the last run, then append. The
        folder (checked by :func:`check_report_folder`) is marked as a report folder first."""
        folder = self.path.parent
        new = not os.path.lexists(folder)
        try:
            outputs.mark_folder(folder, REPORT_KIND)
            self._lock()
            lines = [json.dumps({"key": self.key})]
            lines += [json.dumps({"row": row, "timeout": timeout}, default=str) for row in kept]
            outputs.atomic_write_text(self.path, "\n".join(lines) + "\n")
            with outputs.writing(self.path, "write the spot-check journal"):
                self._fh = open(self.path, "a")  # noqa: SIM115 -- closed by close()
        except BaseException:
            self.close()
            if new:  # a folder made for this run and nothing in it yet: leave nothing behind
                shutil.rmtree(folder, ignore_errors=True)
            raise
        self._timeout = timeout

    def append(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            return
        entry = {"row": {k: row.get(k) for k in ROW_FIELDS}, "timeout": self._timeout}
        with outputs.writing(self.path, "write the spot-check journal"):
            self._fh.write(json.dumps(entry, default=str) + "\n")
            self._fh.flush()

    def close(self, remove: bool = False) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._locked is not None:
            with contextlib.suppress(FileNotFoundError):
                self._locked.unlink()
            self._locked = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


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
    from .train import check_trainable, open_reader, read_test_store, split_indices

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
    np.save(folder / "X_train.npy", np.ascontiguousarray(X_train, dtype=np.float32))
    np.save(folder / "y_train.npy", np.asarray(y_train, dtype=np.int64))
    np.save(folder / "X_test.npy", np.ascontiguousarray(X_test, dtype=np.float32))
    np.save(folder / "y_test.npy", np.asarray(y_test, dtype=np.int64))
    np.save(folder / "classes.npy", np.arange(len(label_names)))
    return folder, label_names


def _test_stores(
    test: str | Path | None,
    sources: list[FeatureSource],
    backbones: list[str] | None,
    **extract: Any,
) -> list[str | None]:
    """The test store of each source: ``test`` itself, or with ``--backbones`` and an image
    folder as ``test``, that folder's features under each source's setting (cached)."""
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
        stores: list[str | None] = []
        for text in backbones:
            setting = parse_backbone(text, extract["input_size"], extract["pooling"])
            path, _ = cached_store(
                str(test),
                setting,
                weights=extract["weights"],
                cache_dir=extract["cache_dir"],
                batch_size=extract["batch_size"],
                progress=extract["progress"],
                runtime=extract["runtime"],
                precision=extract["precision"],
            )
            stores.append(path)
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


def spotcheck(
    inputs: list[str] | str,
    *,
    classifiers: str | list[str] = "recommended",
    backbones: Any = None,
    weights: Any = "default",
    input_size: Any = None,
    pooling: str = "avg",
    test_size: float = 0.2,
    seed: int = 0,
    timeout: float | None = 300.0,
    jobs: int | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    store: str | None = None,
    batch_size: int = 32,
    isolate: bool = True,
    progress: bool = True,
    runner: Any = None,
    runtime: str = "auto",
    precision: Any = "32",
    test: str | Path | None = None,
) -> dict[str, Any]:
    """Score every (features x classifier) pair; see the module docstring. Returns the report.

    ``test`` replaces the split: a feature store of separate test images (same recipe and class
    names as every source; all of each source's rows then train), or with ``backbones`` an image
    folder, extracted (and cached) with each backbone setting.

    ``runner`` replaces the local worker processes: called like :func:`run_grid` (without
    ``isolate``), e.g. the Dask runner of ``transferkit.distributed``. ``runtime`` and
    ``precision`` are how images are extracted (see ``docs/runtimes.md``); bf16 features are
    cached apart from 32-bit ones.
    """
    if isinstance(inputs, str | Path):
        inputs = [str(inputs)]
    if isinstance(backbones, str):
        backbones = [b.strip() for b in backbones.split(",") if b.strip()]
    elif backbones is not None and not isinstance(backbones, list | tuple):
        backbones = [backbones]  # one Backbone or Keras model
    names, own = _select_classifiers(classifiers)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive seconds, got {timeout}")
    if out is not None:  # refused before any work: an input, or a folder that is not ours
        check_report_folder(Path(out), [str(i) for i in inputs])
    started = time.perf_counter()
    try:
        # how images are extracted, for the feature sets and a test image folder alike
        extraction: dict[str, Any] = {
            "weights": weights,
            "input_size": input_size,
            "pooling": pooling,
            "cache_dir": cache_dir,
            "batch_size": batch_size,
            "progress": progress,
            "runtime": runtime,
            "precision": precision,
        }
        sources = resolve_sources(list(inputs), backbones, **extraction)
        tests = _test_stores(test, sources, backbones, **extraction)
        with tempfile.TemporaryDirectory(prefix="transferkit-spotcheck-") as scratch:
            tasks: list[Task] = []
            label_names: list[str] = []
            for source, test_store in zip(sources, tests, strict=True):
                folder, label_names = _prepare_split(
                    source, Path(scratch), test_size, seed, store, test_store
                )
                for name in names:
                    tasks.append(
                        Task(len(tasks), source.name, name, str(folder), seed, 1, own.get(name))
                    )
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
            print(
                f"spot-checking {len(names)} classifiers x {len(sources)} feature sets = "
                f"{len(tasks)} fits on {min(jobs, len(todo))} worker(s)"
                + (f"; {len(finished)} done in an earlier run" if finished else ""),
                file=sys.stderr,
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
                "progress": progress,
                "on_row": on_row,
            }
            interrupted = False
            try:
                if todo:
                    run = runner or functools.partial(run_grid, isolate=isolate)
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
        "test_size": None if test is not None else test_size,
        "test": None if test is None else str(test),
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
        print(
            f"transferkit: interrupted; {len(rows)} of {len(tasks)} pairs finished, "
            f"{report['pairs_left']} left; the finished rows are {where}; {again}",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    return report


def _on_row(row: dict[str, Any]) -> None:
    call_lifecycle("on_spotcheck_result", row={k: row.get(k) for k in ROW_FIELDS})


# ---------------------------------------------------------------------- reports


REPORT_KIND = "spotcheck-report"  # the kind in a report folder's marker file


def check_report_folder(out: Path, inputs: list[str]) -> None:
    """A report folder may be new, empty or an earlier report (its marker), and never an input."""
    outputs.check_outside_inputs(out, inputs, "report folder")
    outputs.check_folder(out, REPORT_KIND, what="report folder")
    outputs.check_writable(out)


def write_report(report: dict[str, Any], out: Path) -> dict[str, str]:
    """report.json, report.csv, heatmap.png and report.html under ``out``, each written whole
    (a temporary file renamed into place) into a folder marked as a transferkit report."""
    outputs.check_folder(out, REPORT_KIND, what="report folder")
    outputs.mark_folder(out, REPORT_KIND)
    files = {
        "json": out / "report.json",
        "csv": out / "report.csv",
        "heatmap": out / "heatmap.png",
        "html": out / "report.html",
    }
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(ROW_FIELDS))
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in ROW_FIELDS})
    outputs.atomic_write_text(files["csv"], table.getvalue())
    labels = _row_labels(report)
    with outputs.atomic_path(files["heatmap"]) as tmp:
        heatmap(report["rows"], tmp, labels=labels)
    pictures = {"heatmap": files["heatmap"]}
    classifiers = list(dict.fromkeys(r["classifier"] for r in report["rows"]))
    if len(classifiers) > COMPACT_TOP:
        files["heatmap_top"] = out / "heatmap-top.png"
        with outputs.atomic_path(files["heatmap_top"]) as tmp:
            heatmap(report["rows"], tmp, labels=labels, top=COMPACT_TOP)
        pictures["heatmap_top"] = files["heatmap_top"]
    if report.get("best_confusion"):
        files["confusion"] = out / "confusion.png"
        with outputs.atomic_path(files["confusion"]) as tmp:
            confusion_picture(
                report["best_confusion"], report.get("label_names") or [], tmp,
                title=f"{report['best_model']} on {labels.get(report['best_features'], '')}",
            )  # fmt: skip
        pictures["confusion"] = files["confusion"]
    outputs.atomic_write_text(
        files["html"], html_page(report, files["heatmap"].name, pictures=pictures)
    )
    result = {k: str(v) for k, v in files.items()}
    outputs.atomic_write_text(files["json"], json.dumps({**report, "files": result}, indent=2))
    return result


def _grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    features = list(dict.fromkeys(r["backbone"] for r in rows))
    classifiers = list(dict.fromkeys(r["classifier"] for r in rows))
    values = np.full((len(features), len(classifiers)), np.nan)
    for r in rows:
        if r["status"] == "ok" and r["accuracy"] is not None:
            values[features.index(r["backbone"]), classifiers.index(r["classifier"])] = r[
                "accuracy"
            ]
    return features, classifiers, values


COMPACT_TOP = 12  # more classifiers than this: also a heat map of the best ones


def _row_labels(report: dict[str, Any]) -> dict[str, str]:
    """Each feature source's name -> its recipe (``efficientnet-lite0@96:max``), the store's
    name added where two sources share a recipe."""
    features = report.get("features") or []
    recipes = [f.get("recipe") or f["name"] for f in features]
    labels = {}
    for f, recipe in zip(features, recipes, strict=True):
        labels[f["name"]] = (
            recipe if recipes.count(recipe) == 1 or recipe == f["name"] else
            f"{recipe} ({Path(f['name']).stem})"
        )  # fmt: skip
    return labels


def confusion_picture(
    matrix: list[list[int]], label_names: list[str], path: Path, title: str = ""
) -> None:
    """The best pair's confusion matrix (rows: true class, columns: predicted), class names on
    both axes, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(matrix)
    k = len(values)
    names = [str(n) for n in label_names] if len(label_names) == k else [str(i) for i in range(k)]
    side = max(4.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = values.max() or 1
        for i in range(k):
            for j in range(k):
                color = "white" if values[i, j] > 0.6 * top else "black"
                ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="images")
    ax.set_title(f"Confusion matrix: {title}" if title else "Confusion matrix", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heatmap(
    rows: list[dict[str, Any]],
    path: Path,
    labels: dict[str, str] | None = None,
    top: int | None = None,
) -> None:
    """Accuracy of every pair as a features x classifiers picture (blank: failed/timeout);
    ``labels`` names the feature rows; ``top`` keeps only the best classifiers, best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features, classifiers, values = _grid(rows)
    if top is not None:
        best = np.nan_to_num(values, nan=-1.0).max(axis=0)
        keep = sorted(np.argsort(-best, kind="stable")[:top], key=lambda j: -best[j])
        classifiers = [classifiers[j] for j in keep]
        values = values[:, keep]
    features = [(labels or {}).get(f, f) for f in features]
    width = max(6.0, 0.45 * len(classifiers) + 3)
    height = max(2.5, 0.5 * len(features) + 2)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto"
    )
    ax.set_xticks(range(len(classifiers)), classifiers, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(features)), features, fontsize=8)
    if len(classifiers) * len(features) <= 120:
        for i in range(len(features)):
            for j in range(len(classifiers)):
                v = values[i, j]
                text = "x" if np.isnan(v) else f"{v:.2f}"
                color = (
                    "black" if not np.isnan(v) and v > 0.6 else "white"
                )  # viridis is light up high
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(
        f"The best {len(classifiers)} classifiers (held-out accuracy)"
        if top is not None
        else "Spot-check accuracy (held-out split)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_SORT_JS = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.asc !== '1';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    table.querySelectorAll('th').forEach(function (h) { h.dataset.asc = ''; });
    th.dataset.asc = asc ? '1' : '0';
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _embedded(path: Path, alt: str) -> str:
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'title="{html.escape(Path(path).name)}" style="max-width: 100%">'
    )


def html_page(report: dict[str, Any], picture: str, pictures: dict[str, Path] | None = None) -> str:
    """The report as one self-contained page: the rows sorted by accuracy (best first), each
    labelled by its features' recipe, the heat maps and the best pair's confusion matrix
    embedded (the PNG files are written next to it too)."""
    labels = _row_labels(report)

    def cell(value: Any) -> str:
        shown = "" if value is None else str(value)
        if isinstance(value, float):
            shown = f"{value:.4f}"
        sort_value = "" if value is None else str(value)
        return f'<td data-v="{html.escape(sort_value)}">{html.escape(shown)}</td>'

    fields = ["features", *ROW_FIELDS]
    shown_as = {"backbone": "store"}  # the rows' "backbone" field is the feature source's name
    head = "".join(f"<th>{html.escape(shown_as.get(f, f))}</th>" for f in fields)
    ordered = sorted(
        report["rows"],
        key=lambda r: (r["status"] != "ok" or r["accuracy"] is None, -(r["accuracy"] or 0.0)),
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            cell(labels.get(row["backbone"], row["backbone"]) if f == "features" else row.get(f))
            for f in fields
        )
        + "</tr>"
        for row in ordered
    )
    pictures = pictures or {}
    shown = (
        _embedded(pictures["heatmap"], "accuracy heat map")
        if "heatmap" in pictures
        else f'<img src="{html.escape(picture)}" alt="accuracy heat map" style="max-width: 100%">'
    )
    if "heatmap_top" in pictures:
        shown = (
            f"<h2>The best {COMPACT_TOP} classifiers</h2>\n"
            + _embedded(pictures["heatmap_top"], "heat map of the best classifiers")
            + "\n<h2>All pairs</h2>\n"
            + shown
        )
    if "confusion" in pictures:
        shown += "\n<h2>The best pair's confusion matrix</h2>\n" + _embedded(
            pictures["confusion"], "confusion matrix of the best pair"
        )
    best = (
        f"Best: <b>{html.escape(str(report['best_model']))}</b> on "
        f"<b>{html.escape(labels.get(report['best_features'], str(report['best_features'])))}"
        f"</b>, accuracy "
        f"{report['best_accuracy']:.4f}"
        if report["best_model"]
        else "No pair succeeded."
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>transferkit spot-check</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ cursor: pointer; background: #eee; }}
</style></head>
<body>
<h1>Spot-check</h1>
<p>{best}. {len(report["rows"])} pairs, best first (saved as {html.escape(picture)} too); click a
column header to sort.</p>
{shown}
<h2>Every pair</h2>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{_SORT_JS}</script>
</body></html>
"""
