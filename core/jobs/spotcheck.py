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

Workers are started with multiprocessing's forkserver method, so a *script* that calls
:func:`spotcheck` must guard its entry point with ``if __name__ == "__main__":`` (each worker
imports the main module, as with any non-fork multiprocessing); the ``transferkit`` command,
notebooks and pytest need nothing.

``out`` receives ``report.json`` (rows plus ``best_model``, ``best_accuracy`` and
``best_features`` at the top level, as the classic recipe's ``final_report.json``), ``report.csv``,
``heatmap.png`` (features x classifiers) and ``report.html`` (a sortable table and the picture).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import estimators, registry
from ..errors import TransferkitError, UsageError
from ..plugin_manager import call_lifecycle, notify_exception
from ..sizes import parse_input_size

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
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "transferkit"
    )
    return Path(root) / "features"


def parse_backbone(text: str, input_size: Any = None, pooling: str = "avg") -> dict[str, Any]:
    """``NAME[@SIZE][:POOLING]`` (e.g. ``efficientnet-lite0@128:max``) into extract settings."""
    name, _, pool = text.partition(":")
    name, _, size = name.partition("@")
    if not name:
        raise UsageError(f"empty backbone name in {text!r}; write NAME[@SIZE][:POOLING]")
    setting: dict[str, Any] = {"backbone": name.strip(), "pooling": pool.strip() or pooling}
    if size:
        try:
            setting["input_size"] = parse_input_size(size.strip() or "?")
        except UsageError as exc:
            raise UsageError(f"{exc} (in {text!r}; write NAME@160 or NAME@160x128)") from None
    else:
        setting["input_size"] = parse_input_size(input_size)
    return setting


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


def cache_key(setting: dict[str, Any], weights: Any, images_digest: str) -> str:
    size = setting.get("input_size")
    key = {
        "backbone": setting["backbone"],
        "weights": "none" if weights in (None, "none") else str(weights),
        "input_size": list(size) if size else None,
        "pooling": setting["pooling"],
        "images": images_digest,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def cached_store(
    images: str | Path,
    setting: dict[str, Any],
    *,
    weights: Any = "default",
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[str, bool]:
    """The store of ``images`` under ``setting``: from the cache, or extracted into it.

    Returns ``(path, extracted_now)``. Extraction writes to a temporary name and renames it when
    complete, so an interrupted run never leaves a half store that a later run would reuse.
    """
    from .. import api
    from ..images import open_source

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    source = open_source(str(images))
    key = cache_key(setting, weights, image_list_digest(list(source.records)))
    final = cache / f"{setting['backbone']}-{key}.h5"
    if final.exists():
        return str(final), False
    partial = cache / f"{setting['backbone']}-{key}.partial.h5"
    api.extract(  # type: ignore[attr-defined,unused-ignore]
        str(images),
        backbone=setting["backbone"],
        out=str(partial),
        weights=weights,
        pooling=setting["pooling"],
        input_size=setting.get("input_size"),
        batch_size=batch_size,
        overwrite=True,
        progress=progress,
    )
    os.replace(partial, final)
    return str(final), True


def setting_label(setting: dict[str, Any], default_size: Any, default_pooling: str) -> str:
    label = setting["backbone"]
    if setting.get("input_size") and setting["input_size"] != default_size:
        label += f"@{setting['input_size'][0]}"
    if setting["pooling"] != default_pooling:
        label += f":{setting['pooling']}"
    return label


def _store_label(location: Path) -> str:
    """A store's name in the grid: its file name, or for a file of the feature cache (named
    ``<backbone>-<key>.h5``) the settings it was made with, e.g. ``efficientnet-lite0@64:max``."""
    import re

    stem = location.stem
    if not re.fullmatch(r".+-[0-9a-f]{20}", stem):
        return stem
    try:
        from ..store import open_store

        with open_store(str(location)) as reader:
            meta = reader.metadata
        label = str(meta["backbone"])
        if meta.get("input_size"):
            label += f"@{int(meta['input_size'][0])}"
        if meta.get("pooling", "avg") != "avg":
            label += f":{meta['pooling']}"
        return label
    except Exception:
        return stem


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
) -> list[FeatureSource]:
    if not inputs:
        raise UsageError("give feature stores, or an image folder with --backbones a,b")
    if backbones:
        if len(inputs) != 1 or not Path(inputs[0]).is_dir() or inputs[0].endswith(".zarr"):
            raise UsageError(
                "--backbones needs exactly one image folder (one sub-folder per class); "
                "to compare stores, pass the stores without --backbones"
            )
        sources = []
        for text in backbones:
            setting = parse_backbone(text, input_size, pooling)
            registry.backbone(setting["backbone"])  # unknown names fail before any work
            path, extracted = cached_store(
                inputs[0],
                setting,
                weights=weights,
                cache_dir=cache_dir,
                batch_size=batch_size,
                progress=progress,
            )
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


def _worker(conn: Connection, env: dict[str, str], plugins: list[str], threads: int) -> None:
    """A long-lived worker: fits the tasks it receives until it gets ``None``."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)  # a group of its own: a time-out kills the worker's children too
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


# ---------------------------------------------------------------------- the job


def _prepare_split(
    source: FeatureSource, scratch: Path, test_size: float, seed: int, store: str | None
) -> tuple[Path, list[str]]:
    from .train import check_trainable, open_reader, split_indices

    reader = open_reader(source.path, store)
    try:
        labels = np.asarray(reader.labels)
        label_names = [str(n) for n in reader.label_names]
        check_trainable(labels, label_names, source.path)
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


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["accuracy"], r["macro_f1"] or 0.0, -(r["fit_seconds"] or 0)))


def spotcheck(
    inputs: list[str] | str,
    *,
    classifiers: str | list[str] = "fast",
    backbones: list[str] | str | None = None,
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
) -> dict[str, Any]:
    """Score every (features x classifier) pair; see the module docstring. Returns the report.

    ``runner`` replaces the local worker processes: called like :func:`run_grid` (without
    ``isolate``), e.g. the Dask runner of ``transferkit.distributed``.
    """
    if isinstance(inputs, str | Path):
        inputs = [str(inputs)]
    if isinstance(backbones, str):
        backbones = [b.strip() for b in backbones.split(",") if b.strip()]
    names = estimators.select(classifiers)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive seconds, got {timeout}")
    started = time.perf_counter()
    try:
        sources = resolve_sources(
            list(inputs),
            backbones,
            weights=weights,
            input_size=input_size,
            pooling=pooling,
            cache_dir=cache_dir,
            batch_size=batch_size,
            progress=progress,
        )
        with tempfile.TemporaryDirectory(prefix="transferkit-spotcheck-") as scratch:
            tasks: list[Task] = []
            label_names: list[str] = []
            for source in sources:
                folder, label_names = _prepare_split(source, Path(scratch), test_size, seed, store)
                for name in names:
                    tasks.append(Task(len(tasks), source.name, name, str(folder), seed))
            print(
                f"spot-checking {len(names)} classifiers x {len(sources)} feature sets = "
                f"{len(tasks)} fits on {min(jobs, len(tasks))} worker(s)",
                file=sys.stderr,
            )
            grid: dict[str, Any] = {
                "jobs": jobs,
                "timeout": timeout,
                "progress": progress,
                "on_row": lambda row: call_lifecycle(
                    "on_spotcheck_result", row={k: row.get(k) for k in ROW_FIELDS}
                ),
            }
            if runner is not None:
                rows = runner(tasks, **grid)
            else:
                rows = run_grid(tasks, isolate=isolate, **grid)
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
        "features": [{"name": s.name, "store": s.path, "extracted": s.extracted} for s in sources],
        "label_names": label_names,
        "test_size": test_size,
        "seed": seed,
        "jobs": jobs,
        "timeout": timeout,
        "seconds": time.perf_counter() - started,
        "counts": {
            status: sum(r["status"] == status for r in rows)
            for status in ("ok", "failed", "timeout")
        },
        "rows": [{k: r.get(k) for k in ROW_FIELDS} for r in rows],
    }
    if out is not None:
        report["files"] = write_report(report, Path(out))
    return report


# ---------------------------------------------------------------------- reports


def write_report(report: dict[str, Any], out: Path) -> dict[str, str]:
    """report.json, report.csv, heatmap.png and report.html under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "report.json",
        "csv": out / "report.csv",
        "heatmap": out / "heatmap.png",
        "html": out / "report.html",
    }
    with open(files["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in report["rows"]:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in ROW_FIELDS})
    heatmap(report["rows"], files["heatmap"])
    files["html"].write_text(html_page(report, files["heatmap"].name))
    result = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps({**report, "files": result}, indent=2))
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


def heatmap(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy of every pair as a features x classifiers picture (blank: failed/timeout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features, classifiers, values = _grid(rows)
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
    ax.set_title("Spot-check accuracy (held-out split)")
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


def html_page(report: dict[str, Any], picture: str) -> str:
    def cell(value: Any) -> str:
        shown = "" if value is None else str(value)
        if isinstance(value, float):
            shown = f"{value:.4f}"
        sort_value = "" if value is None else str(value)
        return f'<td data-v="{html.escape(sort_value)}">{html.escape(shown)}</td>'

    head = "".join(f"<th>{html.escape(f)}</th>" for f in ROW_FIELDS)
    body = "\n".join(
        "<tr>" + "".join(cell(row.get(f)) for f in ROW_FIELDS) + "</tr>" for row in report["rows"]
    )
    best = (
        f"Best: <b>{html.escape(str(report['best_model']))}</b> on "
        f"<b>{html.escape(str(report['best_features']))}</b>, accuracy "
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
<p>{best}. {len(report["rows"])} pairs; click a column header to sort.</p>
<img src="{html.escape(picture)}" alt="accuracy heat map" style="max-width: 100%">
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{_SORT_JS}</script>
</body></html>
"""
